//! The task queue: its message and its declaration on RabbitMQ, the same for the task
//! manager and the workers.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::storage::{processed_data_path, raw_data_path};

/// The durable RabbitMQ queue carrying [`TaskMessage`]s when `QUEUE_NAME` is not set.
pub const DEFAULT_QUEUE_NAME: &str = "data_processor.tasks";

/// The message published on the queue for each task.
///
/// Paths are relative to the shared storage root (`STORAGE_DIR`), so that the task manager
/// and the workers may mount it at different places.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub task_id: Uuid,
    /// Input CSV, e.g. `raw_data/<task_id>.csv`.
    pub input_path: String,
    /// Where the result goes, e.g. `processed_data/<task_id>.csv`.
    pub output_path: String,
    /// Set when the message is published as the upload starts, so that a worker aggregates
    /// the upload while it arrives: the file it is being written to. The task exists once
    /// the upload is complete, which the task manager marks by renaming this file to
    /// `input_path` after recording the task; the upload was refused (and there is no task)
    /// when this file disappears without being renamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arriving_path: Option<String>,
    /// With `arriving_path`: the most bytes the arriving file can reach (the upload's
    /// `Content-Length`), when known, so that a worker can map the file as it grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arriving_len: Option<u64>,
}

impl TaskMessage {
    /// The message for a task stored under the standard layout.
    pub fn for_task(task_id: Uuid) -> Self {
        TaskMessage {
            task_id,
            input_path: raw_data_path(task_id),
            output_path: processed_data_path(task_id),
            arriving_path: None,
            arriving_len: None,
        }
    }

    /// The message for a task whose upload is still arriving at `arriving_path`, at most
    /// `arriving_len` bytes long when known.
    pub fn arriving(task_id: Uuid, arriving_path: String, arriving_len: Option<u64>) -> Self {
        TaskMessage {
            arriving_path: Some(arriving_path),
            arriving_len,
            ..TaskMessage::for_task(task_id)
        }
    }
}

/// How many times RabbitMQ delivers a task message that keeps coming back (consumer crashed,
/// message requeued) before it dead-letters it. The safety net behind the workers' own,
/// lower limit (`WORKER_MAX_ATTEMPTS`), which reports the task FAILED first.
pub const QUEUE_DELIVERY_LIMIT: u32 = 20;

/// The dead-letter queue of task queue `queue`: where rejected and abandoned messages go.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the task queue as every party must (RabbitMQ refuses a second declaration with
/// other options, so the task manager and the workers both call this one): a durable quorum
/// queue with a delivery limit of [`QUEUE_DELIVERY_LIMIT`], whose rejected messages go,
/// through the default exchange, to the durable [`dead_letter_queue`], declared first.
/// A classic queue of the same name, from an older version, must be deleted once.
#[cfg(feature = "amqp")]
pub async fn declare_task_queue(
    channel: &lapin::Channel,
    name: &str,
) -> lapin::Result<lapin::Queue> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};

    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead = dead_letter_queue(name);
    channel
        .queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(QUEUE_DELIVERY_LIMIT as i32),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    channel.queue_declare(name.into(), durable, arguments).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_without_an_arriving_upload_keep_their_old_form() {
        let id = Uuid::new_v4();
        let json = serde_json::to_value(TaskMessage::for_task(id)).unwrap();
        assert!(json.get("arriving_path").is_none());
        let old = serde_json::json!({
            "task_id": id,
            "input_path": raw_data_path(id),
            "output_path": processed_data_path(id),
        });
        let back: TaskMessage = serde_json::from_value(old).unwrap();
        assert_eq!(back, TaskMessage::for_task(id));
        for len in [None, Some(1 << 30)] {
            let arriving = TaskMessage::arriving(id, "raw_data/.upload-x.partial".into(), len);
            let json = serde_json::to_string(&arriving).unwrap();
            assert_eq!(json.contains("arriving_len"), len.is_some(), "{json}");
            assert_eq!(
                serde_json::from_str::<TaskMessage>(&json).unwrap(),
                arriving
            );
        }
    }
}
