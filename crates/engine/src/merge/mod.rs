//! The merge stage: the sorted runs (the workers' tables, the spilled runs) merged into CSV
//! rows by the k-way merge (`kway`). The tables alone are merged in parallel ranges here; with
//! spilled runs, the smallest runs are merged first when there are too many to read at once,
//! and the rest in parallel ranges (`ranges`). Runs that pile up while the input is still
//! parsed are merged early.

pub(crate) mod kway;
pub(crate) mod ranges;

use std::path::Path;

use rayon::prelude::*;

use crate::Error;
use crate::aggregate::shards::ShardedTable;
use crate::aggregate::table::SongRef;
use crate::merge::kway::{merge_runs, merge_songs};
use crate::merge::ranges::{MergePlan, merge_ranges};
use crate::output::writer::WriteBuf;
use crate::spill::run::{DiskRun, RUN_BUFFER_BYTES, SpillFile, SpillWriter, SpilledRun, TableRun};

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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::spill::index::SparseIndex;

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
