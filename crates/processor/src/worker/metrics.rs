//! The worker's own metrics (`--metrics-addr`): their names and help texts, the buckets of the
//! task-duration histogram, and one function per thing the worker counts ([`task_started`],
//! [`task_finished`], [`retried`]...). The rest of the worker calls these functions and never
//! names a metric. They record nothing until [`serve`] has installed the Prometheus recorder,
//! so a worker without `--metrics-addr` pays for a few no-op calls only. The HTTP endpoint is
//! in `metrics::endpoint`.

mod endpoint;

use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub use endpoint::serve;

/// Tasks being handled (from the start of a delivery's handling to its verdict).
pub const TASKS_RUNNING: &str = "aggregator_worker_tasks_running";
/// Tasks whose handling ended, by `status`.
pub const TASKS_FINISHED: &str = "aggregator_worker_tasks_finished_total";
/// Time from the engine's start to the result stored (done) or the engine's error (failed).
pub const TASK_DURATION: &str = "aggregator_worker_task_duration_seconds";
/// Data rows the engine read.
pub const INPUT_ROWS: &str = "aggregator_worker_input_rows_total";
/// Input bytes the engine read.
pub const INPUT_BYTES: &str = "aggregator_worker_input_bytes_total";
/// Sorted runs spilled to disk.
pub const SPILLED_RUNS: &str = "aggregator_worker_spilled_runs_total";
/// Bytes of the spilled runs.
pub const SPILLED_BYTES: &str = "aggregator_worker_spilled_bytes_total";
/// Retries, by `kind`.
pub const RETRIES: &str = "aggregator_worker_retries_total";
/// Deliveries that RabbitMQ marked redelivered.
pub const REDELIVERIES: &str = "aggregator_worker_redeliveries_total";
/// Tasks not run here, or stopped, because another worker holds their lease.
pub const TASKS_ELSEWHERE: &str = "aggregator_worker_tasks_elsewhere_total";

/// Upper bounds of the task-duration buckets, in seconds: from a small file to a long task.
pub const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0,
];

/// How a task's handling ended, the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Reported DONE.
    Done,
    /// Reported FAILED.
    Failed,
    /// Given back to the queue (worker stopping, task manager or storage unavailable...).
    Released,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Done, Outcome::Failed, Outcome::Released];

    fn label(self) -> &'static str {
        match self {
            Outcome::Done => "DONE",
            Outcome::Failed => "FAILED",
            Outcome::Released => "RELEASED",
        }
    }
}

/// What was tried again, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A report to the task manager, sent again after a failure.
    Callback,
    /// A task given back to the queue after a storage failure that may pass (the bucket
    /// client's own request retries are not counted).
    Storage,
    /// A connection to RabbitMQ, made again after it failed or was lost.
    Rabbitmq,
}

impl Retry {
    const ALL: [Retry; 3] = [Retry::Callback, Retry::Storage, Retry::Rabbitmq];

    fn label(self) -> &'static str {
        match self {
            Retry::Callback => "callback",
            Retry::Storage => "storage",
            Retry::Rabbitmq => "rabbitmq",
        }
    }
}

