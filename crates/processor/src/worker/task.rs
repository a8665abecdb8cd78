//! One task from its queue message to its final report: start, run the engine with
//! progress reports, report DONE or FAILED, and tell the consumer what to do with the message.
//!
//! The task manager keeps a lease per task for the worker that started it (renewed by its
//! progress reports). When it answers that another worker holds the task (`elsewhere`: the
//! message came back from RabbitMQ, e.g. after a consumer timeout, while that worker still
//! runs it), the task is not run here, or stops, and the message is acknowledged: the lease
//! holder reports the outcome, and the task manager republishes the task if it goes silent.

use std::fmt;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine::{Config, Control, Summary};
use runner::{End, Job, Report};
use storage::{ObjectReader, Storage, StorageError};
use task_protocol::{EventAck, TaskMessage, TaskStatus, WorkerEvent};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};
use uuid::Uuid;

use super::arriving::{ArrivingFile, ReadEnd, Unfinished, UploadState, upload_state};
use super::callbacks::{CallbackError, Callbacks};
use super::metrics::{self, InputRead, Outcome, Retry};
use super::running::RunningTasks;

/// Pause between two looks at an arriving upload whose engine has already ended.
const UPLOAD_POLL: Duration = Duration::from_millis(50);

/// What the consumer does with the message once the task is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The task is finished, or failed for a reason of its own (e.g. invalid CSV): remove the
    /// message.
    Ack,
    /// The message cannot be processed (not a task, unknown task, missing input, too many
    /// attempts): RabbitMQ moves it to the dead-letter queue.
    Reject,
    /// The task was interrupted (worker stopping, task manager unreachable): queue it again.
    Requeue,
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Disposition::Ack => "ack",
            Disposition::Reject => "reject",
            Disposition::Requeue => "requeue",
        })
    }
}

/// What every task needs; shared by the concurrent tasks of a worker.
pub struct TaskContext {
    /// Where the message's keys are: the shared directory, or a bucket.
    pub storage: Storage,
    pub engine: Config,
    pub callbacks: Callbacks,
    /// Interval between progress reports.
    pub progress_every: Duration,
    /// Cancelled when running tasks must stop (worker shutting down): they go back to the queue.
    pub abort: CancellationToken,
    /// Deliveries of a message after which its task is abandoned (FAILED, dead-lettered).
    pub max_attempts: u32,
    /// The tasks being handled, so that a redelivery never runs beside the first delivery.
    pub running: RunningTasks,
    /// How long an arriving upload may stop growing before the task goes back to the queue.
    pub arrival_timeout: Duration,
}

/// What the broker tells about a delivery.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryInfo {
    /// Earlier deliveries of the message that ended without settling it (worker killed,
    /// connection lost) or with a requeue (before RabbitMQ 4.3): its `x-delivery-count` header.
    pub earlier_attempts: u32,
    /// Delivered before: a killed worker may have left a partial result file.
    pub redelivered: bool,
}

/// Handles the message `payload` and says what to do with it.
pub async fn handle(payload: &[u8], info: DeliveryInfo, ctx: &TaskContext) -> Disposition {
    let message: TaskMessage = match serde_json::from_slice(payload) {
        Ok(message) => message,
        Err(err) => {
            let preview = String::from_utf8_lossy(&payload[..payload.len().min(200)]);
            error!(error = %err, payload = %preview, "not a task message; rejected");
            return Disposition::Reject;
        }
    };
    let span = telemetry::task_span(message.task_id);
    let run = run_task(&message, info, ctx).instrument(span.clone());
    let disposition = ctx.running.exclusive(message.task_id, run).await;
    if disposition == Disposition::Requeue {
        metrics::task_finished(Outcome::Released);
        // The next worker may start the task at once, even if this message is lost with a
        // closed channel (the task manager then republishes it one lease later).
        release(ctx, message.task_id).instrument(span).await;
    }
    disposition
}

/// Tells the task manager that this worker gives the task back; a hint, never retried.
async fn release(ctx: &TaskContext, id: Uuid) {
    if let Err(err) = ctx.callbacks.send_once(id, &WorkerEvent::Released).await {
        debug!(error = %err, "the task's lease was not released");
    }
}

