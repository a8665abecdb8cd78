//! The distributed mode end to end, on the real RabbitMQ and each database server: the task
//! manager in-process, `processor worker` as a child process, both on one storage directory.
//! Through the HTTP API and through the `processor upload` client: the seed example ends DONE
//! with the expected download, invalid CSV ends FAILED with the engine's message, and the
//! worker goes on after a bad task and after a message that is not a task (dead-lettered).
//! On MariaDB with authentication: the worker reports with WORKER_TOKEN, the clients send an
//! API_TOKEN. The faults (killed workers, lost connections...) are in `faults.rs`.
#![cfg(feature = "service")]

use test_support as common;

use test_support::broker;
use test_support::cleanup;
use test_support::fifo;
use test_support::upload_client;
use test_support::worker_process;

use std::time::{Duration, Instant};

use broker::{consumers, message_count, publish_raw};
use cleanup::CleanupOnPanic;
use common::{DbKind, INVALID_INPUT, SEED_INPUT, SEED_OUTPUT, TestServer};
use engine::{Config, Control, Input};
use lapin::Connection;
use lapin::options::QueueDeleteOptions;
use reqwest::StatusCode;
use task_manager::Tokens;
use uuid::Uuid;
use worker_process::WorkerProcess;

/// Longest wait for the worker to consume again after losing its queue (a guard against hangs;
/// its reconnection backoff starts at 1 s).
const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);

/// A message on the task queue that is not a task.
const NOT_A_TASK: &[u8] = b"this is not a task";

/// The tokens of a task manager with authentication on.
struct Credentials {
    /// One of its API_TOKEN list, for the clients.
    api: &'static str,
    /// Its WORKER_TOKEN, for the worker.
    worker: &'static str,
}

const CREDENTIALS: Credentials = Credentials {
    api: "client-token",
    worker: "worker-token",
};

