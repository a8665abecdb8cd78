//! `GET /health`: the database and the queue are reachable.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::SharedState;

/// 200 when both the database and the queue work, else 503; the body says which failed.
pub async fn health(State(state): State<SharedState>) -> (StatusCode, Json<Value>) {
    let database = state.store.ping().await.map_err(|e| e.to_string());
    let queue = state.queue.health().await.map_err(|e| e.to_string());
    let healthy = database.is_ok() && queue.is_ok();
    let show = |check: Result<(), String>| check.err().unwrap_or_else(|| "ok".to_string());
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "database": show(database),
        "queue": show(queue),
        "mode": state.queue.kind(),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
