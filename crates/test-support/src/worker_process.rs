//! `processor worker` as a child process of a test, killed when the test ends, also on panic.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the worker to stop after SIGTERM (it has nothing running by then).
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// The `processor` binary that cargo built beside the running test (the processor crate's
/// integration tests; cargo builds a package's binaries before its tests).
pub fn processor_binary() -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    let bin = test
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .join("processor");
    assert!(
        bin.exists(),
        "{} is missing: these helpers serve the processor crate's tests",
        bin.display()
    );
    bin
}

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
        Self::start_with_env(
            amqp_url,
            queue,
            task_manager_url,
            worker_token,
            storage_dir,
            &[],
        )
    }

    /// [`WorkerProcess::start`] with more environment variables (overriding the defaults).
    pub fn start_with_env(
        amqp_url: &str,
        queue: &str,
        task_manager_url: &str,
        worker_token: Option<&str>,
        storage_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let log_dir = tempfile::tempdir().expect("temporary directory");
        let log = log_dir.path().join("worker.log");
        let log_file = File::create(&log).expect("worker log file");
        let mut command = Command::new(processor_binary());
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
            .envs(env.iter().copied())
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

    /// The worker's log so far.
    /// The files the worker has open now.
    pub fn open_files(&self) -> Vec<PathBuf> {
        let fds = format!("/proc/{}/fd", self.child.id());
        let Ok(entries) = std::fs::read_dir(fds) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The worker's log so far, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "--- worker log ---\n{}--- end of worker log ---",
            self.log_text()
        )
    }

    /// Sends SIGTERM: the worker stops consuming and drains its running tasks.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Kills the worker with SIGKILL, as a crash or the OOM killer would, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -KILL the worker");
        self.child.wait().expect("reap the worker");
    }

    /// Waits for the worker to exit (after [`WorkerProcess::terminate`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("worker status") {
                return status;
            }
            assert!(
                started.elapsed() < STOP_DEADLINE,
                "the worker did not stop within {STOP_DEADLINE:?} of SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and asserts that the worker stops cleanly (exit status 0).
    pub fn stop_gracefully(mut self) {
        self.terminate();
        let status = self.wait_exit();
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