#[tokio::test(flavor = "multi_thread")]
async fn distributed_on_sqlite() {
    round_trip(DbKind::Sqlite, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_on_mariadb_with_tokens() {
    round_trip(DbKind::MariaDb, Some(&CREDENTIALS)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_on_postgres() {
    round_trip(DbKind::Postgres, None).await;
}

async fn round_trip(kind: DbKind, credentials: Option<&Credentials>) {
    let amqp_url = common::server_url(common::AMQP_URL);
    let queue = format!("processor_test_{}", Uuid::new_v4().simple());
    let broker = common::amqp_connect().await;
    let mut cleanup = CleanupOnPanic {
        queue: queue.clone(),
        database: None,
    };
    let mut tm = common::start_server_with(kind, |settings| {
        common::publish_on(settings, &queue);
        if let Some(credentials) = credentials {
            settings.api_tokens = Tokens::parse(&format!("another-token,{}", credentials.api));
            settings.worker_tokens = Tokens::parse(credentials.worker);
        }
    })
    .await;
    let api_token = credentials.map(|c| c.api);
    if let Some(token) = api_token {
        tm.client = common::client_with_token(token);
    }
    if kind != DbKind::Sqlite {
        cleanup.database = Some(tm.db.url.clone());
    }
    // Cancelled while no worker runs: the worker must skip it.
    let cancelled = tm.upload("cancelled.csv", SEED_INPUT).await;
    cancel(&tm, cancelled).await;
    let worker = WorkerProcess::start(
        &amqp_url,
        &queue,
        &tm.base_url,
        credentials.map(|c| c.worker),
        &tm.storage_dir(),
    );

    seed_is_aggregated(&tm, &worker).await;
    worker_comes_back_after_losing_its_queue(&broker, &queue, &worker).await;
    seed_is_aggregated(&tm, &worker).await;
    // A message that is not a task is rejected; the next task is processed.
    publish_raw(&broker, &queue, NOT_A_TASK).await;
    invalid_csv_fails_with_the_engine_message(&tm, &worker).await;
    // The worker goes on after the failed task.
    upload_client_downloads_the_result(&tm, api_token, &worker).await;
    upload_client_reports_failure(&tm, api_token).await;
    if credentials.is_some() {
        upload_client_without_the_token_is_refused(&tm).await;
    }

    worker.stop_gracefully();
    every_message_was_settled(&broker, &queue).await;
    cancelled_task_was_skipped(&tm, cancelled).await;
    let _ = broker.close(200, "test done".into()).await;
    tm.stop().await;
    common::delete_queue(&queue).await;
}

async fn seed_is_aggregated(tm: &TestServer, worker: &WorkerProcess) {
    let id = tm.upload("seed.csv", SEED_INPUT).await;
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "DONE", "{status}\n{}", worker.log());
    assert_eq!(status["rows"], 7, "{status}");
    assert_eq!(status["groups"], 4, "{status}");
    assert_eq!(status["progress"], 1.0, "{status}");

    let response = tm.download(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("download body"), SEED_OUTPUT);
}

/// Deletes the queue under the consuming worker: RabbitMQ cancels its consumer, and the worker
/// reconnects, declares the queue again and resumes consuming.
async fn worker_comes_back_after_losing_its_queue(
    broker: &Connection,
    queue: &str,
    worker: &WorkerProcess,
) {
    let channel = broker.create_channel().await.expect("AMQP channel");
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let _ = channel.close(200, "deleted".into()).await;
    let started = Instant::now();
    while consumers(broker, queue).await != Some(1) {
        assert!(
            started.elapsed() < RECONNECT_DEADLINE,
            "the worker did not consume {queue} again within {RECONNECT_DEADLINE:?}\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn invalid_csv_fails_with_the_engine_message(tm: &TestServer, worker: &WorkerProcess) {
    let id = tm.upload("invalid.csv", INVALID_INPUT).await;
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}\n{}", worker.log());
    let error = status["error"].as_str().unwrap_or_default();
    assert_eq!(error, engine_error(INVALID_INPUT), "{status}");
    assert!(error.contains("line 2"), "{error}");

    let response = tm.download(id).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(
        !tm.storage_dir()
            .join(task_protocol::processed_data_path(id))
            .exists(),
        "a failed task must leave no result file"
    );
}

async fn cancel(tm: &TestServer, id: Uuid) {
    let (code, body) = tm.cancel(id).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED", "{body}");
}

async fn cancelled_task_was_skipped(tm: &TestServer, id: Uuid) {
    let status = tm.status(id).await;
    assert_eq!(status["status"], "CANCELLED", "{status}");
    let result = tm
        .storage_dir()
        .join(task_protocol::processed_data_path(id));
    assert!(!result.exists(), "a cancelled task was processed");
}

/// After the worker stopped, the queue is empty: every message was acknowledged or rejected.
/// The message that was not a task is on the dead-letter queue.
async fn every_message_was_settled(broker: &Connection, queue: &str) {
    assert_eq!(
        message_count(broker, queue).await,
        0,
        "messages left on {queue}"
    );
    let dead = broker::drain(broker, &task_protocol::dead_letter_queue(queue)).await;
    assert_eq!(dead, [NOT_A_TASK.to_vec()], "dead-lettered messages");
}

async fn upload_client_downloads_the_result(
    tm: &TestServer,
    api_token: Option<&str>,
    worker: &WorkerProcess,
) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let input = dir.path().join("plays.csv");
    std::fs::write(&input, SEED_INPUT).expect("write the input");

    let output = upload_client::run(&tm.base_url, api_token, &input, None).await;
    assert!(
        output.status.success(),
        "processor upload failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        worker.log()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("task "))
        .and_then(|id| uuid::Uuid::parse_str(id.trim()).ok())
        .unwrap_or_else(|| panic!("no task id in {stdout:?}"));
    // Sent as a raw body named by the query: the task keeps the file's name.
    let status = tm.wait_finished(id).await;
    assert_eq!(status["filename"], "plays.csv", "{status}");
    let result = dir.path().join("plays_aggregated.csv");
    let written = std::fs::read_to_string(&result).expect("the client wrote its result");
    assert_eq!(written, SEED_OUTPUT);

    // Into a FIFO (as into /dev/null): written in place, with no sync that a pipe refuses.
    use std::os::unix::fs::FileTypeExt;
    let fifo = dir.path().join("pipe");
    fifo::make_fifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).expect("read the FIFO"))
    };
    let output = upload_client::run(&tm.base_url, api_token, &input, Some(&fifo)).await;
    assert!(
        output.status.success(),
        "processor upload -o FIFO failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let kind = fifo.symlink_metadata().expect("stat").file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced: {kind:?}");
    assert_eq!(reader.join().expect("reader"), SEED_OUTPUT);
}

async fn upload_client_reports_failure(tm: &TestServer, api_token: Option<&str>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let input = dir.path().join("bad.csv");
    std::fs::write(&input, INVALID_INPUT).expect("write the input");

    let output = upload_client::run(&tm.base_url, api_token, &input, None).await;
    assert!(!output.status.success(), "the client must fail on FAILED");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FAILED"), "{stderr}");
    assert!(stderr.contains(&engine_error(INVALID_INPUT)), "{stderr}");
    assert!(
        !dir.path().join("bad_aggregated.csv").exists(),
        "no result file for a failed task"
    );
}

async fn upload_client_without_the_token_is_refused(tm: &TestServer) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let input = dir.path().join("plays.csv");
    std::fs::write(&input, SEED_INPUT).expect("write the input");

    let output = upload_client::run(&tm.base_url, None, &input, None).await;
    assert!(!output.status.success(), "uploaded without a token");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!dir.path().join("plays_aggregated.csv").exists());
}

/// The engine's own message for `input`.
fn engine_error(input: &str) -> String {
    let input = Input::Reader {
        reader: Box::new(input.as_bytes()),
        len: None,
    };
    let err = engine::aggregate_to_writer(
        input,
        &mut std::io::sink(),
        &Config::default(),
        &Control::new(),
    )
    .expect_err("the input is invalid");
    err.to_string()
}
