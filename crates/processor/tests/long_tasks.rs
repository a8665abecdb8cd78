//! Tasks longer than RabbitMQ's consumer timeout, on the real broker: the task manager
//! in-process, two `processor worker` child processes, a queue of the test's own; the files
//! in one shared directory (SQLite), or in a bucket with workers that share no disk
//! (PostgreSQL, moto's S3 server).
//!
//! RabbitMQ closes the channel of a consumer that holds a message longer than its
//! `consumer_timeout` and redelivers the message, while the worker goes on with the task.
//! The broker's timeout is lowered to 5 s for the time it takes to see that happen (and
//! `channel_tick_interval`, the period at which RabbitMQ checks it, to 1 s: with the default
//! 60 s tick the channel closes up to a minute after the timeout), then restored to the values
//! read before, also when a test panics. These settings are the broker's, for every
//! connection: this file is a test binary of its own, cargo runs no other test binary beside
//! it, and its tests take turns.
//!
//! The task runs once and ends DONE with the right result; the redelivered message is
//! acknowledged by the other worker (the task manager answers that the first worker holds the
//! task's lease). A worker killed after its channel closed leaves no message anywhere: the
//! task manager's lease keeper republishes the task once the lease expires.
#![cfg(feature = "service")]

use test_support as common;

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::{DbKind, TestServer};
use fixtures::{Length, Spec};
use reqwest::StatusCode;
use task_protocol::raw_data_path;
use test_support::cleanup::CleanupOnPanic;
use test_support::worker_process::WorkerProcess;
use uuid::Uuid;

/// Longest wait for anything a test waits for: a guard against hangs, not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(50);
/// The broker's consumer timeout while a test watches it close a channel, in milliseconds.
const CONSUMER_TIMEOUT_MS: u64 = 5_000;
/// RabbitMQ's check period of the consumer timeout meanwhile, in milliseconds.
const CHANNEL_TICK_MS: u64 = 1_000;
/// An input that one engine thread of a debug build with a small memory budget aggregates in
/// well over the consumer timeout (about 20 s).
const LONG_INPUT_BYTES: u64 = 160 << 20;
/// Where the keys go in the bucket, when the files live in one.
const PREFIX: &str = "long";
/// What a worker logs when RabbitMQ closed its channel for holding a message too long.
const CONSUMER_TIMED_OUT: &str = "delivery acknowledgement on channel";
/// What a worker logs when it leaves a redelivered task to the lease holder.
const LEFT_TO_LEASE_HOLDER: &str = "another worker holds the task's lease";

/// The tests of this file take turns: they change the broker's settings.
static BROKER_SETTINGS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One of RabbitMQ's application settings, changed for a test and restored when dropped,
/// also when the test panics.
struct BrokerSetting {
    name: &'static str,
    /// The value read before (an Erlang term), `None` when it was unset.
    before: Option<String>,
    restored: bool,
}

impl BrokerSetting {
    /// Sets `name` to `value`, after reading its current value.
    fn set(name: &'static str, value: u64) -> BrokerSetting {
        let read = common::rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {name}).")]);
        let read = read.trim();
        let before = match read.strip_prefix("{ok,").and_then(|v| v.strip_suffix('}')) {
            Some(value) => Some(value.to_string()),
            None if read == "undefined" => None,
            None => panic!("unexpected value of the broker's {name}: {read}"),
        };
        eprintln!("broker {name}: {read}; set to {value} for the test");
        let setting = BrokerSetting {
            name,
            before,
            restored: false,
        };
        common::rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, {name}, {value})."),
        ]);
        setting
    }

    /// Puts the value read before back.
    fn restore(&mut self) {
        if std::mem::replace(&mut self.restored, true) {
            return;
        }
        let name = self.name;
        let expression = match &self.before {
            Some(value) => format!("application:set_env(rabbit, {name}, {value})."),
            None => format!("application:unset_env(rabbit, {name})."),
        };
        // No panic here: this also runs while a failed test unwinds.
        match Command::new("rabbitmqctl")
            .args(["eval", &expression])
            .output()
        {
            Ok(output) if output.status.success() => {
                eprintln!("broker {name} restored: {expression}");
            }
            Ok(output) => eprintln!(
                "cannot restore the broker's {name} ({expression}): {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("cannot restore the broker's {name} ({expression}): {e}"),
        }
    }
}

impl Drop for BrokerSetting {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The broker's consumer timeout lowered, and checked every second, until restored.
struct ShortConsumerTimeout {
    timeout: BrokerSetting,
    tick: BrokerSetting,
}

impl ShortConsumerTimeout {
    /// Lowers the timeout; channels opened from now on check it every second.
    fn start() -> ShortConsumerTimeout {
        ShortConsumerTimeout {
            tick: BrokerSetting::set("channel_tick_interval", CHANNEL_TICK_MS),
            timeout: BrokerSetting::set("consumer_timeout", CONSUMER_TIMEOUT_MS),
        }
    }

