//! Where accepted tasks go: RabbitMQ (`AMQP_URL` set) or the in-process engine runners
//! (embedded mode).

mod amqp;
mod embedded;

pub use amqp::AmqpPublisher;
pub use embedded::{EarlyRun, EmbeddedQueue};

use std::fs::File;
use std::sync::Arc;

use uuid::Uuid;

use crate::arrival::Arrival;

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

    /// Starts aggregating the upload of the future task `id` while it arrives in `file`,
    /// when this queue can (embedded mode with an idle runner); see [`EmbeddedQueue::start_early`].
    pub fn start_early(
        &self,
        id: Uuid,
        file: File,
        arrival: Arc<Arrival>,
        len: Option<u64>,
    ) -> Option<EarlyRun> {
        match self {
            TaskQueue::Amqp(_) => None,
            TaskQueue::Embedded(queue) => queue.start_early(id, file, arrival, len),
        }
    }

    /// Hands a recorded task over for processing, with its early run if it has one.
    pub async fn submit_upload(&self, id: Uuid, early: Option<EarlyRun>) -> Result<(), QueueError> {
        match (self, early) {
            (TaskQueue::Embedded(queue), Some(early)) => queue.adopt(early),
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
