//! Objects written as S3 multipart uploads: parts of exactly [`PART_BYTES`] (the last one
//! shorter), a few in flight, so that memory stays bounded whatever the object's size. An
//! object appears only when its upload completes; an upload that fails or is dropped before
//! that is aborted, and leaves nothing. Parts are scheduled here rather than by
//! `object_store::WriteMultipart`, whose abort cannot be tried again: an abort is retried
//! while the bucket is unreachable, so that the parts sent are not left behind.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use crate::{Bucket, StorageError};

/// Size of a part: S3 allows 10,000 parts, which makes objects of up to 100 GB.
pub const PART_BYTES: usize = 10 << 20;
/// Parts being sent at once, at most: the memory of an upload is about one more than this.
const PARTS_IN_FLIGHT: usize = 3;
/// Bytes read from a local file at once, when one is stored.
const FILE_READ: usize = 1 << 20;
/// Attempts at aborting an unfinished upload, and the pauses between them.
const ABORT_ATTEMPTS: u32 = 10;
const FIRST_ABORT_RETRY: Duration = Duration::from_secs(1);
const LAST_ABORT_RETRY: Duration = Duration::from_secs(30);

/// An object being written; see the module's documentation.
pub struct ObjectWriter {
    upload: Option<Box<dyn MultipartUpload>>,
    /// Bytes not sent yet, fewer than a part.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    /// Parts being sent.
    parts: JoinSet<object_store::Result<()>>,
    parts_sent: usize,
    key: String,
    written: u64,
}

impl Bucket {
    /// Starts writing the object `key`.
    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, StorageError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| StorageError::object(key, e))?;
        Ok(ObjectWriter {
            upload: Some(upload),
            pending: VecDeque::new(),
            pending_bytes: 0,
            parts: JoinSet::new(),
            parts_sent: 0,
            key: key.to_string(),
            written: 0,
        })
    }

    /// Stores the local file `path` as the object `key`; returns its size.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let what = || format!("cannot read {}", path.display());
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::io(what(), e))?;
        let mut writer = self.writer(key).await?;
        loop {
            let mut buffer = BytesMut::with_capacity(FILE_READ);
            let read = file
                .read_buf(&mut buffer)
                .await
                .map_err(|e| StorageError::io(what(), e))?;
            if read == 0 {
                break;
            }
            writer.write(buffer.freeze()).await?;
        }
        writer.finish().await
    }
}

impl ObjectWriter {
    /// Adds `bytes` to the object; waits while [`PARTS_IN_FLIGHT`] parts are being sent. After
    /// an error the upload is aborted.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        self.written += bytes.len() as u64;
        self.pending_bytes += bytes.len();
        self.pending.push_back(bytes);
        while self.pending_bytes >= PART_BYTES {
            let part = self.take(PART_BYTES);
            self.send(part).await?;
        }
        Ok(())
    }

    /// Completes the upload: the object is there once this returns; returns its size.
    pub async fn finish(mut self) -> Result<u64, StorageError> {
        if self.pending_bytes > 0 || self.parts_sent == 0 {
            let part = self.take(self.pending_bytes);
            self.send(part).await?;
        }
        self.wait_for_parts(0).await?;
        let Some(mut upload) = self.upload.take() else {
            return Err(self.ended());
        };
        match upload.complete().await {
            Ok(_) => Ok(self.written),
            Err(e) => {
                abort_in_background(upload, self.key.clone());
                Err(StorageError::object(&self.key, e))
            }
        }
    }

    /// Drops the upload and its parts (an upload dropped unfinished is aborted too, in the
    /// background).
    pub async fn abort(mut self) {
        self.parts.shutdown().await;
        if let Some(upload) = self.upload.take() {
            abort(upload, &self.key).await;
        }
    }

    /// The first `len` pending bytes, as one part.
    fn take(&mut self, len: usize) -> PutPayload {
        let mut part = Vec::new();
        let mut left = len;
        while left > 0 {
            let Some(mut bytes) = self.pending.pop_front() else {
                break;
            };
            if bytes.len() > left {
                self.pending.push_front(bytes.split_off(left));
            }
            left -= bytes.len();
            part.push(bytes);
        }
        self.pending_bytes -= len - left;
        part.into_iter().collect()
    }

    /// Sends a part once fewer than [`PARTS_IN_FLIGHT`] are in flight.
    async fn send(&mut self, part: PutPayload) -> Result<(), StorageError> {
        self.wait_for_parts(PARTS_IN_FLIGHT - 1).await?;
        let Some(upload) = self.upload.as_mut() else {
            return Err(self.ended());
        };
        self.parts.spawn(upload.put_part(part));
        self.parts_sent += 1;
        Ok(())
    }

    /// Waits until at most `in_flight` parts are being sent; a part that failed aborts the
    /// upload.
    async fn wait_for_parts(&mut self, in_flight: usize) -> Result<(), StorageError> {
        while self.parts.len() > in_flight {
            let failed = match self.parts.join_next().await {
                Some(Ok(Ok(()))) | None => continue,
                Some(Ok(Err(e))) => StorageError::object(&self.key, e),
                Some(Err(e)) => StorageError::Unavailable {
                    key: self.key.clone(),
                    message: format!("sending a part failed: {e}"),
                },
            };
            self.parts.abort_all();
            if let Some(upload) = self.upload.take() {
                abort_in_background(upload, self.key.clone());
            }
            return Err(failed);
        }
        Ok(())
    }

    fn ended(&self) -> StorageError {
        StorageError::Unavailable {
            key: self.key.clone(),
            message: "the upload was aborted".into(),
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        self.parts.abort_all();
        abort_in_background(upload, std::mem::take(&mut self.key));
    }
}

/// Aborts an upload without waiting for it: the error that ended it is answered at once,
/// while the abort may wait for the bucket to come back.
fn abort_in_background(upload: Box<dyn MultipartUpload>, key: String) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move { abort(upload, &key).await });
        }
        Err(_) => tracing::warn!("the unfinished upload of {key} was left to the bucket"),
    }
}

/// Aborts an upload, trying again for a few minutes while the bucket cannot be reached (the
/// client's own retries end sooner), so that its parts are not left behind.
async fn abort(mut upload: Box<dyn MultipartUpload>, key: &str) {
    let mut delay = FIRST_ABORT_RETRY;
    for attempt in 1..=ABORT_ATTEMPTS {
        match upload.abort().await {
            Ok(()) => return,
            Err(e) if attempt == ABORT_ATTEMPTS => {
                // The bucket's lifecycle rule for incomplete uploads removes it, if it has one.
                tracing::warn!(
                    "cannot abort the unfinished upload of {key}, left to the bucket: {e}"
                );
            }
            Err(e) => {
                tracing::debug!("aborting the unfinished upload of {key} failed, retrying: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(LAST_ABORT_RETRY);
            }
        }
    }
}
