//! The merge stage: a k-way merge of sorted runs into CSV rows, summing the groups that several
//! runs share. It merges the workers' tables alone in parallel ranges, or with the spilled runs
//! (`ranges`) after merging the smallest runs first when there are too many to read at once;
//! runs that pile up while the input is still parsed are merged early.

pub(crate) mod ranges;

use std::path::Path;

use rayon::prelude::*;

use crate::Error;
use crate::aggregate::shards::ShardedTable;
use crate::aggregate::table::{SongRef, cmp_same_key};
use crate::date::{PackedDate, date_string};
use crate::merge::ranges::{MergePlan, merge_ranges};
use crate::output::csv::push_song_rows;
use crate::output::writer::WriteBuf;
use crate::spill::run::{
    DiskRun, RUN_BUFFER_BYTES, Run, SongDays, SpillFile, SpillWriter, SpilledRun, TableRun,
};

/// Fewest spilled runs merged at once, whatever the memory limit (few in unit tests, so that
/// they exercise the intermediate merges).
const MIN_FAN_IN: usize = if cfg!(test) { 8 } else { 64 };
/// Most spilled runs merged at once (each reads through a buffer of [`RUN_BUFFER_BYTES`]).
const MAX_FAN_IN: usize = 256;

/// How many spilled runs one merge reads at once under `memory_limit`: their read buffers
/// take at most about a quarter of it (what the input blocks held before the merge).
pub(crate) fn fan_in(memory_limit: u64) -> usize {
    let fit = memory_limit / 4 / RUN_BUFFER_BYTES as u64;
    usize::try_from(fit).map_or(MAX_FAN_IN, |fit| fit.clamp(MIN_FAN_IN, MAX_FAN_IN))
}

/// Groups of runs (indices into `sizes`, their byte sizes) to merge first so that at most
/// `fan_in` remain: just enough merges, of the smallest runs, so that the fewest bytes are
/// read and written twice. Empty when the runs fit one merge.
fn first_pass(sizes: &[u64], fan_in: usize) -> Vec<Vec<usize>> {
    let fan_in = fan_in.max(2);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| sizes[i]);
    let mut excess = sizes.len().saturating_sub(fan_in);
    let mut groups = Vec::new();
    let mut next = 0;
    while excess > 0 && next < order.len() {
        // A group of g runs leaves one: g - 1 fewer.
        let size = (excess + 1).min(fan_in).min(order.len() - next);
        groups.push(order[next..next + size].to_vec());
        next += size;
        excess = excess.saturating_sub(size - 1);
    }
    groups
}

