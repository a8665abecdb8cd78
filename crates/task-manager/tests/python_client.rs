//! The old Python system's client, run for real: `tests/old_client/file_uploader.py` (a
//! `requests` multipart upload, status polling, a download named from Content-Disposition)
//! against the embedded default, on the task's seed example and on an invalid input.
//!
//! Needs `python3` with its `venv` module (every machine of this project has them); the test
//! installs `requests` (pinned in `tests/old_client/requirements.txt`) from PyPI into a venv
//! under the target directory on its first run, and fails with pip's output if it cannot.

use test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Runs `command` to its end off the async threads (the task manager runs on them).
async fn output_of(mut command: Command) -> std::io::Result<Output> {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the command's thread")
}

/// The client's directory.
fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/old_client")
}

/// A Python with `requests`: the venv under the target directory, created when missing.
async fn python_with_requests() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("old-client-venv");
    let python = venv.join("bin/python");
    let has_requests = |python: PathBuf| async move {
        let mut command = Command::new(python);
        command.args(["-c", "import requests"]);
        output_of(command)
            .await
            .is_ok_and(|out| out.status.success())
    };
    if has_requests(python.clone()).await {
        return python;
    }
    let mut command = Command::new("python3");
    command.args(["-m", "venv", "--clear"]).arg(&venv);
    let created = output_of(command)
        .await
        .expect("python3 runs (install CPython 3 with its venv module)");
    assert_ok(&created, "python3 -m venv");
    let mut command = Command::new(&python);
    command
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(client_dir().join("requirements.txt"));
    let installed = output_of(command).await.expect("pip runs");
    assert_ok(
        &installed,
        "pip install -r tests/old_client/requirements.txt",
    );
    assert!(
        has_requests(python.clone()).await,
        "requests is not importable after pip install"
    );
    python
}

fn assert_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs the old client on `content` uploaded as `name`; returns its output and the
/// directory it downloads into.
async fn run_old_client(
    python: &Path,
    server: &TestServer,
    name: &str,
    content: &str,
) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let input = dir.path().join(name);
    std::fs::write(&input, content).expect("write the input");
    let out_dir = tempfile::tempdir().expect("temporary directory");
    let mut command = Command::new(python);
    command
        .arg(client_dir().join("file_uploader.py"))
        .arg(&server.base_url)
        .arg(&input)
        .arg(out_dir.path())
        .arg("0.2");
    let output = output_of(command).await.expect("the old client runs");
    (output, out_dir)
}

/// Runs the old client on the seed example, which must end DONE with its result saved under
/// the name the download's `Content-Disposition` gives.
async fn assert_seed_round_trip(python: &Path, server: &TestServer) {
    let (output, out_dir) = run_old_client(python, server, "plays.csv", SEED_INPUT).await;
    assert_ok(&output, "the old client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("status DONE"), "{stdout}");
    let downloaded = out_dir.path().join("plays_aggregated.csv");
    assert!(
        stdout.contains(&format!("saved {}", downloaded.display())),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&downloaded).expect("the downloaded result"),
        SEED_OUTPUT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_python_client_works_unchanged() {
    let python = python_with_requests().await;
    let server = start_server(DbKind::Sqlite).await;

    assert_seed_round_trip(&python, &server).await;

    // An invalid input ends FAILED, which the client reports and exits 1 on.
    let (output, out_dir) = run_old_client(&python, &server, "bad.csv", INVALID_INPUT).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("status FAILED"),
        "{output:?}"
    );
    assert_eq!(
        std::fs::read_dir(out_dir.path()).expect("out dir").count(),
        0,
        "a failed task downloaded something"
    );
    server.stop().await;
}

/// `DOWNLOAD_REDIRECT`: the client follows the 307 to the bucket and names the file from the
/// bucket's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_python_client_follows_a_download_redirect() {
    let python = python_with_requests().await;
    let s3 = common::s3::S3Server::start().await;
    let bucket = s3.bucket_settings("old-client");
    let server = start_server_with(DbKind::Sqlite, move |settings| {
        settings.bucket = Some(bucket);
        settings.download_redirect = Some(std::time::Duration::from_secs(60));
    })
    .await;
    assert_seed_round_trip(&python, &server).await;
    let moto_log = s3.log();
    assert!(
        moto_log.contains("GET /") && moto_log.contains("X-Amz-Signature"),
        "the result was not fetched from the bucket: {moto_log}"
    );
    server.stop().await;
}
