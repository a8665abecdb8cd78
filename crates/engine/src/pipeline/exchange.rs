//! The rows workers hand each other: each worker owns a share of the table's shards (see
//! `aggregate::shards`), and the buffered rows of the shards it does not own go, a whole
//! shard's buffer at a time, to the inbox of the worker that owns them. The buffers move, the
//! rows are not copied; emptied buffers come back to a pool for the next sender.
//!
//! Memory stays bounded: an inbox takes at most [`Exchange::new`]'s `inbox_bytes` (beyond,
//! the sender adds the rows to its own table), and the buffers allocated beyond the workers'
//! own count against the table budget as buffers ([`Exchange::extra_bytes`]): a spill does
//! not free them (counted as tables, a spill could never bring a small budget's tables
//! under them, and the workers spilled empty tables forever).
//!
//! At the end of the input every worker sends its last rows, then waits until all have
//! ([`Exchange::all_sent`]) before it adds what it received: from then on nothing is sent.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::aggregate::shards::{ShardExchange, ShardRows, ShardedTable};

/// The workers' inboxes and the pool of emptied buffers.
pub(crate) struct Exchange {
    workers: usize,
    /// Each worker's received rows, with their heap bytes.
    inboxes: Vec<Mutex<(Vec<ShardRows>, usize)>>,
    inbox_bytes: usize,
    pool: Mutex<Vec<ShardRows>>,
    /// Heap bytes of the buffers allocated to replace sent ones (all in an inbox, being
    /// added, or in the pool).
    extra: AtomicUsize,
    /// Workers that have sent their last rows.
    sent: AtomicUsize,
    /// Set once all have: later sends are refused.
    closed: AtomicBool,
}

impl Exchange {
    /// An exchange between `workers` workers whose inboxes hold up to `inbox_bytes` each.
    pub(crate) fn new(workers: usize, inbox_bytes: usize) -> Self {
        Exchange {
            workers,
            inboxes: (0..workers).map(|_| Mutex::new((Vec::new(), 0))).collect(),
            inbox_bytes,
            pool: Mutex::new(Vec::new()),
            extra: AtomicUsize::new(0),
            sent: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Workers exchanging rows.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Whether the workers exchange rows at all (more than one).
    pub(crate) fn active(&self) -> bool {
        self.workers > 1
    }

    /// Heap bytes of the buffers allocated beyond the workers' own.
    pub(crate) fn extra_bytes(&self) -> usize {
        self.extra.load(Ordering::Relaxed)
    }

    /// Takes the rows sent to worker `me`.
    pub(crate) fn take_inbox(&self, me: usize) -> Vec<ShardRows> {
        match self.inboxes.get(me) {
            Some(inbox) => {
                let mut inbox = inbox.lock();
                inbox.1 = 0;
                std::mem::take(&mut inbox.0)
            }
            None => Vec::new(),
        }
    }

    /// Worker has sent its last rows.
    pub(crate) fn finished_sending(&self) {
        self.sent.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every worker has sent its last rows; then the exchange closes.
    pub(crate) fn all_sent(&self) -> bool {
        let all = self.sent.load(Ordering::Acquire) >= self.workers;
        if all {
            self.closed.store(true, Ordering::Release);
        }
        all
    }

    /// A worker's handle, to pass to [`ShardedTable::flush_within`].
    pub(crate) fn handle(&self) -> Sender<'_> {
        Sender { exchange: self }
    }
}

/// A worker's side of the [`Exchange`].
pub(crate) struct Sender<'a> {
    exchange: &'a Exchange,
}

impl ShardExchange for Sender<'_> {
    fn send(&mut self, rows: ShardRows) -> Result<ShardRows, ShardRows> {
        let exchange = self.exchange;
        if !exchange.active() || exchange.closed.load(Ordering::Acquire) {
            return Err(rows);
        }
        let owner = ShardedTable::owner_of(rows.shard, exchange.workers);
        let Some(inbox) = exchange.inboxes.get(owner) else {
            return Err(rows);
        };
        let bytes = rows.bytes();
        if inbox.lock().1 + bytes > exchange.inbox_bytes {
            return Err(rows);
        }
        // The replacement is found (or allocated) outside the inbox's lock.
        let spare = exchange.pool.lock().pop();
        if spare.is_none() {
            exchange.extra.fetch_add(bytes, Ordering::Relaxed);
        }
        let empty = ShardRows::empty_like(&rows, spare);
        let mut held = inbox.lock();
        if held.1 + bytes > exchange.inbox_bytes {
            drop(held);
            exchange.pool.lock().push(empty);
            return Err(rows);
        }
        held.1 += bytes;
        held.0.push(rows);
        Ok(empty)
    }

    fn recycle(&mut self, rows: ShardRows) {
        self.exchange.pool.lock().push(rows);
    }
}
