//! `GET /health`: the database, the queue and the bucket (if any) are reachable.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::SharedState;

/// 200 when the database, the queue and the bucket work, else 503; the body says which failed.
pub async fn health(State(state): State<SharedState>) -> (StatusCode, Json<Value>) {
    let database = state.store.ping().await.map_err(|e| e.to_string());
    let queue = state.queue.health().await.map_err(|e| e.to_string());
    let storage = match state.storage.bucket() {
        Some(bucket) => bucket.check().await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let healthy = database.is_ok() && queue.is_ok() && storage.is_ok();
    let show = |check: Result<(), String>| check.err().unwrap_or_else(|| "ok".to_string());
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "database": show(database),
        "queue": show(queue),
        "storage": show(storage),
        "mode": state.queue.kind(),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
