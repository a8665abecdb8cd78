//! What a worker reports about a task (`POST /internal/v1/tasks/{id}/events`) and the
//! task manager's answer.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::TaskStatus;

/// Path (under the task manager's base URL) where the worker posts [`WorkerEvent`]s.
pub fn events_path(task_id: Uuid) -> String {
    format!("/internal/v1/tasks/{task_id}/events")
}

/// What a worker reports about a task. Every event is idempotent: sending it twice
/// has the effect of sending it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// The worker has started on the task.
    Started,
    /// Share of the input read so far (0.0 to 1.0) and rows parsed.
    Progress { progress: f64, rows: u64 },
    /// The result is written to the message's `output_path`.
    Done {
        rows: u64,
        groups: u64,
        output_bytes: u64,
    },
    /// The task cannot be done; `error` is the engine's message (with line number and field).
    Failed { error: String },
}

/// The task manager's answer to an event: the task's status after applying it.
/// A worker that reads `CANCELLED` stops working on the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAck {
    pub status: TaskStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged() {
        let json = serde_json::to_value(WorkerEvent::Done {
            rows: 7,
            groups: 4,
            output_bytes: 120,
        })
        .unwrap();
        assert_eq!(json["event"], "done");
        assert_eq!(json["groups"], 4);
        let back: WorkerEvent = serde_json::from_value(json).unwrap();
        assert!(matches!(back, WorkerEvent::Done { groups: 4, .. }));
    }
}