async fn run_task(message: &TaskMessage, info: DeliveryInfo, ctx: &TaskContext) -> Disposition {
    let _running = metrics::task_started();
    let id = message.task_id;
    let storage = &ctx.storage;
    let resolved = storage.local_path(&message.input_path).and_then(|input| {
        storage
            .local_path(&message.output_path)
            .map(|output| (input, output))
    });
    let (input, output) = match resolved {
        Ok(paths) => paths,
        Err(err) => {
            error!(error = %err, "invalid task message");
            let event = WorkerEvent::Failed {
                error: err.to_string(),
            };
            return report_end(ctx, id, event, Disposition::Reject).await;
        }
    };
    if info.redelivered {
        remove_stale_partials(output.clone()).await;
    }
    if info.earlier_attempts >= ctx.max_attempts {
        let error = format!(
            "abandoned after {} attempts: the processing was interrupted each time (worker \
             killed or stopped, or task manager unreachable); WORKER_MAX_ATTEMPTS sets the limit",
            info.earlier_attempts
        );
        error!(%error, "task abandoned");
        return report_end(ctx, id, WorkerEvent::Failed { error }, Disposition::Reject).await;
    }

    let mut input_file = InputFile::File(input.clone());
    // An upload followed while it arrives is a file of the shared directory.
    let arriving_path = message.arriving_path.as_ref();
    if let Some(relative) = arriving_path.filter(|_| storage.bucket().is_none()) {
        let arriving = match storage.local_path(relative) {
            Ok(path) => path,
            Err(err) => {
                error!(error = %err, "invalid task message; dead-lettered");
                return Disposition::Reject;
            }
        };
        match std::fs::File::open(&arriving) {
            Ok(file) => {
                input_file = InputFile::Arriving {
                    file,
                    arriving,
                    input: input.clone(),
                    capacity: message.arriving_len,
                }
            }
            // Complete (renamed) or refused (removed): the task manager knows which.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(error = %err, "cannot open the arriving upload; requeued");
                return Disposition::Requeue;
            }
        }
    }
    if let InputFile::File(_) = input_file {
        if let Some(disposition) = start_from_file(message, &input, ctx).await {
            return disposition;
        }
        if let Some(bucket) = storage.bucket() {
            input_file = match bucket.reader(&message.input_path).await {
                Ok(reader) => InputFile::Object(reader),
                Err(StorageError::NotFound(_)) => return missing_input(ctx, message).await,
                Err(err) => {
                    return after_storage_failure(ctx, id, info, "cannot read the input", err)
                        .await;
                }
            };
        }
    }
    info!(input = %message.input_path, "processing");
    let processing = Instant::now();
    let event = match run_engine(id, input_file, output, ctx).await {
        EngineEnd::Finished(summary) => {
            // DONE once the result is where the task manager finds it.
            if let Err(err) = storage.commit(&message.output_path).await {
                return after_storage_failure(ctx, id, info, "cannot store the result", err).await;
            }
            metrics::task_processed(Outcome::Done, processing.elapsed());
            info!(
                rows = summary.rows_read,
                groups = summary.groups_written,
                seconds = summary.elapsed_seconds,
                "done"
            );
            runner::done_event(&summary)
        }
        EngineEnd::Failed(error) => {
            metrics::task_processed(Outcome::Failed, processing.elapsed());
            warn!(%error, "failed");
            WorkerEvent::Failed { error }
        }
        EngineEnd::StoppedByTaskManager(status) => {
            info!(%status, "stopped: the task manager reports the task finished");
            return Disposition::Ack;
        }
        EngineEnd::Elsewhere => {
            metrics::elsewhere();
            warn!("stopped: another worker took the task over; message acknowledged");
            return Disposition::Ack;
        }
        EngineEnd::Interrupted => {
            info!("interrupted; the task goes back to the queue");
            return Disposition::Requeue;
        }
        EngineEnd::NotStarted(err) => return after_refusal(err),
        EngineEnd::Upload(Unfinished::Refused) => {
            // Complete after all (a rename the reader missed): processed from the file when
            // the message comes back.
            return start_from_file(message, &input, ctx)
                .await
                .unwrap_or(Disposition::Requeue);
        }
        EngineEnd::Upload(Unfinished::Stalled) => {
            warn!("the upload stopped arriving; the message goes back to the queue");
            return Disposition::Requeue;
        }
    };
    report_end(ctx, id, event, Disposition::Ack).await
}

