//! The HTTP API (axum on hyper): routes, shared state and the task id extractor.

mod auth;
mod download;
mod error;
mod events;
mod health;
mod linger;
mod metrics;
mod openapi;
mod page;
mod request_span;
mod tasks;
mod upload;
mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::post;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;

use crate::ingest::UploadLimits;
use crate::queue::TaskQueue;
use crate::store::Store;
use crate::tokens::Tokens;
pub use error::ApiError;
use storage::Storage;

/// What the handlers share.
pub struct AppState {
    pub store: Store,
    pub storage: Storage,
    pub queue: TaskQueue,
    /// `PUBLIC_URL`, without a trailing slash.
    pub public_url: Option<String>,
    /// Base URL used when a request has no usable `Host` header.
    pub fallback_base_url: String,
    /// Whether requests must carry a token (any token is configured).
    pub authentication: bool,
    /// Tokens accepted on `/v1` (`API_TOKEN`).
    pub api_tokens: Tokens,
    /// Tokens accepted on the workers' callbacks (`WORKER_TOKEN`).
    pub worker_tokens: Tokens,
    /// Tokens accepted on `/metrics` (`METRICS_TOKEN`); none: open.
    pub metrics_tokens: Tokens,
    /// Limits of the uploads.
    pub uploads: UploadLimits,
    /// How long finished tasks keep their files (`RETENTION`); `None`: forever.
    pub retention: Option<std::time::Duration>,
    /// How long a download's presigned URL is valid, when downloads are redirected to the
    /// bucket (`DOWNLOAD_REDIRECT`); `None`: they stream through the task manager.
    pub download_redirect: Option<Duration>,
    /// How long a worker's lease on a task lasts without a report (`TASK_LEASE_TIMEOUT`).
    pub lease_timeout: Duration,
}

impl AppState {
    /// The base of absolute URLs for a request with these headers.
    pub fn base_url(&self, headers: &axum::http::HeaderMap) -> String {
        view::base_url(self.public_url.as_deref(), headers, &self.fallback_base_url)
    }
}

type SharedState = Arc<AppState>;

/// All routes of the service; the public ones registered with their OpenAPI description.
pub fn router(state: SharedState) -> Router {
    let api = OpenApiRouter::new()
        .routes(routes!(upload::upload))
        .routes(routes!(tasks::status_by_old_path))
        .routes(routes!(download::download))
        .routes(routes!(tasks::list))
        .routes(routes!(tasks::status, tasks::cancel))
        .layer(DefaultBodyLimit::disable())
        .route_layer(from_fn_with_state(state.clone(), auth::require_api_token));
    let metrics = OpenApiRouter::new()
        .routes(routes!(metrics::metrics))
        .route_layer(from_fn_with_state(
            state.clone(),
            auth::require_metrics_token,
        ));
    let (public, description) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(api)
        .merge(metrics)
        .routes(routes!(health::health))
        .split_for_parts();
    let callbacks = Router::new()
        .route(metrics::CALLBACK_ROUTE, post(events::post_event))
        .route_layer(from_fn_with_state(
            state.clone(),
            auth::require_worker_token,
        ));
    let router = Router::new()
        .merge(public)
        .merge(callbacks)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", description))
        .merge(page::routes())
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(metrics::track))
        .layer(from_fn(linger::read_to_end))
        .with_state(state);
    request_span::layer(router)
}

async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// The `{task_id}` of a path, a UUID; 400 when malformed.
pub struct TaskId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for TaskId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<TaskId, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("malformed task id: {e}")))?;
        let id = Uuid::parse_str(&text).map_err(|_| {
            let shown: String = text.chars().take(80).collect();
            ApiError::bad_request(format!(
                "malformed task id {shown:?}: expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8"
            ))
        })?;
        request_span::record_task(id);
        Ok(TaskId(id))
    }
}
