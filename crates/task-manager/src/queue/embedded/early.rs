//! Early runs: the engine started on an upload while it still arrives, on a runner that has
//! nothing else to do, so that aggregating overlaps receiving. An early run is opportunistic:
//! it gives way (is cancelled, its upload then queued as usual) when a queued task needs its
//! runner before the upload is complete, and its result is discarded when the upload fails.

use std::sync::Arc;

use engine::Control;
use parking_lot::Mutex;
use storage::Storage;
use uuid::Uuid;

use super::{Engine, discard_result};

/// The early runs whose upload still arrives, oldest first.
#[derive(Clone, Default)]
pub(super) struct Receiving(Arc<Mutex<Vec<(Uuid, Control)>>>);

impl Receiving {
    fn add(&self, id: Uuid, control: Control) {
        self.0.lock().push((id, control));
    }

    /// Removes `id`; false when it was not there (it gave way).
    fn remove(&self, id: Uuid) -> bool {
        let mut runs = self.0.lock();
        let before = runs.len();
        runs.retain(|(run, _)| *run != id);
        runs.len() < before
    }

    /// Cancels the newest early run, so that its runner takes a queued task.
    pub(super) fn give_way(&self) {
        if let Some((id, control)) = self.0.lock().pop() {
            tracing::info!(task_id = %id, "early aggregation gives way to a queued task");
            control.cancel();
        }
    }

    /// Cancels every early run (shutting down).
    pub(super) fn cancel_all(&self) {
        for (_, control) in self.0.lock().drain(..) {
            control.cancel();
        }
    }
}

/// An engine at work on an upload that still arrives. Dropped without being adopted (the
/// upload failed or was refused), it is cancelled and what it produced is removed.
pub struct EarlyRun {
    id: Uuid,
    control: Control,
    engine: Option<Engine>,
    /// Where its result goes (removed when the run is discarded).
    storage: Storage,
    receiving: Receiving,
}

impl EarlyRun {
    pub(super) fn new(
        id: Uuid,
        control: Control,
        engine: Engine,
        storage: Storage,
        receiving: Receiving,
    ) -> EarlyRun {
        receiving.add(id, control.clone());
        EarlyRun {
            id,
            control,
            engine: Some(engine),
            storage,
            receiving,
        }
    }

    /// The id of the task the upload becomes.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The engine and its control, to carry on with the task; `None` when the run gave way
    /// (its engine stops by itself, and the task, queued again, rewrites any result).
    pub(super) fn take(mut self) -> Option<(Control, Engine)> {
        let engine = self.engine.take()?;
        if !self.receiving.remove(self.id) {
            return None;
        }
        Some((self.control.clone(), engine))
    }
}

impl Drop for EarlyRun {
    fn drop(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        self.receiving.remove(self.id);
        self.control.cancel();
        let (id, storage) = (self.id, self.storage.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(discard_result(id, engine, storage));
            }
            Err(_) => tracing::warn!(task_id = %id, "an early run left without clean-up"),
        }
    }
}

#[cfg(test)]
impl EarlyRun {
    /// Rows the engine has read so far.
    pub(super) fn rows_read(&self) -> u64 {
        self.control.progress().snapshot().rows
    }
}
