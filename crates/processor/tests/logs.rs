//! The worker's logs: human-readable without escape codes when they go to a file (even with
//! `NO_COLOR` unset), one JSON object per line with `LOG_FORMAT=json`, each line about a task
//! naming its `task_id`, and an unknown `LOG_FORMAT` refused by name.
#![cfg(feature = "service")]

use std::process::Command;
use std::time::{Duration, Instant};

use test_support as common;
use test_support::worker_process::{WorkerProcess, processor_binary};
use uuid::Uuid;

/// Longest wait for the worker's first log lines.
const DEADLINE: Duration = Duration::from_secs(60);

/// Starts a worker with `env` on a queue of its own, waits until it consumes, stops it and
/// returns its log.
async fn worker_log(env: &[(&str, &str)]) -> String {
    let amqp_url = common::server_url(common::AMQP_URL);
    let queue = format!("logs_test_{}", Uuid::new_v4().simple());
    let storage = tempfile::tempdir().expect("storage directory");
    let worker = WorkerProcess::start_with_env(
        &amqp_url,
        &queue,
        "http://127.0.0.1:9",
        None,
        storage.path(),
        env,
    );
    let started = Instant::now();
    while !worker.log_text().contains("waiting for tasks") {
        assert!(started.elapsed() < DEADLINE, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = worker.log_text();
    worker.stop_gracefully();
    common::delete_queue(&queue).await;
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_in_a_file_have_no_escape_codes() {
    let log = worker_log(&[("NO_COLOR", "")]).await;
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in {log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let log = worker_log(&[("LOG_FORMAT", "json"), ("NO_COLOR", "")]).await;
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for line in lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
}

#[test]
fn an_unknown_log_format_is_refused() {
    let output = Command::new(processor_binary())
        .args(["worker", "--amqp-url", "amqp://127.0.0.1:9"])
        .env("LOG_FORMAT", "xml")
        .output()
        .expect("run processor worker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LOG_FORMAT=\"xml\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_about_a_task_carry_its_id() {
    let amqp_url = common::server_url(common::AMQP_URL);
    let queue = format!("logs_test_{}", Uuid::new_v4().simple());
    let tm = common::start_server_with(common::DbKind::Sqlite, |settings| {
        common::publish_on(settings, &queue);
    })
    .await;
    let worker = WorkerProcess::start_with_env(
        &amqp_url,
        &queue,
        &tm.base_url,
        None,
        &tm.storage_dir(),
        &[("LOG_FORMAT", "json"), ("NO_COLOR", "")],
    );
    let id = tm.upload("plays.csv", common::SEED_INPUT).await;
    assert_eq!(tm.wait_finished(id).await["status"], "DONE");
    let log = worker.log_text();
    worker.stop_gracefully();
    tm.stop().await;
    common::delete_queue(&queue).await;

    let task = id.to_string();
    let about_task: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|object| object["span"]["task_id"] == task.as_str())
        .collect();
    for message in ["processing", "done"] {
        assert!(
            about_task.iter().any(|object| object["fields"]["message"]
                .as_str()
                .is_some_and(|text| text.contains(message))),
            "no {message:?} line with task_id {task} in {log}"
        );
    }
}
