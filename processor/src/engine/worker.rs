//! A worker thread: parses the blocks it receives into its sharded table, spilling sorted
//! runs when the tables of all workers together outgrow the memory budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use memmap2::Mmap;

use super::parse::{Parser, RowSink, Stop};
use super::pipeline::{LocatedInvalid, LockOk, Shared};
use super::run::spill;
use super::shards::ShardedTable;
use super::source::{Block, BlockData, MAX_RECORD_BYTES};
use super::validate::PackedDate;
use crate::Phase;
use crate::error::{Field, show_value};

/// Feeds parsed rows of one block into a worker's table, flushing the buffered rows (and
/// spilling) as soon as they fill.
struct TableSink<'a, 's> {
    table: &'a mut ShardedTable,
    spiller: &'a mut Spiller,
    shared: &'a Shared<'s>,
    block: u64,
}

impl RowSink for TableSink<'_, '_> {
    #[inline]
    fn row(&mut self, song: &[u8], date: PackedDate, plays: u64, line: u64) -> Result<(), Stop> {
        if !song.is_ascii() && std::str::from_utf8(song).is_err() {
            return self.invalid(
                line,
                Some(Field::Song),
                format!("{} is not valid UTF-8", show_value(song)),
            );
        }
        self.table.add(song, date, plays);
        if self.table.wants_flush() {
            return self.flush();
        }
        Ok(())
    }

    fn invalid(&mut self, line: u64, field: Option<Field>, reason: String) -> Result<(), Stop> {
        self.shared.record_invalid(LocatedInvalid {
            block: self.block,
            line,
            field,
            reason,
        });
        if self.shared.config.skip_invalid {
            Ok(())
        } else {
            Err(Stop)
        }
    }
}

impl TableSink<'_, '_> {
    #[cold]
    fn flush(&mut self) -> Result<(), Stop> {
        if self.shared.stopped() {
            return Err(Stop);
        }
        self.spiller.flush(self.table, self.shared);
        Ok(())
    }
}

/// Worker `me`: parses blocks into its table until the blocks run out.
pub(crate) fn worker(
    me: usize,
    blocks: crossbeam_channel::Receiver<Block>,
    pool: crossbeam_channel::Sender<Vec<u8>>,
    map: Option<&Mmap>,
    shared: &Shared<'_>,
    input_bytes: &AtomicU64,
    rows: &AtomicU64,
) -> ShardedTable {
    // Larger batches keep big tables' shards in cache longer; small budgets gain little.
    let flush_at = (shared.budget.share() / 16).clamp(1 << 14, 128 << 20);
    let mut table = ShardedTable::new(flush_at);
    let mut spiller = Spiller {
        me,
        round: shared.budget.round(),
    };
    let mut parser = Parser::default();
    for block in blocks {
        let len = block.data.len();
        if !shared.stopped() && block.index <= shared.first_bad_block.load(Ordering::Relaxed) {
            let data: &[u8] = match (&block.data, map) {
                (BlockData::Mapped { start, end }, Some(map)) => &map[*start..*end],
                (BlockData::Owned(buf), _) => buf,
                (BlockData::Mapped { .. }, None) => &[],
            };
            let mut sink = TableSink {
                table: &mut table,
                spiller: &mut spiller,
                shared,
                block: block.index,
            };
            if block.oversized {
                // The input cannot be resynchronised after this record: an error in any mode.
                shared.record_invalid_always(LocatedInvalid {
                    block: block.index,
                    line: 0,
                    field: None,
                    reason: format!(
                        "a record longer than {} MiB, or a double quote that is never closed",
                        MAX_RECORD_BYTES >> 20
                    ),
                });
            } else if let Ok(stats) = parser.parse_block(data, &mut sink) {
                shared.set_block_lines(block.index, stats.lines);
                rows.fetch_add(stats.rows, Ordering::Relaxed);
                input_bytes.fetch_add(len as u64, Ordering::Relaxed);
                shared.control.progress().add_read(len as u64, stats.rows);
            }
        }
        match block.data {
            BlockData::Mapped { start, end } => release(map, start, end),
            BlockData::Owned(buf) => {
                let _ = pool.try_send(buf);
            }
        }
    }
    if !shared.stopped() {
        spiller.flush(&mut table, shared);
    }
    table
}

