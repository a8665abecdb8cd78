//! `POST /v1/data_processor/upload`: streams the upload to `raw_data/<task_id>.csv` at
//! constant memory (temporary file, then rename), records the task and queues it.
//!
//! Accepts multipart/form-data with a field `file`, or a raw body with a CSV content type.
//! While the bytes arrive, the upload is refused with 413 as soon as it passes
//! `MAX_UPLOAD_BYTES`, and with 400 when its first line is not the header
//! `Song,Date,Number of Plays`; a refused upload leaves no file and records no task.
//! When the task cannot be queued, the answer is 503, the task is marked FAILED with the
//! reason and its upload is removed: the client uploads again later.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use task_protocol::TaskStatus;
use uuid::Uuid;

use super::{ApiError, SharedState};
use crate::storage::sanitize_filename;
use spool::Spool;

mod spool;

/// Content types accepted as a raw CSV body.
const RAW_TYPES: [&str; 4] = [
    "text/csv",
    "application/csv",
    "text/plain",
    "application/octet-stream",
];

/// The answer to an accepted upload.
#[derive(Debug, Serialize)]
pub struct Accepted {
    task_id: Uuid,
    status: TaskStatus,
}

pub async fn upload(
    State(state): State<SharedState>,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();

    let temp = state
        .storage
        .upload_temp_file()
        .map_err(|e| ApiError::storage("cannot store the upload", e))?;
    let file = temp
        .as_file()
        .try_clone()
        .map_err(|e| ApiError::storage("cannot store the upload", e))?;
    let mut writer = Spool::new(file);
    let limit = state.max_upload_bytes;

    let (bytes, filename) = if essence == "multipart/form-data" {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
                .ok_or_else(|| {
                    ApiError::bad_request("the multipart body has no field named \"file\"")
                })?;
            if field.name() == Some("file") {
                let filename = field.file_name().and_then(sanitize_filename);
                break (copy(field, &mut writer, limit).await?, filename);
            }
        }
    } else if RAW_TYPES.contains(&essence.as_str()) {
        let body = request.into_body().into_data_stream();
        (copy(body, &mut writer, limit).await?, None)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported Content-Type {content_type:?}: send multipart/form-data with a \
                 field \"file\", or the CSV itself as text/csv"
            ),
        ));
    };
    if bytes == 0 {
        return Err(ApiError::bad_request(
            "the uploaded file is empty: expected a CSV with the header \"Song,Date,Number of Plays\"",
        ));
    }

    writer
        .finish()
        .await
        .map_err(|e| ApiError::storage("cannot store the upload", e))?;
    let id = Uuid::new_v4();
    let input = state.storage.input_path(id);
    temp.persist(&input)
        .map_err(|e| ApiError::storage("cannot store the upload", e.error))?;

    if let Err(e) = state.store.insert(id, filename.as_deref(), bytes).await {
        remove(&input).await;
        return Err(e.into());
    }
    if let Err(e) = state.queue.submit(id).await {
        if let Err(db) = state.store.fail(id, &format!("not queued: {e}")).await {
            tracing::error!(task_id = %id, "cannot mark the task FAILED: {db}");
        }
        remove(&input).await;
        return Err(e.into());
    }
    tracing::info!(task_id = %id, bytes, "upload accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            task_id: id,
            status: TaskStatus::Received,
        }),
    ))
}

/// Writes a stream of chunks; returns the bytes written. Fails with 413 as soon as more than
/// `limit` bytes arrived, and with 400 when the input does not start with the CSV header.
/// The beginning is held back until its header line is complete and checked.
async fn copy<S, E>(chunks: S, writer: &mut Spool, limit: u64) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut chunks = std::pin::pin!(chunks);
    let mut bytes = 0u64;
    let mut head = Some(Vec::new());
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("the upload was interrupted: {e}")))?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(too_large(limit));
        }
        let data = match &mut head {
            Some(held) => {
                held.extend_from_slice(&chunk);
                if !header_checked(held, false)? {
                    continue;
                }
                head.take().unwrap_or_default().into()
            }
            None => chunk,
        };
        write(writer, data).await?;
    }
    if let Some(held) = head.filter(|held| !held.is_empty()) {
        header_checked(&held, true)?;
        write(writer, held.into()).await?;
    }
    Ok(bytes)
}

/// Whether `head` holds the whole header line, which is right; 400 when it is wrong.
fn header_checked(head: &[u8], at_end: bool) -> Result<bool, ApiError> {
    match processor::check_header(head, at_end) {
        Ok(checked) => Ok(checked.is_some()),
        Err(e) => Err(ApiError::bad_request(format!(
            "the upload is not a play-count CSV: {e}"
        ))),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload is larger than the server's limit of {limit} bytes (MAX_UPLOAD_BYTES)"),
    )
}

async fn write(writer: &mut Spool, data: Bytes) -> Result<(), ApiError> {
    writer
        .write(data)
        .await
        .map_err(|e| ApiError::storage("cannot store the upload", e))
}

async fn remove(path: &std::path::Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}
