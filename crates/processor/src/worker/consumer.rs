//! The RabbitMQ side: connect, declare the queue, consume with a prefetch equal to the
//! concurrency, hand each delivery to a task, settle the message with the task's verdict,
//! reconnect with backoff when the connection is lost, and drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::error_chain::error_chain;
use super::metrics::{self, Retry};
use super::task::{self, DeliveryInfo, Disposition, TaskContext};
use runner::backoff::ExponentialBackoff;

/// First and longest wait before reconnecting to RabbitMQ.
const FIRST_RECONNECT: Duration = Duration::from_secs(1);
const MAX_RECONNECT: Duration = Duration::from_secs(30);

/// Where and how to consume.
pub struct QueueSettings {
    pub amqp_uri: AMQPUri,
    pub queue: String,
    /// Tasks processed at once, also the prefetch count.
    pub concurrency: u16,
    /// How long running tasks may finish after a stop request before they are cancelled.
    pub drain_timeout: Duration,
}

/// A consumer that survives connection losses.
pub struct Consumer {
    settings: QueueSettings,
    ctx: Arc<TaskContext>,
    /// One permit per task slot: no more deliveries are taken than can run.
    slots: Arc<Semaphore>,
    /// Running tasks; they outlive a lost connection (their message is redelivered anyway).
    tasks: JoinSet<()>,
    /// Cancelled on the first stop request: consume no more.
    shutdown: CancellationToken,
}

impl Consumer {
    pub fn new(settings: QueueSettings, ctx: TaskContext, shutdown: CancellationToken) -> Self {
        let slots = Arc::new(Semaphore::new(usize::from(settings.concurrency)));
        Consumer {
            settings,
            ctx: Arc::new(ctx),
            slots,
            tasks: JoinSet::new(),
            shutdown,
        }
    }

    /// Consumes until `shutdown` is cancelled, then lets the running tasks finish.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut backoff = reconnect_delays();
        loop {
            match self.session(&mut backoff).await {
                Ok((connection, channel)) => {
                    // The channel stays open until the running tasks have settled their messages.
                    self.drain().await;
                    if let Err(err) = channel.close(200, "worker stopped".into()).await {
                        warn!(error = %err, "closing the RabbitMQ channel");
                    }
                    if let Err(err) = connection.close(200, "worker stopped".into()).await {
                        warn!(error = %err, "closing the RabbitMQ connection");
                    }
                    return Ok(());
                }
                Err(err) if self.shutdown.is_cancelled() => {
                    warn!(
                        error = error_chain(err.as_ref()),
                        "RabbitMQ connection lost while stopping"
                    );
                    self.drain().await;
                    return Ok(());
                }
                Err(err) => {
                    metrics::retried(Retry::Rabbitmq);
                    let delay = backoff.next().unwrap_or(MAX_RECONNECT);
                    error!(
                        error = error_chain(err.as_ref()),
                        ?delay,
                        "RabbitMQ unavailable; reconnecting"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => {
                            self.drain().await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// One connection's life: returns it and its channel when stopping, an error when it is lost.
    async fn session(
        &mut self,
        backoff: &mut ExponentialBackoff,
    ) -> anyhow::Result<(Connection, Channel)> {
        let settings = &self.settings;
        // Named after the queue, so that it is easy to spot in RabbitMQ's connection list.
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("processor worker ({})", settings.queue).into());
        let connection = Connection::connect_uri(settings.amqp_uri.clone(), properties)
            .await
            .context("cannot connect to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        task_protocol::declare_task_queue(&channel, &settings.queue)
            .await
            .with_context(|| format!("cannot declare the queue {:?}", settings.queue))?;
        channel
            .basic_qos(settings.concurrency, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                settings.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume from {:?}", settings.queue))?;
        info!(queue = %settings.queue, concurrency = settings.concurrency, "waiting for tasks");
        *backoff = reconnect_delays();

        loop {
            // The prefetch keeps deliveries to the free slots, give or take the tasks of a lost
            // connection still running: waiting on the deliveries first notices a lost
            // connection at once, even while every slot is busy.
            let delivery = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => return Err(err).context("RabbitMQ connection lost"),
                    None => anyhow::bail!("RabbitMQ cancelled the consumer (queue deleted?)"),
                },
            };
            // Unsettled, the delivery returns to the queue when the channel closes.
            let slot = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                slot = self.slots.clone().acquire_owned() => slot?,
            };
            let ctx = self.ctx.clone();
            self.tasks.spawn(async move {
                let info = delivery_info(&delivery);
                if info.redelivered {
                    metrics::redelivered();
                }
                settle(&delivery, task::handle(&delivery.data, info, &ctx).await).await;
                drop(slot);
            });
            while let Some(finished) = self.tasks.try_join_next() {
                log_panic(finished);
            }
        }

        // Stop request: no new deliveries; unsettled prefetched ones return to the queue
        // when the connection closes.
        if let Err(err) = channel
            .basic_cancel(deliveries.tag(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %err, "cancelling the consumer");
        }
        Ok((connection, channel))
    }

    /// Waits for the running tasks, cancelling them after the drain timeout
    /// (or at a second stop request, which cancels `abort`).
    async fn drain(&mut self) {
        while let Some(finished) = self.tasks.try_join_next() {
            log_panic(finished);
        }
        if self.tasks.is_empty() {
            return;
        }
        info!(
            running = self.tasks.len(),
            timeout = ?self.settings.drain_timeout,
            "stopping: waiting for the running tasks (stop again to cancel them)"
        );
        let deadline = tokio::time::sleep(self.settings.drain_timeout);
        tokio::pin!(deadline);
        let abort = self.ctx.abort.clone();
        loop {
            tokio::select! {
                finished = self.tasks.join_next() => match finished {
                    Some(finished) => log_panic(finished),
                    None => break,
                },
                _ = &mut deadline, if !abort.is_cancelled() => {
                    warn!("drain timeout: cancelling the running tasks, they go back to the queue");
                    abort.cancel();
                }
            }
        }
    }
}

/// Acknowledges, rejects or requeues the message as the task decided.
async fn settle(delivery: &Delivery, disposition: Disposition) {
    let result = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Reject => delivery.reject(BasicRejectOptions { requeue: false }).await,
        Disposition::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
    };
    match result {
        Ok(true) => {}
        Ok(false) => warn!(%disposition, "the message's channel is closed; RabbitMQ redelivers it"),
        Err(err) => {
            warn!(error = %err, %disposition, "cannot settle the message; RabbitMQ redelivers it");
        }
    }
}

/// The delivery's attempt count, from the `x-delivery-count` header of quorum queues.
fn delivery_info(delivery: &Delivery) -> DeliveryInfo {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-delivery-count"))
        .and_then(integer);
    DeliveryInfo {
        earlier_attempts: count.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        redelivered: delivery.redelivered || count.is_some_and(|n| n > 0),
    }
}

/// The value of an integer header, whatever its AMQP width.
fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        _ => None,
    }
}

fn log_panic(finished: Result<(), tokio::task::JoinError>) {
    if let Err(err) = finished {
        error!(error = %err, "a task handler panicked; its message will be redelivered");
    }
}

/// The pauses between attempts at reconnecting to RabbitMQ.
fn reconnect_delays() -> ExponentialBackoff {
    runner::backoff::exponential(FIRST_RECONNECT, MAX_RECONNECT)
}
