//! `POST /v1/data_processor/upload`: the HTTP side of an upload, over [`crate::ingest`],
//! which streams it to `raw_data/<task_id>.csv` at constant memory (temporary file, then
//! rename), records the task and queues it.
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
//! In embedded mode, the engine may aggregate the upload while it arrives.
//! When the task cannot be queued, the answer is 503, the task is marked FAILED with the
//! reason and its upload is removed: the client uploads again later.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use task_protocol::{Accepted, ErrorBody, TaskStatus};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::{ApiError, SharedState, request_span};
use crate::filenames::sanitize_filename;
use crate::ingest::{Ingest, IngestError};

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

/// A CSV upload's text: its first line is the header `Song,Date,Number of Plays`.
pub struct PlaysCsv;

impl utoipa::PartialSchema for PlaysCsv {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^Song,Date,Number of Plays(\r?\n|$)"))
            .description(Some(
                "A CSV whose first line is `Song,Date,Number of Plays`",
            ))
            .into()
    }
}

impl utoipa::ToSchema for PlaysCsv {}

/// The file of a multipart upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadFile {
    /// The CSV file, `Song,Date,Number of Plays`.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

/// Uploads a CSV; the task is recorded once the whole file is received.
#[utoipa::path(
    post,
    path = "/v1/data_processor/upload",
    tag = "tasks",
    params(("filename" = Option<String>, Query, description = "The file's name when the body is the CSV itself")),
    request_body(
        description = "The CSV as a multipart field `file`, or as the body itself",
        content(
            (UploadFile = "multipart/form-data"),
            (PlaysCsv = "text/csv"),
            (PlaysCsv = "application/csv"),
            (PlaysCsv = "text/plain"),
            (PlaysCsv = "application/octet-stream"),
        )
    ),
    responses(
        (status = 202, description = "Received: the task is recorded", body = Accepted, links(
            ("status" = (operation_id = "status", parameters(("task_id" = "$response.body#/task_id")))),
            ("status_by_old_path" = (operation_id = "status_by_old_path", parameters(("task_id" = "$response.body#/task_id")))),
            ("download" = (operation_id = "download", parameters(("task_id" = "$response.body#/task_id")))),
            ("cancel" = (operation_id = "cancel", parameters(("task_id" = "$response.body#/task_id")))),
        )),
        (status = 400, description = "Malformed upload, empty, or not `Song,Date,Number of Plays`", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 408, description = "The upload was too slow", body = ErrorBody),
        (status = 413, description = "Larger than `MAX_UPLOAD_BYTES`", body = ErrorBody),
        (status = 415, description = "Another content type", body = ErrorBody),
        (status = 503, description = "Database, queue or storage unreachable, or too many uploads at once",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 507, description = "The server's disk is full", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub async fn upload(
    State(state): State<SharedState>,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let form = UploadForm::of(&request)?;
    let ingest = Ingest::new(&state.store, &state.storage, &state.queue, &state.uploads);
    let framing = if form.multipart { MULTIPART_FRAMING } else { 0 };
    let upload = ingest
        .start(content_length(request.headers()), framing)
        .await?;
    request_span::record_task(upload.id());
    let request = request.map(|body| Body::from_stream(upload.watch(body.into_data_stream())));

    let id = if form.multipart {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| upload.stopped(format!("malformed multipart body: {e}")))?
                .ok_or_else(|| {
                    ApiError::bad_request("the multipart body has no field named \"file\"")
                })?;
            if field.name() == Some("file") {
                let filename = field.file_name().and_then(sanitize_filename);
                break upload
                    .receive(field, filename.or_else(|| form.filename()))
                    .await?;
            }
        }
    } else {
        let body = request.into_body().into_data_stream();
        upload.receive(body, form.filename()).await?
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            task_id: id,
            status: TaskStatus::Received,
        }),
    ))
}

/// What the request says of its upload before its body: the query, and whether the body is
/// multipart or the CSV itself (400 for a malformed query, 415 for another content type).
struct UploadForm {
    query: UploadQuery,
    multipart: bool,
}

impl UploadForm {
    fn of(request: &Request) -> Result<UploadForm, ApiError> {
        let Query(query) = Query::<UploadQuery>::try_from_uri(request.uri())
            .map_err(|e| ApiError::bad_request(format!("malformed query: {}", e.body_text())))?;
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
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
        Ok(UploadForm { query, multipart })
    }

    /// The file's name given by the query, made safe.
    fn filename(&self) -> Option<String> {
        self.query.filename.as_deref().and_then(sanitize_filename)
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

/// The answer to a refused upload.
impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> ApiError {
        let message = error.to_string();
        match error {
            IngestError::TooLarge(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message),
            IngestError::Busy => ApiError::unavailable(message, BUSY_RETRY_AFTER_SECS),
            IngestError::TooSlow(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, message),
            IngestError::Interrupted(message) => ApiError::bad_request(message),
            IngestError::NotPlayCounts(_) | IngestError::Empty => ApiError::bad_request(message),
            IngestError::Storage(e) => ApiError::storage("cannot store the upload", e),
            IngestError::Bucket(e) => e.into(),
            IngestError::Store(e) => e.into(),
            IngestError::Queue(e) => e.into(),
        }
    }
}
