//! Runs the engine: a producer cuts the input into blocks, worker threads parse them into
//! their own tables (spilling sorted runs to disk above their share of the memory budget),
//! and the tables and runs are merged into the sorted CSV output.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::Mmap;
use rayon::prelude::*;

use super::merge::{merge_runs, merge_songs};
use super::output::write_header;
use super::parse::{Parser, RowSink, Stop};
use super::run::{AnyRun, DiskRun, SpillWriter, TableRun, spill};
use super::shards::ShardedTable;
use super::source::{Block, BlockData, MAX_RECORD_BYTES, produce_mapped, produce_stream};
use super::table::SongRef;
use super::validate::PackedDate;
use crate::error::{Field, InvalidRow, show_value};
use crate::{Config, Control, Error, Phase, Summary};

/// Most spilled runs merged at once; more are first merged in groups.
const MAX_FAN_IN: usize = 64;
/// Output is flushed to the writer in pieces of about this size.
const OUTPUT_CHUNK: usize = 1 << 20;

/// The input, opened.
pub(crate) enum Source<'a> {
    Mapped(Mmap),
    Stream(&'a mut dyn Read),
}

/// An invalid record located by block and line within the block.
#[derive(Debug, Clone)]
struct LocatedInvalid {
    block: u64,
    line: u64,
    field: Option<Field>,
    reason: String,
}

impl LocatedInvalid {
    fn key(&self) -> (u64, u64) {
        (self.block, self.line)
    }
}

/// State the workers share.
struct Shared<'a> {
    config: &'a Config,
    control: &'a Control,
    /// Blocks after this one need no work (an earlier invalid record ends the run).
    first_bad_block: AtomicU64,
    /// The earliest invalid record (strict mode).
    first_invalid: Mutex<Option<LocatedInvalid>>,
    /// The first few skipped records (with `skip_invalid`).
    samples: Mutex<Vec<LocatedInvalid>>,
    skipped: AtomicU64,
    /// An error that ends the run whatever the mode (I/O, overflow).
    fatal: Mutex<Option<Error>>,
    abort: AtomicBool,
    /// Line ends per block, for turning block-relative lines into file lines.
    block_lines: Mutex<Vec<u64>>,
    spills: Mutex<Vec<File>>,
    table_budget: usize,
    temp_dir: PathBuf,
}

impl Shared<'_> {
    fn fail(&self, error: Error) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        fatal.get_or_insert(error);
        self.abort.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.control.is_cancelled()
    }

    fn record_invalid(&self, invalid: LocatedInvalid) {
        if !self.config.skip_invalid {
            return self.record_invalid_always(invalid);
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push(invalid);
        if samples.len() > self.config.max_reported_invalid * 2 {
            samples.sort_by_key(LocatedInvalid::key);
            samples.truncate(self.config.max_reported_invalid);
        }
    }

    /// Keeps the earliest invalid record as the run's error, whatever the mode.
    fn record_invalid_always(&self, invalid: LocatedInvalid) {
        self.first_bad_block
            .fetch_min(invalid.block, Ordering::Relaxed);
        let mut first = self.first_invalid.lock().unwrap_or_else(|p| p.into_inner());
        if first.as_ref().is_none_or(|f| invalid.key() < f.key()) {
            *first = Some(invalid);
        }
    }

    fn set_block_lines(&self, block: u64, lines: u64) {
        let mut all = self.block_lines.lock().unwrap_or_else(|p| p.into_inner());
        let index = block as usize;
        if all.len() <= index {
            all.resize(index + 1, 0);
        }
        all[index] = lines;
    }
}

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