/// A worker's part in the shared table budget.
struct Spiller {
    me: usize,
    /// The last spill round this worker took part in.
    round: u64,
}

impl Spiller {
    /// Adds the buffered rows to the table. Spills when the tables of all workers together
    /// outgrow the budget (starting a round: the other workers spill too at their next
    /// flush, so that the threads' runs stay about the same size), or when another worker
    /// started a round.
    fn flush(&mut self, table: &mut ShardedTable, shared: &Shared<'_>) {
        let budget = &shared.budget;
        loop {
            let round = budget.round();
            if round != self.round {
                self.round = round;
                // Tables well below the fair share are not worth a run of their own.
                if table.table_bytes() >= budget.share() / 4 && !self.spill(table, shared) {
                    return;
                }
            }
            // Published after each shard: the workers flush at the same time, and a flush
            // adds a large part of a small budget when most rows are new groups.
            let over = |bytes| {
                budget.publish(self.me, bytes);
                bytes + budget.others(self.me) > budget.total()
            };
            let done = match table.flush_within(over) {
                Ok(done) => done,
                Err(overflow) => return shared.fail(overflow.into()),
            };
            let bytes = table.heap_bytes();
            budget.publish(self.me, bytes);
            if bytes + budget.others(self.me) > budget.total() {
                if budget.others_spilling() {
                    // Room is being made; a run of these tables now would be small.
                    budget.wait_for_spills(|| shared.stopped());
                    continue;
                }
                self.round = budget.start_round(self.round);
                if table.table_bytes() < budget.share() / 4 {
                    // The others hold the budget without spilling (finished, or waiting for
                    // input): the round asks them to, and these few rows go over budget
                    // rather than into a tiny run.
                    if let Err(overflow) = table.flush_within(|_| false) {
                        shared.fail(overflow.into());
                    }
                    budget.publish(self.me, table.heap_bytes());
                    return;
                }
                if !self.spill(table, shared) {
                    return;
                }
            }
            if done {
                return;
            }
        }
    }

    /// Writes the tables as a sorted run and empties them; false on error (recorded). The
    /// tables count against the budget until they are written and freed.
    fn spill(&self, table: &mut ShardedTable, shared: &Shared<'_>) -> bool {
        let spilling = shared.budget.spilling();
        shared.control.progress().set_phase(Phase::Spill);
        let started = Instant::now();
        let full = table.take_tables();
        let songs = full.sorted_songs();
        let written = spill(&songs, &shared.temp_dir);
        tracing::debug!(
            worker = self.me,
            round = self.round,
            songs = songs.len(),
            estimated_bytes = full.heap_bytes(),
            seconds = started.elapsed().as_secs_f64(),
            "spilled a run"
        );
        drop(songs);
        drop(full);
        return_free_memory();
        shared.budget.publish(self.me, table.heap_bytes());
        drop(spilling);
        shared.control.progress().set_phase(Phase::Read);
        match written {
            Ok(file) => {
                shared.spills.lock_ok().push(file);
                true
            }
            Err(error) => {
                shared.fail(error);
                false
            }
        }
    }
}

/// Gives freed heap pages back to the system (after a spill; after a run in long-lived
/// processes), so that resident memory tracks the budget rather than the allocator's
/// high-water mark.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by glibc's allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the mapped pages of a finished block from this process (they stay in the page
/// cache), so that resident memory does not grow with the input.
fn release(map: Option<&Mmap>, start: usize, end: usize) {
    if let Some(map) = map {
        // SAFETY: the map is read-only and file-backed: after MADV_DONTNEED a later access
        // reads the same bytes from the file again, so no live slice can observe a change.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}
