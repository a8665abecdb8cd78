//! `processor`: aggregate a CSV file (`aggregate`), serve the task queue (`worker`),
//! or send a file to the task manager and fetch its result (`upload`).

mod aggregate;
#[cfg(feature = "service")]
mod bearer;
#[cfg(feature = "service")]
mod upload;
#[cfg(feature = "service")]
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Sums Number of Plays per (song, date) in CSV files of any size"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Aggregate a local CSV file (or `-` for stdin) into a sorted CSV.
    Aggregate(aggregate::AggregateArgs),
    /// Consume tasks from RabbitMQ, aggregate them and report to the task manager.
    #[cfg(feature = "service")]
    Worker(Box<worker::WorkerArgs>),
    /// Upload a CSV to the task manager, wait for the result and download it.
    #[cfg(feature = "service")]
    Upload(upload::UploadArgs),
}

fn main() -> ExitCode {
    // A missing .env is the normal case; a broken one is reported by the commands' own checks.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    match cli.command {
        Command::Aggregate(args) => aggregate::run(args),
        #[cfg(feature = "service")]
        Command::Worker(args) => report(worker::run(*args)),
        #[cfg(feature = "service")]
        Command::Upload(args) => report(upload::run(args)),
    }
}

#[cfg(feature = "service")]
/// Prints an error chain for commands that return `anyhow::Result`.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default`, e.g. `info`), in the format
/// `LOG_FORMAT` names.
fn init_tracing(default: &str) -> Result<(), telemetry::InvalidFormat> {
    telemetry::init(default, telemetry::Stream::Stderr)
}
