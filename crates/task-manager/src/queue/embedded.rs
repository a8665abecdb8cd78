//! Embedded mode: a bounded in-process queue and `EMBEDDED_WORKERS` runners that run the
//! engine on blocking threads and record its progress with the same events a remote worker
//! sends ([`Store::apply_event`]). An upload may also be aggregated while it arrives, on a
//! runner that has nothing else to do ([`early`]).

mod early;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use engine::Control;
use parking_lot::Mutex;
use runner::{End, Engine, Job, Report, Source};
use task_protocol::{TaskStatus, WorkerEvent};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::QueueError;
use crate::ingest::arrival::{Arrival, UploadReader};
use crate::store::Store;
pub use early::EarlyRun;
use early::Receiving;
use storage::{Input, Storage};
use task_protocol::{processed_data_path, raw_data_path};

/// Tasks waiting for a runner, at most.
const QUEUE_CAPACITY: usize = 10_000;
/// How often a running task's progress is recorded.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Pauses between attempts at recording an event while the database is unavailable.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
const LAST_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The in-process queue and its runners.
pub struct EmbeddedQueue {
    sender: mpsc::Sender<Uuid>,
    runner: Runner,
    runners: Mutex<Vec<JoinHandle<()>>>,
    /// Tasks whose engine started during their upload.
    adopted: Mutex<Vec<JoinHandle<()>>>,
}

/// The engines at work, by task, to cancel them.
type Running = Arc<Mutex<HashMap<Uuid, Control>>>;

/// What a runner needs.
#[derive(Clone)]
struct Runner {
    store: Store,
    storage: Storage,
    config: engine::Config,
    running: Running,
    /// One per engine allowed to run (`EMBEDDED_WORKERS`).
    permits: Arc<Semaphore>,
    receiving: Receiving,
    stop: CancellationToken,
}

