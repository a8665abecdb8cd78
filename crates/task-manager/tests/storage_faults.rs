//! Storage failures in embedded mode: the result or spill directory unusable (a regular file
//! in its place: root ignores permissions), and full disks (a tiny tmpfs mounted over the
//! directory, unmounted at the end). The task ends FAILED with a message naming the path and
//! the cause, no partial result is ever served, and a full disk during an upload is a 507.

use test_support as common;

use common::*;
use fixtures::{Length, Spec};
use reqwest::StatusCode;

/// An input whose result is far larger than 64 KiB.
fn many_groups() -> String {
    let input = fixtures::generate(Spec {
        length: Length::Rows(100_000),
        songs: 50_000,
        ..Spec::default()
    })
    .expect("a valid spec");
    String::from_utf8(input).expect("UTF-8 input")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_result_or_spill_directory_fails_the_task() {
    let server = start_server_with(DbKind::Sqlite, |settings| {
        // Small enough to spill sorted runs to the temp dir.
        settings.engine_memory_limit = 256 << 10;
        settings.engine_threads = 1;
    })
    .await;
    let input = many_groups();
    for dir in ["tmp", "processed_data"] {
        let path = server.storage_dir().join(dir);
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "a file where a directory should be").unwrap();
        assert_task_fails(&server, &input, &[&path.display().to_string(), "directory"]).await;
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
    }
    assert_eq!(
        dir_entries(&server.storage_dir().join("processed_data")),
        Vec::<String>::new()
    );
    // Usable again: the same input succeeds.
    let id = server.upload("plays.csv", &input).await;
    assert_eq!(server.wait_finished(id).await["status"], "DONE");
    let result = server.download(id).await.bytes().await.unwrap();
    assert!(result[..] == fixtures::reference::aggregate(input.as_bytes())[..]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_task_or_refuses_the_upload() {
    let server = start_server(DbKind::Sqlite).await;
    let input = many_groups();
    let processed = server.storage_dir().join("processed_data");
    {
        let _disk = TinyDisk::mount(&processed);
        assert_task_fails(&server, &input, &["No space left on device"]).await;
        assert_eq!(
            dir_entries(&processed),
            Vec::<String>::new(),
            "a partial result was left"
        );
    }

    // An upload larger than the free space: 507, nothing stored.
    let raw_data = server.storage_dir().join("raw_data");
    {
        let _disk = TinyDisk::mount(&raw_data);
        let (code, body) = json_of(
            server
                .client
                .post(server.url("/v1/data_processor/upload"))
                .header(reqwest::header::CONTENT_TYPE, "text/csv")
                .body(input.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::INSUFFICIENT_STORAGE, "{body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains("full"),
            "{body}"
        );
        assert_eq!(
            dir_entries(&raw_data),
            Vec::<String>::new(),
            "a partial upload was left"
        );
    }
    assert_eq!(task_count(&server.client, &server.base_url).await, 1);
    server.stop().await;
}
