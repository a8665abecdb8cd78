//! Retention (`RETENTION`): the uploads and results of tasks finished longer ago than it are
//! deleted from the storage, and the tasks marked expired (their status stays; a download
//! answers 410). Tasks still running are never touched.

use std::time::Duration;

use storage::Storage;
use task_protocol::{processed_data_path, raw_data_path};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError, now_millis};

/// Tasks expired per query.
const BATCH: u64 = 100;
/// Bounds of the pause between two sweeps (a tenth of the retention in between).
const MIN_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(600);

/// Sweeps every so often until `stop`.
pub fn spawn(
    store: Store,
    storage: Storage,
    keep: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let pause = (keep / 10).clamp(MIN_PAUSE, MAX_PAUSE);
    tokio::spawn(async move {
        loop {
            match sweep(&store, &storage, keep).await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(expired, "deleted the files of expired tasks"),
                Err(e) => tracing::warn!("the retention sweep failed, retrying later: {e}"),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    })
}

/// Deletes the files of the tasks finished before `keep` ago; returns how many expired.
/// A task whose files cannot be deleted now (the bucket unavailable) is left for the next sweep.
pub async fn sweep(store: &Store, storage: &Storage, keep: Duration) -> Result<usize, StoreError> {
    let keep_millis = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let before = now_millis().saturating_sub(keep_millis);
    let mut expired = 0;
    loop {
        let ids = store.expirable(before, BATCH).await?;
        let mut progressed = false;
        for &id in &ids {
            let removed = async {
                storage.remove(&raw_data_path(id)).await?;
                storage.remove(&processed_data_path(id)).await
            };
            match removed.await {
                Ok(()) => {
                    store.mark_expired(id).await?;
                    tracing::debug!(task_id = %id, "expired");
                    expired += 1;
                    progressed = true;
                }
                Err(e) => {
                    tracing::warn!(task_id = %id, "cannot delete an expired task's files: {e}")
                }
            }
        }
        if (ids.len() as u64) < BATCH || !progressed {
            return Ok(expired);
        }
    }
}
