//! Early runs against a real SQLite store and engine.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use fixtures::{Length, Spec};
use tempfile::{NamedTempFile, TempDir};

use super::*;

/// Longest wait for something the test expects to happen.
const PATIENCE: Duration = Duration::from_secs(60);

struct Setup {
    _dir: TempDir,
    store: Store,
    storage: Storage,
    queue: EmbeddedQueue,
}

async fn setup(workers: usize) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(dir.path(), None).expect("storage");
    let url = format!("sqlite://{}", dir.path().join("tasks.db").display());
    let store = Store::connect(&url, Duration::from_secs(5))
        .await
        .expect("SQLite store");
    let config = engine::Config {
        // Small blocks: the engine starts on the first pieces of a small upload.
        block_bytes: 16 << 10,
        temp_dir: Some(dir.path().join("tmp")),
        ..engine::Config::default()
    };
    let queue = EmbeddedQueue::start(store.clone(), storage.clone(), config, workers)
        .await
        .expect("queue");
    Setup {
        _dir: dir,
        store,
        storage,
        queue,
    }
}

fn input(seed: u64) -> Vec<u8> {
    fixtures::generate(Spec {
        length: Length::Rows(20_000),
        songs: 300,
        days: 10,
        tricky_names: true,
        seed,
        ..Spec::default()
    })
    .expect("a valid spec")
}

/// An upload arriving in its temporary file.
struct Upload {
    id: Uuid,
    temp: NamedTempFile,
    arrival: Arc<Arrival>,
    written: u64,
}

impl Upload {
    fn new(setup: &Setup) -> Upload {
        Upload {
            id: Uuid::new_v4(),
            temp: setup.storage.upload_temp_file().expect("temp file"),
            arrival: Arrival::new(),
            written: 0,
        }
    }

    /// Follows the upload (read from the file: nothing is offered in memory).
    fn start_early(&self, setup: &Setup) -> Option<EarlyRun> {
        let file = self.temp.reopen().expect("reopen");
        setup
            .queue
            .start_early(self.id, file, self.arrival.clone(), None)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.temp.write_all(bytes).expect("write");
        self.written += bytes.len() as u64;
        self.arrival.advance(self.written);
    }

    /// Completes the upload and records its task, as the upload handler does.
    async fn finish(self, setup: &Setup) -> Uuid {
        self.arrival.complete();
        self.temp
            .persist(setup.storage.input_path(self.id))
            .expect("persist");
        setup
            .store
            .insert(self.id, None, self.written)
            .await
            .expect("insert");
        self.id
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_done(setup: &Setup, id: Uuid) {
    eventually("the task is DONE", async || {
        let status = setup.store.status(id).await.expect("status");
        assert!(
            !status.is_some_and(|s| s.is_terminal() && s != TaskStatus::Done),
            "task ended {status:?}"
        );
        status == Some(TaskStatus::Done)
    })
    .await;
}

fn assert_result(setup: &Setup, id: Uuid, input: &[u8]) {
    let output = std::fs::read(setup.storage.output_path(id)).expect("result");
    assert!(
        output == fixtures::reference::aggregate(input),
        "the result differs from the reference"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_aggregated_while_it_arrives() {
    let setup = setup(1).await;
    let data = input(1);
    let mut upload = Upload::new(&setup);
    let early = upload.start_early(&setup).expect("an idle runner");
    let half = data.len() / 2;
    upload.write(&data[..half]);
    eventually("the engine reads the first half", async || {
        early.rows_read() > 0
    })
    .await;
    upload.write(&data[half..]);
    let id = upload.finish(&setup).await;
    setup.queue.adopt(early).expect("adopted");
    wait_done(&setup, id).await;
    assert_result(&setup, id, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_run_gives_way_to_a_queued_task() {
    let setup = setup(1).await;
    let (first, second) = (input(2), input(3));
    let mut slow = Upload::new(&setup);
    let early = slow.start_early(&setup).expect("an idle runner");
    slow.write(&first[..first.len() / 3]);
    assert!(
        Upload::new(&setup).start_early(&setup).is_none(),
        "a second early run on the only runner"
    );

    let queued = Uuid::new_v4();
    std::fs::write(setup.storage.input_path(queued), &second).expect("input");
    setup
        .store
        .insert(queued, None, second.len() as u64)
        .await
        .expect("insert");
    setup.queue.submit(queued).expect("queued");
    wait_done(&setup, queued).await;
    assert_result(&setup, queued, &second);

    slow.write(&first[first.len() / 3..]);
    let id = slow.finish(&setup).await;
    setup.queue.adopt(early).expect("queued after giving way");
    wait_done(&setup, id).await;
    assert_result(&setup, id, &first);
}

async fn wait_idle_runner(setup: &Setup) {
    eventually("the runner is free again", async || {
        setup.queue.runner.permits.available_permits() == 1
    })
    .await;
}

fn is_file(path: &Path) -> bool {
    path.try_exists().expect("stat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_leaves_no_result_and_frees_the_runner() {
    let setup = setup(1).await;
    let data = input(4);

    // Stopped midway (client gone, limit exceeded).
    let mut upload = Upload::new(&setup);
    let early = upload.start_early(&setup).expect("an idle runner");
    upload.write(&data[..data.len() / 2]);
    upload.arrival.abort();
    let output = setup.storage.output_path(upload.id);
    drop(early);
    wait_idle_runner(&setup).await;
    assert!(!is_file(&output), "a result for an aborted upload");

    // Complete, but not recorded (the database refused it): the engine may be done already.
    let mut upload = Upload::new(&setup);
    let early = upload.start_early(&setup).expect("an idle runner");
    upload.write(&data);
    upload.arrival.complete();
    let output = setup.storage.output_path(upload.id);
    eventually("the engine writes its result", async || is_file(&output)).await;
    drop(early);
    eventually("the result is removed", async || !is_file(&output)).await;
    wait_idle_runner(&setup).await;
}
