//! The task manager's Prometheus metrics (`GET /metrics`): every name is here, recorded
//! through the functions below and rendered by one process-wide recorder. Counters and
//! histograms are recorded as things happen; the gauges of the tasks and the queue are read
//! from the database and the queue at each scrape ([`Scrape`]).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use task_protocol::TaskStatus;

const HTTP_REQUESTS: &str = "aggregator_http_requests_total";
const HTTP_DURATION: &str = "aggregator_http_request_duration_seconds";
const UPLOADS_ACCEPTED: &str = "aggregator_uploads_accepted_total";
const UPLOAD_BYTES: &str = "aggregator_upload_bytes_total";
const UPLOADS_IN_PROGRESS: &str = "aggregator_uploads_in_progress";
const UPLOADS_REFUSED: &str = "aggregator_uploads_refused_total";
const TASKS_FINISHED: &str = "aggregator_tasks_finished_total";
const TASKS: &str = "aggregator_tasks";
const QUEUE_MESSAGES: &str = "aggregator_queue_messages";
const QUEUE_CONSUMERS: &str = "aggregator_queue_consumers";
const OLDEST_WAITING: &str = "aggregator_oldest_waiting_task_age_seconds";
const QUEUE_WAIT: &str = "aggregator_task_queue_wait_seconds";
const PROCESSING: &str = "aggregator_task_processing_seconds";
const ROWS: &str = "aggregator_rows_processed_total";
const INPUT_BYTES: &str = "aggregator_input_bytes_processed_total";
const OUTPUT_BYTES: &str = "aggregator_output_bytes_written_total";
const CALLBACK_FAILURES: &str = "aggregator_callback_failures_total";
const STORAGE_FAILURES: &str = "aggregator_storage_failures_total";

/// Buckets of request latencies, in seconds.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets of task times (waiting, processing), in seconds: a second to a few hours.
const TASK_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// How often histograms are folded when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The process's recorder, installed at the first call; every server of the process
/// renders the same metrics.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), TASK_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PROCESSING.into()), TASK_BUCKETS))
            .expect("bucket lists are not empty");
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                // Another recorder is the process's: ours renders what it has, nothing.
                tracing::warn!("metrics: {e}");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        describe();
        zeros();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("metrics: no upkeep thread ({e}); histograms fold at each scrape");
        }
        handle
    })
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request (an upload: until it is received), by method and route"
    );
    describe_counter!(
        UPLOADS_ACCEPTED,
        "Uploads received completely and recorded as tasks"
    );
    describe_counter!(
        UPLOAD_BYTES,
        metrics::Unit::Bytes,
        "Bytes of the accepted uploads"
    );
    describe_gauge!(UPLOADS_IN_PROGRESS, "Uploads being received");
    describe_counter!(
        UPLOADS_REFUSED,
        "Uploads refused, by status code (400, 401, 408, 413, 415, 503, 507)"
    );
    describe_counter!(
        TASKS_FINISHED,
        "Tasks that ended, by status (DONE, FAILED, CANCELLED)"
    );
    describe_gauge!(TASKS, "Tasks in the database, by current status");
    describe_gauge!(
        QUEUE_MESSAGES,
        "Tasks waiting in the queue (RabbitMQ's ready messages; embedded: queued tasks)"
    );
    describe_gauge!(
        QUEUE_CONSUMERS,
        "Consumers of the queue (RabbitMQ's consumers; embedded: runners)"
    );
    describe_gauge!(
        OLDEST_WAITING,
        metrics::Unit::Seconds,
        "Age of the oldest task still RECEIVED (0 when none waits)"
    );
    describe_histogram!(
        QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Time from a task's upload to its first start"
    );
    describe_histogram!(
        PROCESSING,
        metrics::Unit::Seconds,
        "Time from a task's first start to its end, by status"
    );
    describe_counter!(ROWS, "Input rows of the tasks DONE");
    describe_counter!(
        INPUT_BYTES,
        metrics::Unit::Bytes,
        "Input bytes of the tasks DONE"
    );
    describe_counter!(
        OUTPUT_BYTES,
        metrics::Unit::Bytes,
        "Result bytes of the tasks DONE"
    );
    describe_counter!(
        CALLBACK_FAILURES,
        "Worker callbacks answered with an error, by status code"
    );
    describe_counter!(
        STORAGE_FAILURES,
        "Failures of the storage (directory or bucket) while serving or processing"
    );
}

