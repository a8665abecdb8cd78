//! Receiving an upload's bytes into its sink: the size limit (`MAX_UPLOAD_BYTES`), checked
//! as the bytes arrive, and the check that the upload starts with the play-count header, for
//! which its beginning is held back until its first line is complete.

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};

use super::IngestError;
use super::clock::BodyClock;
use super::sink::Sink;

/// Writes a stream of chunks; returns the bytes written. Fails with
/// [`IngestError::TooLarge`] as soon as more than `limit` bytes arrived, and with
/// [`IngestError::NotPlayCounts`] when the input does not start with the CSV header.
/// The beginning is held back until its header line is complete and checked.
pub async fn copy<S, E>(
    chunks: S,
    writer: &mut Sink,
    limit: u64,
    clock: &BodyClock,
) -> Result<u64, IngestError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut chunks = std::pin::pin!(chunks);
    let mut bytes = 0u64;
    let mut head = Some(Vec::new());
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| clock.error(format!("the upload was interrupted: {e}")))?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(IngestError::TooLarge(limit));
        }
        let data = match &mut head {
            Some(held) => {
                held.extend_from_slice(&chunk);
                if !header_checked(held, false)? {
                    continue;
                }
                head.take().unwrap_or_default().into()
            }
            None => chunk,
        };
        writer.write(data).await?;
    }
    if let Some(held) = head.filter(|held| !held.is_empty()) {
        header_checked(&held, true)?;
        writer.write(held.into()).await?;
    }
    Ok(bytes)
}

/// Whether `head` holds the whole header line, which is right; an error when it is wrong.
fn header_checked(head: &[u8], at_end: bool) -> Result<bool, IngestError> {
    match engine::check_header(head, at_end) {
        Ok(checked) => Ok(checked.is_some()),
        Err(e) => Err(IngestError::NotPlayCounts(e)),
    }
}
