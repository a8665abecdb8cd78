//! The tests' side of RabbitMQ: publish raw messages, read queue counts, find and close the
//! connections of one test (never the other tests' ones).

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};

/// Declares `queue` passively: its counts, or an error (closing `channel`) when it is missing.
pub async fn declare_passively(
    channel: &lapin::Channel,
    queue: &str,
) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Consumers of `queue`, `None` while it does not exist.
pub async fn consumers(broker: &Connection, queue: &str) -> Option<u32> {
    // A passive declaration of a missing queue closes its channel: one channel per check.
    let channel = broker.create_channel().await.expect("AMQP channel");
    let declared = declare_passively(&channel, queue).await.ok()?;
    let _ = channel.close(200, "checked".into()).await;
    Some(declared.consumer_count())
}

/// Ready messages on `queue`, which must exist.
pub async fn message_count(broker: &Connection, queue: &str) -> u32 {
    let channel = broker.create_channel().await.expect("AMQP channel");
    let declared = declare_passively(&channel, queue)
        .await
        .unwrap_or_else(|e| panic!("the queue {queue} does not exist: {e}"));
    let _ = channel.close(200, "checked".into()).await;
    declared.message_count()
}

/// Takes (and acknowledges) every ready message of `queue`: their bodies.
pub async fn drain(broker: &Connection, queue: &str) -> Vec<Vec<u8>> {
    let channel = broker.create_channel().await.expect("AMQP channel");
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        bodies.push(message.delivery.data);
    }
    let _ = channel.close(200, "drained".into()).await;
    bodies
}

/// Publishes `payload` as is on `queue`, through the default exchange.
pub async fn publish_raw(broker: &Connection, queue: &str, payload: &[u8]) {
    let channel = broker.create_channel().await.expect("AMQP channel");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("basic.publish")
        .await
        .expect("publish");
    let _ = channel.close(200, "published".into()).await;
}
