//! Faults of the distributed mode, on the real RabbitMQ: the task manager in-process (SQLite),
//! `processor worker` as child processes, all on one storage directory and a queue of the
//! test's own. A worker killed mid-task, a worker stopped mid-task, lost broker connections,
//! a task manager down when the worker finishes, poison messages and a task interrupted at
//! every attempt: every accepted task ends DONE with the right result, or FAILED with the
//! reason, never lost nor looping. A killed worker's task is brought back by the task
//! manager's lease keeper once its lease expires (short here: [`LEASE`]). Also uploads aggregated by a worker while they arrive:
//! complete, refused midway, and invalid early on.
#![cfg(feature = "service")]

use test_support as common;

use test_support::broker;
use test_support::cleanup;
use test_support::worker_process;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cleanup::CleanupOnPanic;
use common::{DbKind, SEED_INPUT, SEED_OUTPUT, TestServer};
use lapin::Connection;
use reqwest::StatusCode;
use serde_json::Value;
use task_protocol::{TaskMessage, dead_letter_queue, processed_data_path, raw_data_path};
use uuid::Uuid;
use worker_process::WorkerProcess;

/// Longest wait for anything a test waits for: a guard against hangs, not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(50);

/// Size of the input that keeps a worker busy long enough to be interrupted mid-task.
const BIG_INPUT_BYTES: u64 = 48 << 20;
/// Size of the inputs of the tasks in flight while connections are closed.
const MEDIUM_INPUT_BYTES: u64 = 4 << 20;
/// The task manager's lease timeout: how long a killed worker's task waits for the keeper.
const LEASE: Duration = Duration::from_secs(10);
/// What a worker logs when it leaves a redelivered task to the lease holder.
const LEFT_TO_LEASE_HOLDER: &str = "another worker holds the task's lease";

/// The test's queue and broker connection; the task manager goes beside it, as it may be
/// stopped and restarted.
struct Cluster {
    amqp_url: String,
    queue: String,
    broker: Connection,
    _cleanup: CleanupOnPanic,
}

impl Cluster {
    /// A task manager on SQLite publishing on a new queue.
    async fn start() -> (Cluster, TestServer) {
        Self::start_with(|_| {}).await
    }

    /// [`Cluster::start`], with the task manager's settings adjusted by `configure`.
    async fn start_with(
        configure: impl FnOnce(&mut task_manager::Settings),
    ) -> (Cluster, TestServer) {
        let amqp_url = common::server_url(common::AMQP_URL);
        let queue = format!("processor_faults_{}", Uuid::new_v4().simple());
        let broker = common::amqp_connect().await;
        let cleanup = CleanupOnPanic {
            queue: queue.clone(),
            database: None,
        };
        let tm = common::start_server_with(DbKind::Sqlite, |settings| {
            common::publish_on(settings, &queue);
            settings.max_upload_bytes = 1 << 30;
            settings.lease_timeout = LEASE;
            configure(settings);
        })
        .await;
        let cluster = Cluster {
            amqp_url,
            queue,
            broker,
            _cleanup: cleanup,
        };
        (cluster, tm)
    }

    /// Starts a worker doing one task at a time with one engine thread and frequent progress
    /// reports; `env` overrides or adds settings.
    fn worker(&self, tm: &TestServer, env: &[(&str, &str)]) -> WorkerProcess {
        let mut all = vec![
            ("WORKER_CONCURRENCY", "1"),
            ("ENGINE_THREADS", "1"),
            ("WORKER_PROGRESS_INTERVAL_MS", "100"),
        ];
        all.extend_from_slice(env);
        WorkerProcess::start_with_env(
            &self.amqp_url,
            &self.queue,
            &tm.base_url,
            None,
            &tm.storage_dir(),
            &all,
        )
    }

    /// The messages on the dead-letter queue, taken off it.
    async fn dead_letters(&self) -> Vec<Vec<u8>> {
        broker::drain(&self.broker, &dead_letter_queue(&self.queue)).await
    }

