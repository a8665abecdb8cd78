//! Helpers for the tests that run the task manager and the worker against the real database,
//! RabbitMQ and file systems of this machine: a throw-away database, a server on port 0,
//! upload, poll, download; the broker's side of the queue; a worker and the upload client as
//! child processes; an
//! S3-compatible server behind a proxy that can cut it off.
//! A server that cannot be reached fails the test with a message saying how to start it.

pub mod broker;
pub mod cleanup;
pub mod fifo;
pub mod proxy;
pub mod s3;
pub mod upload_client;
pub mod worker_process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use sqlx::Connection;
use sqlx::migrate::MigrateDatabase;
use task_manager::{Server, Settings};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// The example of the task: unsorted input with several rows per (song, date).
pub const SEED_INPUT: &str = "Song,Date,Number of Plays\n\
Umbrella,2020-01-02,200\n\
Umbrella,2020-01-01,100\n\
In The End,2020-01-01,500\n\
Umbrella,2020-01-01,50\n\
In The End,2020-01-01,1000\n\
Umbrella,2020-01-02,50\n\
In The End,2020-01-02,500\n";

/// The aggregate of [`SEED_INPUT`].
pub const SEED_OUTPUT: &str = "Song,Date,Number of Plays\n\
In The End,2020-01-01,1500\n\
In The End,2020-01-02,500\n\
Umbrella,2020-01-01,150\n\
Umbrella,2020-01-02,250\n";

/// An input whose line 2 has an impossible date.
pub const INVALID_INPUT: &str = "Song,Date,Number of Plays\nA,2020-13-01,5\n";

/// Servers of this machine; each can be overridden by an environment variable.
pub const MARIADB_URL: (&str, &str) = ("TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test");
pub const POSTGRES_URL: (&str, &str) = (
    "TEST_POSTGRES_URL",
    "postgres://postgres@127.0.0.1:5432/test",
);
pub const AMQP_URL: (&str, &str) = ("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");

/// Longest wait for a task to finish before the test gives up (a guard against hangs).
const TASK_DEADLINE: Duration = Duration::from_secs(600);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The configured URL of a server (`(variable, default)`).
pub fn server_url((variable, default): (&str, &str)) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_string())
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    MariaDb,
    Postgres,
}

/// A database of its own for one test: a SQLite file in the storage directory, or a fresh
/// `tm_test_<uuid>` database on the MariaDB or PostgreSQL server, dropped by [`TestDb::drop`].
pub struct TestDb {
    pub kind: DbKind,
    pub url: String,
}

