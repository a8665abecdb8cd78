//! The time limits of an upload's body: the client may pause at most `UPLOAD_IDLE_TIMEOUT`
//! between two pieces, and take at most `UPLOAD_TIMEOUT` in all. The clock watches the body
//! as it is read, so that a slow client is cut off whatever decodes the body (multipart or
//! raw), and tells a body stopped for slowness (408) from one that broke (400).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::IngestError;

/// The upload's time limits: the body ends with an error when a piece takes longer than
/// the idle timeout, or the whole body longer than the total timeout.
pub struct BodyClock {
    idle: Duration,
    deadline: Instant,
    timed_out: Arc<AtomicBool>,
}

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("not complete within {0:?}")]
    Total(Duration),
    #[error(transparent)]
    Read(#[from] axum::Error),
}

impl BodyClock {
    /// Starts the clock: the total timeout counts from now.
    pub fn new(idle: Duration, total: Duration) -> BodyClock {
        BodyClock {
            idle,
            deadline: Instant::now() + total,
            timed_out: Arc::default(),
        }
    }

    /// `body`, cut short with an error when it is too slow.
    pub fn watch<S>(&self, body: S) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    {
        let (idle, deadline, timed_out) = (self.idle, self.deadline, self.timed_out.clone());
        let total = deadline.saturating_duration_since(Instant::now());
        futures_util::stream::unfold(Some(body), move |body| {
            let timed_out = timed_out.clone();
            async move {
                let mut body = body?;
                let wait = (Instant::now() + idle).min(deadline);
                match tokio::time::timeout_at(wait, body.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                    Ok(Some(Err(e))) => Some((Err(BodyError::Read(e)), None)),
                    Ok(None) => None,
                    Err(_) => {
                        timed_out.store(true, Ordering::Relaxed);
                        let error = if wait < deadline {
                            BodyError::Idle(idle)
                        } else {
                            BodyError::Total(total)
                        };
                        Some((Err(error), None))
                    }
                }
            }
        })
    }

    /// The refusal of a body that stopped with `message`: too slow when the clock cut it,
    /// else interrupted.
    pub fn error(&self, message: String) -> IngestError {
        if self.timed_out.load(Ordering::Relaxed) {
            tracing::warn!("upload dropped: {message}");
            IngestError::TooSlow(message)
        } else {
            IngestError::Interrupted(message)
        }
    }
}
