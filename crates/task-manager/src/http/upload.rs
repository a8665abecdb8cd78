//! `POST /v1/data_processor/upload`: streams the upload to `raw_data/<task_id>.csv` at
//! constant memory (temporary file, then rename), records the task and queues it.
//!
//! Accepts multipart/form-data with a field `file`, or a raw body with a CSV content type
//! (the cheaper of the two to receive), named by the query parameter `filename`.
//! An upload is refused with 413 before its body is read when its `Content-Length` is over
//! `MAX_UPLOAD_BYTES`, and with 503 (`Retry-After`) when `MAX_CONCURRENT_UPLOADS` uploads are
//! being received. While the bytes arrive, it is refused with 413 as soon as it passes
//! `MAX_UPLOAD_BYTES`, with 400 when its first line is not the header
//! `Song,Date,Number of Plays`, and with 408 when the client pauses longer than
//! `UPLOAD_IDLE_TIMEOUT` or takes longer than `UPLOAD_TIMEOUT` in all; a refused upload leaves
//! no file and records no task.
//! In embedded mode, the engine may aggregate the upload while it arrives ([`Arrival`]).
//! When the task cannot be queued, the answer is 503, the task is marked FAILED with the
//! reason and its upload is removed: the client uploads again later.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use task_protocol::TaskStatus;
use tokio::time::Instant;
use uuid::Uuid;

use super::{ApiError, SharedState};
use crate::ingest::arrival::Arrival;
use crate::ingest::spool::Spool;
use crate::queue::{Early, EarlyUpload};
use crate::storage::sanitize_filename;

/// Room for the multipart framing around the file when the `Content-Length` of a multipart
/// body is compared with `MAX_UPLOAD_BYTES`.
const MULTIPART_FRAMING: u64 = 64 * 1024;
/// `Retry-After` of the answer to an upload beyond `MAX_CONCURRENT_UPLOADS`.
const BUSY_RETRY_AFTER_SECS: u32 = 1;

/// Content types accepted as a raw CSV body.
const RAW_TYPES: [&str; 4] = [
    "text/csv",
    "application/csv",
    "text/plain",
    "application/octet-stream",
];