/// Runs the whole pipeline, writing the CSV to `out`.
pub(crate) fn run(
    source: Source<'_>,
    out: &mut (dyn Write + Send),
    config: &Config,
    control: &Control,
) -> Result<Summary, Error> {
    let threads = config.effective_threads().max(1);
    let in_flight = threads * 2 + 2;
    let block_bytes = config.block_bytes.max(1);
    let overhead = (in_flight * (block_bytes + MAX_RECORD_BYTES) + (16 << 20)) as u64;
    // 20% slack: the estimate misses allocator rounding and fragmentation.
    let table_budget =
        (config.memory_limit.saturating_sub(overhead) / 5 * 4 / threads as u64).max(64 << 10);
    let shared = Shared {
        config,
        control,
        first_bad_block: AtomicU64::new(u64::MAX),
        first_invalid: Mutex::new(None),
        samples: Mutex::new(Vec::new()),
        skipped: AtomicU64::new(0),
        fatal: Mutex::new(None),
        abort: AtomicBool::new(false),
        block_lines: Mutex::new(Vec::new()),
        spills: Mutex::new(Vec::new()),
        table_budget: table_budget as usize,
        temp_dir: config.effective_temp_dir(),
    };
    let input_bytes = AtomicU64::new(0);
    let rows = AtomicU64::new(0);

    let (block_tx, block_rx) = crossbeam_channel::bounded::<Block>(threads);
    let (pool_tx, pool_rx) = crossbeam_channel::bounded::<Vec<u8>>(in_flight);
    let (map, mut stream) = match source {
        Source::Mapped(map) => (Some(map), None),
        Source::Stream(reader) => (None, Some(reader)),
    };
    let map = map.as_ref();

    let (header, tables) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, pool_tx) = (block_rx.clone(), pool_tx.clone());
                let (shared, input_bytes, rows) = (&shared, &input_bytes, &rows);
                scope.spawn(move || worker(rx, pool_tx, map, shared, input_bytes, rows))
            })
            .collect();
        drop(block_rx);
        let send = |block: Block| !shared.stopped() && block_tx.send(block).is_ok();
        let header = match (map, stream.take()) {
            (Some(map), _) => produce_mapped(map, block_bytes, control, send),
            (None, None) => Err(Error::EmptyInput),
            (None, Some(reader)) => {
                let mut created = 0;
                let take = || {
                    if created < in_flight {
                        if let Ok(buf) = pool_rx.try_recv() {
                            return buf;
                        }
                        created += 1;
                        return Vec::with_capacity(block_bytes + MAX_RECORD_BYTES);
                    }
                    pool_rx.recv().unwrap_or_default()
                };
                produce_stream(reader, block_bytes, control, take, send)
            }
        };
        drop(block_tx);
        let tables: Vec<ShardedTable> = workers
            .into_iter()
            .filter_map(|handle| handle.join().ok())
            .collect();
        (header, tables)
    });
    drop(pool_tx);

    if control.is_cancelled() {
        return Err(Error::Cancelled);
    }
    if let Some(error) = shared
        .fatal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(error);
    }
    let header = header?;
    if tables.len() != threads {
        return Err(Error::Threads("a worker thread panicked".into()));
    }
    let block_lines = shared
        .block_lines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let locate = |invalid: &LocatedInvalid| InvalidRow {
        line: 1
            + header.newlines
            + block_lines.iter().take(invalid.block as usize).sum::<u64>()
            + invalid.line,
        field: invalid.field,
        reason: invalid.reason.clone(),
    };
    if let Some(first) = shared
        .first_invalid
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        return Err(Error::Invalid(locate(first)));
    }
    let mut samples =
        std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|p| p.into_inner()));
    samples.sort_by_key(LocatedInvalid::key);
    samples.truncate(config.max_reported_invalid);

    control.progress().set_phase(Phase::Merge);
    let spills = std::mem::take(&mut *shared.spills.lock().unwrap_or_else(|p| p.into_inner()));
    let spilled_runs = spills.len() as u64;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Threads(e.to_string()))?;
    let write_err = |source| Error::Write {
        path: PathBuf::from("<output>"),
        source,
    };
    let mut output_bytes = 0u64;
    let mut write = |buf: &mut Vec<u8>| -> Result<(), Error> {
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        out.write_all(buf).map_err(write_err)?;
        output_bytes += buf.len() as u64;
        buf.clear();
        Ok(())
    };
    let mut head = Vec::new();
    write_header(&mut head).map_err(write_err)?;
    write(&mut head)?;
    let groups = if spills.is_empty() {
        merge_in_memory(&pool, &tables, &mut write)?
    } else {
        merge_with_spills(&pool, &tables, spills, &shared.temp_dir, &mut write)?
    };
    out.flush().map_err(write_err)?;
    Ok(Summary {
        rows_read: rows.load(Ordering::Relaxed),
        input_bytes: header.bytes as u64 + input_bytes.load(Ordering::Relaxed),
        rows_skipped: shared.skipped.load(Ordering::Relaxed),
        groups_written: groups,
        output_bytes,
        spilled_runs,
        elapsed_seconds: 0.0,
        invalid_samples: samples.iter().map(|s| locate(s).to_string()).collect(),
    })
}