    fn restore(&mut self) {
        self.timeout.restore();
        self.tick.restore();
    }
}

/// The long input and its reference aggregate, generated once for the file.
fn long_input() -> &'static (Vec<u8>, Vec<u8>) {
    static LONG: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    LONG.get_or_init(|| {
        let data = fixtures::generate(Spec {
            length: Length::Bytes(LONG_INPUT_BYTES),
            songs: 200_000,
            days: 365,
            seed: 18,
            ..Spec::default()
        })
        .expect("generate the input");
        let expected = fixtures::reference::aggregate(&data);
        (data, expected)
    })
}

/// Where the task manager and its workers keep their files.
enum Files {
    /// One directory, shared; the task manager on SQLite.
    Shared,
    /// A bucket (moto's S3 server), each worker with directories of its own; the task manager
    /// on PostgreSQL: nothing shared but RabbitMQ, the database and the bucket.
    Bucket,
}

/// A task manager publishing on a queue of the test's own once an upload is complete, with
/// the lease timeout `lease`; its workers; the queue's cleanup.
struct Cluster {
    tm: TestServer,
    amqp_url: String,
    queue: String,
    s3: Option<S3Server>,
    /// The workers' own directories (with a bucket), kept until the test ends.
    worker_dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
    _cleanup: CleanupOnPanic,
}

impl Cluster {
    async fn start(files: Files, lease: Option<Duration>) -> Cluster {
        let amqp_url = common::server_url(common::AMQP_URL);
        let queue = format!("processor_long_{}", Uuid::new_v4().simple());
        // Fails loudly when RabbitMQ is down.
        let broker = common::amqp_connect().await;
        let _ = broker.close(200, "checked".into()).await;
        let mut cleanup = CleanupOnPanic {
            queue: queue.clone(),
            database: None,
        };
        let (s3, db) = match files {
            Files::Shared => (None, DbKind::Sqlite),
            Files::Bucket => (Some(S3Server::start().await), DbKind::Postgres),
        };
        let bucket = s3.as_ref().map(|s3| s3.bucket_settings(PREFIX));
        let tm = common::start_server_with(db, |settings| {
            common::publish_on(settings, &queue);
            settings.bucket = bucket;
            settings.max_upload_bytes = 1 << 30;
            settings.early_aggregation = false;
            if let Some(lease) = lease {
                settings.lease_timeout = lease;
            }
        })
        .await;
        if db == DbKind::Postgres {
            cleanup.database = Some(tm.db.url.clone());
        }
        Cluster {
            tm,
            amqp_url,
            queue,
            s3,
            worker_dirs: std::sync::Mutex::default(),
            _cleanup: cleanup,
        }
    }

