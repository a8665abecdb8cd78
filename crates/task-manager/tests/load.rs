//! Load on the default configuration (embedded mode, SQLite, one runner, at most
//! `MAX_CONCURRENT_UPLOADS` uploads received at once): 100 small and 4 large uploads at the
//! same time. Clients answered 503 come back after `Retry-After` (see [`upload_bytes`]). Every
//! task ends DONE with the reference aggregate of its input.

use test_support as common;

use common::*;
use fixtures::{Length, Spec};
use futures_util::future::join_all;
use reqwest::StatusCode;

const SMALL_UPLOADS: u64 = 100;
const LARGE_UPLOADS: u64 = 4;
const LARGE_BYTES: u64 = 8 << 20;
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
            upload_bytes(
                &server.client,
                &server.base_url,
                &format!("plays{i}.csv"),
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