impl TestDb {
    /// Creates the database; panics with a clear message when its server is unreachable.
    pub async fn create(kind: DbKind, storage_dir: &Path) -> TestDb {
        sqlx::any::install_default_drivers();
        let (admin_url, how_to_start) = match kind {
            DbKind::Sqlite => {
                return TestDb {
                    kind,
                    url: task_manager::default_database_url(storage_dir),
                };
            }
            DbKind::MariaDb => (
                server_url(MARIADB_URL),
                "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
            ),
            DbKind::Postgres => (
                server_url(POSTGRES_URL),
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            ),
        };
        match sqlx::AnyConnection::connect(&admin_url).await {
            Ok(connection) => {
                let _ = connection.close().await;
            }
            Err(e) => panic!(
                "{kind:?} is unreachable at {admin_url}: {e}\n\
                 This test needs the real server; start it with: {how_to_start}"
            ),
        }
        let (server, _database) = admin_url
            .rsplit_once('/')
            .unwrap_or_else(|| panic!("no database name in {admin_url}"));
        let url = format!("{server}/tm_test_{}", Uuid::new_v4().simple());
        sqlx::Any::create_database(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {url}: {e}"));
        TestDb { kind, url }
    }

    /// Drops the database (SQLite files go with their temporary directory).
    pub async fn drop(self) {
        let dropped = match self.kind {
            DbKind::Sqlite => return,
            DbKind::MariaDb => sqlx::Any::drop_database(&self.url).await,
            // Also ends connections a failed test may have left open.
            DbKind::Postgres => sqlx::Any::force_drop_database(&self.url).await,
        };
        dropped.unwrap_or_else(|e| panic!("cannot drop the test database {}: {e}", self.url));
    }
}

/// A task manager on a random port with its own storage directory and database.
pub struct TestServer {
    pub server: Server,
    pub storage: tempfile::TempDir,
    pub db: TestDb,
    pub client: Client,
    pub base_url: String,
    /// The settings it was started with, its port included.
    pub settings: Settings,
}

/// A task manager stopped by [`TestServer::stop_keeping_data`]: its storage and database stay.
pub struct StoppedServer {
    storage: tempfile::TempDir,
    db: TestDb,
    client: Client,
    settings: Settings,
}

/// Longest wait for the port of a stopped task manager to be free again (a guard against hangs).
const REBIND_DEADLINE: Duration = Duration::from_secs(60);

/// Starts an embedded-mode task manager on `kind`.
pub async fn start_server(kind: DbKind) -> TestServer {
    start_server_with(kind, |_| {}).await
}

/// Distributed mode for `settings`: tasks are published on the test broker's `queue`.
pub fn publish_on(settings: &mut Settings, queue: &str) {
    settings.amqp_url = Some(server_url(AMQP_URL));
    settings.queue_name = queue.to_string();
}

/// Starts a task manager on `kind`, after `configure` adjusted its settings.
pub async fn start_server_with(kind: DbKind, configure: impl FnOnce(&mut Settings)) -> TestServer {
    let storage = tempfile::tempdir().expect("temporary directory");
    let db = TestDb::create(kind, storage.path()).await;
    let mut settings = Settings::new(storage.path());
    settings.bind = [127, 0, 0, 1].into();
    settings.port = 0;
    settings.database_url = db.url.clone();
    settings.engine_memory_limit = 64 << 20;
    configure(&mut settings);
    let server = task_manager::start(settings.clone())
        .await
        .unwrap_or_else(|e| panic!("the task manager did not start on {kind:?}: {e:#}"));
    let base_url = server.base_url();
    settings.port = server.addr().port();
    TestServer {
        server,
        storage,
        db,
        client: Client::new(),
        base_url,
        settings,
    }
}

impl StoppedServer {
    /// Starts the task manager again, on the same port, storage and database.
    pub async fn restart(self) -> TestServer {
        let started = std::time::Instant::now();
        let server = loop {
            match task_manager::start(self.settings.clone()).await {
                Ok(server) => break server,
                Err(e) if started.elapsed() < REBIND_DEADLINE => {
                    eprintln!("restarting the task manager: {e:#}; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("the task manager did not start again: {e:#}"),
            }
        };
        let base_url = server.base_url();
        TestServer {
            server,
            storage: self.storage,
            db: self.db,
            client: self.client,
            base_url,
            settings: self.settings,
        }
    }
}

impl TestServer {
    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage.path().to_path_buf()
    }

    /// The names of the files in `raw_data/` (the stored uploads), sorted.
    pub fn raw_data_files(&self) -> Vec<String> {
        self.files_in("raw_data")
    }

    /// The names of the files in `processed_data/` (results, partial or not), sorted.
    pub fn processed_data_files(&self) -> Vec<String> {
        self.files_in("processed_data")
    }

    fn files_in(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.storage_dir().join(dir))
            .expect(dir)
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Uploads `content` as multipart field `file`; asserts 202 and returns the task id.
    pub async fn upload(&self, filename: &str, content: &str) -> Uuid {
        upload(&self.client, &self.base_url, filename, content).await
    }

    /// Posts a worker's `event` about task `id` on the workers' callback: the code and JSON
    /// answer.
    pub async fn post_event(&self, id: Uuid, event: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(&task_protocol::events_path(id)))
            .json(event)
            .send()
            .await
            .expect("event request");
        json_of(response).await
    }

    /// The status JSON of a task (asserting 200).
    pub async fn status(&self, id: Uuid) -> Value {
        status(&self.client, &self.base_url, id).await
    }

    /// Polls until the task is DONE, FAILED or CANCELLED; returns its status JSON.
    pub async fn wait_finished(&self, id: Uuid) -> Value {
        wait_finished(&self.client, &self.base_url, id).await
    }

    /// `GET` the download endpoint.
    pub async fn download(&self, id: Uuid) -> Response {
        download(&self.client, &self.base_url, id).await
    }

    /// `GET path`: the code and JSON body of the answer.
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        json_of(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("GET request"),
        )
        .await
    }

    /// `DELETE /v1/tasks/{id}` (cancel a task): the code and JSON body of the answer.
    pub async fn cancel(&self, id: impl std::fmt::Display) -> (StatusCode, Value) {
        json_of(
            self.client
                .delete(self.url(&format!("/v1/tasks/{id}")))
                .send()
                .await
                .expect("DELETE request"),
        )
        .await
    }

    /// Posts `form` to the upload endpoint: the code and JSON body of the answer.
    pub async fn upload_form(&self, form: reqwest::multipart::Form) -> (StatusCode, Value) {
        json_of(
            self.client
                .post(self.url("/v1/data_processor/upload"))
                .multipart(form)
                .send()
                .await
                .expect("upload request"),
        )
        .await
    }

    /// Stops the server and drops its database.
    pub async fn stop(self) {
        self.server.shutdown().await;
        self.db.drop().await;
    }

