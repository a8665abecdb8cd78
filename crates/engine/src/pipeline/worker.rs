//! A worker thread: parses the blocks it receives into its sharded table; when the tables of
//! all workers together outgrow the memory budget, they spill them together (see
//! `spill::rounds`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use memmap2::Mmap;

use crate::aggregate::hash::hash_bytes;
use crate::aggregate::shards::ShardedTable;
use crate::date::PackedDate;
use crate::error::{Field, show_value};
use crate::input::MAX_RECORD_BYTES;
use crate::input::blocks::{Block, BlockData};
use crate::input::parse::{Parser, RowSink, Stop};
use crate::merge::{fan_in, merge_early, take_for_early_merge};
use crate::pipeline::shared::{LocatedInvalid, Shared};
use crate::spill::rounds::{Part, Room};
use crate::spill::run::SpilledRun;
use crate::{Error, Phase};

/// Rows of a block that [`TableSink`] holds back: enough for the slots they touch in the cache
/// of frequent songs (which is larger than the CPU's second-level cache) to arrive from
/// memory while later rows are parsed.
const AHEAD: usize = 8;

/// Feeds parsed rows of one block into a worker's table, flushing the buffered rows (and
/// spilling) as soon as they fill. A row of the block is added [`AHEAD`] rows late: its
/// song's place in the cache of frequent songs is loaded meanwhile.
struct TableSink<'a, 's, 'd> {
    table: &'a mut ShardedTable,
    spiller: &'a mut Spiller,
    shared: &'a Shared<'s>,
    block: u64,
    /// A ring of the rows held back: `held` of them, the oldest at `next` once it is full.
    pending: [Pending<'d>; AHEAD],
    next: usize,
    held: usize,
}

/// A row held back by [`TableSink`], its song hashed.
#[derive(Clone, Copy, Default)]
struct Pending<'d> {
    hash: u64,
    song: &'d [u8],
    date: PackedDate,
    plays: u64,
}

impl<'d> RowSink<'d> for TableSink<'_, '_, 'd> {
    fn row(&mut self, song: &[u8], date: PackedDate, plays: u64, line: u64) -> Result<(), Stop> {
        if !self.valid_utf8(song, line)? {
            return Ok(());
        }
        self.end()?;
        self.add(hash_bytes(song), song, date, plays)
    }

    #[inline(always)]
    fn block_row(
        &mut self,
        song: &'d [u8],
        date: PackedDate,
        plays: u64,
        line: u64,
    ) -> Result<(), Stop> {
        if !self.valid_utf8(song, line)? {
            return Ok(());
        }
        self.ascii_row(song, date, plays, line)
    }

    #[inline(always)]
    fn ascii_row(
        &mut self,
        song: &'d [u8],
        date: PackedDate,
        plays: u64,
        _line: u64,
    ) -> Result<(), Stop> {
        let hash = hash_bytes(song);
        self.table.prefetch(hash, date);
        let row = Pending {
            hash,
            song,
            date,
            plays,
        };
        let oldest = std::mem::replace(&mut self.pending[self.next], row);
        self.next = (self.next + 1) % AHEAD;
        if self.held < AHEAD {
            self.held += 1;
            return Ok(());
        }
        self.add(oldest.hash, oldest.song, oldest.date, oldest.plays)
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

    fn end(&mut self) -> Result<(), Stop> {
        let oldest = self.next + AHEAD - self.held;
        for at in oldest..self.next + AHEAD {
            let row = self.pending[at % AHEAD];
            self.held -= 1;
            self.add(row.hash, row.song, row.date, row.plays)?;
        }
        Ok(())
    }
}

