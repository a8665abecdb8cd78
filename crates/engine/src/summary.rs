//! What a successful run reports.

use serde::Serialize;

/// Figures of a finished aggregation (also written as the CLI's JSON summary).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Data rows read (valid and skipped, header excluded).
    pub rows_read: u64,
    /// Invalid rows skipped (only with `skip_invalid`).
    pub rows_skipped: u64,
    /// (song, date) groups written.
    pub groups_written: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// Sorted runs spilled to disk because of the memory limit.
    pub spilled_runs: u64,
    /// Bytes written to disk for those runs (not counting their early merges).
    pub spilled_bytes: u64,
    pub elapsed_seconds: f64,
    /// The first few skipped rows, in file order: `line N, field "F": reason`.
    pub invalid_samples: Vec<String>,
}
