//! The workers' callback: `POST /internal/v1/tasks/{task_id}/events`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use task_protocol::{EventAck, WorkerEvent, processed_data_path};

use super::{ApiError, SharedState, TaskId};

/// Applies a [`WorkerEvent`] and answers the task's status afterwards; a task in a terminal
/// status keeps it (a worker reading `CANCELLED` stops).
pub async fn post_event(
    State(state): State<SharedState>,
    TaskId(id): TaskId,
    event: Result<Json<WorkerEvent>, JsonRejection>,
) -> Result<Json<EventAck>, ApiError> {
    let Json(event) = event.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    tracing::debug!(task_id = %id, ?event, "worker event");
    if matches!(event, WorkerEvent::Done { .. })
        && let Ok(false) = state.storage.exists(&processed_data_path(id)).await
    {
        tracing::warn!(
            task_id = %id,
            "DONE reported but the result is missing from {}: do the workers use the same \
             storage (STORAGE_DIR, STORAGE_URL)?",
            state.storage.describe()
        );
    }
    let status = state
        .store
        .apply_event(id, &event)
        .await?
        .ok_or_else(|| ApiError::task_not_found(id))?;
    Ok(Json(EventAck { status }))
}
