//! The worker's metrics endpoint (`--metrics-addr`) on the real RabbitMQ, with the task
//! manager in-process on SQLite and `processor worker` as a child process: before any task,
//! every metric is listed with its HELP and TYPE lines; a task whose lease another worker
//! holds counts as elsewhere, a task DONE and an invalid CSV FAILED count by status, with the
//! rows and bytes read and the duration histogram's count. An address already taken stops the
//! worker at start-up with an error naming it.
#![cfg(feature = "service")]

use test_support as common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{DbKind, INVALID_INPUT, SEED_INPUT, TestServer};
use reqwest::{Client, StatusCode};
use task_protocol::{WorkerEvent, WorkerReport};
use test_support::cleanup::CleanupOnPanic;
use test_support::worker_process::{WorkerProcess, processor_binary};
use uuid::Uuid;

/// Longest wait for anything the tests wait for: a guard against hangs.
const DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);
/// Data rows of [`SEED_INPUT`].
const SEED_ROWS: f64 = 7.0;
/// What the worker logs before the metrics' URL.
const SERVING: &str = "serving the metrics url=";

const RUNNING: &str = "aggregator_worker_tasks_running";
const FINISHED: &str = "aggregator_worker_tasks_finished_total";
const DURATION: &str = "aggregator_worker_task_duration_seconds";
const ROWS: &str = "aggregator_worker_input_rows_total";
const BYTES: &str = "aggregator_worker_input_bytes_total";
const ELSEWHERE: &str = "aggregator_worker_tasks_elsewhere_total";
/// Every metric of the worker, and its type.
const METRICS: [(&str, &str); 10] = [
    (RUNNING, "gauge"),
    (FINISHED, "counter"),
    (DURATION, "histogram"),
    (ROWS, "counter"),
    (BYTES, "counter"),
    ("aggregator_worker_spilled_runs_total", "counter"),
    ("aggregator_worker_spilled_bytes_total", "counter"),
    ("aggregator_worker_retries_total", "counter"),
    ("aggregator_worker_redeliveries_total", "counter"),
    (ELSEWHERE, "counter"),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_counts_its_tasks_on_its_metrics_endpoint() {
    let amqp_url = common::server_url(common::AMQP_URL);
    // Fails, saying how to start it, when RabbitMQ is down.
    let broker = common::amqp_connect().await;
    let _ = broker.close(200, "reachable".into()).await;
    let queue = format!("metrics_test_{}", Uuid::new_v4().simple());
    let _cleanup = CleanupOnPanic {
        queue: queue.clone(),
        database: None,
    };
    let tm = common::start_server_with(DbKind::Sqlite, |settings| {
        common::publish_on(settings, &queue);
        // The task held by another worker stays held for the whole test.
        settings.lease_timeout = Duration::from_secs(3600);
    })
    .await;
    let held = tm.upload("held.csv", SEED_INPUT).await;
    hold_lease_as_another_worker(&tm, held).await;

    let worker = WorkerProcess::start_with_env(
        &amqp_url,
        &queue,
        &tm.base_url,
        None,
        &tm.storage_dir(),
        &[("METRICS_ADDR", "127.0.0.1:0")],
    );
    let url = metrics_url(&worker).await;
    let client = Client::new();

    let text = scrape_until(&client, &url, &worker, |text| {
        sample(text, ELSEWHERE) == Some(1.0)
    })
    .await;
    for (name, kind) in METRICS {
        let help = format!("# HELP {name} ");
        assert!(
            text.lines().any(|line| line.starts_with(&help)),
            "{name}:\n{text}"
        );
        let type_line = format!("# TYPE {name} {kind}");
        assert!(
            text.lines().any(|line| line == type_line),
            "{name}:\n{text}"
        );
    }
    for status in ["DONE", "FAILED", "RELEASED"] {
        assert_eq!(sample(&text, &finished(status)), Some(0.0), "{text}");
    }
    // The dashboard beside the compose files charts the worker's metrics that exist.
    for name in common::dashboard_metrics() {
        if name.starts_with("aggregator_worker_") {
            let declared = format!("# TYPE {name} ");
            assert!(
                text.contains(&declared),
                "the dashboard charts {name}: not in {text}"
            );
        }
    }
    assert_eq!(sample(&text, &duration_count("DONE")), Some(0.0), "{text}");
    assert_eq!(sample(&text, ROWS), Some(0.0), "{text}");

    let id = tm.upload("seed.csv", SEED_INPUT).await;
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "DONE", "{status}\n{}", worker.log());
    let text = scrape_until(&client, &url, &worker, |text| {
        sample(text, &finished("DONE")) == Some(1.0) && sample(text, RUNNING) == Some(0.0)
    })
    .await;
    assert_eq!(sample(&text, ROWS), Some(SEED_ROWS), "{text}");
    assert_eq!(
        sample(&text, BYTES),
        Some(SEED_INPUT.len() as f64),
        "{text}"
    );
    assert_eq!(sample(&text, &duration_count("DONE")), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("{DURATION}_bucket{{status=\"DONE\",le=\"+Inf\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, &finished("FAILED")), Some(0.0), "{text}");

    let id = tm.upload("invalid.csv", INVALID_INPUT).await;
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}\n{}", worker.log());
    let text = scrape_until(&client, &url, &worker, |text| {
        sample(text, &finished("FAILED")) == Some(1.0) && sample(text, RUNNING) == Some(0.0)
    })
    .await;
    assert_eq!(sample(&text, &finished("DONE")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &finished("RELEASED")), Some(0.0), "{text}");
    assert_eq!(sample(&text, &duration_count("DONE")), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, &duration_count("FAILED")),
        Some(1.0),
        "{text}"
    );
    // The engine counts the blocks it parsed: the invalid input's one block adds nothing.
    assert_eq!(sample(&text, ROWS), Some(SEED_ROWS), "{text}");
    assert_eq!(
        sample(&text, BYTES),
        Some(SEED_INPUT.len() as f64),
        "{text}"
    );
    assert_eq!(sample(&text, ELSEWHERE), Some(1.0), "{text}");

    // Only /metrics, in the text format's media type.
    let response = client.get(&url).send().await.expect("GET /metrics");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let elsewhere = url.replace("/metrics", "/");
    let response = client.get(&elsewhere).send().await.expect("GET /");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    worker.stop_gracefully();
    tm.stop().await;
    common::delete_queue(&queue).await;
}

