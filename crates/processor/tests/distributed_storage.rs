//! Storage failures on the distributed path: `processor worker` (a child process) fails the
//! task with a message naming the path and the cause when the result directory is unusable (a
//! regular file in its place) or the disk is full (a tiny tmpfs), and leaves no partial result.

use test_support as common;
use test_support::cleanup;
use test_support::worker_process;

use cleanup::CleanupOnPanic;
use common::{DbKind, TinyDisk, assert_task_fails, dir_entries};
use fixtures::{Length, Spec};
use uuid::Uuid;
use worker_process::WorkerProcess;

#[tokio::test(flavor = "multi_thread")]
async fn worker_fails_the_task_when_the_result_cannot_be_written() {
    let amqp_url = common::server_url(common::AMQP_URL);
    let queue = format!("processor_test_{}", Uuid::new_v4().simple());
    let _cleanup = CleanupOnPanic {
        queue: queue.clone(),
        database: None,
    };
    let tm = common::start_server_with(DbKind::Sqlite, |settings| {
        common::publish_on(settings, &queue);
    })
    .await;
    let worker = WorkerProcess::start(&amqp_url, &queue, &tm.base_url, None, &tm.storage_dir());
    let input = fixtures::generate(Spec {
        length: Length::Rows(100_000),
        songs: 50_000,
        ..Spec::default()
    })
    .expect("a valid spec");
    let input = String::from_utf8(input).expect("UTF-8 input");

    let processed = tm.storage_dir().join("processed_data");
    std::fs::remove_dir(&processed).expect("remove processed_data");
    std::fs::write(&processed, "a file where a directory should be").expect("write");
    // The message names the path and says why ("Not a directory"), as in embedded mode.
    assert_task_fails(&tm, &input, &[&processed.display().to_string()]).await;
    std::fs::remove_file(&processed).expect("remove the file");
    std::fs::create_dir(&processed).expect("create processed_data");
    {
        let _disk = TinyDisk::mount(&processed);
        assert_task_fails(&tm, &input, &["No space left on device"]).await;
        assert_eq!(
            dir_entries(&processed),
            Vec::<String>::new(),
            "{}",
            worker.log()
        );
    }

    worker.stop_gracefully();
    tm.stop().await;
    common::delete_queue(&queue).await;
}
