//! The aggregation engine: sums `Number of Plays` per (song, date) over a CSV
//! `Song,Date,Number of Plays` of any size and writes the groups sorted by song bytes, then date.
//!
//! Entry points: [`aggregate`] writes the result to a file (atomically: temporary file + rename),
//! [`aggregate_to_writer`] to any writer. Both take an [`Input`] (a local file, memory-mapped, or
//! any byte stream), a [`Config`] (memory budget, threads, temp dir, strictness) and a [`Control`]
//! (progress counters and cancellation shared with the caller).

mod aggregate;
mod config;
mod date;
mod entry;
mod error;
mod input;
mod merge;
mod output;
mod pipeline;
mod progress;
mod spill;
mod summary;
#[cfg(test)]
mod tests;

pub use config::{Config, parse_size};
pub use entry::{aggregate, aggregate_to_writer};
pub use error::{Error, Field, InvalidRow};
pub use input::header::check_header;
pub use input::{Growth, Input, Pieces};
pub use output::file::{OutputFile, remove_stale_partials};
pub use pipeline::worker::return_free_memory;
pub use progress::{Control, Phase, Progress, ProgressSnapshot};
pub use summary::Summary;

/// The header of input and output files.
pub const HEADER: &str = "Song,Date,Number of Plays";
