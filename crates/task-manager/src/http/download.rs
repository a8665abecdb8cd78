//! `GET /v1/data_processor/download/{task_id}`: the result CSV, streamed from the storage.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use task_protocol::TaskStatus;
use task_protocol::processed_data_path;

use super::openapi::{TaskConflict, TaskErrors};
use super::view::task_view;
use super::{ApiError, SharedState, TaskId};
use crate::filenames::download_filename;
use task_protocol::ErrorBody;

/// The result of a DONE task; 409 with the task's fields otherwise.
#[utoipa::path(
    get,
    path = "/v1/data_processor/download/{task_id}",
    tag = "tasks",
    params(("task_id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The result CSV, `Song,Date,Number of Plays`", body = String,
            content_type = "text/csv",
            headers(("Content-Disposition" = String, description = "attachment; filename=\"<name>_aggregated.csv\""))),
        (status = 409, description = "The task is not DONE", body = TaskConflict),
        (status = 410, description = "The result was deleted (`RETENTION`)", body = ErrorBody),
        TaskErrors,
    ),
    security((), ("bearer" = [])),
)]
pub async fn download(
    State(state): State<SharedState>,
    TaskId(id): TaskId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = state
        .store
        .get(id)
        .await?
        .ok_or_else(|| ApiError::task_not_found(id))?;
    if task.status != TaskStatus::Done {
        let message = match (task.status, task.error.as_deref()) {
            (TaskStatus::Failed, Some(error)) => format!("the task FAILED: {error}"),
            (status, _) => format!("the result is not available: the task is {status}"),
        };
        return Err(ApiError::conflict(
            message,
            task_view(task, &state.base_url(&headers)),
        ));
    }
    if task.expired_at.is_some() {
        let retention = state
            .retention
            .map(|keep| {
                format!(
                    " (kept for {}: RETENTION)",
                    humantime::format_duration(keep)
                )
            })
            .unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::GONE,
            format!("the result of task {id} has expired and was deleted{retention}"),
        ));
    }
    let Some(result) = state.storage.download(&processed_data_path(id)).await? else {
        tracing::error!("the result is missing from {}", state.storage.describe());
        return Err(ApiError::new(
            StatusCode::GONE,
            format!("the result of task {id} is no longer available"),
        ));
    };
    let filename = download_filename(id, task.original_filename.as_deref());
    Ok((
        [
            (CONTENT_TYPE, "text/csv".to_string()),
            (CONTENT_LENGTH, result.len.to_string()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(result.body),
    )
        .into_response())
}
