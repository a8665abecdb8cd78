//! K-way merge of sorted runs into CSV rows, summing the groups that several runs share.

use std::fs::File;
use std::path::Path;

use rayon::prelude::*;

use super::output::push_song_rows;
use super::run::{AnyRun, DiskRun, Run, SongDays, SpillWriter, TableRun};
use super::shards::ShardedTable;
use super::table::SongRef;
use super::validate::{PackedDate, date_string};
use super::writer::WriteBuf;
use crate::Error;

/// Most spilled runs merged at once; more are first merged in groups (few in unit tests, so
/// that they exercise the grouping).
const MAX_FAN_IN: usize = if cfg!(test) { 8 } else { 64 };
/// Output is flushed to the writer in pieces of about this size.
const OUTPUT_CHUNK: usize = 1 << 20;

/// Merges `runs` in name order, calling `emit` once per song with its (date, sum) pairs in
/// date order, summed over the runs that share the song.
pub(crate) fn merge_songs<R: Run>(
    runs: &mut [R],
    emit: &mut dyn FnMut(SongDays<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut heap = RunHeap::new(runs);
    let mut same: Vec<usize> = Vec::new();
    let mut merged: Vec<(PackedDate, u64)> = Vec::new();
    while let Some(first) = heap.pop(runs) {
        same.clear();
        same.push(first);
        while let Some(next) = heap.peek() {
            if runs[next].key() == runs[first].key()
                && runs[next].current().map(|c| c.0) == runs[first].current().map(|c| c.0)
            {
                same.push(heap.pop(runs).unwrap_or(next));
            } else {
                break;
            }
        }
        if let Some((name, days)) = runs[first].current() {
            if same.len() == 1 {
                emit((name, days))?;
            } else {
                merged.clear();
                for &i in &same {
                    if let Some((_, days)) = runs[i].current() {
                        merged.extend_from_slice(days);
                    }
                }
                merged.sort_unstable_by_key(|entry| entry.0);
                sum_equal_dates(name, &mut merged)?;
                emit((name, &merged))?;
            }
        }
        for &i in &same {
            runs[i].advance()?;
            heap.push(runs, i);
        }
    }
    Ok(())
}

/// Sums adjacent entries of the same date in place (`days` sorted by date).
fn sum_equal_dates(name: &[u8], days: &mut Vec<(PackedDate, u64)>) -> Result<(), Error> {
    let mut write = 0;
    for read in 0..days.len() {
        if write > 0 && days[write - 1].0 == days[read].0 {
            let (date, plays) = days[read];
            days[write - 1].1 =
                days[write - 1]
                    .1
                    .checked_add(plays)
                    .ok_or_else(|| Error::SumOverflow {
                        song: String::from_utf8_lossy(name).into_owned(),
                        date: date_string(date),
                    })?;
        } else {
            days[write] = days[read];
            write += 1;
        }
    }
    days.truncate(write);
    Ok(())
}

/// Merges `runs` into CSV rows appended to `out`; `flush` is called with `out` whenever it
/// holds more than `flush_at` bytes (and it should empty it). Returns the groups written.
pub(crate) fn merge_runs<R: Run>(
    runs: &mut [R],
    out: &mut Vec<u8>,
    flush_at: usize,
    flush: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut groups = 0u64;
    merge_songs(runs, &mut |(name, days)| {
        push_song_rows(out, name, days);
        groups += days.len() as u64;
        if out.len() > flush_at {
            flush(out)?;
        }
        Ok(())
    })?;
    Ok(groups)
}

/// Merges the workers' tables in parallel: the song space is cut into ranges at pivots
/// taken from the largest table, and each range is merged and formatted on its own.
pub(crate) fn merge_in_memory(
    pool: &rayon::ThreadPool,
    tables: &[ShardedTable],
    write: WriteBuf<'_>,
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
pub(crate) fn merge_with_spills(
    pool: &rayon::ThreadPool,
    tables: &[ShardedTable],
    spills: Vec<File>,
    temp_dir: &Path,
    write: WriteBuf<'_>,
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

/// A binary min-heap of run indices ordered by their current song name. Exhausted runs are
/// left out.
struct RunHeap {
    items: Vec<usize>,
}

impl RunHeap {
    fn new<R: Run>(runs: &[R]) -> Self {
        let mut heap = RunHeap {
            items: Vec::with_capacity(runs.len()),
        };
        for i in 0..runs.len() {
            heap.push(runs, i);
        }
        heap
    }

    fn less<R: Run>(runs: &[R], a: usize, b: usize) -> bool {
        let (ka, kb) = (runs[a].key(), runs[b].key());
        if ka != kb {
            return ka < kb;
        }
        match (runs[a].current(), runs[b].current()) {
            (Some(x), Some(y)) => x.0 < y.0,
            (Some(_), None) => true,
            _ => false,
        }
    }

    fn peek(&self) -> Option<usize> {
        self.items.first().copied()
    }

    fn push<R: Run>(&mut self, runs: &[R], run: usize) {
        if runs[run].current().is_none() {
            return;
        }
        self.items.push(run);
        let mut i = self.items.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if Self::less(runs, self.items[i], self.items[parent]) {
                self.items.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn pop<R: Run>(&mut self, runs: &[R]) -> Option<usize> {
        let top = *self.items.first()?;
        let last = self.items.pop()?;
        if !self.items.is_empty() {
            self.items[0] = last;
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut smallest = i;
                if l < self.items.len() && Self::less(runs, self.items[l], self.items[smallest]) {
                    smallest = l;
                }
                if r < self.items.len() && Self::less(runs, self.items[r], self.items[smallest]) {
                    smallest = r;
                }
                if smallest == i {
                    break;
                }
                self.items.swap(i, smallest);
                i = smallest;
            }
        }
        Some(top)
    }
}
