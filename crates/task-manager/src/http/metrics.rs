//! `GET /metrics` in Prometheus' text format (open, or behind `METRICS_TOKEN`), and the
//! middleware that counts and times every request by its route.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::SharedState;
use crate::metrics::{self, Scrape};
use task_protocol::ErrorBody;

/// The route of the uploads, whose refusals are counted by status.
const UPLOAD_ROUTE: &str = "/v1/data_processor/upload";
/// The route of the workers' callbacks, whose errors are counted by status.
pub const CALLBACK_ROUTE: &str = "/internal/v1/tasks/{task_id}/events";

/// Every metric, with the gauges of the tasks and the queue read now.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus' text format", body = String,
            content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "`METRICS_TOKEN` is set and the request lacks it", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub async fn metrics(State(state): State<SharedState>) -> Response {
    let mut scrape = Scrape::default();
    match state.store.count_by_status().await {
        Ok(tasks) => scrape.tasks = Some(tasks),
        Err(e) => tracing::warn!("metrics: cannot count the tasks: {e}"),
    }
    match state.store.oldest_waiting().await {
        Ok(oldest) => scrape.oldest_waiting = oldest,
        Err(e) => tracing::warn!("metrics: cannot read the oldest waiting task: {e}"),
    }
    match state.queue.stats().await {
        Ok(stats) => scrape.queue = Some(stats),
        Err(e) => tracing::warn!("metrics: cannot read the queue: {e}"),
    }
    let text = scrape.render();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Counts and times a request under its matched route (`unmatched` for the others, so that
/// scanners cannot make up labels).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let uploading = (route == UPLOAD_ROUTE).then(metrics::upload_started);
    let response = next.run(request).await;
    drop(uploading);
    let status = response.status();
    metrics::http_request(&method, &route, status.as_u16(), started.elapsed());
    if status.is_client_error() || status.is_server_error() {
        match route.as_str() {
            UPLOAD_ROUTE => metrics::upload_refused(status.as_u16()),
            CALLBACK_ROUTE => metrics::callback_failed(status.as_u16()),
            _ => {}
        }
    }
    response
}
