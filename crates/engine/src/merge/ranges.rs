//! The final merge of spilled runs in parallel: the song names are cut into ranges at pivots
//! chosen from the runs' sparse indexes (and a sample of the tables still in memory), so that
//! the ranges make about even output; each range merges its part of every run and table on a
//! thread of the pool, and the ranges' output goes to the writer in range order. A few ranges
//! are under way at once (their output waits in memory until the ranges before are written):
//! how many, and how large, follows from the memory the merge may use.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::Error;
use crate::aggregate::table::{Pivot, SongRef};
use crate::merge::kway::merge_runs;
use crate::output::writer::WriteBuf;
use crate::spill::index::output_estimate;
use crate::spill::run::{AnyRun, DiskRun, RUN_BUFFER_BYTES, SpilledRun, TableRun};

/// Smallest read buffer of a run when many runs are merged in several ranges at once.
const MIN_RUN_BUFFER: usize = if cfg!(test) { 64 } else { 16 << 10 };
/// Smallest output a range is planned for (below it, fewer ranges run at once).
const MIN_RANGE_OUTPUT: usize = if cfg!(test) { 64 } else { 1 << 20 };
/// Largest output a range is planned for (more ranges balance the threads better; in unit
/// tests a few rows, so that their small inputs make many ranges).
const MAX_RANGE_OUTPUT: usize = if cfg!(test) { 512 } else { 8 << 20 };
/// Most ranges.
const MAX_RANGES: usize = 1 << 16;
/// Songs sampled per table to place the pivots.
const TABLE_SAMPLES: usize = 4096;
/// A range hands its output over in pieces of about this size.
const OUTPUT_CHUNK: usize = 1 << 20;

/// How many ranges run at once and with what buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MergePlan {
    /// Ranges under way or waiting to be written, at most.
    pub window: usize,
    /// Read buffer of each run in each range.
    pub buffer: usize,
    /// Planned output of a range (`usize::MAX`: one range for everything).
    pub range_output: usize,
}

impl MergePlan {
    /// Plans the merge of `runs` spilled runs on `threads` threads in `memory` bytes: each
    /// range under way takes a read buffer per run and its output. Fewer ranges run at once
    /// (down to one, the whole merge streamed) when the runs' buffers leave too little room.
    pub(crate) fn new(memory: usize, runs: usize, threads: usize) -> Self {
        let runs = runs.max(1);
        if threads >= 2 {
            for window in (2..=threads * 2).rev() {
                let share = memory / window;
                let buffer = (share / 2 / runs).clamp(MIN_RUN_BUFFER, RUN_BUFFER_BYTES);
                let output = share.saturating_sub(buffer * runs);
                if output >= MIN_RANGE_OUTPUT {
                    return MergePlan {
                        window,
                        buffer,
                        range_output: output.min(MAX_RANGE_OUTPUT),
                    };
                }
            }
        }
        MergePlan {
            window: 1,
            buffer: RUN_BUFFER_BYTES,
            range_output: usize::MAX,
        }
    }

    /// Ranges for `estimate` bytes of output.
    fn ranges(&self, estimate: u64) -> usize {
        let range = self.range_output as u64;
        usize::try_from(estimate.div_ceil(range)).map_or(MAX_RANGES, |n| n.clamp(1, MAX_RANGES))
    }
}

