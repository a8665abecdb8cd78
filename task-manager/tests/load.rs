//! Load on the default configuration (embedded mode, SQLite, one runner, at most
//! `MAX_CONCURRENT_UPLOADS` uploads received at once): 100 small and 4 large uploads at the
//! same time. Clients answered 503 come back after `Retry-After`, as a client should. Every
//! task ends DONE with the reference aggregate of its input.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fixtures::{Length, Spec};
use futures_util::future::join_all;
use reqwest::header::RETRY_AFTER;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};
use uuid::Uuid;

const SMALL_UPLOADS: u64 = 100;
const LARGE_UPLOADS: u64 = 4;
const LARGE_BYTES: u64 = 8 << 20;
/// Longest a client keeps coming back after 503s (a guard against hangs).
const RETRY_DEADLINE: Duration = Duration::from_secs(300);

/// Uploads `content`, coming back after `Retry-After` while the server is busy; the task id.
async fn upload_until_accepted(
    client: &Client,
    base_url: &str,
    name: String,
    content: &[u8],
) -> Uuid {
    let started = Instant::now();
    loop {
        let part = Part::bytes(content.to_vec())
            .file_name(name.clone())
            .mime_str("text/csv")
            .expect("mime type");
        let response = client
            .post(format!("{base_url}/v1/data_processor/upload"))
            .multipart(Form::new().part("file", part))
            .send()
            .await
            .expect("upload request");
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        let (code, body) = json_of(response).await;
        if code == StatusCode::SERVICE_UNAVAILABLE {
            let seconds = retry_after.unwrap_or_else(|| panic!("503 without Retry-After: {body}"));
            assert!(
                started.elapsed() < RETRY_DEADLINE,
                "{name} still refused: {body}"
            );
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            continue;
        }
        assert_eq!(code, StatusCode::ACCEPTED, "{name}: {body}");
        return task_id_of(&body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_and_a_few_large_uploads_at_once() {
    let server = start_server(DbKind::Sqlite).await;
    let small = (0..SMALL_UPLOADS).map(|seed| Spec {
        length: Length::Rows(200),
        songs: 50,
        days: 5,
        seed,
        ..Spec::default()
    });
    let large = (0..LARGE_UPLOADS).map(|seed| Spec {
        length: Length::Bytes(LARGE_BYTES),
        songs: 100_000,
        days: 60,
        seed: 1000 + seed,
        ..Spec::default()
    });
    let inputs: Vec<Vec<u8>> = large
        .chain(small)
        .map(|spec| fixtures::generate(spec).expect("a valid spec"))
        .collect();
    let ids = join_all(inputs.iter().enumerate().map(|(i, input)| {
        let server = &server;
        async move {
            upload_until_accepted(
                &server.client,
                &server.base_url,
                format!("plays{i}.csv"),
                input,
            )
            .await
        }
    }))
    .await;
    for (id, input) in ids.iter().zip(&inputs) {
        let status = server.wait_finished(*id).await;
        assert_eq!(status["status"], "DONE", "{status}");
        let response = server.download(*id).await;
        assert_eq!(response.status(), StatusCode::OK);
        let result = response.bytes().await.unwrap();
        assert!(
            result[..] == fixtures::reference::aggregate(input)[..],
            "task {id}: wrong result"
        );
    }
    assert_eq!(
        task_count(&server.client, &server.base_url).await,
        SMALL_UPLOADS + LARGE_UPLOADS
    );
    server.stop().await;
}
