//! The aggregation engine: sums `Number of Plays` per (song, date) over a CSV
//! `Song,Date,Number of Plays` of any size and writes the groups sorted by song bytes, then date.
//!
//! Entry points: [`aggregate`] writes the result to a file (atomically: temporary file + rename),
//! [`aggregate_to_writer`] to any writer. Both take an [`Input`] (a local file, memory-mapped, or
//! any byte stream), a [`Config`] (memory budget, threads, temp dir, strictness) and a [`Control`]
//! (progress counters and cancellation shared with the caller).
//!
//! Layout, one module per concern, by pipeline stage:
//!
//! - `entry`: the entry points: opens the input, runs the pipeline, commits the output file.
//! - `config`, `progress`, `summary`, `error`: what callers pass in and get back.
//! - `date`: packed dates, parsed from and formatted to `YYYY-MM-DD`.
//! - `input`: where the CSV comes from (`Input`, `Pieces`, `Growth`) and the record limit;
//!   `input::blocks` cuts it into blocks of whole records, `input::header` checks the header,
//!   `input::scan` finds delimiters and record ends, `input::parse` parses a block's records.
//! - `aggregate`: a worker's tables: `hash` (song hash), `days` (per-song sums by date),
//!   `table` (the interning hash table), `hot` (cache of frequent songs), `shards` (the table
//!   split in cache-sized shards, rows buffered per shard).
//! - `spill`: `budget` (how the memory limit is shared), `rounds` (workers spilling together),
//!   `run` (sorted runs in memory and on disk, the spill format), `index` (sparse indexes of
//!   spilled files).
//! - `merge`: the final merge of the runs into CSV rows, and the early merges of spilled runs;
//!   `merge::kway` is the k-way merge, `merge::ranges` merges spilled runs in parallel ranges
//!   of names.
//! - `output`: `csv` (row formatting), `writer` (the writer thread), `file` (the output file,
//!   written beside its target and renamed).
//! - `pipeline`: drives a run: the producer, the `worker` threads and their `shared` state, the
//!   merge and the writer.

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
pub use input::header::{HEADER, check_header};
pub use input::{Growth, Input, Pieces};
pub use output::file::{OutputFile, remove_stale_partials};
pub use pipeline::return_free_memory;
pub use progress::{Control, Phase, Progress, ProgressSnapshot};
pub use summary::Summary;
