//! Where accepted tasks go: RabbitMQ (`AMQP_URL` set) or the in-process engine runners
//! (embedded mode).

mod amqp;
mod embedded;
mod lease_keeper;

pub use amqp::AmqpPublisher;
pub use embedded::{EarlyRun, EmbeddedQueue};
pub use lease_keeper::{LeaseKeeper, LeasePolicy};

use std::fs::File;
use std::sync::Arc;

use task_protocol::TaskMessage;
use uuid::Uuid;

use crate::ingest::arrival::Arrival;

/// An upload that may be aggregated while it arrives.
pub struct EarlyUpload {
    /// The future task's id.
    pub id: Uuid,
    /// The upload's file, open for reading (an open file description of its own: the
    /// writer's may be set for direct I/O).
    pub file: File,
    /// Its path relative to the storage root.
    pub arriving: String,
    pub arrival: Arc<Arrival>,
    /// The body's `Content-Length`, if known.
    pub len: Option<u64>,
}

/// How an upload is being aggregated while it arrives.
pub enum Early {
    /// By the embedded engine.
    Local(EarlyRun),
    /// By a worker, to which the task was published when the upload started.
    Published,
}

/// Why a task could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("RabbitMQ is unavailable: {0}")]
    Unavailable(String),
    #[error("the in-process task queue is full")]
    Full,
    #[error("the task manager is shutting down")]
    Closed,
}

/// The task queue of one of the two modes.
pub enum TaskQueue {
    Amqp(Box<AmqpPublisher>),
    Embedded(Box<EmbeddedQueue>),
}

impl TaskQueue {
    /// Hands a recorded task over for processing.
    pub async fn submit(&self, id: Uuid) -> Result<(), QueueError> {
        match self {
            TaskQueue::Amqp(publisher) => publisher.publish(id).await,
            TaskQueue::Embedded(queue) => queue.submit(id),
        }
    }

    /// Has the upload of the future task `id` aggregated while it arrives, when this queue
    /// can: in embedded mode on an idle runner ([`EmbeddedQueue::start_early`]), reading
    /// `file` as `arrival` reports its bytes; with RabbitMQ by publishing the task at once
    /// with the upload's path, `arriving` (relative to the storage root), for a worker to
    /// follow the file until it is renamed to the task's input.
    pub async fn start_early(&self, upload: EarlyUpload) -> Option<Early> {
        match self {
            TaskQueue::Amqp(publisher) => {
                let message = TaskMessage::arriving(upload.id, upload.arriving, upload.len);
                match publisher.publish_message(&message).await {
                    Ok(()) => Some(Early::Published),
                    Err(e) => {
                        tracing::debug!(task_id = %upload.id, "not announced early: {e}");
                        None
                    }
                }
            }
            TaskQueue::Embedded(queue) => queue
                .start_early(upload.id, upload.file, upload.arrival, upload.len)
                .map(Early::Local),
        }
    }

    /// Hands a recorded task (its upload complete) over for processing.
    pub async fn submit_upload(&self, id: Uuid, early: Option<Early>) -> Result<(), QueueError> {
        match (self, early) {
            (_, Some(Early::Published)) => Ok(()),
            (TaskQueue::Embedded(queue), Some(Early::Local(early))) => queue.adopt(early),
            _ => self.submit(id).await,
        }
    }

    /// Stops the engine working on a task that was just cancelled (embedded mode; a remote
    /// worker learns it from the answer to its next event).
    pub fn cancel(&self, id: Uuid) {
        if let TaskQueue::Embedded(queue) = self {
            queue.cancel(id);
        }
    }

    /// Checks that tasks can be queued (reconnecting to RabbitMQ when needed).
    pub async fn health(&self) -> Result<(), QueueError> {
        match self {
            TaskQueue::Amqp(publisher) => publisher.health().await,
            TaskQueue::Embedded(queue) => queue.health(),
        }
    }

    /// The tasks waiting in the queue and its consumers.
    pub async fn stats(&self) -> Result<(u64, u64), QueueError> {
        match self {
            TaskQueue::Amqp(publisher) => publisher.stats().await,
            TaskQueue::Embedded(queue) => Ok(queue.stats()),
        }
    }

    /// Whether tasks run in this process.
    pub fn is_embedded(&self) -> bool {
        matches!(self, TaskQueue::Embedded(_))
    }

    /// A short name for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskQueue::Amqp(_) => "rabbitmq",
            TaskQueue::Embedded(_) => "embedded",
        }
    }

    /// Closes the connection, or stops the runners (interrupted tasks stay `PROCESSING` and
    /// are queued again at the next start).
    pub async fn shutdown(&self) {
        match self {
            TaskQueue::Amqp(publisher) => publisher.close().await,
            TaskQueue::Embedded(queue) => queue.shutdown().await,
        }
    }
}