/// Tells the task manager that the task starts and checks its input; `None` when the task
/// is to be processed, else what to do with the message. For a message announcing an upload
/// that is no longer arriving, an unknown task is an upload that was refused.
async fn start_from_file(
    message: &TaskMessage,
    input: &std::path::Path,
    ctx: &TaskContext,
) -> Option<Disposition> {
    let id = message.task_id;
    match begin(ctx, id).await {
        Ok(ack) if ack.status.is_terminal() => {
            info!(status = %ack.status, "task already finished; skipped");
            return Some(Disposition::Ack);
        }
        Ok(ack) if ack.elsewhere => {
            metrics::elsewhere();
            info!("another worker holds the task's lease: not run here; message acknowledged");
            return Some(Disposition::Ack);
        }
        Ok(_) => {}
        Err(CallbackError::Refused { status, .. })
            if status == reqwest::StatusCode::NOT_FOUND && message.arriving_path.is_some() =>
        {
            info!("the upload was refused: there is no task; message dropped");
            return Some(Disposition::Ack);
        }
        Err(err) => return Some(after_refusal(err)),
    }
    // An object's presence is seen as it is opened.
    if ctx.storage.bucket().is_none()
        && let Err(err) = tokio::fs::metadata(input).await
        && err.kind() == std::io::ErrorKind::NotFound
    {
        return Some(missing_input(ctx, message).await);
    }
    None
}

/// Fails the task whose input is missing and dead-letters its message.
async fn missing_input(ctx: &TaskContext, message: &TaskMessage) -> Disposition {
    let error = format!(
        "the input file {} is missing from the storage",
        message.input_path
    );
    error!(%error, "task dropped");
    let failed = WorkerEvent::Failed { error };
    report_end(ctx, message.task_id, failed, Disposition::Reject).await
}

/// What to do when the storage failed (`what`, with `err`): the task goes back to the queue
/// while the failure may pass and this is not the last attempt; else it is FAILED, naming it.
async fn after_storage_failure(
    ctx: &TaskContext,
    id: Uuid,
    info: DeliveryInfo,
    what: &str,
    err: StorageError,
) -> Disposition {
    let error = format!("{what}: {err}");
    if err.is_transient() && !last_attempt(info, ctx) {
        metrics::retried(Retry::Storage);
        warn!(%error, "the task goes back to the queue");
        return Disposition::Requeue;
    }
    error!(%error, "failed");
    report_end(ctx, id, WorkerEvent::Failed { error }, Disposition::Ack).await
}

/// Whether this delivery is the last the worker makes of its message (`WORKER_MAX_ATTEMPTS`).
fn last_attempt(info: DeliveryInfo, ctx: &TaskContext) -> bool {
    info.earlier_attempts + 1 >= ctx.max_attempts
}

/// Removes the partial result files a killed worker left for this output.
async fn remove_stale_partials(output: PathBuf) {
    match tokio::task::spawn_blocking(move || engine::remove_stale_partials(&output)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => info!(removed, "removed partial results of an interrupted attempt"),
        Ok(Err(err)) => warn!(error = %err, "cannot remove stale partial results"),
        Err(err) => warn!(error = %err, "cannot remove stale partial results"),
    }
}

/// Tells the task manager that the task starts; its answer.
async fn begin(ctx: &TaskContext, id: Uuid) -> Result<EventAck, CallbackError> {
    ctx.callbacks
        .send(id, &WorkerEvent::Started, &ctx.abort)
        .await
}

/// The task's input: complete, or still arriving.
enum InputFile {
    File(PathBuf),
    /// An object of the bucket, being read.
    Object(ObjectReader),
    /// An upload still arriving in `file` (open at `arriving`), to be renamed to `input`,
    /// at most `capacity` bytes long when known.
    Arriving {
        file: std::fs::File,
        arriving: PathBuf,
        input: PathBuf,
        capacity: Option<u64>,
    },
}

/// How a run of the engine ended.
enum EngineEnd {
    Finished(Summary),
    /// The engine's message (line, field and value for bad input).
    Failed(String),
    /// Stopped because the task manager answered a terminal status (CANCELLED, usually).
    StoppedByTaskManager(TaskStatus),
    /// Stopped because another worker holds the task's lease (this one was silent too long).
    Elsewhere,
    /// Stopped because the worker is shutting down.
    Interrupted,
    /// The task manager refused (or could not take) the news that the task starts.
    NotStarted(CallbackError),
    /// The arriving upload did not complete.
    Upload(Unfinished),
}

