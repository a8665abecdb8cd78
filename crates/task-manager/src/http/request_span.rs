//! Each request is a span: its method, path and request id (the client's `x-request-id`, or
//! a new UUID), echoed in the answer's `x-request-id`; handlers about one task record its
//! `task_id` in it, so every line logged while the request is served names both.

use axum::Router;
use axum::http::{HeaderName, Request};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;
use uuid::Uuid;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's request id longer than this is cut in the logs (the answer echoes it whole).
const LOGGED_ID_CHARS: usize = 128;

/// `router` with a span around each request and its request id set and echoed.
pub fn layer(router: Router) -> Router {
    // The last layer added runs first: the id is set, then the span made, then the id echoed.
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

fn request_span<B>(request: &Request<B>) -> Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
        .unwrap_or_default();
    let id: String = id.chars().take(LOGGED_ID_CHARS).collect();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
        task_id = tracing::field::Empty,
    )
}

/// Names the task a request is about in its span.
pub fn record_task(id: Uuid) {
    Span::current().record("task_id", tracing::field::display(id));
}