/// The series known in advance, at zero, so that a rate over them starts from the first scrape.
fn zeros() {
    for name in [
        UPLOADS_ACCEPTED,
        UPLOAD_BYTES,
        ROWS,
        INPUT_BYTES,
        OUTPUT_BYTES,
        STORAGE_FAILURES,
    ] {
        counter!(name).absolute(0);
    }
    for status in [TaskStatus::Done, TaskStatus::Failed, TaskStatus::Cancelled] {
        counter!(TASKS_FINISHED, "status" => status.as_str()).absolute(0);
    }
    gauge!(UPLOADS_IN_PROGRESS).set(0.0);
}

/// A request answered; `route` is its matched route (`{task_id}` unexpanded).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels[..2]).record(elapsed.as_secs_f64());
}

/// An upload is being received until the guard drops.
pub fn upload_started() -> UploadInProgress {
    gauge!(UPLOADS_IN_PROGRESS).increment(1.0);
    UploadInProgress
}

/// Counts an upload in progress while it lives.
pub struct UploadInProgress;

impl Drop for UploadInProgress {
    fn drop(&mut self) {
        gauge!(UPLOADS_IN_PROGRESS).decrement(1.0);
    }
}

pub fn upload_accepted(bytes: u64) {
    counter!(UPLOADS_ACCEPTED).increment(1);
    counter!(UPLOAD_BYTES).increment(bytes);
}

pub fn upload_refused(status: u16) {
    counter!(UPLOADS_REFUSED, "status" => status.to_string()).increment(1);
}

pub fn callback_failed(status: u16) {
    counter!(CALLBACK_FAILURES, "status" => status.to_string()).increment(1);
}

pub fn storage_failed() {
    counter!(STORAGE_FAILURES).increment(1);
}

/// A task started for the first time, `waited` after its upload.
pub fn task_started(waited: Duration) {
    histogram!(QUEUE_WAIT).record(waited.as_secs_f64());
}

/// What a task that ended had done.
pub struct Finished {
    pub status: TaskStatus,
    /// From its first start; `None` when it never started.
    pub processing: Option<Duration>,
    pub rows: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// A task ended (counted once, by the change that ended it).
pub fn task_finished(task: &Finished) {
    let status = task.status.as_str();
    counter!(TASKS_FINISHED, "status" => status).increment(1);
    if let Some(processing) = task.processing {
        histogram!(PROCESSING, "status" => status).record(processing.as_secs_f64());
    }
    if task.status == TaskStatus::Done {
        counter!(ROWS).increment(task.rows);
        counter!(INPUT_BYTES).increment(task.input_bytes);
        counter!(OUTPUT_BYTES).increment(task.output_bytes);
    }
}

/// The gauges read at a scrape; a part that could not be read keeps its last value.
#[derive(Default)]
pub struct Scrape {
    /// Tasks by status (every status, zeros included).
    pub tasks: Option<Vec<(TaskStatus, u64)>>,
    /// The oldest RECEIVED task's age.
    pub oldest_waiting: Option<Duration>,
    /// Waiting messages and consumers.
    pub queue: Option<(u64, u64)>,
}

impl Scrape {
    /// Sets the gauges and renders every metric in Prometheus' text format.
    pub fn render(self) -> String {
        if let Some(tasks) = self.tasks {
            for (status, count) in tasks {
                gauge!(TASKS, "status" => status.as_str()).set(count as f64);
            }
            let oldest = self.oldest_waiting.unwrap_or_default();
            gauge!(OLDEST_WAITING).set(oldest.as_secs_f64());
        }
        if let Some((messages, consumers)) = self.queue {
            gauge!(QUEUE_MESSAGES).set(messages as f64);
            gauge!(QUEUE_CONSUMERS).set(consumers as f64);
        }
        let handle = handle();
        handle.run_upkeep();
        handle.render()
    }
}
