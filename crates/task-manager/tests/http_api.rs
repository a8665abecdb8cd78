//! The HTTP API on each database (SQLite, MariaDB, PostgreSQL), each test with a database of
//! its own. Processing runs in embedded mode; the cancellation tests use a RabbitMQ queue that
//! no worker consumes, so that a task stays unfinished for as long as the test needs.

use test_support as common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

/// The example through the whole path: upload, poll, download.
async fn seed_example(kind: DbKind) {
    let server = start_server(kind).await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    let status = server.wait_finished(id).await;
    assert_eq!(status["status"], "DONE", "{status}");
    assert_eq!(status["task_id"], id.to_string());
    assert_eq!(status["rows"], 7);
    assert_eq!(status["groups"], 4);
    assert_eq!(status["progress"], 1.0);
    assert_eq!(status["input_bytes"], SEED_INPUT.len());
    assert_eq!(status["output_bytes"], SEED_OUTPUT.len());
    assert_eq!(status["filename"], "plays.csv");
    assert!(status.get("error").is_none(), "{status}");
    let link = status["download_link"].as_str().expect("download_link");
    assert_eq!(
        link,
        format!("{}/v1/data_processor/download/{id}", server.base_url)
    );

    let response = server.client.get(link).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "text/csv",
        "content type"
    );
    assert_eq!(attachment_filename(&response), "plays_aggregated.csv");
    assert_eq!(response.text().await.unwrap(), SEED_OUTPUT);

    let (code, task) = server.get_json(&format!("/v1/tasks/{id}")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(task["status"], "DONE");
    assert_eq!(task["created_at"], status["created_at"]);
    server.stop().await;
}

/// Invalid CSV ends FAILED with the engine's message naming the line and the field.
async fn invalid_csv_fails(kind: DbKind) {
    let server = start_server(kind).await;
    let id = server.upload("bad.csv", INVALID_INPUT).await;
    let status = server.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    let error = status["error"].as_str().expect("error message");
    assert!(error.contains("line 2"), "{error}");
    assert!(error.contains("Date"), "{error}");
    assert!(status.get("download_link").is_none(), "{status}");

    let (code, body) = json_of(server.download(id).await).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(body["status"], "FAILED");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("line 2"),
        "{body}"
    );
    server.stop().await;
}

/// Unknown ids are 404, malformed ids 400, on every endpoint that takes one; always JSON.
async fn unknown_and_malformed_ids(kind: DbKind) {
    let server = start_server(kind).await;
    let unknown = Uuid::new_v4();
    for path in [
        format!("/v1/tasks/status/{unknown}"),
        format!("/v1/data_processor/download/{unknown}"),
        format!("/v1/tasks/{unknown}"),
    ] {
        let (code, body) =
            json_of(server.client.get(server.url(&path)).send().await.unwrap()).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("not found"),
            "{path}: {body}"
        );
    }
    let (code, _) = server.cancel(unknown).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    for path in [
        "/v1/tasks/status/not-a-uuid",
        "/v1/data_processor/download/12345",
        "/v1/tasks/..%2F..%2Fetc%2Fpasswd",
    ] {
        let (code, body) = json_of(server.client.get(server.url(path)).send().await.unwrap()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("malformed task id"),
            "{path}: {body}"
        );
    }
    server.stop().await;
}

