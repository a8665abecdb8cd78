//! `GET /health`: the database, the queue and the bucket (if any) are reachable.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::SharedState;

/// What `/health` answers: `ok`, or the error of each part.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    status: &'static str,
    database: String,
    queue: String,
    storage: String,
    /// `embedded` or `rabbitmq`.
    mode: &'static str,
}

/// 200 when the database, the queue and the bucket work, else 503; the body says which failed.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Everything answers", body = Health),
        (status = 503, description = "A part does not answer; its field says why", body = Health),
    ),
)]
pub async fn health(State(state): State<SharedState>) -> (StatusCode, Json<Health>) {
    let database = state.store.ping().await.map_err(|e| e.to_string());
    let queue = state.queue.health().await.map_err(|e| e.to_string());
    let storage = match state.storage.bucket() {
        Some(bucket) => bucket.check().await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let healthy = database.is_ok() && queue.is_ok() && storage.is_ok();
    let show = |check: Result<(), String>| check.err().unwrap_or_else(|| "ok".to_string());
    let body = Health {
        status: if healthy { "ok" } else { "unavailable" },
        database: show(database),
        queue: show(queue),
        storage: show(storage),
        mode: state.queue.kind(),
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
