//! The status of a task, as the public API and the worker's events spell it.

use serde::{Deserialize, Serialize};

/// Status of a task, spelled as the Python system we replace spelled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Received,
    Processing,
    Done,
    Failed,
    Cancelled,
}

impl TaskStatus {
    /// Every status, in the order a task goes through them.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Received,
        TaskStatus::Processing,
        TaskStatus::Done,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// The wire spelling, e.g. `"DONE"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Received => "RECEIVED",
            TaskStatus::Processing => "PROCESSING",
            TaskStatus::Done => "DONE",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    /// True for DONE, FAILED and CANCELLED: the task will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Done | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_spelling_round_trips() {
        for status in [
            TaskStatus::Received,
            TaskStatus::Processing,
            TaskStatus::Done,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<TaskStatus>(&json).unwrap(), status);
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(TaskStatus::parse("done"), None);
    }
}
