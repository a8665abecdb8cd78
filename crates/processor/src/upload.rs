//! `processor upload FILE`: sends a CSV to the task manager, follows the task with a
//! progress bar and downloads the result (the successor of the Python `file_uploader.py`).

mod api;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use task_protocol::TaskStatus;
use uuid::Uuid;

use api::{Api, StatusError};
use task_protocol::TaskView;

/// Interval between two status requests. Each asks the server to hold its answer that long
/// unless the task finishes (long polling), so the end is seen at once.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Status requests failing in a row (task manager down) before the client gives up.
const MAX_POLL_FAILURES: u32 = 60;

#[derive(Args)]
pub struct UploadArgs {
    /// CSV file `Song,Date,Number of Plays` to aggregate.
    file: PathBuf,
    /// Where to write the result (default: `<name>_aggregated.csv` next to FILE).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Base URL of the task manager.
    #[arg(
        long,
        env = "TASK_MANAGER_URL",
        default_value = task_protocol::DEFAULT_TASK_MANAGER_URL
    )]
    url: String,
    /// Token of the task manager's API (its API_TOKEN; of a comma-separated list, the
    /// first). Prefer the environment variable: arguments show in process lists.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: UploadArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        tokio::select! {
            result = upload_and_fetch(args) => result,
            // Dropping the transfer removes its temporary file.
            _ = tokio::signal::ctrl_c() => {
                bail!("interrupted; a task already uploaded keeps running on the server")
            }
        }
    })
}

async fn upload_and_fetch(args: UploadArgs) -> anyhow::Result<()> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.file));
    // Created first, so that an unwritable destination fails before a long upload.
    let partial = partial_file(&output)?;
    let show = !args.quiet && std::io::stderr().is_terminal();
    let api = Api::new(&args.url, args.token.as_deref())?;
    // Also before a long upload: a wrong URL or token.
    api.check_access().await?;

    let bar = bytes_bar(show, "upload");
    let task_id = api.upload(&args.file, &bar).await?;
    bar.finish_and_clear();
    println!("task {task_id}");

    let state = follow(&api, task_id, show).await?;
    match state.status {
        TaskStatus::Done => {}
        status => bail!(
            "task {task_id} {status}: {}",
            state.error.as_deref().unwrap_or("no reason given")
        ),
    }

    let bar = bytes_bar(show, "download");
    let mut file = tokio::fs::File::from_std(
        partial
            .file()
            .try_clone()
            .context("cannot open the temporary result file")?,
    );
    api.download(task_id, &mut file, &bar).await?;
    drop(file);
    bar.finish_and_clear();
    partial
        .commit()
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!("{}", output.display());
    Ok(())
}

/// Follows the task's status (one request per [`POLL_EVERY`] at most) until it is DONE,
/// FAILED or CANCELLED.
async fn follow(api: &Api, task_id: Uuid, show: bool) -> anyhow::Result<TaskView> {
    let bar = if show {
        ProgressBar::new(1000)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(style(
        "{spinner} {msg:10} [{elapsed_precise}] {wide_bar} {percent:>3}%",
    ));
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut failures = 0;
    loop {
        let next_poll = tokio::time::Instant::now() + POLL_EVERY;
        match api.status(task_id, POLL_EVERY).await {
            Ok(state) => {
                failures = 0;
                bar.set_message(state.status.as_str());
                bar.set_position((state.progress.clamp(0.0, 1.0) * 1000.0) as u64);
                if state.status.is_terminal() {
                    bar.finish_and_clear();
                    return Ok(state);
                }
            }
            Err(StatusError::Fatal(err)) => return Err(err),
            Err(StatusError::Transient(err)) => {
                failures += 1;
                if failures >= MAX_POLL_FAILURES {
                    return Err(err.context(format!(
                        "the task manager did not answer {failures} times in a row; \
                         task {task_id} may still finish: check it later"
                    )));
                }
                bar.suspend(|| eprintln!("warning: {err:#}; retrying"));
            }
        }
        // A server without long polling answers at once: keep the pace anyway.
        tokio::time::sleep_until(next_poll).await;
    }
}

/// `<stem>_aggregated.csv` beside `input`.
fn default_output(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(|| "result".into(), |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}_aggregated.csv"))
}

/// Where the result goes: a temporary file beside `output`, renamed onto it once the download
/// is complete (written in place when `output` is a device or FIFO).
fn partial_file(output: &Path) -> anyhow::Result<engine::OutputFile> {
    engine::OutputFile::create(output).with_context(|| {
        let dir = output.parent().unwrap_or(Path::new("."));
        format!("cannot write in {}", dir.display())
    })
}

fn bytes_bar(show: bool, label: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0).with_message(label);
    bar.set_style(style(
        "{spinner} {msg:10} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec})",
    ));
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_output_sits_beside_the_input() {
        assert_eq!(
            default_output(Path::new("/data/plays.csv")),
            Path::new("/data/plays_aggregated.csv")
        );
        assert_eq!(
            default_output(Path::new("plays")),
            Path::new("plays_aggregated.csv")
        );
    }
}