/// Runs the engine off the async threads, reporting progress every `progress_every`
/// and cancelling it when the task manager answers CANCELLED (or another terminal status)
/// or the worker aborts. On an arriving upload, the task starts (and progress is reported)
/// once the upload is complete.
async fn run_engine(id: Uuid, input: InputFile, output: PathBuf, ctx: &TaskContext) -> EngineEnd {
    let control = Control::new();
    let read_end = ReadEnd::default();
    // Until the task exists: the arriving upload's paths.
    let mut waiting = None;
    let source = match input {
        InputFile::File(path) => runner::Source::File(path),
        InputFile::Object(reader) => {
            let len = reader.len();
            runner::Source::Pieces(Box::new(reader), Some(len))
        }
        InputFile::Arriving {
            file,
            arriving,
            input,
            capacity,
        } => {
            waiting = Some((arriving.clone(), input.clone()));
            let followed = ArrivingFile::new(
                file,
                arriving,
                input,
                control.clone(),
                ctx.arrival_timeout,
                read_end.clone(),
            );
            // Without the upload's announced length (an older task manager), the engine
            // waits for the whole file.
            runner::Source::Growing(Box::new(followed), capacity)
        }
    };
    // An error of the engine's, as one making the output's folder, is the task's once its
    // upload is complete.
    let job = Job {
        source,
        output,
        config: ctx.engine.clone(),
    };
    let engine = job.spawn(control.clone());
    let mut reporter = Reporter {
        ctx,
        id,
        waiting,
        read: InputRead::default(),
    };
    let end = runner::supervise(
        engine,
        &control,
        ctx.progress_every,
        &mut reporter,
        &ctx.abort,
    )
    .await;
    match &end {
        End::Finished(summary) => {
            reporter
                .read
                .reached(summary.rows_read, summary.input_bytes);
            metrics::spilled(summary.spilled_runs, summary.spilled_bytes);
        }
        _ => reporter.read.follow(control.progress()),
    }
    if let Some(unfinished) = *read_end.lock() {
        return EngineEnd::Upload(unfinished);
    }
    let end = match end {
        End::Finished(summary) => EngineEnd::Finished(summary),
        End::Failed(error) => EngineEnd::Failed(error),
        End::Cancelled | End::Interrupted => return EngineEnd::Interrupted,
        End::Stopped(stop) => return stop,
    };
    if let Some((arriving, input)) = reporter.waiting {
        // Ended before the upload did (bad input early on): the outcome is the task's once
        // the upload is complete.
        match wait_for_upload(ctx, &arriving, &input).await {
            Ok(()) => match start(ctx, id, &input, &control).await {
                Ok(ack) if ack.status.is_terminal() => {
                    return EngineEnd::StoppedByTaskManager(ack.status);
                }
                Ok(ack) if ack.elsewhere => return EngineEnd::Elsewhere,
                Ok(_) => {}
                Err(err) => return EngineEnd::NotStarted(err),
            },
            Err(end) => return end,
        }
    }
    end
}

/// Where a running task's progress goes: the task manager's event endpoint, once the task
/// exists (an arriving upload's task starts when the upload is complete).
struct Reporter<'a> {
    ctx: &'a TaskContext,
    id: Uuid,
    /// Until the task exists: the arriving upload's paths.
    waiting: Option<(PathBuf, PathBuf)>,
    /// What the engine has read, for the input counters.
    read: InputRead,
}

