//! `processor worker` as a child process of a test, killed when the test ends, also on panic.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the worker to stop after SIGTERM (it has nothing running by then).
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// A running worker; its log (stderr) goes to a file shown when a test fails.
pub struct WorkerProcess {
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts a worker on `queue` that reports to `task_manager_url` (with `worker_token`,
    /// when given) and shares `storage_dir`.
    pub fn start(
        amqp_url: &str,
        queue: &str,
        task_manager_url: &str,
        worker_token: Option<&str>,
        storage_dir: &Path,
    ) -> Self {
        let log_dir = tempfile::tempdir().expect("temporary directory");
        let log = log_dir.path().join("worker.log");
        let log_file = File::create(&log).expect("worker log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_processor"));
        match worker_token {
            Some(token) => command.env("WORKER_TOKEN", token),
            None => command.env_remove("WORKER_TOKEN"),
        };
        let child = command
            .arg("worker")
            .env("AMQP_URL", amqp_url)
            .env("QUEUE_NAME", queue)
            .env("TASK_MANAGER_URL", task_manager_url)
            .env("STORAGE_DIR", storage_dir)
            .env("WORKER_CONCURRENCY", "2")
            .env("ENGINE_MEMORY_LIMIT", "64M")
            .env("ENGINE_THREADS", "2")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start processor worker");
        WorkerProcess {
            child,
            log,
            _log_dir: log_dir,
        }
    }

    /// The worker's log so far, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- worker log ---\n{text}--- end of worker log ---")
    }

    /// Sends SIGTERM and asserts that the worker stops cleanly (exit status 0).
    pub fn stop_gracefully(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("worker status") {
                break status;
            }
            assert!(
                started.elapsed() < STOP_DEADLINE,
                "the worker did not stop within {STOP_DEADLINE:?} of SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "the worker exited with {status} after SIGTERM\n{}",
            self.log()
        );
        assert!(self.log().contains("worker stopped"), "{}", self.log());
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}
