//! The layout of the storage the task manager and the workers share.

use uuid::Uuid;

/// The storage root when none is configured (`STORAGE_DIR`).
pub const DEFAULT_STORAGE_DIR: &str = "local_storage";

/// Storage-relative path of a task's uploaded input.
pub fn raw_data_path(task_id: Uuid) -> String {
    format!("raw_data/{task_id}.csv")
}

/// Storage-relative path of a task's result.
pub fn processed_data_path(task_id: Uuid) -> String {
    format!("processed_data/{task_id}.csv")
}
