//! A worker thread: parses the blocks it receives into its sharded table, spilling sorted
//! runs when the table outgrows the worker's share of the memory budget.

use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use super::parse::{Parser, RowSink, Stop};
use super::pipeline::{LocatedInvalid, LockOk, Shared};
use super::run::spill;
use super::shards::ShardedTable;
use super::source::{Block, BlockData, MAX_RECORD_BYTES};
use super::validate::PackedDate;
use crate::Phase;
use crate::error::{Field, show_value};

/// Feeds parsed rows of one block into a worker's table.
struct TableSink<'a, 's> {
    table: &'a mut ShardedTable,
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

/// A worker: parses blocks into its table until the blocks run out.
pub(crate) fn worker(
    blocks: crossbeam_channel::Receiver<Block>,
    pool: crossbeam_channel::Sender<Vec<u8>>,
    map: Option<&Mmap>,
    shared: &Shared<'_>,
    input_bytes: &AtomicU64,
    rows: &AtomicU64,
) -> ShardedTable {
    let flush_at = (shared.table_budget / 6).clamp(1 << 14, 128 << 20);
    let mut table = ShardedTable::new(flush_at);
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
            if table.wants_flush() && !shared.stopped() {
                flush_and_spill(&mut table, shared);
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
        flush_and_spill(&mut table, shared);
    }
    table
}

/// Adds the buffered rows to the table, spilling sorted runs whenever the table outgrows
/// the worker's share of the memory budget.
fn flush_and_spill(table: &mut ShardedTable, shared: &Shared<'_>) {
    loop {
        let done = match table.flush_within(shared.table_budget) {
            Ok(done) => done,
            Err(overflow) => return shared.fail(overflow.into()),
        };
        if table.heap_bytes() > shared.table_budget {
            shared.control.progress().set_phase(Phase::Spill);
            let full = table.take_tables();
            match spill(&full.sorted_songs(), &shared.temp_dir) {
                Ok(file) => shared.spills.lock_ok().push(file),
                Err(error) => return shared.fail(error),
            }
            drop(full);
            return_free_memory();
            shared.control.progress().set_phase(Phase::Read);
        }
        if done {
            return;
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