impl EmbeddedQueue {
    /// Starts `workers` runners, then queues the tasks a previous run left unfinished.
    pub async fn start(
        store: Store,
        storage: Storage,
        config: engine::Config,
        workers: usize,
    ) -> Result<EmbeddedQueue, crate::store::StoreError> {
        let unfinished = store.unfinished().await?;
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let workers = workers.max(1);
        let runner = Runner {
            store: store.clone(),
            storage,
            config,
            running: Running::default(),
            permits: Arc::new(Semaphore::new(workers)),
            receiving: Receiving::default(),
            stop: CancellationToken::new(),
        };
        let runners = (0..workers)
            .map(|_| tokio::spawn(runner.clone().run(receiver.clone())))
            .collect();
        if !unfinished.is_empty() {
            tracing::info!(
                tasks = unfinished.len(),
                "queueing the tasks left unfinished"
            );
            let sender = sender.clone();
            tokio::spawn(async move {
                for id in unfinished {
                    if sender.send(id).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(EmbeddedQueue {
            sender,
            runner,
            runners: Mutex::new(runners),
            adopted: Mutex::default(),
        })
    }

    /// Queues a task.
    pub fn submit(&self, id: Uuid) -> Result<(), QueueError> {
        if self.runner.stop.is_cancelled() {
            return Err(QueueError::Closed);
        }
        self.sender.try_send(id).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })
    }

    /// Starts the engine on the upload of the future task `id` while it arrives (reading the
    /// pieces `arrival` offers, else `file`), when a runner is idle; `len`: the upload's
    /// `Content-Length`, when known, for the progress.
    pub fn start_early(
        &self,
        id: Uuid,
        file: std::fs::File,
        arrival: Arc<Arrival>,
        len: Option<u64>,
    ) -> Option<EarlyRun> {
        if self.runner.stop.is_cancelled() {
            return None;
        }
        let permit = self.runner.permits.clone().try_acquire_owned().ok()?;
        let control = Control::new();
        let reader = UploadReader::new(arrival, file, control.clone());
        let job = Job {
            source: Source::Pieces(Box::new(reader), len),
            output: self.runner.storage.output_path(id),
            config: self.runner.config.clone(),
        };
        let engine = job.spawn_holding(control.clone(), permit);
        tracing::debug!(task_id = %id, "aggregating the upload while it arrives");
        Some(EarlyRun::new(
            id,
            control,
            engine,
            self.runner.storage.clone(),
            self.runner.receiving.clone(),
        ))
    }

    /// Takes over the task of an early run whose upload is complete and recorded: its
    /// engine goes on as the task's, or, when it gave way to a queued task, the task is
    /// queued.
    pub fn adopt(&self, early: EarlyRun) -> Result<(), QueueError> {
        let id = early.id();
        let Some((control, engine)) = early.take() else {
            return self.submit(id);
        };
        let runner = self.runner.clone();
        let task = tokio::spawn(
            async move {
                if runner.begin(id).await {
                    runner.supervise(id, control, engine).await;
                } else {
                    control.cancel();
                    discard_result(id, engine, runner.storage.clone()).await;
                }
            }
            .instrument(telemetry::task_span(id)),
        );
        let mut adopted = self.adopted.lock();
        adopted.retain(|task| !task.is_finished());
        adopted.push(task);
        Ok(())
    }

    /// Stops the engine working on `id`, if any.
    pub fn cancel(&self, id: Uuid) {
        if let Some(control) = self.runner.running.lock().get(&id) {
            control.cancel();
        }
    }

    /// Ok while the runners are up.
    pub fn health(&self) -> Result<(), QueueError> {
        let runners = self.runners.lock();
        if self.runner.stop.is_cancelled() || runners.iter().all(|runner| runner.is_finished()) {
            return Err(QueueError::Closed);
        }
        Ok(())
    }

    /// The tasks queued and the runners alive.
    pub fn stats(&self) -> (u64, u64) {
        let queued = self.sender.max_capacity() - self.sender.capacity();
        let runners = self.runners.lock();
        let alive = runners
            .iter()
            .filter(|runner| !runner.is_finished())
            .count();
        (queued as u64, alive as u64)
    }

    /// Stops the runners; the engines at work are interrupted and their tasks stay
    /// `PROCESSING`, to be queued again at the next start.
    pub async fn shutdown(&self) {
        self.runner.stop.cancel();
        self.runner.receiving.cancel_all();
        for control in self.runner.running.lock().values() {
            control.cancel();
        }
        let tasks = std::mem::take(&mut *self.runners.lock())
            .into_iter()
            .chain(std::mem::take(&mut *self.adopted.lock()));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!("an embedded runner failed: {e}");
            }
        }
    }
}

/// Waits for an engine whose result is of no use and removes its output.
async fn discard_result(id: Uuid, engine: Engine, storage: Storage) {
    if let Ok(Ok(_)) = engine.await {
        remove_result(&storage, id).await;
    }
}

