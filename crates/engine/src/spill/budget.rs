//! How `--memory-limit` is shared out: the input blocks in flight get a bounded slice (smaller
//! blocks under small limits), and the aggregation tables of all worker threads share the rest
//! as one budget, not a fixed part each: when they reach it together, they spill together
//! (see `rounds`).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::input::MAX_RECORD_BYTES;

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
    /// Each worker's last published estimate of its tables and of its row buffers.
    used: Vec<(AtomicUsize, AtomicUsize)>,
}

impl TableBudget {
    pub(crate) fn new(total: usize, workers: usize) -> Self {
        TableBudget {
            total,
            used: (0..workers)
                .map(|_| (AtomicUsize::new(0), AtomicUsize::new(0)))
                .collect(),
        }
    }

    /// A worker's even share of the budget.
    pub(crate) fn share(&self) -> usize {
        self.total / self.used.len().max(1)
    }

    /// Records worker `me`'s current estimates.
    pub(crate) fn publish(&self, me: usize, tables: usize, buffers: usize) {
        if let Some((t, b)) = self.used.get(me) {
            t.store(tables, Ordering::Relaxed);
            b.store(buffers, Ordering::Relaxed);
        }
    }

    /// Whether the tables of all workers, with `pending` bytes of tables being written,
    /// outgrow the room the budget leaves them: all of it but the row buffers (which a spill
    /// does not free), and at least half of it (under tiny budgets the buffers are a large
    /// part, and going over is better than spilling runs of a few rows).
    pub(crate) fn over(&self, pending: usize) -> bool {
        let (mut tables, mut buffers) = (pending, 0usize);
        for (t, b) in &self.used {
            tables = tables.saturating_add(t.load(Ordering::Relaxed));
            buffers = buffers.saturating_add(b.load(Ordering::Relaxed));
        }
        tables > self.total.saturating_sub(buffers).max(self.total / 2)
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
    fn budget_is_shared_and_leaves_room_for_buffers() {
        let budget = TableBudget::new(100, 3);
        assert_eq!(budget.share(), 33);
        budget.publish(0, 30, 5);
        budget.publish(1, 40, 5);
        assert!(!budget.over(0));
        budget.publish(2, 16, 5);
        assert!(budget.over(0), "86 bytes of tables and 15 of buffers");
        budget.publish(2, 0, 5);
        assert!(budget.over(20), "tables being written count");
        // Buffers over half the budget: the tables still get half.
        budget.publish(0, 20, 40);
        budget.publish(1, 20, 40);
        budget.publish(2, 0, 0);
        assert!(!budget.over(0));
        assert!(budget.over(11));
    }
}