/// Pages of the task list: newest first, every task once, links between pages.
async fn list_pagination(kind: DbKind) {
    let server = start_server(kind).await;
    let mut uploaded = Vec::new();
    for i in 0..5 {
        uploaded.push(server.upload(&format!("part{i}.csv"), SEED_INPUT).await);
    }
    let mut listed = Vec::new();
    let mut url = Some(server.url("/v1/tasks?page_size=2"));
    let mut pages = Vec::new();
    while let Some(next) = url {
        let (code, page) = json_of(server.client.get(&next).send().await.unwrap()).await;
        assert_eq!(code, StatusCode::OK, "{page}");
        assert_eq!(page["count"], 5, "{page}");
        for task in page["results"].as_array().expect("results") {
            listed.push(task.clone());
        }
        url = page["next_url"].as_str().map(str::to_string);
        pages.push(page);
        assert!(pages.len() <= 3, "more pages than expected: {pages:?}");
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0]["prev_url"], Value::Null);
    assert_eq!(
        pages[1]["prev_url"].as_str(),
        Some(server.url("/v1/tasks?page=1&page_size=2").as_str())
    );
    assert_eq!(pages[2]["results"].as_array().map(Vec::len), Some(1));
    let mut ids: Vec<String> = listed
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect();
    let created: Vec<String> = listed
        .iter()
        .map(|t| t["created_at"].as_str().unwrap().to_string())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {created:?}"
    );
    ids.sort();
    let mut expected: Vec<String> = uploaded.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(ids, expected);

    for bad in [
        "page=0",
        "page=x",
        "page_size=0",
        "page_size=1000",
        "page=-1",
    ] {
        let (code, body) = server.get_json(&format!("/v1/tasks?{bad}")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    for id in uploaded {
        server.wait_finished(id).await;
    }
    server.stop().await;
}

/// A task nobody has picked up yet: cancel it, download is 409, events keep it CANCELLED,
/// cancelling twice is fine, cancelling a finished task is 409.
async fn cancel_queued_task(kind: DbKind) {
    let queue = format!("tm_test_{}", Uuid::new_v4().simple());
    let server = start_server_with(kind, |settings| {
        publish_on(settings, &queue);
    })
    .await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(server.status(id).await["status"], "RECEIVED");

    let (code, body) = json_of(server.download(id).await).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status"], "RECEIVED");
    assert!(
        body["error"].as_str().unwrap().contains("RECEIVED"),
        "{body}"
    );

    let cancel_url = server.url(&format!("/v1/tasks/{id}"));
    let (code, body) = json_of(server.client.delete(&cancel_url).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    let (code, body) = json_of(server.client.delete(&cancel_url).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::OK, "cancelling twice: {body}");
    assert_eq!(body["status"], "CANCELLED");

    for event in [
        serde_json::json!({"event": "started"}),
        serde_json::json!({"event": "done", "rows": 7, "groups": 4, "output_bytes": 10}),
    ] {
        let (code, ack) = server.post_event(id, &event).await;
        assert_eq!(code, StatusCode::OK, "{ack}");
        assert_eq!(ack["status"], "CANCELLED", "{event} moved a cancelled task");
    }
    assert_eq!(server.status(id).await["status"], "CANCELLED");
    let (code, body) = json_of(server.download(id).await).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status"], "CANCELLED");

    // A finished task cannot be cancelled.
    let done = server.upload("other.csv", SEED_INPUT).await;
    // A NUL in the message (PostgreSQL refuses it in text) must not make the event fail.
    let finish = serde_json::json!({"event": "failed", "error": "line 2, field \"Date\": \"\0\""});
    let (_, ack) = server.post_event(done, &finish).await;
    assert_eq!(ack["status"], "FAILED");
    let (code, body) = server.cancel(done).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status"], "FAILED");

    delete_queue(&queue).await;
    server.stop().await;
}

/// A DONE task whose result has gone from the storage behind the service's back (removed by
/// hand, a restored backup) is 410 Gone with a JSON message, not a 500 or an empty download.
/// The storage, not the database, decides: on SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_missing_from_the_storage_is_gone() {
    let server = start_server(DbKind::Sqlite).await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(server.wait_finished(id).await["status"], "DONE");
    let results = server.processed_data_files();
    assert_eq!(results.len(), 1, "{results:?}");
    std::fs::remove_file(
        server
            .storage_dir()
            .join("processed_data")
            .join(&results[0]),
    )
    .expect("remove the result");

    let (code, body) = json_of(server.download(id).await).await;
    assert_eq!(code, StatusCode::GONE, "{body}");
    assert_eq!(
        body["error"],
        format!("the result of task {id} is no longer available"),
        "{body}"
    );
    // The task itself is still DONE: only its file is gone.
    assert_eq!(server.status(id).await["status"], "DONE");
    server.stop().await;
}

macro_rules! on_database {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn seed_example_through_http() {
                seed_example($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn invalid_csv_ends_failed() {
                invalid_csv_fails($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unknown_and_malformed_ids() {
                super::unknown_and_malformed_ids($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_is_paginated() {
                list_pagination($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_and_conflicts() {
                cancel_queued_task($kind).await;
            }
        }
    };
}

on_database!(sqlite, DbKind::Sqlite);
on_database!(mariadb, DbKind::MariaDb);
on_database!(postgres, DbKind::Postgres);