    /// Stops the server, keeping its storage and database for [`StoppedServer::restart`].
    pub async fn stop_keeping_data(self) -> StoppedServer {
        self.server.shutdown().await;
        StoppedServer {
            storage: self.storage,
            db: self.db,
            client: self.client,
            settings: self.settings,
        }
    }
}

/// A client that sends `Authorization: Bearer <token>` with every request.
pub fn client_with_token(token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {token}")
        .parse()
        .expect("token header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}

/// Uploads `content` as multipart field `file` named `filename`; asserts 202 and returns
/// the task id.
pub async fn upload(client: &Client, base_url: &str, filename: &str, content: &str) -> Uuid {
    upload_bytes(client, base_url, filename, content.as_bytes()).await
}

/// Uploads `content` as multipart field `file` named `filename`, coming back after
/// `Retry-After` while the server answers 503 (busy), as a client should; asserts 202 and
/// returns the task id.
pub async fn upload_bytes(client: &Client, base_url: &str, filename: &str, content: &[u8]) -> Uuid {
    let started = std::time::Instant::now();
    loop {
        let part = reqwest::multipart::Part::bytes(content.to_vec())
            .file_name(filename.to_string())
            .mime_str("text/csv")
            .expect("mime type");
        let form = reqwest::multipart::Form::new().part("file", part);
        let response = client
            .post(format!("{base_url}/v1/data_processor/upload"))
            .multipart(form)
            .send()
            .await
            .expect("upload request");
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        let (code, body) = json_of(response).await;
        if let (StatusCode::SERVICE_UNAVAILABLE, Some(seconds)) = (code, retry_after) {
            assert!(
                started.elapsed() < TASK_DEADLINE,
                "{filename} still refused: {body}"
            );
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            continue;
        }
        assert_eq!(code, StatusCode::ACCEPTED, "upload answered {body}");
        assert_eq!(body["status"], "RECEIVED", "{body}");
        return task_id_of(&body);
    }
}

/// The status JSON of a task (asserting 200).
pub async fn status(client: &Client, base_url: &str, id: Uuid) -> Value {
    let response = client
        .get(format!("{base_url}/v1/tasks/status/{id}"))
        .send()
        .await
        .expect("status request");
    let code = response.status();
    let body: Value = response.json().await.expect("status answer is JSON");
    assert_eq!(code, StatusCode::OK, "status answered {body}");
    body
}

/// Polls the status until it is DONE, FAILED or CANCELLED, as the old Python client did.
pub async fn wait_finished(client: &Client, base_url: &str, id: Uuid) -> Value {
    let started = std::time::Instant::now();
    loop {
        let body = status(client, base_url, id).await;
        let state = body["status"].as_str().unwrap_or_default();
        assert!(
            ["RECEIVED", "PROCESSING", "DONE", "FAILED", "CANCELLED"].contains(&state),
            "unexpected status in {body}"
        );
        if ["DONE", "FAILED", "CANCELLED"].contains(&state) {
            return body;
        }
        assert!(
            started.elapsed() < TASK_DEADLINE,
            "task {id} still {state} after {TASK_DEADLINE:?}: {body}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `GET` the download endpoint of a task.
pub async fn download(client: &Client, base_url: &str, id: Uuid) -> Response {
    client
        .get(format!("{base_url}/v1/data_processor/download/{id}"))
        .send()
        .await
        .expect("download request")
}

/// The file name of a `Content-Disposition` header, read the way the old client read it
/// (split on `=`, quotes stripped), after checking the header's exact form.
pub fn attachment_filename(response: &Response) -> String {
    let header = response
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .expect("Content-Disposition header")
        .to_str()
        .expect("ASCII Content-Disposition");
    assert!(
        header.starts_with("attachment; filename=\"") && header.ends_with(".csv\""),
        "unexpected Content-Disposition {header:?}"
    );
    header
        .split('=')
        .nth(1)
        .expect("filename=")
        .trim_matches('"')
        .to_string()
}

/// The JSON body and code of a response.
pub async fn json_of(response: Response) -> (StatusCode, Value) {
    let code = response.status();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {code} is not JSON ({e}): {text:?}"));
    (code, body)
}

/// The id of the task in an upload answer.
pub fn task_id_of(body: &Value) -> Uuid {
    body["task_id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(|| panic!("no task_id in {body}"))
}

/// Longest wait for the answer to a hand-written request (a guard against hangs).
const RAW_ANSWER_DEADLINE: Duration = Duration::from_secs(120);

/// `host:port` of a `http://host:port` base URL.
pub fn host_of(base_url: &str) -> &str {
    base_url.trim_start_matches("http://")
}

/// Opens a connection and writes the head of a `POST` of the upload endpoint (with
/// `Connection: close`) and the first bytes of its body; the caller sends the rest, or not.
pub async fn raw_upload(
    base_url: &str,
    content_type: &str,
    content_length: usize,
    first_bytes: &[u8],
) -> TcpStream {
    let host = host_of(base_url);
    let mut stream = TcpStream::connect(host)
        .await
        .expect("connect to the server");
    let head = format!(
        "POST /v1/data_processor/upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    stream.write_all(first_bytes).await.expect("send the body");
    stream.flush().await.expect("flush");
    stream
}

/// The answer read from a hand-written request's connection until the server closes it: the
/// code, the headers (lower-case names) and the JSON body; `None` when the server closed the
/// connection without answering.
pub async fn raw_answer(
    mut connection: impl AsyncRead + Unpin,
) -> Option<(u16, Vec<(String, String)>, Value)> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(RAW_ANSWER_DEADLINE, connection.read_to_end(&mut bytes))
        .await
        .expect("the server neither answered nor closed the connection");
    if let Err(e) = read {
        // A reset after the answer: keep what arrived.
        assert!(
            bytes.is_empty() || bytes.windows(4).any(|w| w == b"\r\n\r\n"),
            "{e}"
        );
    }
    if bytes.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete answer {text:?}"));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|status| status.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("answer {code} is not JSON ({e}): {text:?}"));
    Some((code, headers, body))
}

/// The number of tasks recorded (`GET /v1/tasks`, asserting 200).
pub async fn task_count(client: &Client, base_url: &str) -> u64 {
    let response = client
        .get(format!("{base_url}/v1/tasks"))
        .send()
        .await
        .expect("list request");
    let (code, list) = json_of(response).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    list["count"].as_u64().expect("count")
}

/// A tmpfs of a few KiB mounted over a directory, unmounted when dropped.
pub struct TinyDisk {
    path: PathBuf,
}

impl TinyDisk {
    pub fn mount(path: &Path) -> TinyDisk {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test mounts a tiny tmpfs to fill a disk and needs root: mount failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        TinyDisk {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.path).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            eprintln!("cannot unmount {}", self.path.display());
        }
    }
}

/// The names in a directory (none when it cannot be read).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").file_name().to_string_lossy().into())
                .collect()
        })
        .unwrap_or_default()
}

/// Uploads `input`, expects the task FAILED with an error containing each of `expected`, and
/// no result: the download answers 409 with the same error.
pub async fn assert_task_fails(server: &TestServer, input: &str, expected: &[&str]) {
    let id = server.upload("plays.csv", input).await;
    let status = server.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    for part in expected {
        assert!(error.contains(part), "{part:?} not in {error:?}");
    }
    let (code, body) = json_of(server.download(id).await).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains(error),
        "{body}"
    );
}

/// A connection to the test's RabbitMQ; panics with how to start it when unreachable.
pub async fn amqp_connect() -> lapin::Connection {
    let url = server_url(AMQP_URL);
    lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is unreachable at {url}: {e}\nThis test needs the real server; \
                 start it with: rabbitmq-server -detached"
            )
        })
}

