//! JSON errors: `{"error": "..."}` with the status code that fits, and the task's fields
//! when the error is about a task's state.

use std::io;

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::queue::QueueError;
use crate::store::StoreError;
use storage::StorageError;
use task_protocol::TaskView;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Boxed: most errors have none.
    task: Option<Box<TaskView>>,
    /// Seconds for the `Retry-After` header of a 503.
    retry_after: Option<u32>,
}

/// `Retry-After` of the answers while the database is unavailable.
const DATABASE_RETRY_AFTER_SECS: u32 = 5;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            task: None,
            retry_after: None,
        }
    }

    /// 503 with `Retry-After: retry_after_secs`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn task_not_found(id: uuid::Uuid) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("task {id} not found"))
    }

    /// A conflict with the task's state; the answer carries the task's fields too.
    pub fn conflict(message: impl Into<String>, task: TaskView) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            message: message.into(),
            task: Some(Box::new(task)),
            retry_after: None,
        }
    }

    /// A failure on the server's side, logged here; `what` is what could not be done.
    pub fn internal(what: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!("{what}: {error}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what}: {error}"),
        )
    }

    /// A failure to store a file: 507 when the disk is full.
    pub fn storage(what: &str, error: io::Error) -> ApiError {
        if error.kind() == io::ErrorKind::StorageFull {
            tracing::error!("{what}: {error}");
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("{what}: the server's disk is full"),
            );
        }
        ApiError::internal(what, error)
    }
}

/// `Retry-After` of the answers while the bucket is unavailable.
const BUCKET_RETRY_AFTER_SECS: u32 = 10;

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> ApiError {
        crate::metrics::storage_failed();
        match error {
            StorageError::Unavailable { .. } => {
                tracing::error!("{error}");
                ApiError::unavailable(
                    format!("the storage is unavailable, try again later: {error}"),
                    BUCKET_RETRY_AFTER_SECS,
                )
            }
            StorageError::Io { what, source } => ApiError::storage(&what, source),
            other => ApiError::internal("storage", other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Database(_) => {
                tracing::error!("{error}");
                ApiError::unavailable(
                    "the task database is unavailable, try again later",
                    DATABASE_RETRY_AFTER_SECS,
                )
            }
            other => ApiError::internal("task database", other),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> ApiError {
        tracing::error!("{error}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the task cannot be queued, try again later: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = match self.task.map(|task| serde_json::to_value(*task)) {
            Some(Ok(Value::Object(fields))) => fields,
            _ => Map::new(),
        };
        body.insert("error".into(), Value::String(self.message));
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
