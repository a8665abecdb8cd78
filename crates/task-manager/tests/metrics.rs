//! `GET /metrics`: the Prometheus text of the task manager, its counters moved by real
//! uploads and tasks (embedded mode on SQLite), the queue's gauges read from the real
//! RabbitMQ, and `METRICS_TOKEN`.
//!
//! The metrics are the process's: the tests of this file run one at a time and compare
//! values before and after what they do.

use test_support as common;

use common::*;
use reqwest::StatusCode;
use tokio::sync::Mutex;
use uuid::Uuid;

/// One test at a time: they share the process's metrics.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The metrics text of the server at `base_url`.
async fn scrape(client: &reqwest::Client, base_url: &str) -> String {
    let response = client
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("the metrics text")
}

/// The value of the series `name` with every label of `labels` (0 when absent).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_follow_uploads_and_tasks() {
    let _serial = SERIAL.lock().await;
    let server = start_server(DbKind::Sqlite).await;
    let (client, url) = (&server.client, server.base_url.as_str());
    let before = scrape(client, url).await;

    let done = upload(client, url, "seed.csv", SEED_INPUT).await;
    assert_eq!(wait_finished(client, url, done).await["status"], "DONE");
    let failed = upload(client, url, "bad.csv", INVALID_INPUT).await;
    assert_eq!(wait_finished(client, url, failed).await["status"], "FAILED");
    let refused = client
        .post(format!("{url}/v1/data_processor/upload"))
        .header("content-type", "image/png")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let unknown = client
        .get(format!("{url}/no/such/{}", Uuid::new_v4()))
        .send()
        .await;
    assert_eq!(unknown.unwrap().status(), StatusCode::NOT_FOUND);

    let after = scrape(client, url).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        delta("aggregator_uploads_accepted_total", &[]),
        2.0,
        "{after}"
    );
    let bytes = (SEED_INPUT.len() + INVALID_INPUT.len()) as f64;
    assert_eq!(delta("aggregator_upload_bytes_total", &[]), bytes);
    assert_eq!(
        delta("aggregator_uploads_refused_total", &[("status", "415")]),
        1.0
    );
    assert_eq!(value(&after, "aggregator_uploads_in_progress", &[]), 0.0);
    let finished = |status| delta("aggregator_tasks_finished_total", &[("status", status)]);
    assert_eq!(
        (finished("DONE"), finished("FAILED")),
        (1.0, 1.0),
        "{after}"
    );
    let rows = SEED_INPUT.lines().count() - 1;
    assert_eq!(delta("aggregator_rows_processed_total", &[]), rows as f64);
    assert_eq!(
        delta("aggregator_input_bytes_processed_total", &[]),
        SEED_INPUT.len() as f64
    );
    assert_eq!(
        delta("aggregator_output_bytes_written_total", &[]),
        SEED_OUTPUT.len() as f64
    );
    let processing = |status| {
        delta(
            "aggregator_task_processing_seconds_count",
            &[("status", status)],
        )
    };
    assert_eq!((processing("DONE"), processing("FAILED")), (1.0, 1.0));
    assert_eq!(delta("aggregator_task_queue_wait_seconds_count", &[]), 2.0);
    let status_route = [
        ("method", "GET"),
        ("route", "/v1/tasks/status/{task_id}"),
        ("status", "200"),
    ];
    assert!(delta("aggregator_http_requests_total", &status_route) >= 2.0);
    let unmatched = [("route", "unmatched"), ("status", "404")];
    assert_eq!(delta("aggregator_http_requests_total", &unmatched), 1.0);
    assert!(
        !after.contains("/no/such/"),
        "a path that matches no route became a label"
    );
    // The gauges of this server's database and queue.
    assert_eq!(
        value(&after, "aggregator_tasks", &[("status", "DONE")]),
        1.0
    );
    assert_eq!(
        value(&after, "aggregator_tasks", &[("status", "FAILED")]),
        1.0
    );
    assert_eq!(
        value(&after, "aggregator_tasks", &[("status", "RECEIVED")]),
        0.0
    );
    assert_eq!(value(&after, "aggregator_queue_messages", &[]), 0.0);
    let runners = server.settings.embedded_workers as f64;
    assert_eq!(value(&after, "aggregator_queue_consumers", &[]), runners);
    assert_eq!(
        value(&after, "aggregator_oldest_waiting_task_age_seconds", &[]),
        0.0
    );
    // Described, typed, histograms with buckets.
    for line in [
        "# TYPE aggregator_http_request_duration_seconds histogram",
        "# TYPE aggregator_uploads_accepted_total counter",
        "# TYPE aggregator_tasks gauge",
        "# HELP aggregator_tasks_finished_total ",
    ] {
        assert!(after.contains(line), "no {line:?} in {after}");
    }
    assert!(
        after.contains("aggregator_task_processing_seconds_bucket{status=\"DONE\",le=\"0.1\"}")
    );
    // A callback about no task is refused, and counted.
    let refused = client
        .post(format!("{url}/internal/v1/tasks/{}/events", Uuid::new_v4()))
        .json(&serde_json::json!({"event": "started"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let last = scrape(client, url).await;
    let refused = [("status", "404")];
    let counted = value(&last, "aggregator_callback_failures_total", &refused)
        - value(&after, "aggregator_callback_failures_total", &refused);
    assert_eq!(counted, 1.0, "{last}");
    // The dashboard beside the compose files charts metrics that exist.
    for name in dashboard_metrics() {
        if !name.starts_with("aggregator_worker_") {
            let declared = format!("# TYPE {name} ");
            assert!(
                last.contains(&declared),
                "the dashboard charts {name}: not in {last}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_gauges_come_from_rabbitmq() {
    let _serial = SERIAL.lock().await;
    let queue = format!("tm_metrics_{}", Uuid::new_v4().simple());
    let server = start_server_with(DbKind::Sqlite, |settings| {
        publish_on(settings, &queue);
    })
    .await;
    let (client, url) = (&server.client, server.base_url.as_str());
    // No worker: the two tasks wait in the queue.
    for name in ["a.csv", "b.csv"] {
        upload(client, url, name, SEED_INPUT).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let text = scrape(client, url).await;
    assert_eq!(
        value(&text, "aggregator_queue_messages", &[]),
        2.0,
        "{text}"
    );
    assert_eq!(value(&text, "aggregator_queue_consumers", &[]), 0.0);
    assert_eq!(
        value(&text, "aggregator_tasks", &[("status", "RECEIVED")]),
        2.0
    );
    let oldest = value(&text, "aggregator_oldest_waiting_task_age_seconds", &[]);
    assert!(oldest >= 1.0, "oldest waiting task: {oldest} s");
    server.stop().await;
    delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_token_guards_metrics_only() {
    let _serial = SERIAL.lock().await;
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.metrics_tokens = task_manager::Tokens::parse("scraper-secret");
    })
    .await;
    let url = &server.base_url;
    let anonymous = reqwest::Client::new();
    let refused = anonymous
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let wrong = client_with_token("other")
        .get(format!("{url}/metrics"))
        .send()
        .await;
    assert_eq!(wrong.unwrap().status(), StatusCode::UNAUTHORIZED);
    let text = scrape(&client_with_token("scraper-secret"), url).await;
    assert!(text.contains("aggregator_tasks"), "{text}");
    // The API itself stays open: no API_TOKEN is set.
    let health = anonymous
        .get(format!("{url}/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    server.stop().await;
}
