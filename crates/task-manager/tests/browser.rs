//! The web page at `/` in a real browser: `tests/browser/page_test.py` drives Debian's
//! Chromium through Playwright for Python against a task manager in embedded mode. It follows
//! the progress bar of a slowed-down upload; uploads the seed example, waits for DONE and
//! downloads the result through the page's link; uploads
//! an input with bad plays on line 3 and finds the engine's message on the page; and, against
//! a server with an API token, enters the token the page asks for and then uploads and
//! downloads; and follows a task that waits in a queue, then runs (the test reporting its
//! progress as a worker would). Screenshots of each state go to `target/screenshots/`.
//!
//! Needs `/usr/bin/chromium` and the test tools' Python with Playwright, both installed by
//! `scripts/install-test-tools` (which `scripts/test` runs first); the test fails, saying so,
//! when either is missing.

use test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::*;
use task_manager::Tokens;

const CHROMIUM: &str = "/usr/bin/chromium";
const API_TOKEN: &str = "the-page-token";

/// Plays that are not a number, on line 3.
const BAD_PLAYS_INPUT: &str = "Song,Date,Number of Plays\n\
Umbrella,2020-01-02,200\n\
Umbrella,2020-01-01,lots\n\
In The End,2020-01-01,500\n";

/// Copies of the seed example's rows in `many_plays.csv`, an upload long enough (about 350 KB,
/// slowed down by the browser) to show its progress.
const MANY_COPIES: usize = 2000;

/// The workspace's `target/`, where the test tools live and the screenshots go.
fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// The test tools' Python, which has Playwright; the test fails when it or Chromium is missing.
fn python_with_playwright() -> PathBuf {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/install-test-tools (it installs Debian's chromium)"
    );
    let python = workspace_target().join("test-tools/venv/bin/python");
    let check = Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .output();
    match check {
        Ok(output) if output.status.success() => python,
        Ok(output) => panic!(
            "Playwright is not importable by {}: run scripts/install-test-tools\n{}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!(
            "{} does not run ({e}): run scripts/install-test-tools",
            python.display()
        ),
    }
}

/// Runs `page_test.py SCENARIO URL ...` to its end, off the async threads (the task manager
/// runs on them), and fails the test with its output unless it succeeds.
async fn run_page_test(scenario: &str, url: &str, extra: &[&str]) {
    let python = python_with_playwright();
    let files = tempfile::tempdir().expect("temporary directory");
    let (header, rows) = SEED_INPUT.split_at(SEED_INPUT.find('\n').map_or(0, |end| end + 1));
    let many = format!("{header}{}", rows.repeat(MANY_COPIES));
    for (name, content) in [
        ("plays.csv", SEED_INPUT),
        ("expected.csv", SEED_OUTPUT),
        ("bad_plays.csv", BAD_PLAYS_INPUT),
        ("many_plays.csv", &many),
    ] {
        std::fs::write(files.path().join(name), content).expect("write a test file");
    }
    let screenshots = workspace_target().join("screenshots");
    std::fs::create_dir_all(&screenshots).expect("create target/screenshots");
    let screenshots = screenshots.canonicalize().unwrap_or(screenshots);
    let mut command = Command::new(python);
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/page_test.py"))
        .args([scenario, url])
        .arg(files.path())
        .arg(&screenshots)
        .args(extra)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env("CHROMIUM", CHROMIUM);
    let started = Instant::now();
    let output: Output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the script's thread")
        .expect("page_test.py runs");
    eprintln!(
        "page_test.py {scenario}: {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        output.status.success(),
        "page_test.py {scenario} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uploads_follows_and_downloads() {
    let server = start_server(DbKind::Sqlite).await;
    run_page_test("open", &server.base_url, &[]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_token() {
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.api_tokens = Tokens::parse(API_TOKEN);
    })
    .await;
    run_page_test("token", &server.base_url, &[API_TOKEN]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_a_queued_task_as_it_runs() {
    // With a queue and no worker, the task waits until the test reports it started.
    let queue = format!("page_test_{}", uuid::Uuid::new_v4().simple());
    let server = start_server_with(DbKind::Sqlite, |settings| {
        publish_on(settings, &queue);
    })
    .await;
    run_page_test("queued", &server.base_url, &[]).await;
    server.stop().await;
    delete_queue(&queue).await;
}
