//! Task status, task lists and cancellation.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use task_protocol::TaskStatus;
use tokio::time::{Duration, Instant};

use super::openapi::{TaskConflict, TaskErrors};
use super::view::task_view;
use super::{ApiError, SharedState, TaskId};
use task_protocol::{ErrorBody, TaskView};
use utoipa::{IntoParams, ToSchema};

/// Tasks per page unless `page_size` says otherwise.
const DEFAULT_PAGE_SIZE: u64 = 20;
/// Largest `page_size`.
const MAX_PAGE_SIZE: u64 = 100;
/// Largest `page`: its offset fits the databases' 64-bit integers, and an `f64` in the API's
/// description holds it exactly.
const MAX_PAGE: u64 = 1_000_000_000_000;

/// Longest `wait` of a status request.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Query of the status endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Seconds to hold the answer while the task is unfinished (long polling): the answer
    /// comes as soon as the task is DONE, FAILED or CANCELLED, or when the time is up.
    #[param(value_type = Option<f64>, minimum = 0, maximum = 60)]
    wait: Option<String>,
}

/// `GET /v1/tasks/status/{task_id}`: the path of the system we replace for
/// [`status`].
#[utoipa::path(
    get,
    path = "/v1/tasks/status/{task_id}",
    tag = "tasks",
    params(("task_id" = Uuid, Path, description = "The task's id"), StatusQuery),
    responses(
        (status = 200, description = "The task", body = TaskView),
        TaskErrors,
    ),
    security((), ("bearer" = [])),
)]
pub async fn status_by_old_path(
    state: State<SharedState>,
    id: TaskId,
    query: Result<Query<StatusQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<TaskView>, ApiError> {
    status(state, id, query, headers).await
}

/// `GET /v1/tasks/{task_id}`: the task, at once or, with `?wait=SECONDS`, as soon as it is
/// finished (at most that long).
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}",
    tag = "tasks",
    params(("task_id" = Uuid, Path, description = "The task's id"), StatusQuery),
    responses(
        (status = 200, description = "The task", body = TaskView),
        TaskErrors,
    ),
    security((), ("bearer" = [])),
)]
pub async fn status(
    State(state): State<SharedState>,
    TaskId(id): TaskId,
    query: Result<Query<StatusQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<TaskView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let deadline = Instant::now() + parse_wait(query.wait.as_deref())?;
    loop {
        // Created before reading, so that a change right after the read wakes us.
        let changed = state.store.changed();
        let task = state
            .store
            .get(id)
            .await?
            .ok_or_else(|| ApiError::task_not_found(id))?;
        if task.status.is_terminal() || Instant::now() >= deadline {
            return Ok(Json(task_view(task, &state.base_url(&headers))));
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The `wait` of a status request: seconds from 0 to [`MAX_WAIT`], fractions allowed.
fn parse_wait(text: Option<&str>) -> Result<Duration, ApiError> {
    let Some(text) = text else {
        return Ok(Duration::ZERO);
    };
    text.parse::<f64>()
        .ok()
        .filter(|seconds| (0.0..=MAX_WAIT.as_secs_f64()).contains(seconds))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid wait {:?}: expected seconds from 0 to {}",
                text.chars().take(40).collect::<String>(),
                MAX_WAIT.as_secs()
            ))
        })
}

/// `DELETE /v1/tasks/{task_id}`: cancels the task unless it is finished (409).
#[utoipa::path(
    delete,
    path = "/v1/tasks/{task_id}",
    tag = "tasks",
    params(("task_id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Cancelled", body = TaskView),
        (status = 409, description = "The task has already ended", body = TaskConflict),
        TaskErrors,
    ),
    security((), ("bearer" = [])),
)]
pub async fn cancel(
    State(state): State<SharedState>,
    TaskId(id): TaskId,
    headers: HeaderMap,
) -> Result<Json<TaskView>, ApiError> {
    let task = state
        .store
        .cancel(id)
        .await?
        .ok_or_else(|| ApiError::task_not_found(id))?;
    let status = task.status;
    let view = task_view(task, &state.base_url(&headers));
    if status != TaskStatus::Cancelled {
        return Err(ApiError::conflict(
            format!("the task is already {status} and cannot be cancelled"),
            view,
        ));
    }
    state.queue.cancel(id);
    tracing::info!("cancelled");
    Ok(Json(view))
}

/// Query of `GET /v1/tasks`, as text so that bad numbers get a clear message.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The page, from 1.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1_000_000_000_000.0)]
    page: Option<String>,
    /// Tasks per page, 1 to 100 (default 20).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    page_size: Option<String>,
}

/// One page of the task list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// All tasks, on every page.
    count: u64,
    page: u64,
    page_size: u64,
    prev_url: Option<String>,
    next_url: Option<String>,
    results: Vec<TaskView>,
}

/// `GET /v1/tasks?page=&page_size=`: tasks, newest first.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks, newest first", body = TaskList),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn list(
    State(state): State<SharedState>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<TaskList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let page = parse_number("page", query.page.as_deref(), 1, MAX_PAGE)?;
    let page_size = parse_number(
        "page_size",
        query.page_size.as_deref(),
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let found = state.store.list(page, page_size).await?;
    let base = state.base_url(&headers);
    let page_url = |page: u64| format!("{base}/v1/tasks?page={page}&page_size={page_size}");
    let last_page = found.count.div_ceil(page_size).max(1);
    Ok(Json(TaskList {
        count: found.count,
        page,
        page_size,
        prev_url: (page > 1).then(|| page_url((page - 1).min(last_page))),
        next_url: (page < last_page).then(|| page_url(page + 1)),
        results: found
            .tasks
            .into_iter()
            .map(|task| task_view(task, &base))
            .collect(),
    }))
}

/// A number from 1 to `max`, `default` when absent.
fn parse_number(name: &str, text: Option<&str>, default: u64, max: u64) -> Result<u64, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "invalid {name} {:?}: expected a whole number from 1 to {max}",
            text.chars().take(40).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::{Duration, parse_number, parse_wait};

    #[test]
    fn numbers() {
        assert_eq!(parse_number("page", None, 1, 10).unwrap(), 1);
        assert!(parse_number("page", Some(""), 1, 10).is_err());
        assert_eq!(parse_number("page", Some("7"), 1, 10).unwrap(), 7);
        assert!(parse_number("page", Some("0"), 1, 10).is_err());
        assert!(parse_number("page", Some("11"), 1, 10).is_err());
        assert!(parse_number("page", Some("-1"), 1, 10).is_err());
        assert!(parse_number("page", Some("x"), 1, 10).is_err());
    }

    #[test]
    fn waits() {
        assert_eq!(parse_wait(None).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("2")).unwrap(), Duration::from_secs(2));
        assert_eq!(parse_wait(Some("0.5")).unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait(Some("60")).unwrap(), Duration::from_secs(60));
        for bad in ["", "61", "-1", "x", "NaN", "inf"] {
            assert!(parse_wait(Some(bad)).is_err(), "{bad}");
        }
    }
}