    /// Waits until `count` messages are on the dead-letter queue.
    async fn wait_dead_letters(&self, count: u32) {
        let dead = dead_letter_queue(&self.queue);
        wait_until(&format!("{count} messages on {dead}"), || async {
            broker::message_count(&self.broker, &dead).await >= count
        })
        .await;
    }

    /// Checks that the task queue is empty, then stops the task manager and deletes the queues.
    async fn finish(self, tm: TestServer) {
        assert_eq!(
            broker::message_count(&self.broker, &self.queue).await,
            0,
            "messages left on the task queue"
        );
        let _ = self.broker.close(200, "test done".into()).await;
        tm.stop().await;
        common::delete_queue(&self.queue).await;
    }
}

/// The big input, generated once for all the tests of this file.
fn big_input() -> &'static (Vec<u8>, Vec<u8>) {
    static BIG: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    BIG.get_or_init(|| common::generated_with_reference(BIG_INPUT_BYTES, 7))
}

/// Uploads `data` as a raw CSV body: the code and JSON answer.
async fn upload(tm: &TestServer, data: &[u8]) -> (StatusCode, Value) {
    common::json_of(
        tm.client
            .post(tm.url("/v1/data_processor/upload"))
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .body(data.to_vec())
            .send()
            .await
            .expect("upload request"),
    )
    .await
}

/// Uploads `data`, which must be accepted: the task id.
async fn upload_accepted(tm: &TestServer, data: &[u8]) -> Uuid {
    let (code, body) = upload(tm, data).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    common::task_id_of(&body)
}

/// Polls until `condition` holds; panics after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < DEADLINE,
            "still waiting after {DEADLINE:?} for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until a worker processes the task and has reported progress.
