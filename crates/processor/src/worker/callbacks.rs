//! Reports to the task manager: `POST <base>/internal/v1/tasks/{id}/events`, retried with
//! exponential backoff on connection errors, 5xx answers and refused tokens (401, 403: a
//! configuration to fix, the task must not be lost meanwhile), never on other 4xx answers.
//! Every report names this worker process, for the task manager's leases.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use task_protocol::{EventAck, WorkerEvent, WorkerReport, events_path};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error_chain::error_chain;
use super::metrics::{self, Retry};

/// First and longest wait between two attempts.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// How long an event is retried before the worker gives the task back to the queue.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// Time limit of one request; progress reports get a shorter one, not to hold up the task.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The task manager refused the event (e.g. 404 for an unknown task): retrying cannot help.
    #[error("the task manager refused the event: HTTP {status}: {body}")]
    Refused { status: StatusCode, body: String },
    /// The task manager could not be reached (or kept failing) until the worker gave up.
    #[error("the task manager is unavailable: {0}")]
    Unavailable(String),
}

/// HTTP client for the worker's events.
#[derive(Debug, Clone)]
pub struct Callbacks {
    http: reqwest::Client,
    base_url: String,
    /// This worker process's id (see `identity`).
    worker: String,
}

/// Outcome of one attempt.
enum Attempt {
    Accepted(EventAck),
    Refused(CallbackError),
    Retryable(String),
}

impl Callbacks {
    /// A client for the task manager at `base_url` (e.g. `http://127.0.0.1:5000`), sending
    /// `token` (its `WORKER_TOKEN`) when given, reporting as `worker`.
    pub fn new(base_url: &str, token: Option<&str>, worker: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .default_headers(crate::bearer::headers(token)?)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Callbacks {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            worker,
        })
    }

    /// Sends `event`, retrying until it is accepted, refused, [`GIVE_UP_AFTER`] has passed
    /// or `abort` is cancelled (then it is `Unavailable`).
    pub async fn send(
        &self,
        task_id: Uuid,
        event: &WorkerEvent,
        abort: &CancellationToken,
    ) -> Result<EventAck, CallbackError> {
        let started = Instant::now();
        let mut delays = runner::backoff::exponential(FIRST_RETRY, MAX_RETRY);
        loop {
            let problem = match self.attempt(task_id, event, REQUEST_TIMEOUT).await {
                Attempt::Accepted(ack) => return Ok(ack),
                Attempt::Refused(err) => return Err(err),
                Attempt::Retryable(problem) => problem,
            };
            let delay = delays.next().unwrap_or(MAX_RETRY);
            if started.elapsed() + delay > GIVE_UP_AFTER {
                return Err(CallbackError::Unavailable(format!(
                    "{problem} (gave up after {:?})",
                    started.elapsed()
                )));
            }
            tracing::warn!(%problem, ?delay, "callback failed; retrying");
            metrics::retried(Retry::Callback);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = abort.cancelled() => {
                    return Err(CallbackError::Unavailable(format!("{problem} (worker stopping)")));
                }
            }
        }
    }

    /// Sends `event` once (progress reports: the next one supersedes a lost one).
    pub async fn send_once(
        &self,
        task_id: Uuid,
        event: &WorkerEvent,
    ) -> Result<EventAck, CallbackError> {
        match self.attempt(task_id, event, PROGRESS_TIMEOUT).await {
            Attempt::Accepted(ack) => Ok(ack),
            Attempt::Refused(err) => Err(err),
            Attempt::Retryable(problem) => Err(CallbackError::Unavailable(problem)),
        }
    }

    async fn attempt(&self, task_id: Uuid, event: &WorkerEvent, timeout: Duration) -> Attempt {
        let url = format!("{}{}", self.base_url, events_path(task_id));
        let report = WorkerReport {
            event: event.clone(),
            worker: Some(self.worker.clone()),
        };
        let response = match self
            .http
            .post(&url)
            .json(&report)
            .timeout(timeout)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => return Attempt::Retryable(format!("POST {url}: {}", error_chain(&err))),
        };
        let status = response.status();
        if status.is_success() {
            return match response.json::<EventAck>().await {
                Ok(ack) => Attempt::Accepted(ack),
                Err(err) => Attempt::Retryable(format!(
                    "POST {url}: unreadable answer: {}",
                    error_chain(&err)
                )),
            };
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(500).collect();
        let retryable = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Attempt::Retryable(format!(
                "POST {url}: HTTP {status}: {body} (is WORKER_TOKEN the task manager's?)"
            ))
        } else if retryable {
            Attempt::Retryable(format!("POST {url}: HTTP {status}: {body}"))
        } else {
            Attempt::Refused(CallbackError::Refused { status, body })
        }
    }
}
