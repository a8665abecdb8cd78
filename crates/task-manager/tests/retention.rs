//! RETENTION: a finished task's upload and result are deleted once they are older than it,
//! the task shows when, and its download answers 410 with a JSON error; a task still running
//! is not touched.

use std::time::{Duration, Instant};

use test_support as common;

use common::*;
use reqwest::StatusCode;

/// Longest wait for the sweep (a second apart with a short retention).
const EXPIRY_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_expire_and_answer_410() {
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.retention = Some(Duration::from_secs(2));
    })
    .await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    let done = server.wait_finished(id).await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert!(done.get("expired_at").is_none(), "{done}");
    let response = server.download(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), SEED_OUTPUT);
    assert_eq!(server.raw_data_files().len(), 1);
    assert_eq!(server.processed_data_files().len(), 1);

    let started = Instant::now();
    let expired = loop {
        let status = server.status(id).await;
        if status.get("expired_at").is_some() {
            break status;
        }
        assert!(
            started.elapsed() < EXPIRY_DEADLINE,
            "not expired after {EXPIRY_DEADLINE:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(expired["status"], "DONE", "the status stays: {expired}");
    assert!(expired.get("download_link").is_none(), "{expired}");
    assert!(
        server.raw_data_files().is_empty(),
        "{:?}",
        server.raw_data_files()
    );
    assert!(server.processed_data_files().is_empty());

    let (code, body) = json_of(server.download(id).await).await;
    assert_eq!(code, StatusCode::GONE, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("expired") && error.contains("RETENTION"),
        "{body}"
    );
    server.stop().await;
}
