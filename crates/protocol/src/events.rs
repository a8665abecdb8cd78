//! What a worker reports about a task (`POST /internal/v1/tasks/{id}/events`) and the
//! task manager's answer.
//!
//! A worker names itself in its reports ([`WorkerReport::worker`]) so that the task manager
//! can keep a lease per task: the worker that started a task owns it while it keeps
//! reporting, and another worker handed the same task (its message came back from RabbitMQ)
//! learns from [`EventAck::elsewhere`] that it must not run it. A report without a worker id,
//! as older workers send, is applied without any lease.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::TaskStatus;

/// Path (under the task manager's base URL) where the worker posts [`WorkerReport`]s.
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
    /// The worker gives the task back unfinished (it is stopping, or its message went back
    /// to the queue): its lease ends, so that the next worker may start the task at once.
    /// Task managers without leases refuse it; it is only ever a hint.
    Released,
}

/// The body of a report: the event, and the reporting worker's id beside the event's own
/// fields (`{"event": "started", "worker": "host-42-1a2b3c4d"}`), so that the events of
/// workers without an id read as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    #[serde(flatten)]
    pub event: WorkerEvent,
    /// The reporting worker process (`<hostname>-<pid>-<random>`); `None`: no lease check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The task manager's answer to an event: the task's status after applying it.
/// A worker that reads `CANCELLED` stops working on the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAck {
    pub status: TaskStatus,
    /// Another worker holds the task's live lease: the event was not applied, and this
    /// worker must not run the task (or stop running it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub elsewhere: bool,
}

impl EventAck {
    /// The answer of an applied event (or one that found the task ended).
    pub fn of(status: TaskStatus) -> Self {
        EventAck {
            status,
            elsewhere: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    /// The bodies older workers send, and newer task managers must read.
    fn old_bodies() -> Vec<(serde_json::Value, WorkerEvent)> {
        vec![
            (json!({"event": "started"}), WorkerEvent::Started),
            (
                json!({"event": "progress", "progress": 0.25, "rows": 12}),
                WorkerEvent::Progress {
                    progress: 0.25,
                    rows: 12,
                },
            ),
            (
                json!({"event": "done", "rows": 7, "groups": 4, "output_bytes": 120}),
                WorkerEvent::Done {
                    rows: 7,
                    groups: 4,
                    output_bytes: 120,
                },
            ),
            (
                json!({"event": "failed", "error": "line 2: bad"}),
                WorkerEvent::Failed {
                    error: "line 2: bad".into(),
                },
            ),
        ]
    }

    #[test]
    fn reports_without_a_worker_read_as_before() {
        for (body, event) in old_bodies() {
            let report: WorkerReport = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(report.event, event, "{body}");
            assert_eq!(report.worker, None, "{body}");
            // Written back without a worker: exactly the old body.
            assert_eq!(serde_json::to_value(&report).unwrap(), body);
        }
    }

    #[test]
    fn reports_with_a_worker_are_read_by_old_and_new_readers() {
        for (old, event) in old_bodies() {
            let report = WorkerReport {
                event: event.clone(),
                worker: Some("host-42-1a2b3c4d".into()),
            };
            let json = serde_json::to_value(&report).unwrap();
            assert_eq!(json["worker"], "host-42-1a2b3c4d");
            assert_eq!(json["event"], old["event"]);
            assert_eq!(
                serde_json::from_value::<WorkerReport>(json.clone()).unwrap(),
                report
            );
            // A task manager that reads the bare event ignores the worker id.
            assert_eq!(serde_json::from_value::<WorkerEvent>(json).unwrap(), event);
        }
        let released = serde_json::to_value(WorkerReport {
            event: WorkerEvent::Released,
            worker: Some("w".into()),
        })
        .unwrap();
        assert_eq!(released, json!({"event": "released", "worker": "w"}));
    }

    #[test]
    fn answers_mention_elsewhere_only_when_set() {
        let plain = EventAck::of(TaskStatus::Processing);
        let json = serde_json::to_value(plain).unwrap();
        assert_eq!(json, json!({"status": "PROCESSING"}));
        // An older task manager's answer reads as not elsewhere.
        assert_eq!(serde_json::from_value::<EventAck>(json).unwrap(), plain);
        let elsewhere = EventAck {
            status: TaskStatus::Processing,
            elsewhere: true,
        };
        let json = serde_json::to_value(elsewhere).unwrap();
        assert_eq!(json, json!({"status": "PROCESSING", "elsewhere": true}));
        assert_eq!(serde_json::from_value::<EventAck>(json).unwrap(), elsewhere);
    }
}