/// The upload's query: `filename` names a raw body's file (a multipart file's own name comes
/// first), for the result's download name.
#[derive(Debug, Default, Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

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
    let limits = &state.uploads;
    let Query(query) = Query::<UploadQuery>::try_from_uri(request.uri())
        .map_err(|e| ApiError::bad_request(format!("malformed query: {}", e.body_text())))?;
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
    let multipart = essence == "multipart/form-data";
    if !multipart && !RAW_TYPES.contains(&essence.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported Content-Type {content_type:?}: send multipart/form-data with a \
                 field \"file\", or the CSV itself as text/csv"
            ),
        ));
    }
    // Refused before reading the body when its announced length cannot fit.
    let framing = if multipart { MULTIPART_FRAMING } else { 0 };
    if content_length(request.headers())
        .is_some_and(|length| length > limits.max_bytes.saturating_add(framing))
    {
        return Err(too_large(limits.max_bytes));
    }
    let _slot = limits.slots.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!("upload refused: MAX_CONCURRENT_UPLOADS uploads are being received");
        ApiError::unavailable(
            "too many uploads at the same time (MAX_CONCURRENT_UPLOADS), try again later",
            BUSY_RETRY_AFTER_SECS,
        )
    })?;

    let temp = state
        .storage
        .upload_temp_file()
        .map_err(|e| ApiError::storage("cannot store the upload", e))?;
    let file = temp
        .as_file()
        .try_clone()
        .map_err(|e| ApiError::storage("cannot store the upload", e))?;
    // The task's id, and its aggregation started while the upload arrives when possible.
    let id = Uuid::new_v4();
    let arrival = Arrival::new();
    let arriving = state.storage.relative_path(temp.path());
    let early = match (limits.early, temp.reopen(), arriving) {
        (true, Ok(reader), Some(arriving)) => {
            let upload = EarlyUpload {
                id,
                file: reader,
                arriving,
                arrival: arrival.clone(),
                len: content_length(request.headers()),
            };
            state.queue.start_early(upload).await
        }
        _ => None,
    };
    let follow = matches!(early, Some(Early::Local(_)));
    let mut writer = Spool::new(file, limits.sync, follow.then_some(arrival));
    let limit = limits.max_bytes;
    let clock = BodyClock::new(limits.idle_timeout, limits.total_timeout);
    let request = request.map(|body| Body::from_stream(clock.watch(body.into_data_stream())));

    let (bytes, filename) = if multipart {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| clock.error(format!("malformed multipart body: {e}")))?
                .ok_or_else(|| {
                    ApiError::bad_request("the multipart body has no field named \"file\"")
                })?;
            if field.name() == Some("file") {
                let filename = field.file_name().and_then(sanitize_filename);
                break (copy(field, &mut writer, limit, &clock).await?, filename);
            }
        }
    } else {
        let body = request.into_body().into_data_stream();
        (copy(body, &mut writer, limit, &clock).await?, None)
    };
    let filename = filename.or_else(|| query.filename.as_deref().and_then(sanitize_filename));
    if bytes == 0 {
        return Err(ApiError::bad_request(
            "the uploaded file is empty: expected a CSV with the header \"Song,Date,Number of Plays\"",
        ));
    }

    writer
        .finish()
        .await
        .map_err(|e| ApiError::storage("cannot store the upload", e))?;
    // Recorded before it is renamed: a worker following the upload takes the rename for the
    // sign that the task exists.
    state.store.insert(id, filename.as_deref(), bytes).await?;
    let input = state.storage.input_path(id);
    if let Err(e) = temp.persist(&input) {
        if let Err(db) = state.store.fail(id, "the upload could not be stored").await {
            tracing::error!(task_id = %id, "cannot mark the task FAILED: {db}");
        }
        return Err(ApiError::storage("cannot store the upload", e.error));
    }
    if let Err(e) = state.queue.submit_upload(id, early).await {
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
async fn copy<S, E>(
    chunks: S,
    writer: &mut Spool,
    limit: u64,
    clock: &BodyClock,
) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut chunks = std::pin::pin!(chunks);
    let mut bytes = 0u64;
    let mut head = Some(Vec::new());
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| clock.error(format!("the upload was interrupted: {e}")))?;
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
    match engine::check_header(head, at_end) {
        Ok(checked) => Ok(checked.is_some()),
        Err(e) => Err(ApiError::bad_request(format!(
            "the upload is not a play-count CSV: {e}"
        ))),
    }
}

/// The `Content-Length` header, when present and valid.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The upload's time limits: the body ends with an error when a piece takes longer than
/// the idle timeout, or the whole body longer than the total timeout.
struct BodyClock {
    idle: Duration,
    deadline: Instant,
    timed_out: Arc<AtomicBool>,
}

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("not complete within {0:?}")]
    Total(Duration),
    #[error(transparent)]
    Read(#[from] axum::Error),
}

impl BodyClock {
    fn new(idle: Duration, total: Duration) -> BodyClock {
        BodyClock {
            idle,
            deadline: Instant::now() + total,
            timed_out: Arc::default(),
        }
    }

    /// `body`, cut short with an error when it is too slow.
    fn watch(
        &self,
        body: BodyDataStream,
    ) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
        let (idle, deadline, timed_out) = (self.idle, self.deadline, self.timed_out.clone());
        let total = deadline.saturating_duration_since(Instant::now());
        futures_util::stream::unfold(Some(body), move |body| {
            let timed_out = timed_out.clone();
            async move {
                let mut body = body?;
                let wait = (Instant::now() + idle).min(deadline);
                match tokio::time::timeout_at(wait, body.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                    Ok(Some(Err(e))) => Some((Err(BodyError::Read(e)), None)),
                    Ok(None) => None,
                    Err(_) => {
                        timed_out.store(true, Ordering::Relaxed);
                        let error = if wait < deadline {
                            BodyError::Idle(idle)
                        } else {
                            BodyError::Total(total)
                        };
                        Some((Err(error), None))
                    }
                }
            }
        })
    }

    /// The answer to a body that stopped with `message`: 408 when it was too slow, else 400.
    fn error(&self, message: String) -> ApiError {
        if self.timed_out.load(Ordering::Relaxed) {
            tracing::warn!("upload dropped: {message}");
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("{message}: the upload was too slow (UPLOAD_IDLE_TIMEOUT, UPLOAD_TIMEOUT)"),
            )
        } else {
            ApiError::bad_request(message)
        }
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