    /// A worker doing one task at a time on one slow engine thread; with a bucket, in
    /// directories of its own.
    fn worker(&self) -> WorkerProcess {
        let mut env: Vec<(&str, String)> = vec![
            ("WORKER_CONCURRENCY", "1".into()),
            ("ENGINE_THREADS", "1".into()),
            ("ENGINE_MEMORY_LIMIT", "8M".into()),
            ("WORKER_PROGRESS_INTERVAL", "500ms".into()),
        ];
        let storage_dir = match &self.s3 {
            None => self.tm.storage_dir(),
            Some(s3) => {
                let dirs = tempfile::tempdir().expect("worker directories");
                let (s3_env, own) = s3.worker_env(PREFIX, dirs.path());
                env.extend(s3_env);
                self.worker_dirs
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(dirs);
                own
            }
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        WorkerProcess::start_with_env(
            &self.amqp_url,
            &self.queue,
            &self.tm.base_url,
            None,
            &storage_dir,
            &env,
        )
    }

    async fn upload(&self, data: &[u8]) -> Uuid {
        let (code, body) = common::json_of(
            self.tm
                .client
                .post(self.tm.url("/v1/data_processor/upload"))
                .header(reqwest::header::CONTENT_TYPE, "text/csv")
                .body(data.to_vec())
                .send()
                .await
                .expect("upload request"),
        )
        .await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        common::task_id_of(&body)
    }

    async fn finish(self) {
        let broker = common::amqp_connect().await;
        assert_eq!(
            test_support::broker::message_count(&broker, &self.queue).await,
            0,
            "messages left on the task queue"
        );
        let dead = task_protocol::dead_letter_queue(&self.queue);
        assert!(
            test_support::broker::drain(&broker, &dead).await.is_empty(),
            "dead-lettered messages"
        );
        let _ = broker.close(200, "test done".into()).await;
        self.tm.stop().await;
        common::delete_queue(&self.queue).await;
    }
}

/// Times a worker started the engine on task `id` (its log names the input at each run).
fn runs(worker: &WorkerProcess, id: Uuid) -> usize {
    let input = raw_data_path(id);
    worker
        .log_text()
        .lines()
        .filter(|line| line.contains("processing") && line.contains(&input))
        .count()
}

/// Polls until `condition` holds; panics after [`DEADLINE`] with the workers' logs.
async fn wait_until(what: &str, workers: &[&WorkerProcess], mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > DEADLINE {
            let logs: String = workers.iter().map(|w| w.log()).collect();
            panic!("still waiting after {DEADLINE:?} for {what}\n{logs}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until one of `workers` runs task `id`: (the runner, the other one).
async fn runner_of(workers: [&WorkerProcess; 2], id: Uuid) -> (&WorkerProcess, &WorkerProcess) {
    wait_until("a worker to run the task", &workers, || {
        workers.iter().any(|w| runs(w, id) > 0)
    })
    .await;
    match runs(workers[0], id) {
        0 => (workers[1], workers[0]),
        _ => (workers[0], workers[1]),
    }
}

/// Waits until RabbitMQ closed the runner's channel and the other worker left the redelivered
/// message to it; how long the channel took to close after the task started.
async fn wait_timeout_and_redelivery(
    runner: &WorkerProcess,
    other: &WorkerProcess,
    started: Instant,
) -> Duration {
    wait_until(
        "RabbitMQ to close the runner's channel",
        &[runner, other],
        || runner.log_text().contains(CONSUMER_TIMED_OUT),
    )
    .await;
    let closed = started.elapsed();
    wait_until(
        "the other worker to leave the redelivered task to the runner",
        &[runner, other],
        || other.log_text().contains(LEFT_TO_LEASE_HOLDER),
    )
    .await;
    closed
}

/// Asserts that task `id` is DONE with the reference result.
async fn assert_done_with(tm: &TestServer, id: Uuid, expected: &[u8], workers: &[&WorkerProcess]) {
    let status = tm.wait_finished(id).await;
    let logs: String = workers.iter().map(|w| w.log()).collect();
    assert_eq!(status["status"], "DONE", "{status}\n{logs}");
    let response = tm.download(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("download body");
    assert!(body == expected, "wrong result for task {id}\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_longer_than_the_consumer_timeout_runs_once_and_ends_done() {
    runs_once_and_ends_done(Files::Shared).await;
}

/// The same across machines: the workers share no disk with the task manager.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_task_from_a_bucket_runs_once_and_ends_done() {
    runs_once_and_ends_done(Files::Bucket).await;
}

/// A task outlasting the consumer timeout runs once, in the worker that started it, and ends
/// DONE; the redelivered message is left to that worker's lease.
async fn runs_once_and_ends_done(files: Files) {
    let _turn = BROKER_SETTINGS.lock().await;
    let (input, expected) = long_input();
    let cluster = Cluster::start(files, None).await;
    let mut broker = ShortConsumerTimeout::start();
    let workers = [cluster.worker(), cluster.worker()];
    let id = cluster.upload(input).await;
    let started = Instant::now();
    let (runner, other) = runner_of([&workers[0], &workers[1]], id).await;
    let closed = wait_timeout_and_redelivery(runner, other, started).await;
    broker.restore();
    eprintln!("the runner's channel closed {closed:?} after the task started");
    assert_eq!(
        cluster.tm.status(id).await["status"],
        "PROCESSING",
        "the task must outlast the consumer timeout: make the input longer"
    );

    assert_done_with(&cluster.tm, id, expected, &[runner, other]).await;
    assert_eq!(
        (runs(runner, id), runs(other, id)),
        (1, 0),
        "{}{}",
        runner.log(),
        other.log()
    );
    assert!(
        runner
            .log_text()
            .contains("RabbitMQ unavailable; reconnecting"),
        "{}",
        runner.log()
    );
    for worker in workers {
        worker.stop_gracefully();
    }
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_its_channel_closed_has_its_task_republished() {
    const LEASE: Duration = Duration::from_secs(5);
    let _turn = BROKER_SETTINGS.lock().await;
    let (input, expected) = long_input();
    let cluster = Cluster::start(Files::Shared, Some(LEASE)).await;
    let mut broker = ShortConsumerTimeout::start();
    let mut workers = [cluster.worker(), cluster.worker()];
    let id = cluster.upload(input).await;
    let started = Instant::now();
    let (runner, other) = runner_of([&workers[0], &workers[1]], id).await;
    let runner_index = usize::from(!std::ptr::eq(runner, &workers[0]));
    wait_timeout_and_redelivery(runner, other, started).await;
    // The message is acknowledged: only the lease keeper can bring the task back.
    broker.restore();
    let killed = Instant::now();
    workers[runner_index].kill();
    let (runner, other) = (&workers[runner_index], &workers[1 - runner_index]);
    assert_eq!(cluster.tm.status(id).await["status"], "PROCESSING");

    assert_done_with(&cluster.tm, id, expected, &[runner, other]).await;
    eprintln!("done {:?} after the kill", killed.elapsed());
    assert_eq!(
        (runs(runner, id), runs(other, id)),
        (1, 1),
        "{}{}",
        runner.log(),
        other.log()
    );
    let [first, second] = workers;
    let survivor = if runner_index == 0 { second } else { first };
    survivor.stop_gracefully();
    cluster.finish().await;
}
