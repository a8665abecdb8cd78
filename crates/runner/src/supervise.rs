//! A task's run from the engine's start to its end: progress reported at a steady pace, the
//! engine cancelled when the report says the task is over (cancelled, deleted) or the runner
//! stops, and how the run ended, from which the final event follows.

use std::ops::ControlFlow;
use std::time::Duration;

use engine::{Control, Summary};
use task_protocol::WorkerEvent;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::Engine;

/// Where a running task's progress goes: the database (embedded mode) or the task manager's
/// event endpoint (worker).
pub trait Report: Send {
    /// Why the report stopped the engine.
    type Stop: Send;

    /// Called at every interval while the engine runs, to report its progress;
    /// `Break` cancels the engine.
    fn tick(&mut self, control: &Control) -> impl Future<Output = ControlFlow<Self::Stop>> + Send;
}

/// How a run ended.
#[derive(Debug)]
pub enum End<S> {
    Finished(Summary),
    /// The engine's message (line, field and value for bad input), or an internal error.
    Failed(String),
    /// The engine was cancelled through its [`Control`] by someone else.
    Cancelled,
    /// The runner is stopping (`abort`): the task is to be run again later.
    Interrupted,
    /// The report stopped the engine.
    Stopped(S),
}

impl<S> End<S> {
    /// The final event of a run that finished or failed.
    pub fn final_event(&self) -> Option<WorkerEvent> {
        match self {
            End::Finished(summary) => Some(done_event(summary)),
            End::Failed(error) => Some(WorkerEvent::Failed {
                error: error.clone(),
            }),
            _ => None,
        }
    }
}

/// The event that reports a finished run.
pub fn done_event(summary: &Summary) -> WorkerEvent {
    WorkerEvent::Done {
        rows: summary.rows_read,
        groups: summary.groups_written,
        output_bytes: summary.output_bytes,
    }
}

/// Waits for `engine` (controlled by `control`), calling `report` every `every` and cancelling
/// the engine when the report stops it or `abort` is cancelled.
pub async fn supervise<R: Report>(
    mut engine: Engine,
    control: &Control,
    every: Duration,
    report: &mut R,
    abort: &CancellationToken,
) -> End<R::Stop> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut stopped = None;
    let mut interrupted = false;
    let result = loop {
        tokio::select! {
            result = &mut engine => break result,
            _ = ticks.tick(), if stopped.is_none() => {
                if let ControlFlow::Break(stop) = report.tick(control).await {
                    stopped = Some(stop);
                    control.cancel();
                }
            }
            _ = abort.cancelled(), if !interrupted => {
                interrupted = true;
                control.cancel();
            }
        }
    };
    if interrupted {
        return End::Interrupted;
    }
    if let Some(stop) = stopped {
        return End::Stopped(stop);
    }
    match result {
        Ok(Ok(summary)) => End::Finished(summary),
        Ok(Err(engine::Error::Cancelled)) => End::Cancelled,
        Ok(Err(e)) => End::Failed(e.to_string()),
        Err(e) => End::Failed(format!(
            "internal error: the engine stopped unexpectedly: {e}"
        )),
    }
}
