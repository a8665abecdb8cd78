//! The OpenAPI description: `/openapi.json` names every public route with its answers, the
//! Swagger UI at `/docs` comes from the binary, and schemathesis (from the test tools,
//! `scripts/install-test-tools`) finds no server error and no answer that departs from the
//! description, against an embedded server on SQLite. Its settings are in
//! `tests/openapi/schemathesis.toml`.

use test_support as common;

use std::path::Path;
use std::process::Command;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// Examples schemathesis generates per operation and phase.
const MAX_EXAMPLES: &str = "100";
/// A fixed seed: a failure in CI can be replayed as it happened.
const SEED: &str = "20261207";

async fn description(server: &TestServer) -> Value {
    let response = server
        .client
        .get(format!("{}/openapi.json", server.base_url))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_description_names_every_public_route_and_its_errors() {
    let server = start_server(DbKind::Sqlite).await;
    let api = description(&server).await;
    assert_eq!(api["openapi"], "3.1.0");
    let operations = [
        (
            "post",
            "/v1/data_processor/upload",
            &["202", "400", "401", "413", "415", "503", "507"][..],
        ),
        (
            "get",
            "/v1/tasks/status/{task_id}",
            &["200", "400", "401", "404", "503"],
        ),
        (
            "get",
            "/v1/tasks/{task_id}",
            &["200", "400", "401", "404", "503"],
        ),
        (
            "delete",
            "/v1/tasks/{task_id}",
            &["200", "400", "404", "409"],
        ),
        ("get", "/v1/tasks", &["200", "400", "401"]),
        (
            "get",
            "/v1/data_processor/download/{task_id}",
            &["200", "404", "409", "410"],
        ),
        ("get", "/health", &["200", "503"]),
        ("get", "/metrics", &["200", "401"]),
    ];
    let paths = api["paths"].as_object().expect("paths");
    let count: usize = paths
        .values()
        .map(|path| path.as_object().map_or(0, |p| p.len()))
        .sum();
    assert_eq!(count, operations.len(), "operations: {:?}", paths.keys());
    for (method, path, statuses) in operations {
        let responses = &api["paths"][path][method]["responses"];
        for status in statuses {
            assert!(
                responses.get(status).is_some(),
                "{method} {path}: no {status} in {responses}"
            );
        }
    }
    assert!(
        !paths.keys().any(|path| path.starts_with("/internal")),
        "the workers' callback is not public"
    );
    let conflict = &api["components"]["schemas"]["TaskConflict"];
    assert!(conflict.to_string().contains("error"), "{conflict}");

    let docs = server
        .client
        .get(format!("{}/docs/", server.base_url))
        .send()
        .await
        .expect("GET /docs/");
    assert_eq!(docs.status(), StatusCode::OK);
    let page = docs.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure() {
    let schemathesis =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/venv/bin/schemathesis");
    assert!(
        schemathesis.is_file(),
        "{} is missing: run scripts/install-test-tools",
        schemathesis.display()
    );
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/schemathesis.toml");
    let server = start_server(DbKind::Sqlite).await;
    let url = format!("{}/openapi.json", server.base_url);
    let reports = tempfile::tempdir().expect("temporary directory");
    let mut command = Command::new(&schemathesis);
    command
        .arg("--config-file")
        .arg(&config)
        .args(["run", &url, "--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .arg("--report-dir")
        .arg(reports.path())
        // Its cache of what it found goes where it runs: not into the source tree.
        .current_dir(reports.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    // Off the runtime's threads: the server answers on them meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the schemathesis thread")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // A warning (an operation that kept answering 404, say) is no failure.
    assert!(!stdout.contains("FAILURES"), "{stdout}");
    // The figures, for whoever reads the test's output with --nocapture.
    let summary = stdout.lines().skip_while(|line| !line.contains("SUMMARY"));
    println!("{}", summary.collect::<Vec<_>>().join("\n"));
    server.stop().await;
}