#[test]
fn a_taken_metrics_address_stops_the_worker_at_start_up() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    // No RabbitMQ there: a worker that went past its metrics would retry it until killed.
    let mut child = Command::new(processor_binary())
        .args([
            "worker",
            "--amqp-url",
            "amqp://127.0.0.1:9",
            "--metrics-addr",
            &addr,
        ])
        .env_remove("METRICS_ADDR")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run processor worker");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the worker's status") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let output = child.wait_with_output().expect("the worker's output");
            panic!(
                "the worker still runs with its metrics address taken:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(POLL);
    };
    let output = child.wait_with_output().expect("the worker's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve the metrics on {addr}")),
        "{stderr}"
    );
    drop(taken);
}

/// Reports task `id` started by a worker of the test's imagination: it holds the task's
/// lease.
async fn hold_lease_as_another_worker(tm: &TestServer, id: Uuid) {
    let report = WorkerReport {
        event: WorkerEvent::Started,
        worker: Some("another-worker".into()),
    };
    let report = serde_json::to_value(report).expect("the report as JSON");
    let (code, body) = tm.post_event(id, &report).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

/// The metrics' URL, from the worker's log.
async fn metrics_url(worker: &WorkerProcess) -> String {
    let started = Instant::now();
    loop {
        let log = worker.log_text();
        if let Some((_, rest)) = log.split_once(SERVING) {
            return rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no metrics URL logged\n{}",
            worker.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Scrapes `url` until `ready` holds of the answer; the answer.
async fn scrape_until(
    client: &Client,
    url: &str,
    worker: &WorkerProcess,
    ready: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let response = client.get(url).send().await.expect("GET /metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("the metrics");
        if ready(&text) {
            return text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the metrics did not get there:\n{text}\n{}",
            worker.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The value of the sample `series` (name and labels, as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn finished(status: &str) -> String {
    format!("{FINISHED}{{status=\"{status}\"}}")
}

fn duration_count(status: &str) -> String {
    format!("{DURATION}_count{{status=\"{status}\"}}")
}
