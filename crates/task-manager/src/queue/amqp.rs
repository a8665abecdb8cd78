//! Publishing tasks on RabbitMQ: a durable queue, persistent JSON messages, publisher
//! confirms. A lost connection is reopened on the next publish or health check, with an
//! exponential backoff between failed attempts so that a broker outage costs a fast 503,
//! not a pile of hanging uploads.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use runner::backoff::ExponentialBackoff;
use task_protocol::TaskMessage;
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout};
use uuid::Uuid;

use super::QueueError;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for the broker: connecting, or confirming one message.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Publishes [`TaskMessage`]s on a durable queue.
pub struct AmqpPublisher {
    url: String,
    queue: String,
    link: Mutex<Link>,
}

/// The open connection, or when to try again.
struct Link {
    open: Option<(Connection, Channel)>,
    /// Bumped at each new connection, so that a failure is charged to the right one.
    generation: u64,
    retry_at: Option<Instant>,
    /// The pauses after failed attempts, from the last success on.
    backoff: ExponentialBackoff,
}

impl AmqpPublisher {
    /// Connects and declares the queue; a failure is logged and retried on first use.
    pub async fn connect(url: &str, queue: &str) -> AmqpPublisher {
        let publisher = AmqpPublisher {
            url: url.to_string(),
            queue: queue.to_string(),
            link: Mutex::new(Link {
                open: None,
                generation: 0,
                retry_at: None,
                backoff: reconnect_delays(),
            }),
        };
        match publisher.channel().await {
            Ok(_) => tracing::info!(queue, "connected to RabbitMQ"),
            Err(e) => tracing::warn!("{e}; uploads answer 503 until it is reachable"),
        }
        publisher
    }

    /// Publishes the message of task `id` and waits for the broker's confirmation.
    pub async fn publish(&self, id: Uuid) -> Result<(), QueueError> {
        self.publish_message(&TaskMessage::for_task(id)).await
    }

    /// Publishes `message` and waits for the broker's confirmation.
    pub async fn publish_message(&self, message: &TaskMessage) -> Result<(), QueueError> {
        let id = message.task_id;
        let payload = serde_json::to_vec(message)
            .map_err(|e| QueueError::Unavailable(format!("cannot encode the message: {e}")))?;
        // A connection that died since its last use is noticed by the first attempt.
        let mut last_error = None;
        for _ in 0..2 {
            let (channel, generation) = self.channel().await?;
            match self.publish_on(&channel, id, &payload).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(task_id = %id, "publishing failed: {e}");
                    self.drop_link(generation).await;
                    last_error = Some(e);
                }
            }
        }
        Err(QueueError::Unavailable(last_error.unwrap_or_default()))
    }

    /// Checks that the broker is reachable, reconnecting when needed.
    pub async fn health(&self) -> Result<(), QueueError> {
        self.channel().await.map(|_| ())
    }

    /// The queue's ready messages and consumers, by a passive declare on a channel of its
    /// own (a passive declare that fails closes its channel).
    pub async fn stats(&self) -> Result<(u64, u64), QueueError> {
        let unavailable = |e: lapin::Error| QueueError::Unavailable(e.to_string());
        self.channel().await?;
        let channel = match &self.link.lock().await.open {
            Some((connection, _)) => connection.create_channel().await.map_err(unavailable)?,
            None => return Err(QueueError::Unavailable("not connected".into())),
        };
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = timeout(
            BROKER_TIMEOUT,
            channel.queue_declare(self.queue.as_str().into(), options, FieldTable::default()),
        )
        .await
        .map_err(|_| QueueError::Unavailable("no answer from the broker in time".into()))?
        .map_err(unavailable)?;
        let _ = channel.close(200, "queue statistics read".into()).await;
        Ok((
            u64::from(declared.message_count()),
            u64::from(declared.consumer_count()),
        ))
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Some((connection, _)) = self.link.lock().await.open.take()
            && let Err(e) = connection.close(200, "task manager stopping".into()).await
        {
            tracing::debug!("closing the RabbitMQ connection: {e}");
        }
    }

    async fn publish_on(&self, channel: &Channel, id: Uuid, payload: &[u8]) -> Result<(), String> {
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(id.to_string().into());
        // `mandatory`: a message that no queue takes comes back instead of vanishing.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let publish = async {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    options,
                    payload,
                    properties,
                )
                .await
                .map_err(|e| e.to_string())?;
            confirm.await.map_err(|e| e.to_string())
        };
        let confirmation = timeout(BROKER_TIMEOUT, publish)
            .await
            .map_err(|_| "no confirmation from the broker in time".to_string())??;
        if confirmation.is_nack() {
            return Err("the broker refused the message".into());
        }
        if confirmation.take_message().is_some() {
            return Err(format!("the queue {:?} does not exist", self.queue));
        }
        Ok(())
    }

    /// The open channel and its generation, reconnecting unless a recent attempt failed.
    async fn channel(&self) -> Result<(Channel, u64), QueueError> {
        let mut link = self.link.lock().await;
        if let Some((connection, channel)) = &link.open {
            if connection.status().connected() && channel.status().connected() {
                return Ok((channel.clone(), link.generation));
            }
            tracing::warn!("the RabbitMQ connection was lost; reconnecting");
            link.open = None;
        }
        if let Some(retry_at) = link.retry_at
            && Instant::now() < retry_at
        {
            return Err(QueueError::Unavailable(format!(
                "cannot reach RabbitMQ; next attempt in {:.1} s",
                (retry_at - Instant::now()).as_secs_f64()
            )));
        }
        match timeout(BROKER_TIMEOUT, self.open()).await {
            Ok(Ok((connection, channel))) => {
                link.open = Some((connection, channel.clone()));
                link.generation += 1;
                link.retry_at = None;
                link.backoff = reconnect_delays();
                Ok((channel, link.generation))
            }
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connection timed out".to_string(),
                };
                let pause = link.backoff.next().unwrap_or(MAX_BACKOFF);
                link.retry_at = Some(Instant::now() + pause);
                Err(QueueError::Unavailable(format!(
                    "cannot connect to RabbitMQ: {reason}"
                )))
            }
        }
    }

    async fn open(&self) -> lapin::Result<(Connection, Channel)> {
        // Named after the queue, so that it is easy to spot in RabbitMQ's connection list.
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("task-manager ({})", self.queue).into());
        let connection = Connection::connect(&self.url, properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        task_protocol::declare_task_queue(&channel, &self.queue).await?;
        Ok((connection, channel))
    }

    /// Forgets connection `generation` after a failure on it, so that the next use
    /// reconnects (and declares the queue again).
    async fn drop_link(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if let Some((connection, _)) = &link.open
            && link.generation == generation
        {
            // Closing a broken connection may fail; it is dropped either way.
            let _ = connection.close(200, "reconnecting".into()).await;
            link.open = None;
        }
    }
}

/// The pauses between failed attempts at connecting to RabbitMQ.
fn reconnect_delays() -> ExponentialBackoff {
    runner::backoff::exponential(FIRST_BACKOFF, MAX_BACKOFF)
}