async fn wait_processing_with_progress(tm: &TestServer, id: Uuid, worker: &WorkerProcess) {
    let started = Instant::now();
    loop {
        let status = tm.status(id).await;
        assert!(
            !status["status"].as_str().is_some_and(is_terminal),
            "the task ended before it could be interrupted: {status}\n{}",
            worker.log()
        );
        if status["status"] == "PROCESSING" && status["progress"].as_f64() > Some(0.0) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "task {id} not processing after {DEADLINE:?}: {status}\n{}",
            worker.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `worker` has started the engine on task `id` (its log names the input file).
async fn wait_engine_started(worker: &WorkerProcess, id: Uuid) {
    let input = raw_data_path(id);
    wait_until(&format!("the worker to process {input}"), || async {
        worker.log_text().contains(&input)
    })
    .await;
}

/// The task of a message (published as its upload started, or once it was complete).
fn task_of(message: &[u8]) -> Option<Uuid> {
    serde_json::from_slice::<TaskMessage>(message)
        .ok()
        .map(|message| message.task_id)
}

fn is_terminal(status: &str) -> bool {
    ["DONE", "FAILED", "CANCELLED"].contains(&status)
}

/// Asserts that the task is still unfinished (the fault landed while it was being processed).
async fn assert_unfinished(tm: &TestServer, id: Uuid, worker: &WorkerProcess) {
    let status = tm.status(id).await;
    assert!(
        !status["status"].as_str().is_some_and(is_terminal),
        "the task ended before the fault: {status}\n{}",
        worker.log()
    );
}

/// Asserts that the task is DONE with `expected` as its result, the only file of the task in
/// `processed_data/` (no partial file left by an interrupted attempt).
async fn assert_done_with(tm: &TestServer, id: Uuid, expected: &[u8], workers: &[&WorkerProcess]) {
    let status = tm.wait_finished(id).await;
    let logs: String = workers.iter().map(|w| w.log()).collect();
    assert_eq!(status["status"], "DONE", "{status}\n{logs}");
    let response = tm.download(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("download body");
    assert!(body == expected, "wrong result for task {id}\n{logs}");
    assert_eq!(
        files_of(tm, id),
        [format!("{id}.csv")],
        "files of task {id} in processed_data"
    );
}

/// The names of the files of task `id` in `processed_data/` (results and partial results).
fn files_of(tm: &TestServer, id: Uuid) -> Vec<String> {
    let id = id.to_string();
    tm.processed_data_files()
        .into_iter()
        .filter(|name| name.contains(&id))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn task_of_a_killed_worker_is_completed_by_another() {
    let (input, expected) = big_input();
    let (cluster, tm) = Cluster::start().await;
    let id = upload_accepted(&tm, input).await;
    let mut first = cluster.worker(&tm, &[]);
    wait_processing_with_progress(&tm, id, &first).await;
    first.kill();
    assert_unfinished(&tm, id, &first).await;
    let partial = files_of(&tm, id);
    eprintln!("files of the task after the kill: {partial:?}");

    // RabbitMQ redelivers the message at once, but the killed worker's lease is live: the
    // second worker acknowledges it, and the lease keeper republishes the task once the
    // lease expires.
    let second = cluster.worker(&tm, &[]);
    assert_done_with(&tm, id, expected, &[&first, &second]).await;
    assert!(
        second.log_text().contains(&raw_data_path(id)),
        "the second worker did not process the task\n{}",
        second.log()
    );
    assert!(
        second.log_text().contains(LEFT_TO_LEASE_HOLDER),
        "{}",
        second.log()
    );
    second.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_survive_closed_broker_connections() {
    let (big, big_expected) = big_input();
    let inputs: Vec<_> = (0..4)
        .map(|seed| common::generated_with_reference(MEDIUM_INPUT_BYTES, seed))
        .collect();
    let (cluster, tm) = Cluster::start().await;
    let worker = cluster.worker(&tm, &[("WORKER_CONCURRENCY", "2")]);
    // Two big tasks in flight, two more queued behind them.
    let mut accepted = Vec::new();
    for _ in 0..2 {
        accepted.push((upload_accepted(&tm, big).await, big_expected));
    }
    for (data, expected) in &inputs[..2] {
        accepted.push((upload_accepted(&tm, data).await, expected));
    }
    let connections = wait_connections(&cluster.queue, &worker).await;
    for (id, _) in &accepted[..2] {
        wait_processing_with_progress(&tm, *id, &worker).await;
    }

    common::close_connections(&connections);
    for (id, _) in &accepted[..2] {
        assert_unfinished(&tm, *id, &worker).await;
    }
    // Published while the task manager's connection is down or coming back: each upload is
    // accepted (and must end DONE) or refused with 503 (its task FAILED, never queued).
    let mut refused = 0;
    for (data, expected) in &inputs[2..] {
        let (code, body) = upload(&tm, data).await;
        match code {
            StatusCode::ACCEPTED => accepted.push((common::task_id_of(&body), expected)),
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("upload answered {other}: {body}"),
        }
    }
    for (id, expected) in &accepted {
        assert_done_with(&tm, *id, expected, &[&worker]).await;
    }

    // Both sides reconnected by themselves.
    let now = common::connections_of(&cluster.queue);
    assert!(
        now.len() == 2 && now.iter().all(|pid| !connections.contains(pid)),
        "connections before {connections:?}, after {now:?}"
    );
    assert!(
        worker
            .log_text()
            .contains("RabbitMQ unavailable; reconnecting"),
        "{}",
        worker.log()
    );

    // No task was lost: every task is DONE (accepted) or FAILED as not queued (refused).
    let (_, list) = tm.get_json("/v1/tasks?page_size=100").await;
    let tasks = list["results"].as_array().expect("task list");
    assert_eq!(tasks.len(), accepted.len() + refused, "{list}");
    for task in tasks {
        let failed_unqueued = task["status"] == "FAILED"
            && task["error"]
                .as_str()
                .is_some_and(|e| e.contains("not queued"));
        assert!(task["status"] == "DONE" || failed_unqueued, "{task}");
    }
    eprintln!(
        "{} uploads accepted and done, {refused} refused with 503",
        accepted.len()
    );
    worker.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}

/// Waits until the task manager and the worker are connected to RabbitMQ: their connections.
async fn wait_connections(queue: &str, worker: &WorkerProcess) -> Vec<String> {
    let started = Instant::now();
    loop {
        let connections = common::connections_of(queue);
        if connections.len() == 2 {
            return connections;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "connections of {queue}: {connections:?}\n{}",
            worker.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_retries_until_the_task_manager_is_back() {
    let (input, expected) = big_input();
    let (cluster, tm) = Cluster::start().await;
    let worker = cluster.worker(&tm, &[]);
    let id = upload_accepted(&tm, input).await;
    wait_processing_with_progress(&tm, id, &worker).await;

    let result = tm.storage_dir().join(processed_data_path(id));
    let stopped = tm.stop_keeping_data().await;
    // The engine finishes, and the DONE event fails while the task manager is down.
    wait_until("the worker to retry its DONE event", || async {
        result.exists() && worker.log_text().contains("callback failed; retrying")
    })
    .await;

    let tm = stopped.restart().await;
    assert_done_with(&tm, id, expected, &[&worker]).await;
    worker.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_worker_requeues_its_task_for_another() {
    let (input, expected) = big_input();
    let (cluster, tm) = Cluster::start().await;
    let mut first = cluster.worker(&tm, &[("DRAIN_TIMEOUT", "0")]);
    let id = upload_accepted(&tm, input).await;
    wait_processing_with_progress(&tm, id, &first).await;

    first.terminate();
    let exit = first.wait_exit();
    assert!(exit.success(), "exit {exit}\n{}", first.log());
    assert!(
        first
            .log_text()
            .contains("interrupted; the task goes back to the queue"),
        "{}",
        first.log()
    );
    assert_unfinished(&tm, id, &first).await;

    let second = cluster.worker(&tm, &[]);
    assert_done_with(&tm, id, expected, &[&first, &second]).await;
    second.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_worker_finishes_its_task_and_takes_no_other() {
    let (input, expected) = big_input();
    let (cluster, tm) = Cluster::start().await;
    let mut first = cluster.worker(&tm, &[("DRAIN_TIMEOUT", "600")]);
    let running = upload_accepted(&tm, input).await;
    wait_processing_with_progress(&tm, running, &first).await;
    let queued = upload_accepted(&tm, SEED_INPUT.as_bytes()).await;

    first.terminate();
    let exit = first.wait_exit();
    assert!(exit.success(), "exit {exit}\n{}", first.log());
    assert_done_with(&tm, running, expected, &[&first]).await;
    let status = tm.status(queued).await;
    assert_eq!(status["status"], "RECEIVED", "{status}\n{}", first.log());

    let second = cluster.worker(&tm, &[]);
    assert_done_with(&tm, queued, SEED_OUTPUT.as_bytes(), &[&second]).await;
    second.stop_gracefully();
    cluster.finish(tm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_dead_lettered_and_the_worker_goes_on() {
    let (cluster, tm) = Cluster::start().await;
    let not_json: &[u8] = b"{not json";
    let unknown = serde_json::to_vec(&TaskMessage::for_task(Uuid::new_v4())).expect("JSON");
    let missing = upload_accepted(&tm, SEED_INPUT.as_bytes()).await;
    std::fs::remove_file(tm.storage_dir().join(raw_data_path(missing))).expect("remove input");
    broker::publish_raw(&cluster.broker, &cluster.queue, not_json).await;
    broker::publish_raw(&cluster.broker, &cluster.queue, &unknown).await;

    let worker = cluster.worker(&tm, &[]);
    let good = upload_accepted(&tm, SEED_INPUT.as_bytes()).await;
    assert_done_with(&tm, good, SEED_OUTPUT.as_bytes(), &[&worker]).await;

    let status = tm.wait_finished(missing).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&raw_data_path(missing)) && error.contains("missing"),
        "{status}"
    );
    cluster.wait_dead_letters(3).await;
    worker.stop_gracefully();
    let mut dead = cluster.dead_letters().await;
    let missing_message = dead
        .iter()
        .position(|message| task_of(message) == Some(missing))
        .map(|at| dead.remove(at));
    assert!(missing_message.is_some(), "not dead-lettered: {missing}");
    dead.sort();
    let mut expected = vec![not_json.to_vec(), unknown];
    expected.sort();
    assert_eq!(dead, expected, "dead-lettered messages");
    cluster.finish(tm).await;
}

/// A message whose input path leads out of the storage root (`..`) is not followed: its task
/// ends FAILED with the reason, the message is dead-lettered, and the worker goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_with_a_path_out_of_the_storage_fails_its_task() {
    let (cluster, tm) = Cluster::start().await;
    let id = upload_accepted(&tm, SEED_INPUT.as_bytes()).await;
    // The task manager's own message for the task is replaced by a forged one.
    wait_until("the task's message", || async {
        broker::message_count(&cluster.broker, &cluster.queue).await >= 1
    })
    .await;
    let taken = broker::drain(&cluster.broker, &cluster.queue).await;
    let tasks: Vec<_> = taken
        .iter()
        .filter_map(|message| task_of(message))
        .collect();
    assert_eq!(tasks, [id], "the queue before the forged message");
    let mut forged = TaskMessage::for_task(id);
    forged.input_path = format!("../{}", raw_data_path(id));
    let forged = serde_json::to_vec(&forged).expect("JSON");
    broker::publish_raw(&cluster.broker, &cluster.queue, &forged).await;

    let worker = cluster.worker(&tm, &[]);
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}\n{}", worker.log());
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("refused key \"../{}\"", raw_data_path(id)))
            && error.contains("contains `..`"),
        "{status}"
    );
    cluster.wait_dead_letters(1).await;

    let next = upload_accepted(&tm, SEED_INPUT.as_bytes()).await;
    assert_done_with(&tm, next, SEED_OUTPUT.as_bytes(), &[&worker]).await;
    worker.stop_gracefully();
    assert_eq!(cluster.dead_letters().await, [forged]);
    cluster.finish(tm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn task_interrupted_at_every_attempt_ends_failed() {
    let (input, _) = big_input();
    let (cluster, tm) = Cluster::start_with(|settings| settings.max_leases = 2).await;
    let id = upload_accepted(&tm, input).await;
    // Each worker is killed while it runs the task: the next one leaves the redelivered
    // message to the dead worker's lease, and runs the task when the keeper republishes it.
    let mut killed = Vec::new();
    for _ in 0..2 {
        let mut worker = cluster.worker(&tm, &[]);
        wait_engine_started(&worker, id).await;
        worker.kill();
        assert_unfinished(&tm, id, &worker).await;
        killed.push(worker);
    }

    // The second expired lease is the last: the task is abandoned, not republished.
    let worker = cluster.worker(&tm, &[]);
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}\n{}", worker.log());
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped reporting 2 times"), "{status}");
    assert!(error.contains("TASK_MAX_LEASES"), "{status}");
    assert!(
        !worker.log_text().contains(&raw_data_path(id)),
        "the task was processed a third time\n{}",
        worker.log()
    );
    assert!(files_of(&tm, id).is_empty(), "{:?}", files_of(&tm, id));

    // The worker goes on with the next task.
    let next = upload_accepted(&tm, SEED_INPUT.as_bytes()).await;
    assert_done_with(&tm, next, SEED_OUTPUT.as_bytes(), &[&worker]).await;
    worker.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}

/// An upload sent in pieces, as a raw CSV body, while the test watches; with its length
/// announced (`Content-Length`: the worker maps the file as it grows) or not (chunked: the
/// worker waits for the whole file).
struct SlowUpload {
    pieces: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    answer: tokio::task::JoinHandle<Result<(StatusCode, Value), reqwest::Error>>,
}

impl SlowUpload {
    fn start(tm: &TestServer, len: Option<usize>) -> SlowUpload {
        let (pieces, mut received) = tokio::sync::mpsc::channel(4);
        let body = futures_util::stream::poll_fn(move |cx| received.poll_recv(cx));
        let mut request = tm
            .client
            .post(tm.url("/v1/data_processor/upload"))
            .header(reqwest::header::CONTENT_TYPE, "text/csv");
        if let Some(len) = len {
            request = request.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let request = request.body(reqwest::Body::wrap_stream(body));
        let answer = tokio::spawn(async move {
            let response = request.send().await?;
            let code = response.status();
            Ok((code, response.json().await.unwrap_or_default()))
        });
        SlowUpload { pieces, answer }
    }

    async fn send(&self, piece: &[u8]) {
        self.pieces
            .send(Ok(piece.to_vec()))
            .await
            .expect("upload body");
    }

    /// Ends the body; the task manager's answer.
    async fn finish(self) -> (StatusCode, Value) {
        drop(self.pieces);
        self.answer
            .await
            .expect("upload task")
            .expect("upload request")
    }

    /// Breaks the body off with an error.
    async fn abort(self) {
        let broken = std::io::Error::other("the client gave up");
        let _ = self.pieces.send(Err(broken)).await;
        drop(self.pieces);
        let _ = self.answer.await;
    }
}

/// Waits until `worker` has an upload's partial file open (it follows the arriving upload).
async fn wait_following(worker: &WorkerProcess) {
    wait_until("the worker to open the arriving upload", || async {
        worker.open_files().iter().any(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(".upload-"))
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_is_aggregated_by_a_worker_while_it_arrives() {
    let (data, expected) = common::generated_with_reference(MEDIUM_INPUT_BYTES, 11);
    let (cluster, tm) = Cluster::start().await;
    let worker = cluster.worker(&tm, &[]);
    let upload = SlowUpload::start(&tm, Some(data.len()));
    let half = data.len() / 2;
    upload.send(&data[..half]).await;
    wait_following(&worker).await;
    upload.send(&data[half..]).await;
    let (code, body) = upload.finish().await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = common::task_id_of(&body);
    assert_done_with(&tm, id, &expected, &[&worker]).await;
    assert!(
        worker.log_text().contains("upload complete; task started"),
        "{}",
        worker.log()
    );
    worker.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_arriving_upload_is_dropped_and_the_worker_goes_on() {
    let (data, _) = common::generated_with_reference(MEDIUM_INPUT_BYTES, 12);
    let (cluster, tm) = Cluster::start().await;
    let worker = cluster.worker(&tm, &[]);
    let upload = SlowUpload::start(&tm, Some(data.len()));
    upload.send(&data[..data.len() / 2]).await;
    wait_following(&worker).await;
    upload.abort().await;
    wait_until("the worker to drop the refused upload", || async {
        worker.log_text().contains("the upload was refused")
    })
    .await;
    assert_eq!(
        common::task_count(&tm.client, &tm.base_url).await,
        0,
        "a task for a refused upload"
    );

    let next = upload_accepted(&tm, SEED_INPUT.as_bytes()).await;
    assert_done_with(&tm, next, SEED_OUTPUT.as_bytes(), &[&worker]).await;
    worker.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_arriving_upload_invalid_early_on_fails_once_complete() {
    let (data, _) = common::generated_with_reference(MEDIUM_INPUT_BYTES, 13);
    let (cluster, tm) = Cluster::start().await;
    let worker = cluster.worker(&tm, &[]);
    // Chunked: without the length, the worker waits for the whole file before the engine runs.
    let upload = SlowUpload::start(&tm, None);
    upload
        .send(b"Song,Date,Number of Plays\nUmbrella,2020-01-01,5\nUmbrella,2020-13-01,5\n")
        .await;
    wait_following(&worker).await;
    // The rest, header excluded.
    let body = data.splitn(2, |&byte| byte == b'\n').nth(1).expect("rows");
    upload.send(body).await;
    let (code, answer) = upload.finish().await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    let id = common::task_id_of(&answer);
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}\n{}", worker.log());
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("line 3") && error.contains("Date"),
        "{status}"
    );
    worker.stop_gracefully();
    assert!(cluster.dead_letters().await.is_empty());
    cluster.finish(tm).await;
}