/// Gives every metric its HELP text and shows each at zero (every label value of the
/// counters), so that a fresh worker's scrape lists them all.
fn describe() {
    describe_gauge!(TASKS_RUNNING, "Tasks this worker is handling now");
    describe_counter!(
        TASKS_FINISHED,
        "Tasks whose handling ended, by status: DONE and FAILED as reported to the task \
         manager, RELEASED when given back to the queue"
    );
    describe_histogram!(
        TASK_DURATION,
        "Seconds from the engine's start to the result stored (status DONE) or the engine's \
         error (status FAILED)"
    );
    describe_counter!(INPUT_ROWS, "Data rows read by the engine");
    describe_counter!(INPUT_BYTES, "Input bytes read by the engine");
    describe_counter!(
        SPILLED_RUNS,
        "Sorted runs spilled to disk by finished tasks over their memory limit"
    );
    describe_counter!(SPILLED_BYTES, "Bytes of the spilled runs");
    describe_counter!(
        RETRIES,
        "Retries by kind: callback (a report to the task manager sent again), storage (a task \
         given back to the queue after a passing storage failure), rabbitmq (a connection to \
         RabbitMQ tried again)"
    );
    describe_counter!(
        REDELIVERIES,
        "Task messages that arrived marked redelivered (an earlier delivery was not settled)"
    );
    describe_counter!(
        TASKS_ELSEWHERE,
        "Tasks not run here, or stopped, because another worker holds their lease"
    );

    gauge!(TASKS_RUNNING).set(0.0);
    for outcome in Outcome::ALL {
        counter!(TASKS_FINISHED, "status" => outcome.label()).increment(0);
    }
    for outcome in [Outcome::Done, Outcome::Failed] {
        // Registered, the histogram shows empty.
        let _ = histogram!(TASK_DURATION, "status" => outcome.label());
    }
    for kind in Retry::ALL {
        counter!(RETRIES, "kind" => kind.label()).increment(0);
    }
    for name in [
        INPUT_ROWS,
        INPUT_BYTES,
        SPILLED_RUNS,
        SPILLED_BYTES,
        REDELIVERIES,
        TASKS_ELSEWHERE,
    ] {
        counter!(name).increment(0);
    }
}

/// A task's handling starts; it counts as running until the guard is dropped.
#[must_use = "the task counts as running while the guard lives"]
pub fn task_started() -> Running {
    gauge!(TASKS_RUNNING).increment(1.0);
    Running(())
}

/// A task being handled (see [`task_started`]).
#[derive(Debug)]
pub struct Running(());

impl Drop for Running {
    fn drop(&mut self) {
        gauge!(TASKS_RUNNING).decrement(1.0);
    }
}

/// A task's handling ended with `outcome`.
pub fn task_finished(outcome: Outcome) {
    counter!(TASKS_FINISHED, "status" => outcome.label()).increment(1);
}

/// The engine processed a task to `outcome` (done or failed) in `took`.
pub fn task_processed(outcome: Outcome, took: Duration) {
    histogram!(TASK_DURATION, "status" => outcome.label()).record(took.as_secs_f64());
}

/// A finished run spilled `runs` sorted runs of `bytes` bytes in all.
pub fn spilled(runs: u64, bytes: u64) {
    counter!(SPILLED_RUNS).increment(runs);
    counter!(SPILLED_BYTES).increment(bytes);
}

/// Something of `kind` is tried again.
pub fn retried(kind: Retry) {
    counter!(RETRIES, "kind" => kind.label()).increment(1);
}

/// A task message arrived marked redelivered.
pub fn redelivered() {
    counter!(REDELIVERIES).increment(1);
}

/// A task is not run here, or stops, because another worker holds its lease.
pub fn elsewhere() {
    counter!(TASKS_ELSEWHERE).increment(1);
}

/// What one run of the engine has read so far, added to the input counters as it grows:
/// a long task's throughput shows while it runs.
#[derive(Debug, Default)]
pub struct InputRead {
    rows: u64,
    bytes: u64,
}

impl InputRead {
    /// The run's progress so far.
    pub fn follow(&mut self, progress: &engine::Progress) {
        let snapshot = progress.snapshot();
        self.reached(snapshot.rows, snapshot.bytes_read);
    }