/// Names with the output estimate of the songs from each to the next sample: the runs'
/// indexed names and every so many songs of the tables. Returns them and their total.
fn weighted_samples<'a>(
    runs: &'a [SpilledRun],
    orders: &'a [Vec<SongRef<'a>>],
) -> (Vec<(&'a [u8], u64)>, u64) {
    let mut samples = Vec::new();
    let mut total = 0u64;
    for index in runs.iter().flat_map(SpilledRun::indexes) {
        samples.extend(index.weighted_names());
        total += index.estimate();
    }
    let mut days = Vec::new();
    for order in orders {
        let step = order.len().div_ceil(TABLE_SAMPLES).max(1);
        for song in order.iter().step_by(step) {
            days.clear();
            song.sorted_days_into(&mut days);
            let weight = output_estimate(song.name, days.len()) * step as u64;
            samples.push((song.name, weight));
            total += weight;
        }
    }
    (samples, total)
}

/// Pivots cutting the weighted names into `parts` ranges of about equal weight (fewer if
/// names repeat), in increasing order.
fn choose_pivots(mut samples: Vec<(&[u8], u64)>, parts: usize) -> Vec<Pivot> {
    samples.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let total: u128 = samples.iter().map(|s| u128::from(s.1)).sum();
    let mut pivots: Vec<Pivot> = Vec::with_capacity(parts.saturating_sub(1));
    let (mut seen, mut next) = (0u128, 1usize);
    for (name, weight) in samples {
        // The ranges whose share of the weight is reached by the middle of this name's
        // start at it (a heavy name starts a range of its own).
        let middle = seen + u128::from(weight / 2);
        while next < parts && middle >= total * next as u128 / parts as u128 {
            if pivots.last().is_none_or(|last| last.name() < name) {
                pivots.push(Pivot::new(name));
            }
            next += 1;
        }
        seen += u128::from(weight);
    }
    pivots
}

/// Merges `runs` and the tables' songs (`orders`, each sorted) into CSV rows handed to
/// `write` in name order, in parallel ranges on `pool` as `plan` says. Returns the groups
/// written.
pub(crate) fn merge_ranges(
    pool: &rayon::ThreadPool,
    runs: &[SpilledRun],
    orders: &[Vec<SongRef<'_>>],
    plan: MergePlan,
    dir: &Path,
    write: WriteBuf<'_>,
) -> Result<u64, Error> {
    let (samples, estimate) = weighted_samples(runs, orders);
    let pivots = choose_pivots(samples, plan.ranges(estimate));
    let ranges = pivots.len() + 1;
    // Where each range starts and ends in each table.
    let bounds: Vec<Vec<usize>> = orders
        .iter()
        .map(|order| {
            let mut b = vec![0];
            b.extend(pivots.iter().map(|pivot| {
                order.partition_point(|song| pivot.cmp_name(song.key(), song.name).is_lt())
            }));
            b.push(order.len());
            b
        })
        .collect();
    tracing::debug!(
        runs = runs.len(),
        tables = orders.len(),
        ranges,
        ?plan,
        estimate,
        "final merge"
    );
    // Output buffers the writer gave back, for the ranges' next pieces.
    let spare: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let chunk = || {
        let recycled = spare.lock().pop();
        recycled.unwrap_or_else(|| Vec::with_capacity(OUTPUT_CHUNK + OUTPUT_CHUNK / 16))
    };
    let merge_range = |part: usize, sink: &mut dyn FnMut(Vec<u8>) -> Result<(), Error>| {
        let start = part.checked_sub(1).map(|i| &pivots[i]);
        let end = pivots.get(part);
        let mut merged: Vec<AnyRun<'_>> = Vec::with_capacity(runs.len() + orders.len());
        for run in runs {
            let disk = DiskRun::range(run, start, end, plan.buffer, dir)?;
            merged.push(AnyRun::Disk(disk));
        }
        for (order, b) in orders.iter().zip(&bounds) {
            let songs = &order[b[part]..b[part + 1]];
            if !songs.is_empty() {
                merged.push(AnyRun::Table(TableRun::new(songs)));
            }
        }
        let mut buf = chunk();
        let groups = merge_runs(&mut merged, &mut buf, OUTPUT_CHUNK, &mut |full| {
            sink(std::mem::replace(full, chunk()))
        })?;
        if !buf.is_empty() {
            sink(buf)?;
        }
        Ok(groups)
    };
    let mut groups = 0;
    in_order(
        pool,
        ranges,
        plan.window,
        merge_range,
        &mut |piece| match piece {
            Piece::Output(mut buf) => {
                write(&mut buf)?;
                let mut spare = spare.lock();
                if buf.capacity() > OUTPUT_CHUNK && spare.len() < plan.window * 2 {
                    buf.clear();
                    spare.push(buf);
                }
                Ok(())
            }
            Piece::Done(count) => {
                groups += count;
                Ok(())
            }
        },
    )?;
    Ok(groups)
}

/// What a task hands over: output, then how it ended.
enum Piece {
    Output(Vec<u8>),
    Done(u64),
}

/// A task's message to [`in_order`]'s caller.
enum Message {
    Output(usize, Vec<u8>),
    Done(usize, Result<u64, Error>),
}

/// Runs `task(0..count)` on `pool` with at most `window` tasks started and not yet all
/// handed to `emit`, and hands their output to `emit` in task order (a task's output
/// streams while the tasks before it are done; the others' waits). The first error in task
/// order ends it (the tasks after it stop at their next output); so does an error of `emit`.
fn in_order<T>(
    pool: &rayon::ThreadPool,
    count: usize,
    window: usize,
    task: T,
    emit: &mut dyn FnMut(Piece) -> Result<(), Error>,
) -> Result<(), Error>
where
    T: Fn(usize, &mut dyn FnMut(Vec<u8>) -> Result<(), Error>) -> Result<u64, Error> + Sync,
{
    // Tasks from this one on give up (an earlier one failed, or `emit` did).
    let give_up_after = AtomicUsize::new(usize::MAX);
    let stopped = AtomicBool::new(false);
    let (tx, rx) = crossbeam_channel::unbounded::<Message>();
    let (task, give_up_after, stopped) = (&task, &give_up_after, &stopped);
    pool.in_place_scope_fifo(|scope| {
        let spawn = |part: usize| {
            let tx = tx.clone();
            scope.spawn_fifo(move |_| {
                let gave_up = || {
                    stopped.load(Ordering::Relaxed) || part > give_up_after.load(Ordering::Relaxed)
                };
                let result = catch_unwind(AssertUnwindSafe(|| {
                    if gave_up() {
                        return Err(Error::Cancelled);
                    }
                    task(part, &mut |buf| {
                        if gave_up() {
                            return Err(Error::Cancelled);
                        }
                        tx.send(Message::Output(part, buf))
                            .map_err(|_| Error::Cancelled)
                    })
                }))
                .unwrap_or_else(|_| Err(Error::Threads("a merge thread panicked".into())));
                let _ = tx.send(Message::Done(part, result));
            });
        };
        let mut drive = || -> Result<(), Error> {
            let mut started = 0;
            while started < count.min(window.max(1)) {
                spawn(started);
                started += 1;
            }
            // Output of tasks after the one being emitted, and the tasks done.
            let mut waiting: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
            let mut done: HashMap<usize, Result<u64, Error>> = HashMap::new();
            let mut next = 0;
            while next < count {
                match rx.recv() {
                    Ok(Message::Output(part, buf)) if part == next => emit(Piece::Output(buf))?,
                    Ok(Message::Output(part, buf)) => waiting.entry(part).or_default().push(buf),
                    Ok(Message::Done(part, result)) => {
                        if result.is_err() {
                            give_up_after.fetch_min(part, Ordering::Relaxed);
                        }
                        done.insert(part, result);
                    }
                    Err(_) => return Err(Error::Threads("merge tasks lost".into())),
                }
                while let Some(result) = done.remove(&next) {
                    emit(Piece::Done(result?))?;
                    next += 1;
                    if started < count {
                        spawn(started);
                        started += 1;
                    }
                    for buf in waiting.remove(&next).unwrap_or_default() {
                        emit(Piece::Output(buf))?;
                    }
                }
            }
            Ok(())
        };
        let outcome = drive();
        if outcome.is_err() {
            // The tasks under way stop at their next output.
            stopped.store(true, Ordering::Relaxed);
        }
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::shards::ShardedTable;
    use crate::spill::run::{Run, SpillWriter};

    fn pivot_names(pivots: &[Pivot]) -> Vec<&str> {
        pivots
            .iter()
            .map(|p| std::str::from_utf8(p.name()).expect("utf8"))
            .collect()
    }

    #[test]
    fn pivots_cut_the_weight_evenly_and_increase() {
        let names: Vec<String> = (0..100).map(|i| format!("s{i:03}")).collect();
        let samples = || names.iter().rev().map(|n| (n.as_bytes(), 1)).collect();
        assert_eq!(
            pivot_names(&choose_pivots(samples(), 4)),
            ["s025", "s050", "s075"]
        );
        assert!(choose_pivots(samples(), 1).is_empty());
        // A heavy name takes a range of its own; repeated names make one pivot.
        let mut heavy: Vec<(&[u8], u64)> = samples();
        heavy.push((b"s010x", 1000));
        assert_eq!(pivot_names(&choose_pivots(heavy, 4)), ["s010x", "s011"]);
        let same: Vec<(&[u8], u64)> = vec![(b"a", 5); 50];
        assert_eq!(pivot_names(&choose_pivots(same, 8)), ["a"]);
        assert!(choose_pivots(Vec::new(), 8).is_empty());
    }

    #[test]
    fn plans_stay_within_their_memory() {
        for memory in [1 << 20, 8 << 20, 24 << 20, 64 << 20] {
            for runs in [0, 1, 30, 80, 256] {
                let one = MergePlan::new(memory, runs, 1);
                assert_eq!((one.window, one.range_output), (1, usize::MAX));
                let mut last_window = usize::MAX;
                for threads in [2, 4] {
                    let plan = MergePlan::new(memory, runs, threads);
                    assert!(plan.window <= threads * 2, "{plan:?}");
                    if plan.window > 1 {
                        let per_range = plan.buffer * runs.max(1) + plan.range_output;
                        assert!(plan.window * per_range <= memory, "{plan:?}");
                    }
                    let more_runs = MergePlan::new(memory, runs * 4 + 1, threads);
                    assert!(more_runs.window <= plan.window, "{more_runs:?} {plan:?}");
                    last_window = last_window.min(plan.window);
                }
                assert!(last_window >= 1);
            }
        }
        assert_eq!(
            MergePlan::new(usize::MAX, 4, 2).range_output,
            MAX_RANGE_OUTPUT
        );
    }

    /// A spilled run of one file per list of (song, plays) in name order.
    fn spilled(dir: &Path, files: &[Vec<(String, u64)>]) -> SpilledRun {
        let files = files
            .iter()
            .map(|songs| {
                let mut writer = SpillWriter::create(dir).expect("temp file");
                for (name, plays) in songs {
                    let days = [(1, *plays), (2, plays + 1)];
                    writer.write(name.as_bytes(), &days).expect("written");
                }
                writer.finish().expect("finished")
            })
            .collect();
        SpilledRun::new(files)
    }

    fn songs(range: impl Iterator<Item = u64>) -> Vec<(String, u64)> {
        range.map(|i| (format!("s{i:03}"), i)).collect()
    }

    /// Runs of several files, runs with no songs in some ranges, an empty file and a run
    /// without files.
    fn runs(dir: &Path) -> Vec<SpilledRun> {
        vec![
            spilled(
                dir,
                &[songs((0..100).step_by(2)), songs((100..300).step_by(2))],
            ),
            spilled(dir, &[songs((1..100).step_by(2))]),
            spilled(dir, &[Vec::new(), songs(250..260), Vec::new()]),
            spilled(dir, &[]),
            spilled(dir, &[songs(0..300)]),
        ]
    }

    type Read = Vec<(Vec<u8>, Vec<(u32, u64)>)>;

    fn read_all(mut run: DiskRun<'_>) -> Read {
        let mut read = Vec::new();
        while let Some((name, days)) = run.current() {
            read.push((name.to_vec(), days.to_vec()));
            run.advance().expect("readable");
        }
        read
    }

    #[test]
    fn ranges_cover_every_song_of_every_run_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runs = runs(dir.path());
        // Below every song, equal to songs (of one run, of several), between songs, in a
        // gap of some runs, past every song.
        let pivots: Vec<Pivot> = ["a", "s000", "s050", "s0505", "s101", "s255", "s299", "t"]
            .iter()
            .map(|name| Pivot::new(name.as_bytes()))
            .collect();
        for (r, run) in runs.iter().enumerate() {
            let whole = read_all(DiskRun::whole(run, dir.path()).expect("readable"));
            let mut joined: Read = Vec::new();
            for part in 0..=pivots.len() {
                let start = part.checked_sub(1).map(|i| &pivots[i]);
                let end = pivots.get(part);
                for buffer in [64, 4096] {
                    let read = read_all(
                        DiskRun::range(run, start, end, buffer, dir.path()).expect("readable"),
                    );
                    assert!(read.iter().all(|(name, _)| {
                        start.is_none_or(|s| s.name() <= &name[..])
                            && end.is_none_or(|e| &name[..] < e.name())
                    }));
                    if buffer == 64 {
                        joined.extend(read);
                    }
                }
            }
            assert_eq!(joined, whole, "run {r}");
        }
    }

    fn table(songs: &[(String, u64)]) -> ShardedTable {
        let mut table = ShardedTable::new(1 << 10);
        for (name, plays) in songs {
            table.add(name.as_bytes(), 2, *plays);
            table.add(name.as_bytes(), 3, 1);
        }
        table.flush().expect("no overflow");
        table
    }

    /// Merges with one range on one thread, as the engine did before ranges.
    fn merge_once(runs: &[SpilledRun], orders: &[Vec<SongRef<'_>>], dir: &Path) -> Vec<u8> {
        let mut merged: Vec<AnyRun<'_>> = runs
            .iter()
            .map(|run| AnyRun::Disk(DiskRun::whole(run, dir).expect("readable")))
            .collect();
        merged.extend(orders.iter().map(|o| AnyRun::Table(TableRun::new(o))));
        let mut out = Vec::new();
        merge_runs(&mut merged, &mut out, usize::MAX, &mut |_| Ok(())).expect("merged");
        out
    }

    fn merge_parallel(
        runs: &[SpilledRun],
        orders: &[Vec<SongRef<'_>>],
        plan: MergePlan,
        dir: &Path,
    ) -> Result<(Vec<u8>, u64), Error> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        let mut out = Vec::new();
        let groups = merge_ranges(&pool, runs, orders, plan, dir, &mut |buf| {
            out.append(buf);
            Ok(())
        })?;
        Ok((out, groups))
    }

    #[test]
    fn parallel_ranges_merge_as_one_merge_does() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runs = runs(dir.path());
        let tables = [table(&songs((0..400).step_by(3))), table(&songs(290..310))];
        let orders: Vec<Vec<SongRef<'_>>> = tables.iter().map(|t| t.sorted_songs()).collect();
        let expected = merge_once(&runs, &orders, dir.path());
        let rows = expected.iter().filter(|&&b| b == b'\n').count() as u64;
        for (window, range_output) in [(1, usize::MAX), (2, 2000), (3, 300), (6, 64)] {
            let plan = MergePlan {
                window,
                buffer: 64,
                range_output,
            };
            let (samples, estimate) = weighted_samples(&runs, &orders);
            let ranges = choose_pivots(samples, plan.ranges(estimate)).len() + 1;
            assert!(range_output > 1000 || ranges > 10, "{ranges} ranges");
            let (out, groups) = merge_parallel(&runs, &orders, plan, dir.path()).expect("merged");
            assert!(
                out == expected,
                "{plan:?}: {}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(groups, rows);
        }
    }

    #[test]
    fn the_first_overflow_in_name_order_is_the_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let big = |name: &str| vec![(name.to_string(), u64::MAX - 1)];
        // Two runs share "s010" and "s200", each of whose sums overflows.
        let runs = [
            spilled(dir.path(), &[songs(0..300)]),
            spilled(dir.path(), &[big("s010"), big("s200")]),
        ];
        let plan = MergePlan {
            window: 4,
            buffer: 64,
            range_output: 100,
        };
        for _ in 0..5 {
            let err = merge_parallel(&runs, &[], plan, dir.path()).expect_err("overflows");
            assert!(
                matches!(&err, Error::SumOverflow { song, .. } if song == "s010"),
                "{err}"
            );
        }
    }

    #[test]
    fn output_comes_in_task_order_and_an_emit_error_stops_the_tasks() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        // Later tasks are faster: their output waits for the earlier ones'.
        let task = |part: usize, sink: &mut dyn FnMut(Vec<u8>) -> Result<(), Error>| {
            std::thread::sleep(std::time::Duration::from_millis((20 - part as u64) % 7));
            for piece in 0..3 {
                sink(format!("{part}.{piece} ").into_bytes())?;
            }
            Ok(part as u64)
        };
        let mut out = String::new();
        let mut total = 0;
        in_order(&pool, 20, 5, task, &mut |piece| {
            match piece {
                Piece::Output(buf) => out.push_str(&String::from_utf8_lossy(&buf)),
                Piece::Done(n) => total += n,
            }
            Ok(())
        })
        .expect("runs");
        let expected: String = (0..20)
            .flat_map(|p| (0..3).map(move |i| format!("{p}.{i} ")))
            .collect();
        assert_eq!(out, expected);
        assert_eq!(total, (0..20).sum::<u64>());
        let started = AtomicUsize::new(0);
        let counted = |part: usize, sink: &mut dyn FnMut(Vec<u8>) -> Result<(), Error>| {
            started.fetch_add(1, Ordering::Relaxed);
            task(part, sink)
        };
        let mut pieces = 0;
        let err = in_order(&pool, 1000, 4, counted, &mut |_| {
            pieces += 1;
            if pieces == 10 {
                return Err(Error::Cancelled);
            }
            Ok(())
        })
        .expect_err("stopped");
        assert!(matches!(err, Error::Cancelled));
        assert!(started.load(Ordering::Relaxed) < 20, "tasks went on");
    }
}