impl TableSink<'_, '_, '_> {
    /// Whether the song is valid UTF-8; if not, the row is invalid (and skipped, or the
    /// block stops).
    #[inline(always)]
    fn valid_utf8(&mut self, song: &[u8], line: u64) -> Result<bool, Stop> {
        if song.is_ascii() || std::str::from_utf8(song).is_ok() {
            return Ok(true);
        }
        let reason = format!("{} is not valid UTF-8", show_value(song));
        self.invalid(line, Some(Field::Song), reason)
            .map(|()| false)
    }

    #[inline(always)]
    fn add(&mut self, hash: u64, song: &[u8], date: PackedDate, plays: u64) -> Result<(), Stop> {
        self.table.add_hashed(hash, song, date, plays);
        if self.table.wants_flush() || self.spiller.round_due(self.shared) {
            return self.flush();
        }
        Ok(())
    }

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
        joined: 0,
        countdown: ROUND_CHECK_ROWS,
    };
    let mut participant = Participant {
        shared,
        parsing: true,
    };
    let mut parser = Parser::default();
    let page = page_size();
    for block in blocks {
        let len = block.data.len();
        if !shared.stopped() && block.index <= shared.first_bad_block.load(Ordering::Relaxed) {
            let data: &[u8] = match (&block.data, map) {
                (BlockData::Mapped { start, end }, Some(map)) => &map[*start..*end],
                (BlockData::Owned { buf, len }, _) => &buf[..*len],
                (BlockData::Shared(bytes), _) => bytes,
                (BlockData::Mapped { .. }, None) => &[],
            };
            let mut sink = TableSink {
                table: &mut table,
                spiller: &mut spiller,
                shared,
                block: block.index,
                pending: Default::default(),
                next: 0,
                held: 0,
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
            BlockData::Mapped { start, end } => {
                if let Some(map) = map {
                    let released = shared.frontier.finish(block.index, start..end, page);
                    for range in released.into_iter().flatten() {
                        release(map, range);
                    }
                }
            }
            BlockData::Owned { buf, .. } => {
                let _ = pool.try_send(buf);
            }
            BlockData::Shared(_) => {}
        }
    }
    if !shared.stopped() {
        table.drain_hot();
        spiller.flush(&mut table, shared);
    }
    // Until every worker is done parsing, this one's tables still take part in spill rounds.
    participant.done_parsing();
    while let Some(round) = shared.rounds.idle(spiller.joined, || shared.stopped()) {
        if !spiller.spill(round, &mut table, shared) {
            break;
        }
    }
    table
}

/// A worker's place in the spill rounds, given up when it returns or panics.
struct Participant<'a, 's> {
    shared: &'a Shared<'s>,
    parsing: bool,
}

impl Participant<'_, '_> {
    fn done_parsing(&mut self) {
        if std::mem::take(&mut self.parsing) {
            self.shared.rounds.done_parsing();
        }
    }
}

impl Drop for Participant<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The others must not wait for this worker in a round.
            self.shared.abort.store(true, Ordering::Relaxed);
        }
        self.done_parsing();
        self.shared.rounds.leave();
    }
}

/// Rows parsed between two checks for a spill round started by another worker.
const ROUND_CHECK_ROWS: u32 = 1024;

/// A worker's part in the shared table budget and its spill rounds.
struct Spiller {
    me: usize,
    /// The latest round this worker took part in.
    joined: u64,
    /// Rows until the next check for a round.
    countdown: u32,
}

impl Spiller {
    /// True, every [`ROUND_CHECK_ROWS`] rows, when another worker started a round that this
    /// one must join (the round waits for it).
    #[inline]
    fn round_due(&mut self, shared: &Shared<'_>) -> bool {
        self.countdown -= 1;
        if self.countdown > 0 {
            return false;
        }
        self.countdown = ROUND_CHECK_ROWS;
        shared.rounds.latest() != self.joined
    }

