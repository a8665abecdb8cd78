//! The workers' callback: `POST /internal/v1/tasks/{task_id}/events`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use task_protocol::{EventAck, WorkerEvent};

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
    if matches!(event, WorkerEvent::Done { .. }) {
        let output = state.storage.output_path(id);
        if !tokio::fs::try_exists(&output).await.unwrap_or(false) {
            tracing::warn!(
                task_id = %id,
                "DONE reported but {} is missing: do the workers share STORAGE_DIR?",
                output.display()
            );
        }
    }
    let status = state
        .store
        .apply_event(id, &event)
        .await?
        .ok_or_else(|| ApiError::task_not_found(id))?;
    Ok(Json(EventAck { status }))
}
