//! `GET /v1/data_processor/download/{task_id}`: the result CSV, streamed from disk.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use task_protocol::TaskStatus;
use tokio_util::io::ReaderStream;

use super::view::task_view;
use super::{ApiError, SharedState, TaskId};
use crate::storage::download_filename;

/// Read size of the streamed file.
const CHUNK: usize = 256 * 1024;

/// The result of a DONE task; 409 with the task's fields otherwise.
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
    let path = state.storage.output_path(id);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::error!(task_id = %id, "the result {} is missing", path.display());
            return Err(ApiError::new(
                StatusCode::GONE,
                format!("the result of task {id} is no longer available"),
            ));
        }
        Err(e) => return Err(ApiError::internal("cannot open the result", e)),
    };
    let length = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal("cannot read the result", e))?
        .len();
    let filename = download_filename(id, task.original_filename.as_deref());
    Ok((
        [
            (CONTENT_TYPE, "text/csv".to_string()),
            (CONTENT_LENGTH, length.to_string()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(ReaderStream::with_capacity(file, CHUNK)),
    )
        .into_response())
}