/// Merges `runs` in name order, calling `emit` once per song with its (date, sum) pairs in
/// date order, summed over the runs that share the song.
pub(crate) fn merge_songs<R: Run>(
    runs: &mut [R],
    emit: &mut dyn FnMut(SongDays<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut heap = RunHeap::new(runs);
    let mut same: Vec<usize> = Vec::new();
    let mut merged: Vec<(PackedDate, u64)> = Vec::new();
    let mut scratch: Vec<(PackedDate, u64)> = Vec::new();
    while let Some(first) = heap.pop(runs) {
        same.clear();
        same.push(first);
        while let Some(next) = heap.peek() {
            let same_name = || match (runs[next].current(), runs[first].current()) {
                (Some(a), Some(b)) => cmp_same_key(a.0, b.0).is_eq(),
                _ => false,
            };
            if runs[next].key() == runs[first].key() && same_name() {
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
                if same.len() <= LINEAR_MERGE_RUNS {
                    for &i in &same {
                        if let Some((_, days)) = runs[i].current() {
                            add_sorted_days(name, &mut merged, days, &mut scratch)?;
                        }
                    }
                } else {
                    for &i in &same {
                        if let Some((_, days)) = runs[i].current() {
                            merged.extend_from_slice(days);
                        }
                    }
                    merged.sort_unstable_by_key(|entry| entry.0);
                    sum_equal_dates(name, &mut merged)?;
                }
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

/// Runs sharing a song up to which their days are merged one run after the other. Each such
/// merge copies all days so far, a cost that grows with the square of the runs, so the days of
/// more runs (spilled runs of a large input, a few of the song's dates in each) are
/// concatenated and sorted instead.
const LINEAR_MERGE_RUNS: usize = 4;

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

/// Adds the (date, sum) pairs of `days` to `merged` (both sorted by date, each date once),
/// keeping it sorted with each date once: a linear merge, where sorting the concatenation cost
/// about a tenth of the merge phase's instructions with two workers' tables (callgrind).
/// `scratch` is reused from call to call.
pub(crate) fn add_sorted_days(
    name: &[u8],
    merged: &mut Vec<(PackedDate, u64)>,
    days: &[(PackedDate, u64)],
    scratch: &mut Vec<(PackedDate, u64)>,
) -> Result<(), Error> {
    scratch.clear();
    scratch.reserve(merged.len() + days.len());
    let (mut a, mut b) = (merged.iter().peekable(), days.iter().peekable());
    while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
        if x.0 < y.0 {
            scratch.push(x);
            a.next();
        } else if y.0 < x.0 {
            scratch.push(y);
            b.next();
        } else {
            let sum = x.1.checked_add(y.1).ok_or_else(|| Error::SumOverflow {
                song: String::from_utf8_lossy(name).into_owned(),
                date: date_string(x.0),
            })?;
            scratch.push((x.0, sum));
            a.next();
            b.next();
        }
    }
    scratch.extend(a);
    scratch.extend(b);
    std::mem::swap(merged, scratch);
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
    // Parts of a few MB of output: their buffers are reused (see `spare`).
    let parts = (total / 4096).clamp(1, 16_384);
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
    // Output buffers come back emptied from the writer and serve later parts: fresh memory
    // costs a page fault per page.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    for first in (0..parts).step_by(window) {
        let last = (first + window).min(parts);
        let bufs: Vec<Vec<u8>> = (first..last)
            .map(|_| spare.pop().unwrap_or_default())
            .collect();
        let merged: Vec<Result<(Vec<u8>, u64), Error>> = pool.install(|| {
            (first..last)
                .into_par_iter()
                .zip(bufs)
                .map(|(part, mut buf)| {
                    let mut runs: Vec<TableRun<'_>> = orders
                        .iter()
                        .zip(&bounds)
                        .map(|(order, b)| TableRun::new(&order[b[part]..b[part + 1]]))
                        .collect();
                    let groups = merge_runs(&mut runs, &mut buf, usize::MAX, &mut |_| Ok(()))?;
                    Ok((buf, groups))
                })
                .collect()
        });
        for result in merged {
            let (mut buf, count) = result?;
            groups += count;
            write(&mut buf)?;
            spare.push(buf);
        }
    }
    Ok(groups)
}

/// Merges spilled runs and the tables left in memory, after merging groups of the smallest
/// runs first if there are more than `fan_in`: in parallel ranges of names (see
/// `range_merge`) whose buffers take about `merge_bytes` (or what a merge of `fan_in` runs
/// reads through, if more).
pub(crate) fn merge_with_spills(
    pool: &rayon::ThreadPool,
    tables: &[ShardedTable],
    spills: Vec<SpilledRun>,
    fan_in: usize,
    merge_bytes: usize,
    temp_dir: &Path,
    write: WriteBuf<'_>,
) -> Result<u64, Error> {
    let orders: Vec<Vec<SongRef<'_>>> =
        pool.install(|| tables.par_iter().map(ShardedTable::sorted_songs).collect());
    let mut spilled = spills;
    while spilled.len() > fan_in {
        spilled = merge_first_pass(pool, spilled, fan_in, temp_dir)?;
    }
    let orders: Vec<Vec<SongRef<'_>>> = orders.into_iter().filter(|o| !o.is_empty()).collect();
    // At least what the read buffers of one merge of `fan_in` runs take.
    let memory = merge_bytes.max(fan_in * RUN_BUFFER_BYTES);
    let plan = MergePlan::new(memory, spilled.len(), pool.current_num_threads());
    merge_ranges(pool, &spilled, &orders, plan, temp_dir, write)
}

/// Merges the groups of [`first_pass`] into longer runs (in parallel); returns the runs left.
fn merge_first_pass(
    pool: &rayon::ThreadPool,
    runs: Vec<SpilledRun>,
    fan_in: usize,
    temp_dir: &Path,
) -> Result<Vec<SpilledRun>, Error> {
    let sizes = runs
        .iter()
        .map(|run| {
            run.bytes().map_err(|source| Error::Temp {
                path: temp_dir.to_path_buf(),
                source,
            })
        })
        .collect::<Result<Vec<u64>, Error>>()?;
    let plan = first_pass(&sizes, fan_in);
    let mut slots: Vec<Option<SpilledRun>> = runs.into_iter().map(Some).collect();
    let groups: Vec<Vec<SpilledRun>> = plan
        .iter()
        .map(|group| group.iter().filter_map(|&i| slots[i].take()).collect())
        .collect();
    let merged: Vec<Result<SpillFile, Error>> = pool.install(|| {
        groups
            .into_par_iter()
            .map(|group| merge_group(group, temp_dir))
            .collect()
    });
    let mut left: Vec<SpilledRun> = slots.into_iter().flatten().collect();
    for file in merged {
        left.push(SpilledRun::new(vec![file?]));
    }
    Ok(left)
}

/// Merges `group` into one run written to a new file (the group's files close at the end).
fn merge_group(group: Vec<SpilledRun>, temp_dir: &Path) -> Result<SpillFile, Error> {
    let mut runs = group
        .iter()
        .map(|run| DiskRun::whole(run, temp_dir))
        .collect::<Result<Vec<_>, Error>>()?;
    let mut writer = SpillWriter::create(temp_dir)?;
    merge_songs(&mut runs, &mut |(name, days)| writer.write(name, days))?;
    writer.finish()
}

/// Most runs an early merge reads at once (their buffers come on top of the budget while the
/// workers go on parsing).
const EARLY_FAN_IN: usize = 8 << 20 >> 16;

/// When `spills` holds twice as many files as one merge reads runs (`fan_in`), takes out the
/// smallest runs for [`merge_early`]: runs hold open files (one per range of a spill round),
/// and merging them as they pile up keeps the files few (well under the usual limit of 1024
/// per process) and the final merge to one pass.
pub(crate) fn take_for_early_merge(
    spills: &mut Vec<SpilledRun>,
    fan_in: usize,
) -> Option<Vec<SpilledRun>> {
    let files: usize = spills.iter().map(SpilledRun::files).sum();
    if files < fan_in * 2 {
        return None;
    }
    let mut sized: Vec<(u64, SpilledRun)> = std::mem::take(spills)
        .into_iter()
        .map(|run| (run.bytes().unwrap_or(u64::MAX), run))
        .collect();
    sized.sort_by_key(|(bytes, _)| *bytes);
    // Runs of many files (one per thread) may be fewer than a group.
    let group = fan_in.clamp(2, EARLY_FAN_IN).min(sized.len());
    let rest = sized.split_off(group);
    spills.extend(rest.into_iter().map(|(_, run)| run));
    if group < 2 {
        spills.extend(sized.into_iter().map(|(_, run)| run));
        return None;
    }
    Some(sized.into_iter().map(|(_, run)| run).collect())
}

/// Merges runs taken by [`take_for_early_merge`] into one.
pub(crate) fn merge_early(group: Vec<SpilledRun>, temp_dir: &Path) -> Result<SpilledRun, Error> {
    Ok(SpilledRun::new(vec![merge_group(group, temp_dir)?]))
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
            (Some(x), Some(y)) => cmp_same_key(x.0, y.0).is_lt(),
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::spill::index::SparseIndex;

    #[test]
    fn sorted_days_are_merged_and_summed() {
        let mut merged = vec![(1, 10), (4, 1), (9, 2)];
        let mut scratch = Vec::new();
        add_sorted_days(b"x", &mut merged, &[(0, 5), (4, 3), (10, 1)], &mut scratch).unwrap();
        assert_eq!(merged, [(0, 5), (1, 10), (4, 4), (9, 2), (10, 1)]);
        add_sorted_days(b"x", &mut merged, &[], &mut scratch).unwrap();
        assert_eq!(merged.len(), 5);
        let mut empty = Vec::new();
        add_sorted_days(b"x", &mut empty, &[(3, 1)], &mut scratch).unwrap();
        assert_eq!(empty, [(3, 1)]);
        let err = add_sorted_days(b"x", &mut merged, &[(9, u64::MAX)], &mut scratch);
        assert!(matches!(err, Err(Error::SumOverflow { .. })), "{err:?}");
    }

    #[test]
    fn equal_dates_are_summed_in_place() {
        let mut days = vec![(1, 1), (1, 2), (3, 5), (4, 1), (4, 1), (4, 1)];
        sum_equal_dates(b"x", &mut days).unwrap();
        assert_eq!(days, [(1, 3), (3, 5), (4, 3)]);
        let mut days = vec![(2, u64::MAX), (2, 1)];
        let err = sum_equal_dates(b"x", &mut days);
        assert!(matches!(err, Err(Error::SumOverflow { .. })), "{err:?}");
    }

    #[test]
    fn runs_are_merged_early_when_they_pile_up() {
        let file = |bytes: usize| {
            let mut file = tempfile::tempfile().expect("temp file");
            file.write_all(&vec![0; bytes]).expect("write");
            SpillFile {
                file,
                index: SparseIndex::new(),
            }
        };
        let run = |bytes: usize| SpilledRun::new(vec![file(bytes)]);
        let mut spills: Vec<SpilledRun> = (1..8).map(run).collect();
        assert!(take_for_early_merge(&mut spills, 4).is_none());
        spills.push(run(100));
        let group = take_for_early_merge(&mut spills, 4).expect("8 runs, 4 at once");
        let sizes = |runs: &[SpilledRun]| -> Vec<u64> {
            let mut sizes: Vec<u64> = runs.iter().map(|r| r.bytes().expect("size")).collect();
            sizes.sort_unstable();
            sizes
        };
        assert_eq!(sizes(&group), [1, 2, 3, 4]);
        assert_eq!(sizes(&spills), [5, 6, 7, 100]);
        // Runs of several files each: fewer runs than a group, all merged.
        let files = |bytes: usize| SpilledRun::new((0..4).map(|_| file(bytes)).collect());
        let mut spills: Vec<SpilledRun> = (1..4).map(files).collect();
        let group = take_for_early_merge(&mut spills, 4).expect("12 files, 4 at once");
        assert_eq!(group.len(), 3);
        assert!(spills.is_empty());
        let mut spills = vec![files(1)];
        assert!(take_for_early_merge(&mut spills, 2).is_none(), "one run");
        assert_eq!(spills.len(), 1);
    }

    #[test]
    fn first_pass_merges_just_enough_of_the_smallest_runs() {
        assert!(first_pass(&[5, 1, 3], 3).is_empty());
        // 5 runs, 3 at once: one group of the 3 smallest leaves 3.
        assert_eq!(first_pass(&[50, 10, 40, 20, 30], 3), vec![vec![1, 3, 4]]);
        // 10 runs, 4 at once: groups of 4 and 4 leave 10 - 3 - 3 = 4.
        let sizes: Vec<u64> = (0..10).rev().collect();
        let groups = first_pass(&sizes, 4);
        assert_eq!(groups, vec![vec![9, 8, 7, 6], vec![5, 4, 3, 2]]);
        // 12 runs, 4 at once: 3 + 3 + 2 fewer; 4 left.
        let groups = first_pass(&[1; 12], 4);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 3]);
        // Very many runs: the groups may still leave more than fan_in (another pass).
        let groups = first_pass(&[1; 40], 4);
        assert_eq!(groups.len(), 10);
        assert_eq!(40 - groups.iter().map(|g| g.len() - 1).sum::<usize>(), 10);
    }
}
