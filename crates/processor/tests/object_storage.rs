//! The distributed mode across machines: RabbitMQ, PostgreSQL and an S3-compatible bucket
//! (moto's server) are all the task manager and the workers share. Each worker runs with its
//! own empty directories and no path of the task manager's. The seed example, the golden
//! corpus, invalid CSV, a 300 MB file (many parts), a worker killed mid-task, and the bucket
//! unreachable during a task, briefly and for good.
#![cfg(feature = "service")]

use std::time::{Duration, Instant};

use test_support as common;

use common::s3::S3Server;
use common::{DbKind, INVALID_INPUT, SEED_INPUT, SEED_OUTPUT, TestServer};
use fixtures::golden::{self, Expected};
use reqwest::StatusCode;
use test_support::cleanup::CleanupOnPanic;
use test_support::upload_client;
use test_support::worker_process::WorkerProcess;
use uuid::Uuid;

/// Where the tests' keys go in the bucket.
const PREFIX: &str = "shared";
/// Longest wait for a state a test waits for (a guard against hangs).
const DEADLINE: Duration = Duration::from_secs(300);

/// A task manager on PostgreSQL and RabbitMQ with its files in the bucket.
struct Cluster {
    s3: S3Server,
    tm: TestServer,
    amqp_url: String,
    queue: String,
    _cleanup: CleanupOnPanic,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(|_| {}).await
    }

    /// A cluster whose task manager's settings `configure` changes.
    async fn start_with(configure: impl FnOnce(&mut task_manager::Settings)) -> Cluster {
        let s3 = S3Server::start().await;
        let amqp_url = common::server_url(common::AMQP_URL);
        let queue = format!("object_storage_test_{}", Uuid::new_v4().simple());
        let mut cleanup = CleanupOnPanic {
            queue: queue.clone(),
            database: None,
        };
        let bucket = s3.bucket_settings(PREFIX);
        let tm = common::start_server_with(DbKind::Postgres, |settings| {
            common::publish_on(settings, &queue);
            settings.bucket = Some(bucket);
            settings.max_upload_bytes = 1 << 30;
            // A killed worker's task runs again once its lease expires.
            settings.lease_timeout = Duration::from_secs(5);
            configure(settings);
        })
        .await;
        cleanup.database = Some(tm.db.url.clone());
        Cluster {
            s3,
            tm,
            amqp_url,
            queue,
            _cleanup: cleanup,
        }
    }

    /// A worker with directories of its own (`dirs`), reading and writing the bucket; `env`
    /// adds or overrides settings.
    fn worker(&self, dirs: &tempfile::TempDir, env: &[(&str, &str)]) -> WorkerProcess {
        let (s3_env, own) = self.s3.worker_env(PREFIX, dirs.path());
        let mut all: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend([
            ("STORAGE_RETRY_TIMEOUT", "2s"),
            ("WORKER_CONCURRENCY", "1"),
            ("WORKER_PROGRESS_INTERVAL", "100ms"),
        ]);
        all.extend_from_slice(env);
        WorkerProcess::start_with_env(
            &self.amqp_url,
            &self.queue,
            &self.tm.base_url,
            None,
            &own,
            &all,
        )
    }

    /// Uploads `data` as a raw CSV body; returns the task id.
    async fn upload(&self, data: Vec<u8>) -> Uuid {
        let response = self
            .tm
            .client
            .post(self.tm.url("/v1/data_processor/upload?filename=plays.csv"))
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .body(data)
            .send()
            .await
            .expect("upload request");
        let (code, body) = common::json_of(response).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        common::task_id_of(&body)
    }

    /// The result of a DONE task, downloaded.
    async fn result(&self, id: Uuid, worker: &WorkerProcess) -> Vec<u8> {
        let status = self.tm.wait_finished(id).await;
        assert_eq!(status["status"], "DONE", "{status}\n{}", worker.log());
        let response = self.tm.download(id).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.expect("download").to_vec()
    }

    /// The keys of results in the bucket.
    async fn result_keys(&self) -> Vec<String> {
        self.s3
            .list_keys(&format!("{PREFIX}/processed_data/"))
            .await
    }

    async fn finish(self) {
        assert!(
            self.tm.raw_data_files().is_empty(),
            "{:?}",
            self.tm.raw_data_files()
        );
        assert!(self.tm.processed_data_files().is_empty());
        self.tm.stop().await;
        common::delete_queue(&self.queue).await;
    }
}

/// The files a worker left in its own storage directory (results being written).
fn leftovers(dirs: &tempfile::TempDir) -> Vec<String> {
    common::dir_entries(&dirs.path().join("storage/processed_data"))
}

