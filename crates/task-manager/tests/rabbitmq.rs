//! Distributed mode against the real RabbitMQ: the task manager publishes, the test plays the
//! worker (takes the message, posts events, writes the result).

use test_support as common;

use common::*;
use lapin::options::{BasicGetOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use reqwest::StatusCode;
use serde_json::json;
use task_protocol::TaskMessage;
use uuid::Uuid;

/// A connection to the test broker and a queue name of the test's own.
struct Broker {
    connection: Connection,
    channel: Channel,
    queue: String,
}

impl Broker {
    async fn connect() -> Broker {
        let connection = amqp_connect().await;
        let channel = connection.create_channel().await.expect("AMQP channel");
        Broker {
            connection,
            channel,
            queue: format!("tm_test_{}", Uuid::new_v4().simple()),
        }
    }

    /// Takes the next message of the queue, which must be there.
    async fn take(&self) -> lapin::message::Delivery {
        self.channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("a message on the queue")
            .delivery
    }

    /// Takes the next message of the queue as a [`TaskMessage`].
    async fn take_message(&self) -> TaskMessage {
        serde_json::from_slice(&self.take().await.data).expect("TaskMessage JSON")
    }

    /// Starts a task manager that publishes on this broker's queue.
    async fn start_server(&self) -> TestServer {
        start_server_with(DbKind::Sqlite, |settings| {
            publish_on(settings, &self.queue);
        })
        .await
    }

    async fn delete_queue(self) {
        let _ = self.connection.close(200, "done".into()).await;
        delete_queue(&self.queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_early_aggregation_a_task_is_published_once_its_upload_is_complete() {
    let broker = Broker::connect().await;
    let server = start_server_with(DbKind::Sqlite, |settings| {
        publish_on(settings, &broker.queue);
        settings.early_aggregation = false;
    })
    .await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(broker.take_message().await, TaskMessage::for_task(id));
    server.stop().await;
    broker.delete_queue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_publishes_and_worker_events_drive_the_task() {
    let broker = Broker::connect().await;
    let server = broker.start_server().await;

    let id = server.upload("plays.csv", SEED_INPUT).await;
    let delivery = broker.take().await;
    assert_eq!(
        *delivery.properties.delivery_mode(),
        Some(2),
        "not persistent"
    );
    let message: TaskMessage = serde_json::from_slice(&delivery.data).expect("TaskMessage JSON");
    // Published as the upload started, naming the file it was arriving in, since renamed.
    let arriving = message.arriving_path.clone().expect("an arriving upload");
    assert!(arriving.starts_with("raw_data/.upload-"), "{arriving}");
    assert!(!server.storage_dir().join(&arriving).exists());
    // With the body's length, at least the file's (multipart framing included).
    let len = message.arriving_len.expect("the upload's announced length");
    assert!(len >= SEED_INPUT.len() as u64, "{len}");
    assert_eq!(message, TaskMessage::arriving(id, arriving, Some(len)));
    let input = server.storage_dir().join(&message.input_path);
    assert_eq!(std::fs::read_to_string(&input).unwrap(), SEED_INPUT);

    let (code, ack) = server.post_event(id, &json!({"event": "started"})).await;
    assert_eq!(
        (code, ack["status"].clone()),
        (StatusCode::OK, json!("PROCESSING"))
    );
    let (_, ack) = server.post_event(id, &json!({"event": "started"})).await;
    assert_eq!(ack["status"], "PROCESSING", "started twice");
    let progress = json!({"event": "progress", "progress": 0.5, "rows": 3});
    let (_, ack) = server.post_event(id, &progress).await;
    assert_eq!(ack["status"], "PROCESSING");
    let status = server.status(id).await;
    assert_eq!(status["progress"], 0.5, "{status}");
    assert_eq!(status["rows"], 3, "{status}");
    let (code, body) = json_of(server.download(id).await).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status"], "PROCESSING");

    std::fs::write(server.storage_dir().join(&message.output_path), SEED_OUTPUT).unwrap();
    let done = json!({"event": "done", "rows": 7, "groups": 4, "output_bytes": SEED_OUTPUT.len()});
    let (_, ack) = server.post_event(id, &done).await;
    assert_eq!(ack["status"], "DONE");
    let (_, ack) = server.post_event(id, &done).await;
    assert_eq!(ack["status"], "DONE", "done twice");

    let status = server.status(id).await;
    assert_eq!(status["status"], "DONE");
    assert_eq!(status["groups"], 4);
    assert_eq!(status["progress"], 1.0);
    let response = server.download(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attachment_filename(&response), "plays_aggregated.csv");
    assert_eq!(response.text().await.unwrap(), SEED_OUTPUT);

    // Late events do not change a finished task.
    for late in [
        json!({"event": "failed", "error": "late"}),
        json!({"event": "started"}),
        json!({"event": "progress", "progress": 0.1, "rows": 1}),
    ] {
        let (code, ack) = server.post_event(id, &late).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ack["status"], "DONE", "{late} changed a DONE task");
    }
    assert_eq!(server.status(id).await["rows"], 7);

    // Cancelled before a worker started: the worker learns it from the ack.
    let second = server.upload("second.csv", SEED_INPUT).await;
    let message = broker.take_message().await;
    assert_eq!(message.task_id, second);
    let (code, body) = server.cancel(second).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (_, ack) = server
        .post_event(second, &json!({"event": "started"}))
        .await;
    assert_eq!(ack["status"], "CANCELLED");

    // Bad events.
    let (code, body) = server
        .post_event(Uuid::new_v4(), &json!({"event": "started"}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, body) = server
        .post_event(second, &json!({"event": "exploded"}))
        .await;
    assert!(code.is_client_error(), "{code}: {body}");
    assert!(body["error"].is_string(), "{body}");

    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, StatusCode::OK, "{health}");
    assert_eq!(health["queue"], "ok");
    assert_eq!(health["mode"], "rabbitmq");

    broker.delete_queue().await;
    server.stop().await;
}

/// A queue deleted while the service runs (by an operator, a reset broker) is declared again:
/// the broker hands the next message back as unroutable, the service reconnects, declares the
/// queue and publishes the task there; the upload is accepted, not lost or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_the_service_is_declared_again() {
    let broker = Broker::connect().await;
    let server = broker.start_server().await;
    let first = server.upload("first.csv", SEED_INPUT).await;
    assert_eq!(broker.take_message().await.task_id, first);

    delete_queue(&broker.queue).await;
    let second = server.upload("second.csv", SEED_INPUT).await;
    assert_eq!(broker.take_message().await.task_id, second);
    let status = server.status(second).await;
    assert_ne!(status["status"], "FAILED", "{status}");
    server.stop().await;
    broker.delete_queue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_answers_503_and_fails_the_task() {
    // Nothing listens on port 1.
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.amqp_url = Some("amqp://guest:guest@127.0.0.1:1/%2f".into());
    })
    .await;
    let part = reqwest::multipart::Part::bytes(SEED_INPUT.as_bytes().to_vec()).file_name("p.csv");
    let (code, body) = server
        .upload_form(reqwest::multipart::Form::new().part("file", part))
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("RabbitMQ"),
        "{body}"
    );

    let (_, list) = server.get_json("/v1/tasks").await;
    assert_eq!(list["count"], 1, "{list}");
    let task = &list["results"][0];
    assert_eq!(task["status"], "FAILED", "{task}");
    let id = task["task_id"].as_str().unwrap();
    let raw = server.storage_dir().join(format!("raw_data/{id}.csv"));
    assert!(!raw.exists(), "the upload of an unqueued task was kept");

    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["database"], "ok");
    assert_ne!(health["queue"], "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_reopened() {
    let broker = Broker::connect().await;
    let server = broker.start_server().await;
    let first = server.upload("plays.csv", SEED_INPUT).await;
    let message = broker.take_message().await;
    assert_eq!(message.task_id, first);

    let connections = connections_of(&broker.queue);
    assert_eq!(connections.len(), 1, "{connections:?}");
    let closed = connections[0].clone();
    rabbitmqctl(&["close_connection", &closed, "closed by a test"]);
    let second = server.upload("plays.csv", SEED_INPUT).await;
    let message = broker.take_message().await;
    assert_eq!(message.task_id, second);
    let connections = connections_of(&broker.queue);
    assert!(
        connections.iter().any(|pid| *pid != closed),
        "no new connection: {connections:?}"
    );
    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, StatusCode::OK, "{health}");

    broker.delete_queue().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_wait_answers_as_soon_as_the_task_finishes() {
    let broker = Broker::connect().await;
    let server = broker.start_server().await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    let status_path = format!("/v1/tasks/status/{id}");

    // Unfinished: held until the time is up, then the current status.
    let (code, body) = server.get_json(&format!("{status_path}?wait=0.2")).await;
    assert_eq!(
        (code, body["status"].clone()),
        (StatusCode::OK, json!("RECEIVED"))
    );
    for bad in ["61", "-1", "soon"] {
        let (code, body) = server.get_json(&format!("{status_path}?wait={bad}")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "wait={bad}: {body}");
    }

    // A long wait ends with the task, not with its deadline.
    let waiting = {
        let client = server.client.clone();
        let url = server.url(&format!("{status_path}?wait=60"));
        tokio::spawn(async move { json_of(client.get(url).send().await.expect("status")).await })
    };
    let (_, ack) = server.post_event(id, &json!({"event": "started"})).await;
    assert_eq!(ack["status"], "PROCESSING");
    std::fs::write(
        server
            .storage_dir()
            .join(TaskMessage::for_task(id).output_path),
        SEED_OUTPUT,
    )
    .unwrap();
    let done = json!({"event": "done", "rows": 7, "groups": 4, "output_bytes": SEED_OUTPUT.len()});
    server.post_event(id, &done).await;
    let (code, body) = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("the waiting request did not end with the task")
        .expect("status task");
    assert_eq!(
        (code, body["status"].clone()),
        (StatusCode::OK, json!("DONE"))
    );

    // Finished: at once, whatever the wait.
    let (_, body) = server.get_json(&format!("{status_path}?wait=60")).await;
    assert_eq!(body["status"], "DONE");

    broker.delete_queue().await;
    server.stop().await;
}

/// The `x-delivery-count` header of a delivery: how many times it came back before.
fn delivery_count(delivery: &lapin::message::Delivery) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        other => panic!("unexpected x-delivery-count {other:?}"),
    }
}