/// A worker: parses blocks into its table until the blocks run out.
fn worker(
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
                Ok(file) => shared
                    .spills
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(file),
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

/// Gives freed heap pages back to the system after a spill, so that resident memory tracks
/// the budget rather than the allocator's high-water mark.
fn return_free_memory() {
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

/// Merges the workers' tables in parallel: the song space is cut into ranges at pivots
/// taken from the largest table, and each range is merged and formatted on its own.
fn merge_in_memory(
    pool: &rayon::ThreadPool,
    tables: &[ShardedTable],
    write: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let orders: Vec<Vec<SongRef<'_>>> =
        pool.install(|| tables.par_iter().map(ShardedTable::sorted_songs).collect());
    let Some(largest) = (0..tables.len()).max_by_key(|&t| orders[t].len()) else {
        return Ok(0);
    };
    let total: usize = orders.iter().map(Vec::len).sum();
    let parts = (total / 16_384).clamp(1, 4096);
    let pivot_order = &orders[largest];
    let pivots: Vec<&[u8]> = (1..parts)
        .map(|j| pivot_order[j * pivot_order.len() / parts].name)
        .collect();
    let bounds: Vec<Vec<usize>> = orders
        .iter()
        .map(|order| {
            let mut b = vec![0];
            b.extend(
                pivots
                    .iter()
                    .map(|p| order.partition_point(|s| s.name < *p)),
            );
            b.push(order.len());
            b
        })
        .collect();
    let window = pool.current_num_threads() * 2;
    let mut groups = 0;
    for first in (0..parts).step_by(window) {
        let merged: Vec<Result<(Vec<u8>, u64), Error>> = pool.install(|| {
            (first..(first + window).min(parts))
                .into_par_iter()
                .map(|part| {
                    let mut runs: Vec<TableRun<'_>> = orders
                        .iter()
                        .zip(&bounds)
                        .map(|(order, b)| TableRun::new(&order[b[part]..b[part + 1]]))
                        .collect();
                    let mut buf = Vec::new();
                    let groups = merge_runs(&mut runs, &mut buf, usize::MAX, &mut |_| Ok(()))?;
                    Ok((buf, groups))
                })
                .collect()
        });
        for result in merged {
            let (mut buf, count) = result?;
            groups += count;
            write(&mut buf)?;
        }
    }
    Ok(groups)
}

/// Merges spilled runs and the tables left in memory in one k-way merge.
fn merge_with_spills(
    pool: &rayon::ThreadPool,
    tables: &[ShardedTable],
    spills: Vec<File>,
    temp_dir: &Path,
    write: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let orders: Vec<Vec<SongRef<'_>>> =
        pool.install(|| tables.par_iter().map(ShardedTable::sorted_songs).collect());
    let mut files = spills;
    while files.len() > MAX_FAN_IN {
        // Too many runs to read at once (buffers, file descriptors): merge groups of them
        // into longer runs first, in parallel.
        let mut groups = Vec::new();
        while files.len() >= MAX_FAN_IN {
            groups.push(files.split_off(files.len() - MAX_FAN_IN));
        }
        let merged: Vec<Result<File, Error>> = pool.install(|| {
            groups
                .into_par_iter()
                .map(|group| {
                    let mut runs = group
                        .into_iter()
                        .map(|file| DiskRun::open(file, temp_dir))
                        .collect::<Result<Vec<_>, Error>>()?;
                    let mut writer = SpillWriter::create(temp_dir)?;
                    merge_songs(&mut runs, &mut |(name, days)| writer.write(name, days))?;
                    writer.finish()
                })
                .collect()
        });
        for file in merged {
            files.push(file?);
        }
    }
    let mut runs: Vec<AnyRun<'_>> = Vec::new();
    for file in files {
        runs.push(AnyRun::Disk(DiskRun::open(file, temp_dir)?));
    }
    for order in orders.iter().filter(|order| !order.is_empty()) {
        runs.push(AnyRun::Table(TableRun::new(order)));
    }
    let mut buf = Vec::with_capacity(OUTPUT_CHUNK * 2);
    let groups = merge_runs(&mut runs, &mut buf, OUTPUT_CHUNK, write)?;
    write(&mut buf)?;
    Ok(groups)
}
