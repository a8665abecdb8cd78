//! The workers' callback: `POST /internal/v1/tasks/{task_id}/events`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use task_protocol::{EventAck, WorkerEvent, WorkerReport, processed_data_path};

use super::{ApiError, SharedState, TaskId};

/// Applies a worker's report under the lease rules (see `store::lease`) and answers the
/// task's status afterwards, and whether another worker holds the task; a task in a terminal
/// status keeps it (a worker reading `CANCELLED` stops).
pub async fn post_event(
    State(state): State<SharedState>,
    TaskId(id): TaskId,
    report: Result<Json<WorkerReport>, JsonRejection>,
) -> Result<Json<EventAck>, ApiError> {
    let Json(WorkerReport { event, worker }) =
        report.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    tracing::debug!(?event, ?worker, "worker event");
    if matches!(event, WorkerEvent::Done { .. })
        && let Ok(false) = state.storage.exists(&processed_data_path(id)).await
    {
        tracing::warn!(
            "DONE reported but the result is missing from {}: do the workers use the same \
             storage (STORAGE_DIR, STORAGE_URL)?",
            state.storage.describe()
        );
    }
    let ack = state
        .store
        .apply_report(id, &event, worker.as_deref(), state.lease_timeout)
        .await?
        .ok_or_else(|| ApiError::task_not_found(id))?;
    Ok(Json(ack))
}
