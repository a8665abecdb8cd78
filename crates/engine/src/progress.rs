//! Progress counters and cancellation, shared between the engine and its caller.
//!
//! The engine only bumps atomics; a caller (progress bar, worker heartbeat) polls
//! [`Progress::snapshot`] at its own pace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Read,
    Spill,
    Merge,
    Done,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Read,
            1 => Phase::Spill,
            2 => Phase::Merge,
            _ => Phase::Done,
        }
    }

    /// Lower-case name, e.g. `"merge"`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Read => "read",
            Phase::Spill => "spill",
            Phase::Merge => "merge",
            Phase::Done => "done",
        }
    }
}

/// Live counters of a run.
#[derive(Debug, Default)]
pub struct Progress {
    total_bytes: AtomicU64,
    bytes_read: AtomicU64,
    rows: AtomicU64,
    phase: AtomicU8,
}

/// A consistent-enough copy of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ProgressSnapshot {
    /// Input size when known (0 for a stream of unknown length).
    pub total_bytes: u64,
    pub bytes_read: u64,
    pub rows: u64,
    pub phase: Phase,
}

impl ProgressSnapshot {
    /// Share of the work done, 0.0 to 1.0; reading counts for 90%, merging for the rest.
    pub fn fraction(&self) -> f64 {
        match self.phase {
            Phase::Done => 1.0,
            Phase::Merge => 0.9,
            Phase::Read | Phase::Spill if self.total_bytes > 0 => {
                0.9 * (self.bytes_read as f64 / self.total_bytes as f64).min(1.0)
            }
            Phase::Read | Phase::Spill => 0.0,
        }
    }
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
        }
    }

    /// Sets the input's size (also when it becomes known during the run, as for a stream).
    pub fn set_total(&self, bytes: u64) {
        self.total_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_read(&self, bytes: u64, rows: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
}

/// Handle shared by the engine and its caller: progress to watch and a cancel switch.
#[derive(Debug, Clone, Default)]
pub struct Control {
    progress: Arc<Progress>,
    cancelled: Arc<AtomicBool>,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live progress counters.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Asks the engine to stop; it returns [`crate::Error::Cancelled`] soon after.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}
