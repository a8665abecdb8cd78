//! One task from its queue message to its final report: start, run the engine with
//! progress reports, report DONE or FAILED, and tell the consumer what to do with the message.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use processor::{Config, Control, Input, Summary};
use task_protocol::{EventAck, TaskMessage, TaskStatus, WorkerEvent};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::callbacks::{CallbackError, Callbacks};
use super::paths;
use super::running::RunningTasks;

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
    /// Root of the shared storage that the message's paths are relative to.
    pub storage_dir: PathBuf,
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
    let span = info_span!("task", task_id = %message.task_id);
    let run = run_task(&message, info, ctx).instrument(span);
    ctx.running.exclusive(message.task_id, run).await
}

async fn run_task(message: &TaskMessage, info: DeliveryInfo, ctx: &TaskContext) -> Disposition {
    let id = message.task_id;
    let resolved = paths::resolve(&ctx.storage_dir, &message.input_path).and_then(|input| {
        paths::resolve(&ctx.storage_dir, &message.output_path).map(|output| (input, output))
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

    match ctx
        .callbacks
        .send(id, &WorkerEvent::Started, &ctx.abort)
        .await
    {
        Ok(ack) if ack.status.is_terminal() => {
            info!(status = %ack.status, "task already finished; skipped");
            return Disposition::Ack;
        }
        Ok(_) => {}
        Err(err) => return after_refusal(err),
    }
    if let Err(err) = tokio::fs::metadata(&input).await
        && err.kind() == std::io::ErrorKind::NotFound
    {
        let error = format!(
            "the input file {} is missing from the storage",
            message.input_path
        );
        error!(%error, "task dropped");
        return report_end(ctx, id, WorkerEvent::Failed { error }, Disposition::Reject).await;
    }
    if let Some(dir) = output.parent()
        && let Err(err) = tokio::fs::create_dir_all(dir).await
    {
        let error = format!("cannot create {}: {err}", dir.display());
        return report_end(ctx, id, WorkerEvent::Failed { error }, Disposition::Ack).await;
    }

    info!(input = %input.display(), "processing");
    let event = match run_engine(id, input, output, ctx).await {
        EngineEnd::Finished(summary) => {
            info!(
                rows = summary.rows_read,
                groups = summary.groups_written,
                seconds = summary.elapsed_seconds,
                "done"
            );
            WorkerEvent::Done {
                rows: summary.rows_read,
                groups: summary.groups_written,
                output_bytes: summary.output_bytes,
            }
        }
        EngineEnd::Failed(error) => {
            warn!(%error, "failed");
            WorkerEvent::Failed { error }
        }
        EngineEnd::StoppedByTaskManager(status) => {
            info!(%status, "stopped: the task manager reports the task finished");
            return Disposition::Ack;
        }
        EngineEnd::Interrupted => {
            info!("interrupted; the task goes back to the queue");
            return Disposition::Requeue;
        }
    };
    report_end(ctx, id, event, Disposition::Ack).await
}

/// Removes the partial result files a killed worker left for this output.
async fn remove_stale_partials(output: PathBuf) {
    match tokio::task::spawn_blocking(move || processor::remove_stale_partials(&output)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(removed)) => info!(removed, "removed partial results of an interrupted attempt"),
        Ok(Err(err)) => warn!(error = %err, "cannot remove stale partial results"),
        Err(err) => warn!(error = %err, "cannot remove stale partial results"),
    }
}

/// How a run of the engine ended.
enum EngineEnd {
    Finished(Summary),
    /// The engine's message (line, field and value for bad input).
    Failed(String),
    /// Stopped because the task manager answered a terminal status (CANCELLED, usually).
    StoppedByTaskManager(TaskStatus),
    /// Stopped because the worker is shutting down.
    Interrupted,
}

/// Runs the engine off the async threads, reporting progress every `progress_every`
/// and cancelling it when the task manager answers CANCELLED (or another terminal status)
/// or the worker aborts.
async fn run_engine(id: Uuid, input: PathBuf, output: PathBuf, ctx: &TaskContext) -> EngineEnd {
    let control = Control::new();
    let engine = {
        let control = control.clone();
        let config = ctx.engine.clone();
        tokio::task::spawn_blocking(move || {
            let result = processor::aggregate(Input::File(&input), &output, &config, &control);
            // This process lives on: give the run's memory back to the system.
            processor::return_free_memory();
            result
        })
    };
    tokio::pin!(engine);
    let mut ticks = tokio::time::interval(ctx.progress_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut finished_elsewhere = None;
    let mut interrupted = false;
    let result = loop {
        tokio::select! {
            result = &mut engine => break result,
            _ = ticks.tick() => {
                if let Some(status) = report_progress(ctx, id, &control).await
                    && status.is_terminal()
                {
                    finished_elsewhere = Some(status);
                    control.cancel();
                }
            }
            _ = ctx.abort.cancelled(), if !interrupted => {
                interrupted = true;
                control.cancel();
            }
        }
    };
    match (result, finished_elsewhere) {
        (Ok(Ok(summary)), _) => EngineEnd::Finished(summary),
        (Ok(Err(processor::Error::Cancelled)), _) if interrupted => EngineEnd::Interrupted,
        (Ok(Err(processor::Error::Cancelled)), Some(status)) => {
            EngineEnd::StoppedByTaskManager(status)
        }
        (Ok(Err(err)), _) => EngineEnd::Failed(err.to_string()),
        (Err(join_error), _) => {
            EngineEnd::Failed(format!("internal error in the engine: {join_error}"))
        }
    }
}

/// Posts the engine's progress once; returns the task's status when the task manager answered.
async fn report_progress(ctx: &TaskContext, id: Uuid, control: &Control) -> Option<TaskStatus> {
    let snapshot = control.progress().snapshot();
    let event = WorkerEvent::Progress {
        progress: snapshot.fraction(),
        rows: snapshot.rows,
    };
    match ctx.callbacks.send_once(id, &event).await {
        Ok(EventAck { status }) => Some(status),
        Err(err) => {
            warn!(error = %err, "progress report lost");
            None
        }
    }
}

/// Sends the final event; once the task manager accepted it, the message is settled with
/// `settle`. A message to dead-letter (with a FAILED event) is acknowledged instead when the
/// task had already ended otherwise (DONE, CANCELLED): the late FAILED changed nothing.
async fn report_end(
    ctx: &TaskContext,
    id: Uuid,
    event: WorkerEvent,
    settle: Disposition,
) -> Disposition {
    match ctx.callbacks.send(id, &event, &ctx.abort).await {
        Ok(EventAck { status }) => {
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
