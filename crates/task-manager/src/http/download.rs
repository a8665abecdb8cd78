//! `GET /v1/data_processor/download/{task_id}`: the result CSV, streamed from the storage, or
//! with `DOWNLOAD_REDIRECT` a 307 to a presigned URL of the bucket that answers with the same
//! headers, so that the bytes do not pass through the task manager.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
};
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
        (status = 307, description = "With `DOWNLOAD_REDIRECT`: the result is at a presigned URL of the bucket, valid for `DOWNLOAD_URL_EXPIRY`, which answers as the 200 here does",
            headers(("Location" = String, description = "The presigned URL"))),
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
    let key = processed_data_path(id);
    let filename = download_filename(id, task.original_filename.as_deref());
    let disposition = format!("attachment; filename=\"{filename}\"");
    let missing = || {
        tracing::error!("the result is missing from {}", state.storage.describe());
        ApiError::new(
            StatusCode::GONE,
            format!("the result of task {id} is no longer available"),
        )
    };
    if let (Some(expires_in), Some(bucket)) = (state.download_redirect, state.storage.bucket()) {
        let url = bucket
            .download_url(&key, CSV, &disposition, expires_in)
            .await?
            .ok_or_else(missing)?;
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(LOCATION, url), (CACHE_CONTROL, "no-store".to_string())],
        )
            .into_response());
    }
    let result = state.storage.download(&key).await?.ok_or_else(missing)?;
    Ok((
        [
            (CONTENT_TYPE, CSV.to_string()),
            (CONTENT_LENGTH, result.len.to_string()),
            (CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(result.body),
    )
        .into_response())
}

/// The result's media type.
const CSV: &str = "text/csv";