/// Deletes a RabbitMQ task queue made for a test, and its dead-letter queue.
pub async fn delete_queue(queue: &str) {
    let connection = amqp_connect().await;
    let channel = connection.create_channel().await.expect("AMQP channel");
    for name in [queue.to_string(), task_protocol::dead_letter_queue(queue)] {
        channel
            .queue_delete(
                name.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .expect("queue.delete");
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Runs `rabbitmqctl ARGS`; its output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl is needed to list or close connections: {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The broker's ids of the connections whose names mention `queue` (the task manager's and
/// the workers' connections name their queue).
pub fn connections_of(queue: &str) -> Vec<String> {
    rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"])
        .lines()
        .filter(|line| line.contains(queue))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Closes the connections `pids` (of one test's task manager and workers, see
/// [`connections_of`]), as a broker restart or a network cut would; the other tests'
/// connections stay open.
pub fn close_connections(pids: &[String]) {
    for pid in pids {
        rabbitmqctl(&["close_connection", pid, "closed by a fault test"]);
    }
}

/// The metric names the Grafana dashboard (`docker/grafana-dashboard.json`) queries, histograms
/// by their own name: the metrics tests check that each exists.
pub fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docker/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("docker/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut names: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("aggregator_"))
                .map(|word| {
                    let name = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .unwrap_or(word);
                    name.to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 20, "{names:?}");
    names
}

/// A generated play-count CSV of about `bytes` bytes (20,000 songs over a year, different for
/// each `seed`) and its aggregate by the reference implementation.
pub fn generated_with_reference(bytes: u64, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let data = fixtures::generate(fixtures::Spec {
        length: fixtures::Length::Bytes(bytes),
        songs: 20_000,
        days: 365,
        seed,
        ..fixtures::Spec::default()
    })
    .expect("generate the input");
    let expected = fixtures::reference::aggregate(&data);
    (data, expected)
}
