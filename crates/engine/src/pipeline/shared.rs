//! The state the worker threads share during a run: its settings, the invalid records and
//! the error that stop it, the spilled runs, the table budget and the spill rounds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Field};
use crate::input::blocks::ReleaseFrontier;
use crate::spill::budget::TableBudget;
use crate::spill::rounds::Rounds;
use crate::spill::run::SpilledRun;
use crate::{Config, Control};

/// An invalid record located by block and line within the block.
#[derive(Debug, Clone)]
pub(crate) struct LocatedInvalid {
    pub block: u64,
    pub line: u64,
    pub field: Option<Field>,
    pub reason: String,
}

impl LocatedInvalid {
    pub(crate) fn key(&self) -> (u64, u64) {
        (self.block, self.line)
    }
}

/// State the workers share.
pub(crate) struct Shared<'a> {
    pub config: &'a Config,
    pub control: &'a Control,
    /// Blocks after this one need no work (an earlier invalid record ends the run).
    pub first_bad_block: AtomicU64,
    /// The earliest invalid record (strict mode).
    first_invalid: Mutex<Option<LocatedInvalid>>,
    /// The first few skipped records (with `skip_invalid`).
    samples: Mutex<Vec<LocatedInvalid>>,
    skipped: AtomicU64,
    /// An error that ends the run whatever the mode (I/O, overflow).
    fatal: Mutex<Option<Error>>,
    pub abort: AtomicBool,
    /// Line ends per block, for turning block-relative lines into file lines.
    block_lines: Mutex<Vec<u64>>,
    /// Pages of the memory-mapped input that can be dropped.
    pub frontier: ReleaseFrontier,
    /// Spilled runs (some of them merged early).
    pub spills: Mutex<Vec<SpilledRun>>,
    /// Runs spilled.
    pub spilled_runs: AtomicU64,
    /// Bytes of the runs spilled.
    pub spilled_bytes: AtomicU64,
    pub budget: TableBudget,
    pub rounds: Rounds,
    pub temp_dir: PathBuf,
}

impl<'a> Shared<'a> {
    pub(crate) fn new(
        config: &'a Config,
        control: &'a Control,
        budget: TableBudget,
        rounds: Rounds,
        temp_dir: PathBuf,
    ) -> Self {
        Shared {
            config,
            control,
            first_bad_block: AtomicU64::new(u64::MAX),
            first_invalid: Mutex::new(None),
            samples: Mutex::new(Vec::new()),
            skipped: AtomicU64::new(0),
            fatal: Mutex::new(None),
            abort: AtomicBool::new(false),
            block_lines: Mutex::new(Vec::new()),
            frontier: ReleaseFrontier::default(),
            spills: Mutex::new(Vec::new()),
            spilled_runs: AtomicU64::new(0),
            spilled_bytes: AtomicU64::new(0),
            budget,
            rounds,
            temp_dir,
        }
    }

    pub(crate) fn fail(&self, error: Error) {
        let mut fatal = self.fatal.lock();
        fatal.get_or_insert(error);
        self.abort.store(true, Ordering::Relaxed);
    }

    pub(crate) fn stopped(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.control.is_cancelled()
    }

    pub(crate) fn record_invalid(&self, invalid: LocatedInvalid) {
        if !self.config.skip_invalid {
            return self.record_invalid_always(invalid);
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock();
        samples.push(invalid);
        if samples.len() > self.config.max_reported_invalid * 2 {
            samples.sort_by_key(LocatedInvalid::key);
            samples.truncate(self.config.max_reported_invalid);
        }
    }

    /// Keeps the earliest invalid record as the run's error, whatever the mode.
    pub(crate) fn record_invalid_always(&self, invalid: LocatedInvalid) {
        self.first_bad_block
            .fetch_min(invalid.block, Ordering::Relaxed);
        let mut first = self.first_invalid.lock();
        if first.as_ref().is_none_or(|f| invalid.key() < f.key()) {
            *first = Some(invalid);
        }
    }

    pub(crate) fn set_block_lines(&self, block: u64, lines: u64) {
        let mut all = self.block_lines.lock();
        let index = block as usize;
        if all.len() <= index {
            all.resize(index + 1, 0);
        }
        all[index] = lines;
    }

    /// The error that ended the run, if any.
    pub(crate) fn take_fatal(&self) -> Option<Error> {
        self.fatal.lock().take()
    }

    /// The earliest invalid record, if any.
    pub(crate) fn take_first_invalid(&self) -> Option<LocatedInvalid> {
        self.first_invalid.lock().take()
    }

    /// The skipped records kept as samples (unordered).
    pub(crate) fn take_samples(&self) -> Vec<LocatedInvalid> {
        std::mem::take(&mut *self.samples.lock())
    }

    /// Records skipped.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Line ends per block.
    pub(crate) fn block_lines(&self) -> Vec<u64> {
        self.block_lines.lock().clone()
    }
}
