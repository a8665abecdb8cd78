//! `processor aggregate IN.csv -o OUT.csv`: the engine on a local file, with a progress bar.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use engine::{Config, Control, Error, Input, OutputFile, Summary, parse_size};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Exit code for invalid input data (sysexits EX_DATAERR).
const EXIT_INVALID_INPUT: u8 = 65;
/// Exit code for I/O failures (sysexits EX_IOERR).
const EXIT_IO: u8 = 74;
/// Exit code after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Args)]
pub struct AggregateArgs {
    /// Input CSV `Song,Date,Number of Plays`, or `-` for stdin.
    input: PathBuf,
    /// Output CSV (written to a temporary file and renamed on success), or `-` for stdout.
    #[arg(short, long)]
    output: PathBuf,
    /// Memory budget for the aggregation, e.g. 256M or 2G; above it sorted runs spill to disk.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    memory_limit: u64,
    /// Directory for spilled runs (default: the system temp dir).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Skip invalid rows instead of failing; they are counted and the first few reported.
    #[arg(long)]
    skip_invalid: bool,
    /// Write a JSON summary (rows, groups, bytes, time, skipped rows) to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: AggregateArgs) -> ExitCode {
    // Errors and the summary are printed below; logs (e.g. `RUST_LOG=processor=debug`: the
    // engine's phases) only on request.
    if let Err(e) = super::init_tracing("warn") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match execute(&args) {
        Ok(summary) => {
            if summary.rows_skipped > 0 {
                eprintln!("skipped {} invalid rows; first ones:", summary.rows_skipped);
                for sample in &summary.invalid_samples {
                    eprintln!("  {sample}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(CliError::Engine(err)) => {
            eprintln!("error: {err}");
            ExitCode::from(match err {
                Error::Invalid(_) | Error::EmptyInput | Error::SumOverflow { .. } => {
                    EXIT_INVALID_INPUT
                }
                Error::Cancelled => EXIT_INTERRUPTED,
                _ => EXIT_IO,
            })
        }
        Err(CliError::Other(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

enum CliError {
    Engine(Error),
    Other(anyhow::Error),
}

fn execute(args: &AggregateArgs) -> Result<Summary, CliError> {
    // Opened before the run (a missing directory fails now): a summary that could not be
    // written after a long run would turn a good result into a failed exit.
    let summary_error =
        |e, path: &Path| CliError::Engine(write_error(e, &path.display().to_string()));
    let summary_file = match &args.summary {
        Some(path) => Some(OutputFile::create(path).map_err(|e| summary_error(e, path))?),
        None => None,
    };
    let config = Config {
        memory_limit: args.memory_limit,
        threads: args.threads,
        temp_dir: args.temp_dir.clone(),
        skip_invalid: args.skip_invalid,
        ..Config::default()
    };
    let control = Control::new();
    {
        let control = control.clone();
        ctrlc::set_handler(move || control.cancel())
            .map_err(|e| CliError::Other(anyhow::anyhow!("cannot handle Ctrl-C: {e}")))?;
    }
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| spawn_progress(&control));

    let stdin_input = || Input::Reader {
        reader: Box::new(std::io::stdin()),
        len: None,
    };
    let input = if args.input.as_os_str() == "-" {
        stdin_input()
    } else {
        Input::File(&args.input)
    };
    let result = if args.output.as_os_str() == "-" {
        let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        engine::aggregate_to_writer(input, &mut stdout, &config, &control)
            .and_then(|s| {
                stdout
                    .flush()
                    .map(|_| s)
                    .map_err(|e| write_error(e, "<stdout>"))
            })
            .map_err(|e| match e {
                Error::Write { source, .. } => write_error(source, "<stdout>"),
                other => other,
            })
    } else {
        engine::aggregate(input, &args.output, &config, &control)
    };
    if let Some(bar) = bar {
        bar.finish();
    }
    let summary = result.map_err(CliError::Engine)?;
    if let (Some(path), Some(file)) = (&args.summary, summary_file) {
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| CliError::Other(e.into()))?;
        let written = file.file().write_all(&json).and_then(|()| file.commit());
        written.map_err(|e| summary_error(e, path))?;
    }
    Ok(summary)
}

fn write_error(source: std::io::Error, path: &str) -> Error {
    Error::Write {
        path: PathBuf::from(path),
        source,
    }
}

/// A progress bar redrawn from the engine's counters by a thread of its own.
struct ProgressDisplay {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ProgressDisplay {
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.bar.finish_and_clear();
    }
}

/// Starts a thread drawing the engine's progress until [`ProgressDisplay::finish`].
fn spawn_progress(control: &Control) -> ProgressDisplay {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:6} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let control = control.clone();
    let drawn = bar.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while !stopped.load(Ordering::Relaxed) {
            let snap = control.progress().snapshot();
            drawn.set_length(snap.total_bytes.max(snap.bytes_read));
            drawn.set_position(snap.bytes_read);
            let rate = snap.rows as f64 / started.elapsed().as_secs_f64().max(1e-3);
            drawn.set_message(format!("{} {:.1}M rows/s", snap.phase.name(), rate / 1e6));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    ProgressDisplay { bar, stop, thread }
}
