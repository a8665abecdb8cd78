//! Upload ingestion: one upload from its first byte to a queued task, whatever protocol
//! brings the bytes (HTTP only decodes its request into a body and maps [`IngestError`] to
//! its answers). Ingestion owns the upload's limits (size, concurrency, pauses and total
//! time: [`clock`]), the check of its header line ([`receive`]), where it is written
//! ([`sink`]: its file, [`spool`], synced before it is accepted when `SYNC_UPLOADS`, and its
//! object when the storage is a bucket), the engine that may aggregate it while it arrives
//! ([`arrival`]), and the steps that make it a task: recorded, renamed to the task's input
//! (or its object completed), queued. A refused upload leaves no file or object and records
//! no task, or marks the task it recorded FAILED.

pub mod arrival;
mod clock;
mod flush_behind;
mod receive;
mod sink;
mod spool;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use tempfile::NamedTempFile;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::queue::{Early, EarlyUpload, QueueError, TaskQueue};
use crate::store::{Store, StoreError};
use arrival::Arrival;
use clock::BodyClock;
pub use clock::BodyError;
use sink::Sink;
use spool::Spool;
use storage::{Storage, StorageError};
use task_protocol::raw_data_path;

/// How much, how many and how slowly clients may upload, and how uploads are stored.
pub struct UploadLimits {
    /// Largest upload accepted, in bytes.
    pub max_bytes: u64,
    /// One permit per upload being received.
    pub slots: Arc<Semaphore>,
    /// Longest pause between two pieces of a body.
    pub idle_timeout: Duration,
    /// Longest time to receive a whole body.
    pub total_timeout: Duration,
    /// Sync an upload to the disk before accepting it.
    pub sync: bool,
    /// Aggregate uploads while they arrive when the queue can.
    pub early: bool,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The upload is, or announces, more than `MAX_UPLOAD_BYTES` (the limit).
    #[error("the upload is larger than the server's limit of {0} bytes (MAX_UPLOAD_BYTES)")]
    TooLarge(u64),
    /// `MAX_CONCURRENT_UPLOADS` uploads are being received.
    #[error("too many uploads at the same time (MAX_CONCURRENT_UPLOADS), try again later")]
    Busy,
    /// The body was cut off by `UPLOAD_IDLE_TIMEOUT` or `UPLOAD_TIMEOUT`.
    #[error("{0}: the upload was too slow (UPLOAD_IDLE_TIMEOUT, UPLOAD_TIMEOUT)")]
    TooSlow(String),
    /// The body stopped short, or could not be decoded.
    #[error("{0}")]
    Interrupted(String),
    /// The upload does not start with the play-count header.
    #[error("the upload is not a play-count CSV: {0}")]
    NotPlayCounts(engine::Error),
    #[error(
        "the uploaded file is empty: expected a CSV with the header \"Song,Date,Number of Plays\""
    )]
    Empty,
    /// The upload's file could not be written, synced or renamed.
    #[error("cannot store the upload: {0}")]
    Storage(io::Error),
    /// The bucket could not take the upload.
    #[error("cannot store the upload: {0}")]
    Bucket(StorageError),
    /// The task could not be recorded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task could not be queued (it is marked FAILED and its upload removed).
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What an upload goes through.
#[derive(Clone, Copy)]
pub struct Ingest<'a> {
    store: &'a Store,
    storage: &'a Storage,
    queue: &'a TaskQueue,
    limits: &'a UploadLimits,
}