impl Runner {
    async fn run(self, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Uuid>>>) {
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => None,
                id = async { receiver.lock().await.recv().await } => id,
            };
            let Some(id) = next else { break };
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Busy with early runs: a queued task goes first.
                    self.receiving.give_way();
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        permit = self.permits.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    }
                }
            };
            self.process(id).instrument(telemetry::task_span(id)).await;
            drop(permit);
        }
    }

    /// Records that a task starts; false when it is not to be processed.
    async fn begin(&self, id: Uuid) -> bool {
        match self.report(id, WorkerEvent::Started).await {
            Some(status) if !status.is_terminal() => true,
            Some(status) => {
                tracing::info!(%status, "skipping a finished task");
                false
            }
            None => false,
        }
    }

    /// Runs one task from start to its final event.
    async fn process(&self, id: Uuid) {
        if !self.begin(id).await {
            return;
        }
        let source = match self.storage.input(&raw_data_path(id)).await {
            Ok(Input::File(path)) => Source::File(path),
            Ok(Input::Object(reader)) => {
                let len = reader.len();
                Source::Pieces(Box::new(reader), Some(len))
            }
            Err(e) => {
                crate::metrics::storage_failed();
                let error = format!("cannot read the upload: {e}");
                tracing::warn!("{error}");
                self.report(id, WorkerEvent::Failed { error }).await;
                return;
            }
        };
        let control = Control::new();
        let job = Job {
            source,
            output: self.storage.output_path(id),
            config: self.config.clone(),
        };
        let engine = job.spawn(control.clone());
        self.supervise(id, control, engine).await;
    }

    /// Records the progress of a task's engine, then its outcome.
    async fn supervise(&self, id: Uuid, control: Control, engine: Engine) {
        tracing::info!("processing");
        self.running.lock().insert(id, control.clone());
        if self.stop.is_cancelled() {
            control.cancel();
        }
        let mut recorder = Recorder {
            store: &self.store,
            id,
        };
        let end = runner::supervise(
            engine,
            &control,
            PROGRESS_INTERVAL,
            &mut recorder,
            &self.stop,
        )
        .await;
        self.running.lock().remove(&id);
        let event = match end.final_event() {
            Some(event) => event,
            None => {
                if let End::Stopped(()) = end {
                    // Cancelled or deleted meanwhile: a result written all the same is of no use.
                    remove_result(&self.storage, id).await;
                }
                tracing::info!("stopped");
                return;
            }
        };
        let done = matches!(event, WorkerEvent::Done { .. });
        // DONE once the result is where downloads find it (in the bucket, when there is one).
        let event = match self.storage.commit(&processed_data_path(id)).await {
            Err(e) if done => {
                crate::metrics::storage_failed();
                let error = format!("cannot store the result: {e}");
                tracing::warn!("{error}");
                WorkerEvent::Failed { error }
            }
            _ => event,
        };
        match self.report(id, event).await {
            Some(TaskStatus::Cancelled) if done => {
                // Cancelled while finishing: the result is of no use.
                remove_result(&self.storage, id).await;
                tracing::info!("cancelled; result discarded");
            }
            Some(status) => tracing::info!(%status, "finished"),
            None => tracing::warn!(
                "stopped before the outcome was recorded; the task is queued again at the next start"
            ),
        }
    }

    /// Records an event, retrying while the database is unavailable, until it is recorded or
    /// the runners stop; returns the status afterwards (`None`: unknown task, or stopped
    /// first: the task is then queued again at the next start).
    async fn report(&self, id: Uuid, event: WorkerEvent) -> Option<TaskStatus> {
        let mut delays = runner::backoff::exponential(FIRST_RETRY_DELAY, LAST_RETRY_DELAY);
        loop {
            match self.store.apply_event(id, &event).await {
                Ok(status) => return status,
                Err(e) => {
                    tracing::warn!("recording {event:?} failed, retrying: {e}");
                }
            }
            let delay = delays.next().unwrap_or(LAST_RETRY_DELAY);
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// The progress of an embedded task, recorded in the database with the events a worker sends.
struct Recorder<'a> {
    store: &'a Store,
    id: Uuid,
}

impl Report for Recorder<'_> {
    /// The task was cancelled or deleted meanwhile.
    type Stop = ();

    async fn tick(&mut self, control: &Control) -> ControlFlow<()> {
        let snapshot = control.progress().snapshot();
        let event = WorkerEvent::Progress {
            progress: snapshot.fraction(),
            rows: snapshot.rows,
        };
        match self.store.apply_event(self.id, &event).await {
            Ok(status) if status.is_none_or(TaskStatus::is_terminal) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Removes the result of a task that no longer wants it.
async fn remove_result(storage: &Storage, id: Uuid) {
    if let Err(e) = storage.remove(&processed_data_path(id)).await {
        tracing::warn!(task_id = %id, "cannot remove the result: {e}");
    }
}

#[cfg(test)]
mod tests;
