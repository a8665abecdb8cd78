//! The `task-manager` binary as a child process: SIGTERM lets the upload in progress finish
//! (202) before it exits, and tasks left RECEIVED and PROCESSING by a killed server are
//! processed after a restart; its JSON logs name the request and the task on each line about
//! them. Embedded mode on SQLite.

use test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fixtures::{Length, Spec};
use reqwest::Client;
use task_manager::Settings;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Longest wait for a condition the test waits for (a guard against hangs).
const WAIT_DEADLINE: Duration = Duration::from_secs(300);

/// A `task-manager` process, killed when dropped.
struct ChildServer {
    process: Child,
    base_url: String,
    log: PathBuf,
}

impl ChildServer {
    /// Starts the binary on a free port with `storage` as its storage root, waits until it
    /// answers `/health`.
    async fn start(storage: &Path, env: &[(&str, &str)]) -> ChildServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = storage.join("task-manager.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let process = Command::new(env!("CARGO_BIN_EXE_task-manager"))
            .current_dir(storage)
            .env_clear()
            // Kept: where a coverage run (scripts/coverage) has the binary write its profile.
            .envs(std::env::vars_os().filter(|(name, _)| name == "LLVM_PROFILE_FILE"))
            .env("PORT", port.to_string())
            .env("BIND", "127.0.0.1")
            .env("STORAGE_DIR", storage)
            .env("ENGINE_MEMORY_LIMIT", "64M")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start task-manager");
        let mut server = ChildServer {
            process,
            base_url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client
                .get(format!("{}/health", server.base_url))
                .send()
                .await
                && response.status().is_success()
            {
                return server;
            }
            if let Ok(Some(status)) = server.process.try_wait() {
                panic!("task-manager exited with {status}: {}", server.log_text());
            }
            assert!(
                started.elapsed() < WAIT_DEADLINE,
                "task-manager not ready: {}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.process.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits for the process to exit; its exit status.
    async fn wait(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < WAIT_DEADLINE,
                "task-manager did not exit: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// An in-process task manager on `storage` (the same SQLite database).
async fn restart_in_process(storage: &Path) -> task_manager::Server {
    let mut settings = Settings::new(storage);
    settings.bind = [127, 0, 0, 1].into();
    settings.port = 0;
    settings.engine_memory_limit = 64 << 20;
    task_manager::start(settings)
        .await
        .expect("the task manager restarts")
}

/// The status of a task as stored in the SQLite database of `storage`.
async fn stored_status(storage: &Path, id: Uuid) -> String {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let url = task_manager::default_database_url(storage);
    let mut connection = sqlx::AnyConnection::connect(&url)
        .await
        .expect("the database");
    let row = sqlx::query("SELECT status FROM tasks WHERE id = ?")
        .bind(id.to_string())
        .fetch_one(&mut connection)
        .await
        .expect("the task's row");
    let status = row.try_get(0).expect("status");
    let _ = connection.close().await;
    status
}

fn generated(rows: u64, seed: u64) -> Vec<u8> {
    fixtures::generate(Spec {
        length: Length::Rows(rows),
        songs: 50_000,
        seed,
        ..Spec::default()
    })
    .expect("a valid spec")
}

/// Asserts that task `id` ends DONE with the reference aggregate of `input`.
async fn assert_done_with(client: &Client, base_url: &str, id: Uuid, input: &[u8]) {
    let status = wait_finished(client, base_url, id).await;
    assert_eq!(status["status"], "DONE", "{status}");
    let result = download(client, base_url, id).await.bytes().await.unwrap();
    assert!(
        result[..] == fixtures::reference::aggregate(input)[..],
        "task {id}: wrong result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_upload_in_progress_then_exits() {
    let storage = tempfile::tempdir().unwrap();
    let mut child = ChildServer::start(storage.path(), &[]).await;
    let input = generated(50_000, 1);
    let half = input.len() / 2;
    let mut upload = raw_upload(&child.base_url, "text/csv", input.len(), &input[..half]).await;
    // The upload is being received once its partial file exists.
    let raw_data = storage.path().join("raw_data");
    let started = Instant::now();
    while std::fs::read_dir(&raw_data).unwrap().next().is_none() {
        assert!(
            started.elapsed() < WAIT_DEADLINE,
            "the upload did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    child.signal("-TERM");
    // Stopping: new connections are refused...
    let started = Instant::now();
    while tokio::net::TcpStream::connect(host_of(&child.base_url))
        .await
        .is_ok()
    {
        assert!(started.elapsed() < WAIT_DEADLINE, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...but the upload in progress completes.
    upload.write_all(&input[half..]).await.unwrap();
    let (code, _, body) = raw_answer(upload).await.expect("an answer");
    assert_eq!(code, 202, "{body}");
    let id = task_id_of(&body);
    let status = child.wait().await;
    assert!(status.success(), "exit {status}: {}", child.log_text());

    // Nothing was lost: the next start processes the task.
    let server = restart_in_process(storage.path()).await;
    assert_done_with(&Client::new(), &server.base_url(), id, &input).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_left_by_a_killed_server_are_processed_after_a_restart() {
    let storage = tempfile::tempdir().unwrap();
    let child = ChildServer::start(
        storage.path(),
        &[("EMBEDDED_WORKERS", "1"), ("ENGINE_THREADS", "1")],
    )
    .await;
    let client = Client::new();
    let (big, small) = (generated(1_500_000, 2), generated(1000, 3));
    let upload_bytes = |input: &[u8]| String::from_utf8(input.to_vec()).expect("UTF-8 input");
    let running = upload(&client, &child.base_url, "big.csv", &upload_bytes(&big)).await;
    let waiting = upload(&client, &child.base_url, "small.csv", &upload_bytes(&small)).await;
    let started = Instant::now();
    while status(&client, &child.base_url, running).await["status"] == "RECEIVED" {
        assert!(
            started.elapsed() < WAIT_DEADLINE,
            "the big task did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(child); // SIGKILL
    // What the killed server left: one task PROCESSING, one RECEIVED (one runner).
    assert_eq!(stored_status(storage.path(), running).await, "PROCESSING");
    assert_eq!(stored_status(storage.path(), waiting).await, "RECEIVED");

    let server = restart_in_process(storage.path()).await;
    let base = server.base_url();
    assert_done_with(&client, &base, running, &big).await;
    assert_done_with(&client, &base, waiting, &small).await;
    server.shutdown().await;
}

/// The JSON lines of a log that carry `field` with `value`, in their own fields or a span's.
fn lines_with<'a>(log: &'a str, field: &str, value: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|line| {
            let Ok(object) = serde_json::from_str::<serde_json::Value>(line) else {
                return false;
            };
            let spans = object["spans"].as_array().into_iter().flatten();
            std::iter::once(&object["fields"])
                .chain(std::iter::once(&object["span"]))
                .chain(spans)
                .any(|fields| fields[field] == value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_have_ids_and_task_lines_name_their_task() {
    let storage = tempfile::tempdir().unwrap();
    let child = ChildServer::start(
        storage.path(),
        &[("LOG_FORMAT", "json"), ("RUST_LOG", "info")],
    )
    .await;
    let client = Client::new();

    // A client's request id is echoed and names the request's lines.
    let response = client
        .post(format!("{}/v1/data_processor/upload", child.base_url))
        .header("x-request-id", "client-chosen-42")
        .header("content-type", "text/csv")
        .body(SEED_INPUT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-42");
    let (code, body) = json_of(response).await;
    assert_eq!(code, 202, "{body}");
    let id = task_id_of(&body);
    assert_done_with(&client, &child.base_url, id, SEED_INPUT.as_bytes()).await;

    // Without one, the server makes one up: a UUID, different for each request.
    let ids: Vec<String> = futures_util::future::join_all((0..2).map(|_| async {
        let response = client
            .get(format!("{}/health", child.base_url))
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        id.to_string()
    }))
    .await;
    assert!(Uuid::parse_str(&ids[0]).is_ok(), "{ids:?}");
    assert_ne!(ids[0], ids[1]);

    let log = child.log_text();
    let accepted = lines_with(&log, "request_id", "client-chosen-42");
    assert!(
        accepted.iter().any(|line| line.contains("upload accepted")),
        "no \"upload accepted\" line with the request id in {log}"
    );
    let task = id.to_string();
    let about_task = lines_with(&log, "task_id", &task);
    for message in ["upload accepted", "processing", "finished"] {
        assert!(
            about_task.iter().any(|line| line.contains(message)),
            "no {message:?} line with task_id {task} in {log}"
        );
    }
}
