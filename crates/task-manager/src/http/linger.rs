//! A request body that is read to its end, or for a while, even when the handler answers
//! before it: an upload refused after its first bytes (no CSV header, too large, too slow
//! to start) still gets its answer. Closing a socket with unread data makes the kernel reset
//! the connection, and a client still sending then sees the reset instead of the answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

/// Longest time the rest of a refused body is read and thrown away.
const LINGER: Duration = Duration::from_secs(10);
/// Longest pause of the client while it is.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Most bytes thrown away.
const LINGER_BYTES: u64 = 256 << 20;

/// Makes the request's body (when it has one) [`Lingering`].
pub async fn read_to_end(request: Request, next: Next) -> Response {
    let request = if request.body().is_end_stream() {
        request
    } else {
        request.map(|body| Body::from_stream(Lingering::new(body.into_data_stream())))
    };
    next.run(request).await
}

/// `S`, whose unread rest is drained in the background when it is dropped before its end.
pub struct Lingering<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    inner: Option<S>,
    ended: bool,
}

impl<S> Lingering<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    pub fn new(inner: S) -> Lingering<S> {
        Lingering {
            inner: Some(inner),
            ended: false,
        }
    }
}

impl<S> Stream for Lingering<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        next
    }
}

impl<S> Drop for Lingering<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.ended {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(inner));
        }
    }
}

/// Reads and drops `body` until its end or a limit.
async fn drain<S>(mut body: S)
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    let deadline = Instant::now() + LINGER;
    let mut read = 0u64;
    while read < LINGER_BYTES {
        let wait = (Instant::now() + LINGER_IDLE).min(deadline);
        match tokio::time::timeout_at(wait, body.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len() as u64,
            _ => break,
        }
    }
}