impl<'a> Ingest<'a> {
    pub fn new(
        store: &'a Store,
        storage: &'a Storage,
        queue: &'a TaskQueue,
        limits: &'a UploadLimits,
    ) -> Ingest<'a> {
        Ingest {
            store,
            storage,
            queue,
            limits,
        }
    }

    /// Starts an upload whose body announces `len` bytes, of which up to `framing` are not
    /// the file's (multipart). Refused before its body is read when `len` cannot fit or when
    /// `MAX_CONCURRENT_UPLOADS` uploads are being received; then its file is opened and the
    /// queue may start aggregating it while it arrives.
    pub async fn start(self, len: Option<u64>, framing: u64) -> Result<Upload<'a>, IngestError> {
        let limits = self.limits;
        if len.is_some_and(|length| length > limits.max_bytes.saturating_add(framing)) {
            return Err(IngestError::TooLarge(limits.max_bytes));
        }
        let slot = limits.slots.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!("upload refused: MAX_CONCURRENT_UPLOADS uploads are being received");
            IngestError::Busy
        })?;

        // The task's id, and its aggregation started while the upload arrives when possible.
        let id = Uuid::new_v4();
        let bucket = self.storage.bucket();
        let object = match bucket {
            Some(bucket) => Some(
                bucket
                    .writer(&raw_data_path(id))
                    .await
                    .map_err(IngestError::Bucket)?,
            ),
            None => None,
        };
        let temp = self
            .storage
            .upload_temp_file()
            .map_err(IngestError::Storage)?;
        let file = temp.as_file().try_clone().map_err(IngestError::Storage)?;
        let arrival = Arrival::new();
        let arriving = self.storage.relative_path(temp.path());
        // With a bucket, a worker elsewhere cannot follow the local file: only the embedded
        // engine aggregates the upload while it arrives.
        let early_possible = limits.early && (bucket.is_none() || self.queue.is_embedded());
        let early = match (early_possible, temp.reopen(), arriving) {
            (true, Ok(reader), Some(arriving)) => {
                let upload = EarlyUpload {
                    id,
                    file: reader,
                    arriving,
                    arrival: arrival.clone(),
                    len,
                };
                self.queue.start_early(upload).await
            }
            _ => None,
        };
        let follow = matches!(early, Some(Early::Local(_)));
        // With a bucket the local file is only for the engine that follows it, and the
        // bucket makes the upload durable.
        let spool = (bucket.is_none() || follow).then(|| {
            let sync = limits.sync && bucket.is_none();
            Spool::new(file, sync, follow.then_some(arrival))
        });
        let sink = Sink { spool, object };
        let clock = BodyClock::new(limits.idle_timeout, limits.total_timeout);
        Ok(Upload {
            clock,
            sink,
            early,
            temp,
            _slot: slot,
            ingest: self,
            id,
        })
    }
}

/// An upload being received. Dropped before [`Upload::receive`] ends (refused), it leaves
/// nothing: its writer stops, its early run is discarded, its file removed, its slot freed.
pub struct Upload<'a> {
    // Dropped in this order.
    clock: BodyClock,
    sink: Sink,
    early: Option<Early>,
    temp: NamedTempFile,
    _slot: OwnedSemaphorePermit,
    ingest: Ingest<'a>,
    id: Uuid,
}

impl Upload<'_> {
    /// The id of the task this upload becomes.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// `body`, watched by the upload's time limits: it ends with an error when the client is
    /// too slow. The body handed to [`Upload::receive`] must come through here.
    pub fn watch<S>(&self, body: S) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    {
        self.clock.watch(body)
    }

    /// The refusal of an upload whose body stopped with `message` while it was decoded:
    /// [`IngestError::TooSlow`] when its time limits cut it, else
    /// [`IngestError::Interrupted`].
    pub fn stopped(&self, message: String) -> IngestError {
        self.clock.error(message)
    }

    /// Receives the file's bytes, `chunks`, and makes the upload a task named `filename`:
    /// the file is synced (when asked to), the task recorded, the file renamed to the task's
    /// input, and the task queued. Returns the task's id.
    pub async fn receive<S, E>(
        mut self,
        chunks: S,
        filename: Option<String>,
    ) -> Result<Uuid, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let limit = self.ingest.limits.max_bytes;
        let bytes = receive::copy(chunks, &mut self.sink, limit, &self.clock).await?;
        if bytes == 0 {
            return Err(IngestError::Empty);
        }
        self.sink.finish().await?;

        let Ingest {
            store,
            storage,
            queue,
            ..
        } = self.ingest;
        let id = self.id;
        // Recorded before it is renamed: a worker following the upload takes the rename for
        // the sign that the task exists.
        let recorded = store.insert(id, filename.as_deref(), bytes).await;
        let input = raw_data_path(id);
        if let Err(e) = recorded {
            if storage.bucket().is_some() {
                remove(storage, &input).await;
            }
            return Err(e.into());
        }
        if storage.bucket().is_none()
            && let Err(e) = self.temp.persist(storage.input_path(id))
        {
            mark_failed(store, id, "the upload could not be stored").await;
            return Err(IngestError::Storage(e.error));
        }
        if let Err(e) = queue.submit_upload(id, self.early).await {
            mark_failed(store, id, &format!("not queued: {e}")).await;
            remove(storage, &input).await;
            return Err(e.into());
        }
        tracing::info!(bytes, "upload accepted");
        crate::metrics::upload_accepted(bytes);
        Ok(id)
    }
}

/// Marks a recorded task FAILED with `reason`, logging when even that fails.
async fn mark_failed(store: &Store, id: Uuid, reason: &str) {
    if let Err(db) = store.fail(id, reason).await {
        tracing::error!(task_id = %id, "cannot mark the task FAILED: {db}");
    }
}

/// Removes a refused upload's stored input.
async fn remove(storage: &Storage, key: &str) {
    if let Err(e) = storage.remove(key).await {
        tracing::warn!("cannot remove {key}: {e}");
    }
}