/// The safety net behind the workers' attempt limit: the queue the task manager declares
/// dead-letters a message that keeps coming back, after its delivery limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_coming_back_is_dead_lettered() {
    let broker = Broker::connect().await;
    let server = broker.start_server().await;
    let id = server.upload("plays.csv", SEED_INPUT).await;
    let dead = task_protocol::dead_letter_queue(&broker.queue);

    let started = std::time::Instant::now();
    let mut deliveries = 0;
    loop {
        let got = broker
            .channel
            .basic_get(broker.queue.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get");
        if let Some(message) = got {
            let delivery = message.delivery;
            // Absent or 0 on the first delivery.
            let count = delivery_count(&delivery).unwrap_or(0);
            assert_eq!(
                count, deliveries,
                "x-delivery-count of delivery {deliveries}"
            );
            deliveries += 1;
            // A failed delivery for every RabbitMQ version (from 4.3 a nack does not count).
            let requeue = BasicRejectOptions { requeue: true };
            assert!(delivery.reject(requeue).await.expect("basic.reject"));
            continue;
        }
        let declared = broker
            .channel
            .queue_declare(
                dead.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the dead-letter queue exists");
        if declared.message_count() == 1 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "not dead-lettered after {deliveries} deliveries"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        deliveries,
        i64::from(task_protocol::QUEUE_DELIVERY_LIMIT) + 1,
        "deliveries before dead-lettering"
    );
    let message: TaskMessage = serde_json::from_slice(
        &broker
            .channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("the dead letter")
            .delivery
            .data,
    )
    .expect("TaskMessage JSON");
    assert_eq!(message.task_id, id);

    broker.delete_queue().await;
    server.stop().await;
}