    /// The run has read `rows` data rows and `bytes` bytes in all (figures that only grow;
    /// a smaller one adds nothing).
    pub fn reached(&mut self, rows: u64, bytes: u64) {
        if rows > self.rows {
            counter!(INPUT_ROWS).increment(rows - self.rows);
            self.rows = rows;
        }
        if bytes > self.bytes {
            counter!(INPUT_BYTES).increment(bytes - self.bytes);
            self.bytes = bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `record` against a recorder of its own (not the process's), and renders it while
    /// what `record` returns lives.
    fn rendered<T>(record: impl FnOnce() -> T) -> String {
        let recorder = endpoint::recorder().expect("the recorder");
        let handle = recorder.handle();
        let _kept = ::metrics::with_local_recorder(&recorder, || {
            describe();
            record()
        });
        handle.render()
    }

    /// The value of the sample `series` (name and labels as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    #[test]
    fn every_metric_is_described_and_shown_from_the_start() {
        let text = rendered(|| {});
        for (name, kind) in [
            (TASKS_RUNNING, "gauge"),
            (TASKS_FINISHED, "counter"),
            (TASK_DURATION, "histogram"),
            (INPUT_ROWS, "counter"),
            (INPUT_BYTES, "counter"),
            (SPILLED_RUNS, "counter"),
            (SPILLED_BYTES, "counter"),
            (RETRIES, "counter"),
            (REDELIVERIES, "counter"),
            (TASKS_ELSEWHERE, "counter"),
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}:\n{text}"
            );
        }
        assert_eq!(sample(&text, TASKS_RUNNING), Some(0.0), "{text}");
        for status in ["DONE", "FAILED", "RELEASED"] {
            let series = format!("{TASKS_FINISHED}{{status=\"{status}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{text}");
        }
        for kind in ["callback", "storage", "rabbitmq"] {
            let series = format!("{RETRIES}{{kind=\"{kind}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{text}");
        }
        for status in ["DONE", "FAILED"] {
            let series = format!("{TASK_DURATION}_count{{status=\"{status}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{text}");
        }
    }

    #[test]
    fn tasks_are_counted_and_timed_in_buckets() {
        let text = rendered(|| {
            let first = task_started();
            let second = task_started();
            drop(first);
            task_processed(Outcome::Done, Duration::from_millis(300));
            task_finished(Outcome::Done);
            task_processed(Outcome::Failed, Duration::from_secs(20));
            task_finished(Outcome::Failed);
            task_finished(Outcome::Released);
            task_finished(Outcome::Released);
            retried(Retry::Callback);
            redelivered();
            elsewhere();
            spilled(3, 3000);
            second
        });
        assert_eq!(sample(&text, TASKS_RUNNING), Some(1.0), "{text}");
        let finished =
            |status: &str| sample(&text, &format!("{TASKS_FINISHED}{{status=\"{status}\"}}"));
        assert_eq!(finished("DONE"), Some(1.0), "{text}");
        assert_eq!(finished("FAILED"), Some(1.0), "{text}");
        assert_eq!(finished("RELEASED"), Some(2.0), "{text}");
        // A histogram with the explicit buckets, not a summary.
        assert!(
            text.contains(&format!("# TYPE {TASK_DURATION} histogram\n")),
            "{text}"
        );
        let bucket = |status: &str, le: &str| {
            let series = format!("{TASK_DURATION}_bucket{{status=\"{status}\",le=\"{le}\"}}");
            sample(&text, &series)
        };
        assert_eq!(bucket("DONE", "0.25"), Some(0.0), "{text}");
        assert_eq!(bucket("DONE", "0.5"), Some(1.0), "{text}");
        assert_eq!(bucket("FAILED", "10"), Some(0.0), "{text}");
        assert_eq!(bucket("FAILED", "30"), Some(1.0), "{text}");
        assert_eq!(bucket("FAILED", "+Inf"), Some(1.0), "{text}");
        let count = format!("{TASK_DURATION}_count{{status=\"DONE\"}}");
        assert_eq!(sample(&text, &count), Some(1.0), "{text}");
        let retries = format!("{RETRIES}{{kind=\"callback\"}}");
        assert_eq!(sample(&text, &retries), Some(1.0), "{text}");
        assert_eq!(sample(&text, REDELIVERIES), Some(1.0), "{text}");
        assert_eq!(sample(&text, TASKS_ELSEWHERE), Some(1.0), "{text}");
        assert_eq!(sample(&text, SPILLED_RUNS), Some(3.0), "{text}");
        assert_eq!(sample(&text, SPILLED_BYTES), Some(3000.0), "{text}");
    }

    #[test]
    fn input_counters_follow_a_run_as_it_grows() {
        let text = rendered(|| {
            let mut first = InputRead::default();
            first.reached(10, 100);
            first.reached(25, 300);
            // A snapshot behind the summary's figures adds nothing.
            first.reached(20, 250);
            let mut second = InputRead::default();
            second.reached(5, 50);
        });
        assert_eq!(sample(&text, INPUT_ROWS), Some(30.0), "{text}");
        assert_eq!(sample(&text, INPUT_BYTES), Some(350.0), "{text}");
    }
}