    /// Adds the buffered rows to the table, joining a round another worker started, or
    /// starting one when the tables of all workers together outgrow the budget.
    fn flush(&mut self, table: &mut ShardedTable, shared: &Shared<'_>) {
        let (budget, rounds) = (&shared.budget, &shared.rounds);
        loop {
            let latest = rounds.latest();
            if latest != self.joined && !self.spill(latest, table, shared) {
                return;
            }
            // Published after each shard: the workers flush at the same time, and a flush
            // adds a large part of a small budget when most rows are new groups. A round
            // another worker started is joined at once (it waits for this one).
            let joined = self.joined;
            let over = |tables, buffers| {
                budget.publish(self.me, tables, buffers);
                budget.over(rounds.pending_bytes()) || rounds.latest() != joined
            };
            let done = match table.flush_within(over) {
                Ok(done) => done,
                Err(error) => return shared.fail(error),
            };
            budget.publish(self.me, table.table_bytes(), table.buffer_bytes());
            if rounds.latest() != self.joined {
                continue;
            }
            if budget.over(rounds.pending_bytes()) {
                match rounds.need_room() {
                    Room::Join(round) => {
                        if !self.spill(round, table, shared) {
                            return;
                        }
                    }
                    // The memory of a round's tables is freed once it is written.
                    Room::Wait(round) => rounds.wait_written(round, || shared.stopped()),
                }
                if shared.stopped() {
                    return;
                }
                continue;
            }
            if done {
                return;
            }
        }
    }

    /// Hands the tables in to `round` and writes this worker's range of the round's run.
    /// False when the run stops (an error is recorded).
    fn spill(&mut self, round: u64, table: &mut ShardedTable, shared: &Shared<'_>) -> bool {
        self.joined = round;
        shared.control.progress().set_phase(Phase::Spill);
        let started = Instant::now();
        let full = table.take_tables();
        let bytes = full.table_bytes();
        shared.budget.publish(self.me, 0, table.buffer_bytes());
        let Some(part) = shared.rounds.join(round, full, bytes, || shared.stopped()) else {
            if !shared.stopped() {
                shared.fail(Error::Threads(format!("spill round {round} lost a worker")));
            }
            return false;
        };
        let written = part.work.write(part.index, &shared.temp_dir);
        let Part { index, work } = part;
        tracing::debug!(
            worker = self.me,
            round,
            part = index,
            estimated_bytes = bytes,
            seconds = started.elapsed().as_secs_f64(),
            "wrote a range of a spilled run"
        );
        let file = match written {
            Ok(file) => Some(file),
            Err(error) => {
                shared.fail(error);
                None
            }
        };
        let written = file.is_some();
        // The round ends (the others may go on) once its last range is written; then each
        // worker frees the tables it handed in. The memory stays with the allocator for the
        // next round's tables: giving it back to the system (`return_free_memory`) after
        // each round cost more page faults than anything else in a spill.
        let run = shared.rounds.finish(round, index, file);
        shared.rounds.wait_written(round, || shared.stopped());
        work.free(index);
        drop(work);
        if let Some(files) = run {
            let run = SpilledRun::new(files);
            shared.spilled_runs.fetch_add(1, Ordering::Relaxed);
            let bytes = run.written_bytes();
            shared.spilled_bytes.fetch_add(bytes, Ordering::Relaxed);
            let early = {
                let mut spills = shared.spills.lock();
                spills.push(run);
                take_for_early_merge(&mut spills, fan_in(shared.config.memory_limit))
            };
            if let Some(group) = early {
                match merge_early(group, &shared.temp_dir) {
                    Ok(merged) => shared.spills.lock().push(merged),
                    Err(error) => {
                        shared.fail(error);
                        return false;
                    }
                }
            }
        }
        shared.control.progress().set_phase(Phase::Read);
        written
    }
}

/// Drops mapped pages that no block reads again from this process (they stay in the page
/// cache), so that resident memory does not grow with the input.
fn release(map: &Mmap, range: std::ops::Range<usize>) {
    // SAFETY: the map is read-only and file-backed: after MADV_DONTNEED a later access
    // reads the same bytes from the file again, so no live slice can observe a change.
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len())
    };
}

/// The system's page size (what [`release`] drops whole).
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&size| size > 0)
        .unwrap_or(4096)
}
