//! How `--memory-limit` is shared out: the input blocks in flight get a bounded slice (smaller
//! blocks under small limits), and the aggregation tables of all worker threads share the rest
//! as one budget. When the tables together reach it, every thread spills at its next check
//! (a spill "round"), so the threads' runs stay about the same size and a thread whose share
//! would otherwise sit unused (an idle or finished thread) leaves it to the others.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::pipeline::LockOk;

use super::source::MAX_RECORD_BYTES;

/// Smallest block size the budget shrinks blocks to (smaller blocks only cost overhead).
const MIN_BLOCK_BYTES: usize = 256 << 10;
/// Smallest table budget per thread, whatever the limit.
const MIN_TABLE_BYTES: usize = 64 << 10;

/// The split of a memory limit between input blocks and tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Input bytes per block.
    pub block_bytes: usize,
    /// Blocks in flight at most (queued, being parsed, being read).
    pub in_flight: usize,
    /// Estimated heap bytes all threads' tables may hold together.
    pub table_bytes: usize,
}

impl Plan {
    /// Shares `limit` bytes between `threads` workers. Blocks take at most about a quarter of
    /// the limit (down to [`MIN_BLOCK_BYTES`] each, and never more than `block_bytes`); the
    /// tables get 85% of the rest, the slack covering allocator rounding and fragmentation
    /// that the table estimate misses. What the limit does not cover (the program itself,
    /// spill and merge buffers, records longer than a block) is small and fixed.
    pub(crate) fn new(limit: u64, threads: usize, block_bytes: usize) -> Plan {
        let threads = threads.max(1);
        let in_flight = threads * 2 + 2;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let block_bytes = block_bytes
            .min((limit / 4 / in_flight).max(MIN_BLOCK_BYTES))
            .max(1);
        let blocks = in_flight.saturating_mul(block_bytes);
        let table_bytes = (limit.saturating_sub(blocks) / 20)
            .saturating_mul(17)
            .max(MIN_TABLE_BYTES * threads);
        Plan {
            block_bytes,
            in_flight,
            table_bytes,
        }
    }

    /// Capacity of a pooled stream buffer: a block and the longest record that may end it.
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.block_bytes + MAX_RECORD_BYTES
    }
}

/// The table budget shared by the worker threads.
pub(crate) struct TableBudget {
    total: usize,
    /// Each worker's last published estimate.
    used: Vec<AtomicUsize>,
    /// Bumped by the thread that finds the tables over budget: each thread that sees a new
    /// round spills its tables.
    round: AtomicU64,
    /// Workers writing a run (their tables still count until it is written).
    spilling: Mutex<usize>,
    spilled: Condvar,
}

/// A worker's spill in progress (see [`TableBudget::spilling`]).
pub(crate) struct Spilling<'a>(&'a TableBudget);

impl Drop for Spilling<'_> {
    fn drop(&mut self) {
        let mut spilling = self.0.spilling.lock_ok();
        *spilling = spilling.saturating_sub(1);
        self.0.spilled.notify_all();
    }
}

impl TableBudget {
    pub(crate) fn new(total: usize, workers: usize) -> Self {
        TableBudget {
            total,
            used: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            round: AtomicU64::new(0),
            spilling: Mutex::new(0),
            spilled: Condvar::new(),
        }
    }

    /// Estimated bytes all tables may hold together.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// A worker's fair share: the size below which its tables are not worth spilling in a
    /// round another thread started.
    pub(crate) fn share(&self) -> usize {
        self.total / self.used.len().max(1)
    }

    /// Records worker `me`'s current estimate.
    pub(crate) fn publish(&self, me: usize, bytes: usize) {
        if let Some(slot) = self.used.get(me) {
            slot.store(bytes, Ordering::Relaxed);
        }
    }

    /// What the other workers' tables hold, as last published.
    pub(crate) fn others(&self, me: usize) -> usize {
        self.used
            .iter()
            .enumerate()
            .filter(|&(worker, _)| worker != me)
            .map(|(_, slot)| slot.load(Ordering::Relaxed))
            .sum()
    }

    /// The current spill round.
    pub(crate) fn round(&self) -> u64 {
        self.round.load(Ordering::Relaxed)
    }

    /// Starts a spill round (unless another thread already started one since `seen`);
    /// returns the round the caller now takes part in.
    pub(crate) fn start_round(&self, seen: u64) -> u64 {
        match self
            .round
            .compare_exchange(seen, seen + 1, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => seen + 1,
            Err(current) => current,
        }
    }
}

impl TableBudget {
    /// Marks a spill in progress until the guard is dropped (after the worker has published
    /// what its tables hold once written).
    pub(crate) fn spilling(&self) -> Spilling<'_> {
        *self.spilling.lock_ok() += 1;
        Spilling(self)
    }

    /// Whether a worker other than the caller (who is not spilling) is writing a run.
    pub(crate) fn others_spilling(&self) -> bool {
        *self.spilling.lock_ok() > 0
    }

    /// Waits until no worker is spilling, or `stopped` says to give up: a worker out of room
    /// while another one writes its run waits for that room instead of spilling a tiny run.
    pub(crate) fn wait_for_spills(&self, stopped: impl Fn() -> bool) {
        let mut spilling = self.spilling.lock_ok();
        while *spilling > 0 && !stopped() {
            spilling = match self
                .spilled
                .wait_timeout(spilling, Duration::from_millis(50))
            {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_limits_get_small_blocks_and_most_of_the_limit_for_tables() {
        let mib = 1 << 20;
        let plan = Plan::new(32 * mib as u64, 2, 4 * mib);
        assert_eq!(plan.in_flight, 6);
        assert!(plan.block_bytes * plan.in_flight <= 8 * mib, "{plan:?}");
        assert!(plan.table_bytes >= 20 * mib, "{plan:?}");
        let big = Plan::new(4 << 30, 2, 4 * mib);
        assert_eq!(big.block_bytes, 4 * mib);
        assert!(big.table_bytes > 3 << 30, "{big:?}");
        let tiny = Plan::new(1, 3, 64);
        assert_eq!(tiny.block_bytes, 64);
        assert_eq!(tiny.table_bytes, 3 * MIN_TABLE_BYTES);
    }

    #[test]
    fn budget_is_shared_and_rounds_start_once() {
        let budget = TableBudget::new(100, 3);
        budget.publish(0, 10);
        budget.publish(1, 20);
        budget.publish(2, 40);
        assert_eq!(budget.others(1), 50);
        assert_eq!(budget.share(), 33);
        assert_eq!(budget.start_round(0), 1);
        // A thread that had not seen round 1 joins it instead of starting another.
        assert_eq!(budget.start_round(0), 1);
        assert_eq!(budget.round(), 1);
        assert_eq!(budget.start_round(1), 2);
    }
}