impl Report for Reporter<'_> {
    type Stop = EngineEnd;

    async fn tick(&mut self, control: &Control) -> ControlFlow<EngineEnd> {
        self.read.follow(control.progress());
        let (ctx, id) = (self.ctx, self.id);
        let ack = match &self.waiting {
            Some((arriving, input)) => match upload_state(arriving, input) {
                Ok(UploadState::Complete) => match start(ctx, id, input, control).await {
                    Ok(ack) => {
                        self.waiting = None;
                        Some(ack)
                    }
                    Err(err) => return ControlFlow::Break(EngineEnd::NotStarted(err)),
                },
                // The reader sees a refused or stalled upload.
                _ => None,
            },
            None => report_progress(ctx, id, control).await,
        };
        match ack {
            Some(ack) if ack.status.is_terminal() => {
                ControlFlow::Break(EngineEnd::StoppedByTaskManager(ack.status))
            }
            Some(ack) if ack.elsewhere => ControlFlow::Break(EngineEnd::Elsewhere),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Starts the task of a complete upload: reports it started and sets the input's size.
async fn start(
    ctx: &TaskContext,
    id: Uuid,
    input: &std::path::Path,
    control: &Control,
) -> Result<EventAck, CallbackError> {
    if let Ok(metadata) = tokio::fs::metadata(input).await {
        control.progress().set_total(metadata.len());
    }
    info!("upload complete; task started");
    begin(ctx, id).await
}

/// Waits until an arriving upload is complete; the end of the run otherwise.
async fn wait_for_upload(
    ctx: &TaskContext,
    arriving: &std::path::Path,
    input: &std::path::Path,
) -> Result<(), EngineEnd> {
    let mut size = 0;
    let mut grown = tokio::time::Instant::now();
    loop {
        match upload_state(arriving, input) {
            Ok(UploadState::Complete) => return Ok(()),
            Ok(UploadState::Refused) => return Err(EngineEnd::Upload(Unfinished::Refused)),
            Ok(UploadState::Arriving) => {}
            Err(err) => warn!(error = %err, "cannot look at the upload"),
        }
        let now = tokio::fs::metadata(arriving)
            .await
            .map_or(size, |m| m.len());
        if now != size {
            (size, grown) = (now, tokio::time::Instant::now());
        } else if grown.elapsed() > ctx.arrival_timeout {
            return Err(EngineEnd::Upload(Unfinished::Stalled));
        }
        tokio::select! {
            _ = tokio::time::sleep(UPLOAD_POLL) => {}
            _ = ctx.abort.cancelled() => return Err(EngineEnd::Interrupted),
        }
    }
}

/// Posts the engine's progress once (renewing the task's lease); the task manager's answer.
async fn report_progress(ctx: &TaskContext, id: Uuid, control: &Control) -> Option<EventAck> {
    let snapshot = control.progress().snapshot();
    let event = WorkerEvent::Progress {
        progress: snapshot.fraction(),
        rows: snapshot.rows,
    };
    match ctx.callbacks.send_once(id, &event).await {
        Ok(ack) => Some(ack),
        Err(err) => {
            warn!(error = %err, "progress report lost");
            None
        }
    }
}

/// Sends the final event; once the task manager accepted it, the message is settled with
/// `settle`. A message to dead-letter (with a FAILED event) is acknowledged instead when the
/// task had already ended otherwise (DONE, CANCELLED): the late FAILED changed nothing; and
/// so is a message whose task another worker holds (the FAILED was refused, e.g. a
/// redelivery counted as too many attempts while that worker runs the task).
async fn report_end(
    ctx: &TaskContext,
    id: Uuid,
    event: WorkerEvent,
    settle: Disposition,
) -> Disposition {
    match ctx.callbacks.send(id, &event, &ctx.abort).await {
        Ok(EventAck {
            elsewhere: true, ..
        }) => {
            metrics::elsewhere();
            info!("another worker holds the task's lease: message acknowledged");
            Disposition::Ack
        }
        Ok(EventAck { status, .. }) => {
            // Counted once the task ended as reported (not when it had ended otherwise).
            match (&event, status) {
                (WorkerEvent::Done { .. }, TaskStatus::Done) => {
                    metrics::task_finished(Outcome::Done);
                }
                (WorkerEvent::Failed { .. }, TaskStatus::Failed) => {
                    metrics::task_finished(Outcome::Failed);
                }
                _ => {}
            }
            if settle == Disposition::Reject && status != TaskStatus::Failed {
                info!(%status, "task already finished; message acknowledged");
                return Disposition::Ack;
            }
            settle
        }
        Err(err) => after_refusal(err),
    }
}

/// A refused event (unknown task, usually) sends the message to the dead-letter queue:
/// retrying cannot help. An unreachable task manager sends it back to the queue.
fn after_refusal(err: CallbackError) -> Disposition {
    match err {
        CallbackError::Refused { .. } => {
            error!(error = %err, "task dropped; message dead-lettered");
            Disposition::Reject
        }
        CallbackError::Unavailable(_) => {
            warn!(error = %err, "task returned to the queue");
            Disposition::Requeue
        }
    }
}
