//! Embedded mode (no RabbitMQ): uploads of every accepted form, rejected uploads, concurrent
//! uploads, cancelling a running task, and tasks left unfinished by a previous run.

use test_support as common;

use common::*;
use futures_util::future::join_all;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use reqwest::multipart::{Form, Part};
use task_manager::Settings;
use uuid::Uuid;

fn file_part(name: &str, content: &str) -> Part {
    Part::bytes(content.as_bytes().to_vec()).file_name(name.to_string())
}

/// Uploads `body` as a raw CSV with the query `query`; the answer.
async fn post_csv(
    server: &TestServer,
    query: &[(&str, &str)],
    body: reqwest::Body,
) -> (StatusCode, serde_json::Value) {
    let response = server
        .client
        .post(server.url("/v1/data_processor/upload"))
        .query(query)
        .header(CONTENT_TYPE, "text/csv; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    json_of(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_csv_body_is_accepted() {
    let server = start_server(DbKind::Sqlite).await;
    // Unnamed; then named by the query, as `processor upload` sends it (sanitized).
    for (query, name) in [
        (vec![], None),
        (vec![("filename", "../my plays.csv")], Some("my_plays.csv")),
    ] {
        let (code, body) = post_csv(&server, &query, SEED_INPUT.into()).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let id = task_id_of(&body);
        let status = server.wait_finished(id).await;
        assert_eq!(status["status"], "DONE", "{status}");
        assert_eq!(status["filename"].as_str(), name, "{status}");
        let response = server.download(id).await;
        let expected = match name {
            Some(_) => "my_plays_aggregated.csv".to_string(),
            None => format!("{id}.csv"),
        };
        assert_eq!(attachment_filename(&response), expected);
        assert_eq!(response.text().await.unwrap(), SEED_OUTPUT);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_file_after_other_fields_with_a_hostile_name() {
    let server = start_server(DbKind::Sqlite).await;
    let form = Form::new()
        .text("comment", "uploaded by a test")
        .part("file", file_part("../../my plays\";x=.csv", SEED_INPUT));
    let (code, body) = server.upload_form(form).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = task_id_of(&body);
    let status = server.wait_finished(id).await;
    assert_eq!(status["status"], "DONE", "{status}");
    assert_eq!(status["filename"], "my_plays__x_.csv");
    let response = server.download(id).await;
    assert_eq!(
        attachment_filename(&response),
        "my_plays__x__aggregated.csv"
    );
    assert_eq!(response.text().await.unwrap(), SEED_OUTPUT);
    assert_eq!(server.raw_data_files(), vec![format!("{id}.csv")]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_routes_get_json_errors() {
    let server = start_server(DbKind::Sqlite).await;
    let upload_url = server.url("/v1/data_processor/upload");
    let cases = [
        (
            "no file field",
            server
                .client
                .post(&upload_url)
                .multipart(Form::new().part("data", file_part("a.csv", SEED_INPUT))),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty file",
            server
                .client
                .post(&upload_url)
                .multipart(Form::new().part("file", file_part("a.csv", ""))),
            StatusCode::BAD_REQUEST,
        ),
        (
            "JSON body",
            server
                .client
                .post(&upload_url)
                .header(CONTENT_TYPE, "application/json")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "broken multipart",
            server
                .client
                .post(&upload_url)
                .header(CONTENT_TYPE, "multipart/form-data; boundary=XYZ")
                .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nSong"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown route",
            server.client.get(server.url("/v1/nothing")),
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            server.client.put(server.url("/v1/tasks")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (what, request, expected) in cases {
        let (code, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(code, expected, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
    }
    let (_, list) = server.get_json("/v1/tasks").await;
    assert_eq!(list["count"], 0, "a rejected upload made a task: {list}");
    let leftovers = server.raw_data_files().len();
    assert_eq!(leftovers, 0, "a rejected upload left a file");

    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, StatusCode::OK, "{health}");
    assert_eq!(health["mode"], "embedded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_all_complete() {
    const UPLOADS: usize = 20;
    let server = start_server_with(DbKind::Sqlite, |settings| settings.embedded_workers = 2).await;
    let inputs: Vec<(String, String)> = (0..UPLOADS)
        .map(|i| {
            let song = format!("Umbrella {i}");
            (
                SEED_INPUT.replace("Umbrella", &song),
                SEED_OUTPUT.replace("Umbrella", &song),
            )
        })
        .collect();
    let ids = join_all(inputs.iter().enumerate().map(|(i, (input, _))| {
        let server = &server;
        async move { server.upload(&format!("plays{i}.csv"), input).await }
    }))
    .await;
    let statuses = join_all(ids.iter().map(|id| server.wait_finished(*id))).await;
    for ((id, status), (_, expected)) in ids.iter().zip(&statuses).zip(&inputs) {
        assert_eq!(status["status"], "DONE", "{status}");
        let response = server.download(*id).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.text().await.unwrap(), expected, "task {id}");
    }
    server.stop().await;
}

/// A CSV of `rows` rows over many songs and days.
fn generated_input(rows: usize) -> String {
    let mut csv = String::with_capacity(rows * 32 + 32);
    csv.push_str("Song,Date,Number of Plays\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "Song {},2020-01-{:02},{}\n",
            i % 5000,
            i % 28 + 1,
            i % 97
        ));
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_followed_as_they_arrive_are_stored_and_aggregated_whole() {
    let server = start_server(DbKind::Sqlite).await;
    // More than the pieces the engine is handed in memory at once (32 MiB), and no whole
    // number of blocks (4 MiB): the last one is padded for direct I/O, then cut off.
    let input = generated_input(1_500_000);
    assert!(input.len() > 33 << 20 && !input.len().is_multiple_of(4096));
    let expected = fixtures::reference::aggregate(input.as_bytes());
    for chunked in [false, true] {
        let body = if chunked {
            // No Content-Length: followed all the same.
            let pieces: Vec<Result<Vec<u8>, std::io::Error>> = input
                .as_bytes()
                .chunks(100_000)
                .map(|piece| Ok(piece.to_vec()))
                .collect();
            reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
        } else {
            reqwest::Body::from(input.clone())
        };
        let (code, body) = post_csv(&server, &[], body).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let id = task_id_of(&body);
        let status = server.wait_finished(id).await;
        assert_eq!(status["status"], "DONE", "chunked {chunked}: {status}");
        let stored = std::fs::read(server.storage_dir().join(format!("raw_data/{id}.csv")));
        assert!(
            stored.unwrap() == input.as_bytes(),
            "chunked {chunked}: the stored upload differs"
        );
        let result = server.download(id).await.bytes().await.unwrap();
        assert!(
            result == expected,
            "chunked {chunked}: the result differs from the reference"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_stops_it() {
    let server = start_server(DbKind::Sqlite).await;
    let big = server.upload("big.csv", &generated_input(1_500_000)).await;
    loop {
        let status = server.status(big).await;
        match status["status"].as_str() {
            Some("RECEIVED") => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            Some("PROCESSING") => break,
            _ => panic!("the big task should still be running: {status}"),
        }
    }
    let (code, body) = server.cancel(big).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED");

    // One runner: once the next task is done, the cancelled one has stopped.
    let next = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(server.wait_finished(next).await["status"], "DONE");
    assert_eq!(server.status(big).await["status"], "CANCELLED");
    let output = server
        .storage_dir()
        .join(format!("processed_data/{big}.csv"));
    assert!(!output.exists(), "a cancelled task left its result");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_tasks_are_processed_after_a_restart() {
    let storage = tempfile::tempdir().unwrap();
    let queue = format!("tm_test_{}", Uuid::new_v4().simple());
    let mut settings = Settings::new(storage.path());
    settings.bind = [127, 0, 0, 1].into();
    settings.port = 0;
    // First run: published on a queue nobody consumes, so the task stays RECEIVED.
    publish_on(&mut settings, &queue);
    let server = task_manager::start(settings.clone()).await.unwrap();
    let client = reqwest::Client::new();
    let id = upload(&client, &server.base_url(), "plays.csv", SEED_INPUT).await;
    assert_eq!(
        status(&client, &server.base_url(), id).await["status"],
        "RECEIVED"
    );
    server.shutdown().await;

    // Second run, embedded: the task is queued again and processed.
    settings.amqp_url = None;
    let server = task_manager::start(settings).await.unwrap();
    let base = server.base_url();
    assert_eq!(wait_finished(&client, &base, id).await["status"], "DONE");
    let response = download(&client, &base, id).await;
    assert_eq!(response.text().await.unwrap(), SEED_OUTPUT);
    server.shutdown().await;

    delete_queue(&queue).await;
}
