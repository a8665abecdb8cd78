//! What the task manager, the workers and the clients say to each other:
//!
//! - [`status`]: a task's status, as every party spells it;
//! - [`api`]: the public API's JSON bodies (server and client);
//! - [`queue`]: the task message on RabbitMQ and the queue's declaration;
//! - [`events`]: the worker's callback events and their answer;
//! - [`storage`]: the layout of the storage they share.

pub mod api;
pub mod events;
pub mod queue;
pub mod status;
pub mod storage;

pub use api::{Accepted, DEFAULT_TASK_MANAGER_URL, ErrorBody, TaskView};
pub use events::{EventAck, WorkerEvent, WorkerReport, events_path};
#[cfg(feature = "amqp")]
pub use queue::declare_task_queue;
pub use queue::{DEFAULT_QUEUE_NAME, QUEUE_DELIVERY_LIMIT, TaskMessage, dead_letter_queue};
pub use status::TaskStatus;
pub use storage::{DEFAULT_STORAGE_DIR, processed_data_path, raw_data_path};
