//! The JSON bodies of the public API, written by the task manager and read by the client:
//! one type for each, so that the two cannot drift apart.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::TaskStatus;

/// Where clients and workers find the task manager when no URL is configured.
pub const DEFAULT_TASK_MANAGER_URL: &str = "http://127.0.0.1:5000";

/// The answer to an accepted upload (`202 Accepted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Accepted {
    pub task_id: Uuid,
    pub status: TaskStatus,
}

/// A task as the API shows it (status endpoint, task endpoint, lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    pub task_id: Uuid,
    pub status: TaskStatus,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// The uploaded file's (sanitized) name.
    pub filename: Option<String>,
    #[serde(default)]
    pub input_bytes: u64,
    /// 0.0 to 1.0.
    #[serde(default)]
    pub progress: f64,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub groups: u64,
    #[serde(default)]
    pub output_bytes: u64,
    /// Absolute URL of the result, when DONE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_link: Option<String>,
    /// Why the task failed, when FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339, UTC: when the task's upload and result were deleted, being older than the
    /// server's retention; its result can no longer be downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
}

/// The body of every error answer: `{"error": "..."}`, with the task's fields beside it when
/// the error is about a task's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_back_and_omits_what_is_unset() {
        let view = TaskView {
            task_id: Uuid::new_v4(),
            status: TaskStatus::Processing,
            created_at: "2020-09-13T12:26:40.123Z".into(),
            updated_at: "2020-09-13T12:26:41.000Z".into(),
            filename: Some("plays.csv".into()),
            input_bytes: 10,
            progress: 0.5,
            rows: 3,
            groups: 0,
            output_bytes: 0,
            download_link: None,
            error: None,
            expired_at: None,
        };
        let json = serde_json::to_value(&view).unwrap();
        for unset in ["download_link", "error", "expired_at"] {
            assert!(json.get(unset).is_none(), "{unset}");
        }
        assert_eq!(json["status"], "PROCESSING");
        assert_eq!(serde_json::from_value::<TaskView>(json).unwrap(), view);
    }
}
