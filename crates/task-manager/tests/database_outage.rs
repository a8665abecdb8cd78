//! The database briefly unreachable: a TCP proxy between the task manager and the real
//! MariaDB or PostgreSQL server is cut (every connection dropped, new ones refused) and
//! restored. Meanwhile the API answers 503 JSON quickly, `/health` says 503; afterwards
//! everything works again by itself and the task accepted before is finished, not lost.

use test_support as common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fixtures::{Length, Spec};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Longest wait for a condition the test waits for (a guard against hangs).
const WAIT_DEADLINE: Duration = Duration::from_secs(300);

/// A TCP proxy to `upstream` that can be cut and restored.
struct Proxy {
    addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accepting: AbortHandle,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let accepting = {
            let (open, connections) = (open.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        // Refused: closed at once.
                        continue;
                    }
                    let upstream = upstream.clone();
                    let relay = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections
                        .lock()
                        .expect("proxy lock")
                        .push(relay.abort_handle());
                }
            })
            .abort_handle()
        };
        Proxy {
            addr,
            open,
            connections,
            accepting,
        }
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for relay in self.connections.lock().expect("proxy lock").drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// `host:port` of a database URL (`scheme://user@host:port/db`).
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Asserts a 503 JSON answer with an error and a `Retry-After`.
async fn assert_unavailable(what: &str, request: reqwest::RequestBuilder) {
    let response = request.send().await.expect("request");
    let retry_after = response.headers().contains_key(RETRY_AFTER);
    let (code, body) = json_of(response).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(retry_after, "{what}: no Retry-After");
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT_DEADLINE, "still not {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outage_is_survived(kind: DbKind) {
    let admin_url = server_url(match kind {
        DbKind::MariaDb => MARIADB_URL,
        _ => POSTGRES_URL,
    });
    let upstream = host_port(&admin_url).to_string();
    let proxy = Proxy::start(upstream.clone()).await;
    let proxied = proxy.addr.to_string();
    let server = start_server_with(kind, |settings| {
        settings.database_url = settings.database_url.replacen(&upstream, &proxied, 1);
        settings.database_timeout = Duration::from_secs(1);
    })
    .await;

    // A task accepted before the outage and started: the runner records its progress and
    // outcome once the database is back (the engine may finish during the outage, or not
    // even start when the outage cuts the recording of its start).
    let input = fixtures::generate(Spec {
        length: Length::Rows(200_000),
        songs: 20_000,
        ..Spec::default()
    })
    .expect("a valid spec");
    let input = String::from_utf8(input).expect("UTF-8 input");
    let id = server.upload("before.csv", &input).await;
    wait_until("PROCESSING", || async {
        server.status(id).await["status"] != "RECEIVED"
    })
    .await;

    proxy.cut();
    let upload_url = server.url("/v1/data_processor/upload");
    let client = &server.client;
    assert_unavailable(
        "status",
        client.get(server.url(&format!("/v1/tasks/status/{id}"))),
    )
    .await;
    assert_unavailable("list", client.get(server.url("/v1/tasks"))).await;
    assert_unavailable(
        "download",
        client.get(server.url(&format!("/v1/data_processor/download/{id}"))),
    )
    .await;
    assert_unavailable(
        "upload",
        client
            .post(&upload_url)
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .body(SEED_INPUT),
    )
    .await;
    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_ne!(health["database"], "ok", "{health}");
    assert_eq!(health["queue"], "ok", "{health}");
    // The refused upload left no file.
    assert_eq!(
        server
            .raw_data_files()
            .iter()
            .filter(|name| !name.starts_with(&id.to_string()))
            .count(),
        0,
        "{:?}",
        server.raw_data_files()
    );
    proxy.restore();
    wait_until("healthy again", || async {
        server.get_json("/health").await.0 == StatusCode::OK
    })
    .await;
    let status = server.wait_finished(id).await;
    assert_eq!(status["status"], "DONE", "{status}");
    let result = server.download(id).await.bytes().await.unwrap();
    assert!(
        result[..] == fixtures::reference::aggregate(input.as_bytes())[..],
        "wrong result after the outage"
    );
    let after = server.upload("after.csv", SEED_INPUT).await;
    assert_eq!(server.wait_finished(after).await["status"], "DONE");
    assert_eq!(
        server.download(after).await.text().await.unwrap(),
        SEED_OUTPUT
    );
    assert_eq!(task_count(&server.client, &server.base_url).await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_outage_answers_503_and_recovers() {
    outage_is_survived(DbKind::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_503_and_recovers() {
    outage_is_survived(DbKind::Postgres).await;
}
