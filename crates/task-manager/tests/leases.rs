//! Task leases through the workers' callback, against the real RabbitMQ: the test plays two
//! workers that name themselves in their reports, and an older one that does not. The lease
//! keeper publishes again a task whose worker went silent, then abandons it.

use std::time::{Duration, Instant};

use test_support as common;

use common::*;
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use task_protocol::TaskMessage;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(2);
/// A guard against hangs, not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

async fn report(server: &TestServer, id: Uuid, event: Value) -> Value {
    let (code, ack) = server.post_event(id, &event).await;
    assert_eq!(code, StatusCode::OK, "{event}: {ack}");
    ack
}

fn from(worker: &str, mut event: Value) -> Value {
    event["worker"] = json!(worker);
    event
}

/// Takes the messages of `queue` until one is there: their task ids.
async fn take_messages(channel: &lapin::Channel, queue: &str) -> Vec<Uuid> {
    let started = Instant::now();
    loop {
        let mut ids = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let message: TaskMessage =
                serde_json::from_slice(&message.delivery.data).expect("TaskMessage JSON");
            ids.push(message.task_id);
        }
        if !ids.is_empty() {
            return ids;
        }
        assert!(started.elapsed() < DEADLINE, "no message on {queue}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_a_task_to_one_worker_and_the_keeper_republishes_it() {
    let queue = format!("tm_lease_{}", Uuid::new_v4().simple());
    let connection = amqp_connect().await;
    let channel = connection.create_channel().await.expect("AMQP channel");
    let server = start_server_with(DbKind::Sqlite, |settings| {
        publish_on(settings, &queue);
        settings.early_aggregation = false;
        settings.lease_timeout = LEASE;
        settings.max_leases = 2;
    })
    .await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(take_messages(&channel, &queue).await, [id]);

    let started = json!({"event": "started"});
    let progress = json!({"event": "progress", "progress": 0.5, "rows": 3});
    let ack = report(&server, id, from("a", started.clone())).await;
    assert_eq!(ack, json!({"status": "PROCESSING"}));
    let elsewhere = json!({"status": "PROCESSING", "elsewhere": true});
    assert_eq!(
        report(&server, id, from("b", started.clone())).await,
        elsewhere
    );
    assert_eq!(
        report(&server, id, from("b", progress.clone())).await,
        elsewhere
    );
    let failed = json!({"event": "failed", "error": "abandoned after 5 attempts"});
    assert_eq!(report(&server, id, from("b", failed)).await, elsewhere);
    // An older worker's events carry no id and are applied as before.
    assert_eq!(
        report(&server, id, progress.clone()).await,
        json!({"status": "PROCESSING"})
    );

    // Worker a goes silent: once its lease expired, the task is published again, and the
    // worker that takes it holds the lease; a tells that it must stop.
    assert_eq!(take_messages(&channel, &queue).await, [id]);
    assert_eq!(
        report(&server, id, from("b", started.clone())).await,
        json!({"status": "PROCESSING"})
    );
    assert_eq!(
        report(&server, id, from("a", progress.clone())).await,
        elsewhere
    );
    // b goes silent too: the second expired lease is the last.
    let status = server.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped reporting 2 times"), "{status}");

    // DONE is accepted from anyone.
    let done_task = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(take_messages(&channel, &queue).await, [done_task]);
    report(&server, done_task, from("a", started)).await;
    let result = server
        .storage_dir()
        .join(task_protocol::processed_data_path(done_task));
    std::fs::write(result, SEED_OUTPUT).expect("write the result");
    let done = json!({"event": "done", "rows": 7, "groups": 4, "output_bytes": SEED_OUTPUT.len()});
    assert_eq!(
        report(&server, done_task, from("b", done)).await,
        json!({"status": "DONE"})
    );

    let _ = connection.close(200, "done".into()).await;
    server.stop().await;
    delete_queue(&queue).await;
}