/// Waits until the task is PROCESSING with some progress.
async fn wait_progress(tm: &TestServer, id: Uuid, worker: &WorkerProcess) {
    let started = Instant::now();
    loop {
        let status = tm.status(id).await;
        if status["status"] == "PROCESSING" && status["progress"].as_f64() > Some(0.0) {
            return;
        }
        assert!(
            status["status"] != "DONE" && status["status"] != "FAILED",
            "finished before it could be interrupted: {status}\n{}",
            worker.log()
        );
        assert!(
            started.elapsed() < DEADLINE,
            "no progress: {status}\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_that_share_no_disk() {
    let cluster = Cluster::start().await;
    let dirs = tempfile::tempdir().expect("worker directories");
    let worker = cluster.worker(&dirs, &[]);

    let id = cluster.upload(SEED_INPUT.as_bytes().to_vec()).await;
    assert_eq!(cluster.result(id, &worker).await, SEED_OUTPUT.as_bytes());
    let response = cluster.tm.download(id).await;
    assert_eq!(
        common::attachment_filename(&response),
        "plays_aggregated.csv"
    );

    for case in golden::valid() {
        let input = std::fs::read(&case.input).expect("golden input");
        let id = cluster.upload(input).await;
        let Expected::Output(expected) = &case.expected else {
            unreachable!("valid cases have an output")
        };
        let result = cluster.result(id, &worker).await;
        assert!(
            result == *expected,
            "{}: {}",
            case.name,
            golden::first_difference(&result, expected)
        );
    }

    let id = cluster.upload(INVALID_INPUT.as_bytes().to_vec()).await;
    let status = cluster.tm.wait_finished(id).await;
    assert_eq!(status["status"], "FAILED", "{status}\n{}", worker.log());
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("line 2"), "{error}");
    assert_eq!(cluster.tm.download(id).await.status(), StatusCode::CONFLICT);
    assert!(
        !cluster
            .result_keys()
            .await
            .iter()
            .any(|key| key.contains(&id.to_string())),
        "a failed task left a result"
    );
    assert!(leftovers(&dirs).is_empty(), "{:?}", leftovers(&dirs));
    assert!(cluster.s3.multipart_uploads(PREFIX).await.is_empty());
    worker.stop_gracefully();
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_300_mb_file_in_many_parts() {
    let cluster = Cluster::start().await;
    let dirs = tempfile::tempdir().expect("worker directories");
    let worker = cluster.worker(&dirs, &[("ENGINE_MEMORY_LIMIT", "256M")]);
    let (data, expected) = common::generated_with_reference(300 << 20, 300);
    let id = cluster.upload(data).await;
    let result = cluster.result(id, &worker).await;
    assert!(
        result == expected,
        "{}",
        golden::first_difference(&result, &expected)
    );
    assert!(leftovers(&dirs).is_empty(), "{:?}", leftovers(&dirs));
    worker.stop_gracefully();
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_loses_nothing() {
    let cluster = Cluster::start().await;
    let (data, expected) = common::generated_with_reference(48 << 20, 7);
    let id = cluster.upload(data).await;
    let first_dirs = tempfile::tempdir().expect("worker directories");
    let mut first = cluster.worker(&first_dirs, &[("ENGINE_THREADS", "1")]);
    wait_progress(&cluster.tm, id, &first).await;
    first.kill();
    let second_dirs = tempfile::tempdir().expect("worker directories");
    let second = cluster.worker(&second_dirs, &[]);
    let result = cluster.result(id, &second).await;
    assert!(
        result == expected,
        "{}",
        golden::first_difference(&result, &expected)
    );
    let keys = cluster.result_keys().await;
    assert_eq!(keys, vec![format!("{PREFIX}/processed_data/{id}.csv")]);
    assert!(cluster.s3.multipart_uploads(PREFIX).await.is_empty());
    second.stop_gracefully();
    cluster.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_unreachable_during_a_task() {
    let cluster = Cluster::start().await;
    let dirs = tempfile::tempdir().expect("worker directories");
    let worker = cluster.worker(&dirs, &[("ENGINE_THREADS", "1")]);

    // Briefly: the read resumes, or the task goes back to the queue; it ends DONE, right.
    let (data, expected) = common::generated_with_reference(48 << 20, 11);
    let id = cluster.upload(data).await;
    wait_progress(&cluster.tm, id, &worker).await;
    cluster.s3.set_reachable(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.s3.set_reachable(true);
    let result = cluster.result(id, &worker).await;
    assert!(
        result == expected,
        "{}",
        golden::first_difference(&result, &expected)
    );
    worker.stop_gracefully();

    // For good, on a worker's last attempt: FAILED, naming the bucket's error.
    let id = cluster.upload(SEED_INPUT.as_bytes().to_vec()).await;
    cluster.s3.set_reachable(false);
    let last = cluster.worker(&dirs, &[("WORKER_MAX_ATTEMPTS", "1")]);
    let status = cluster.tm.wait_finished(id).await;
    cluster.s3.set_reachable(true);
    assert_eq!(status["status"], "FAILED", "{status}\n{}", last.log());
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("object storage"), "{error}");
    last.stop_gracefully();
    cluster.finish().await;
}

/// `DOWNLOAD_REDIRECT`: `processor upload` gets its result from the bucket itself.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_follows_a_download_redirect() {
    let cluster = Cluster::start_with(|settings| {
        settings.download_redirect = Some(Duration::from_secs(60));
    })
    .await;
    let dirs = tempfile::tempdir().expect("worker directories");
    let worker = cluster.worker(&dirs, &[]);
    let files = tempfile::tempdir().expect("client directory");
    let input = files.path().join("plays.csv");
    std::fs::write(&input, SEED_INPUT).expect("write the input");
    let output = files.path().join("result.csv");
    let run = upload_client::run(&cluster.tm.base_url, None, &input, Some(&output)).await;
    assert!(run.status.success(), "{run:?}\n{}", worker.log());
    assert_eq!(
        std::fs::read_to_string(&output).expect("the result"),
        SEED_OUTPUT
    );
    assert!(
        cluster.s3.log().contains("X-Amz-Signature"),
        "the result was not fetched from the bucket: {}",
        cluster.s3.log()
    );
    worker.stop_gracefully();
    cluster.finish().await;
}
