//! Spill rounds. When the tables of all workers together outgrow the budget, the worker that
//! finds it starts a round; every worker still parsing hands its tables in at its next check,
//! and together they write them as ONE sorted run: the song names are cut into as many ranges
//! as there are workers, and each worker writes one range to a file of its own (the run is
//! those files in order). So a run holds the whole budget's worth of groups whatever the
//! number of threads, and all threads work while it is written.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::Error;
use crate::aggregate::shards::ShardedTable;
use crate::aggregate::table::Pivot;
use crate::spill::run::{SpillFile, spill_range};

/// Songs sampled per range to place the range bounds.
const SAMPLES_PER_RANGE: usize = 256;

/// The tables of a round, and where its ranges of names start.
pub(crate) struct RoundWork {
    /// Read by every worker writing a range, then freed by the worker that handed it in.
    tables: Vec<RwLock<Option<ShardedTable>>>,
    songs: usize,
    /// `bounds[i]` starts range `i + 1`.
    bounds: Vec<Pivot>,
}

impl RoundWork {
    fn new(tables: Vec<ShardedTable>, ranges: usize) -> Self {
        let mut sample = Vec::new();
        let per_table = SAMPLES_PER_RANGE * ranges / tables.len().max(1);
        for table in &tables {
            table.sample_names(per_table, &mut sample);
        }
        sample.sort_unstable();
        let bounds = (1..ranges)
            .filter_map(|i| sample.get(i * sample.len() / ranges))
            .map(|name| Pivot::new(name))
            .collect();
        RoundWork {
            songs: tables.iter().map(ShardedTable::len).sum(),
            tables: tables.into_iter().map(|t| RwLock::new(Some(t))).collect(),
            bounds,
        }
    }

    /// Writes range `part` of the round's songs to a new file in `dir` (see
    /// [`spill_range`]).
    pub(crate) fn write(&self, part: usize, dir: &Path) -> Result<SpillFile, Error> {
        let guards: Vec<_> = self.tables.iter().map(RwLock::read).collect();
        let tables: Vec<&ShardedTable> = guards.iter().filter_map(|t| t.as_ref()).collect();
        let (lo, hi) = match part.checked_sub(1) {
            None => (None, self.bounds.first()),
            // A part past the bounds (few songs) has nothing to write.
            Some(i) if i >= self.bounds.len() => return spill_range(&[], None, None, 0, dir),
            Some(i) => (self.bounds.get(i), self.bounds.get(part)),
        };
        // The bounds are quantiles of a sample: ranges are about even.
        let expected = self.songs / (self.bounds.len() + 1) * 5 / 4;
        spill_range(&tables, lo, hi, expected, dir)
    }

    /// Frees the tables handed in as part `part` (once every range is written).
    pub(crate) fn free(&self, part: usize) {
        if let Some(table) = self.tables.get(part) {
            let freed = table.write().take();
            drop(freed);
        }
    }
}

/// What [`Rounds::need_room`] tells a worker whose tables are over budget.
pub(crate) enum Room {
    /// Join this round (just started, or being gathered).
    Join(u64),
    /// A round's tables are being written: wait for their memory with [`Rounds::wait_written`].
    Wait(u64),
}

/// A range of a round for a worker to write, then report with [`Rounds::finish`].
pub(crate) struct Part {
    pub index: usize,
    pub work: Arc<RoundWork>,
}

enum Stage {
    Idle,
    Gathering {
        round: u64,
        tables: Vec<ShardedTable>,
    },
    Writing {
        round: u64,
        /// Handed to each participant, then dropped (the last participant's copy frees the
        /// tables once its range is written).
        work: Option<Arc<RoundWork>>,
        parts: usize,
        taken: usize,
        files: Vec<Option<SpillFile>>,
        finished: usize,
    },
}

struct State {
    /// Workers taking part in rounds (a round waits for each of them): all of them until
    /// every one is done parsing.
    workers: usize,
    /// Workers still parsing (the others wait for rounds to join).
    parsing: usize,
    stage: Stage,
}

/// The spill rounds of one engine run.
pub(crate) struct Rounds {
    /// The latest round started (0: none), for a cheap check without the lock.
    latest: AtomicU64,
    /// Estimated bytes of the tables handed in to a round and not yet freed.
    pending: AtomicUsize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Rounds {
    pub(crate) fn new(workers: usize) -> Self {
        Rounds {
            latest: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            state: Mutex::new(State {
                workers,
                parsing: workers,
                stage: Stage::Idle,
            }),
            changed: Condvar::new(),
        }
    }

    /// The latest round started: a worker that has not joined it must.
    pub(crate) fn latest(&self) -> u64 {
        self.latest.load(Ordering::Relaxed)
    }

    /// Bytes of tables being written (they count against the budget until freed).
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// For a worker over budget: starts a round unless one is under way.
    pub(crate) fn need_room(&self) -> Room {
        let mut state = self.state.lock();
        match state.stage {
            Stage::Idle => {
                let round = self.latest() + 1;
                self.latest.store(round, Ordering::Relaxed);
                state.stage = Stage::Gathering {
                    round,
                    tables: Vec::new(),
                };
                Room::Join(round)
            }
            Stage::Gathering { round, .. } => Room::Join(round),
            Stage::Writing { round, .. } => Room::Wait(round),
        }
    }

    /// Hands `tables` (estimated at `bytes`) in to `round` and waits until every active
    /// worker has: returns the range to write, or `None` if `stopped` said to give up (or the
    /// round is not being gathered).
    pub(crate) fn join(
        &self,
        round: u64,
        tables: ShardedTable,
        bytes: usize,
        stopped: impl Fn() -> bool,
    ) -> Option<Part> {
        let mut state = self.state.lock();
        let index = match &mut state.stage {
            Stage::Gathering {
                round: gathering,
                tables: gathered,
            } if *gathering == round => {
                gathered.push(tables);
                gathered.len() - 1
            }
            _ => return None,
        };
        self.pending.fetch_add(bytes, Ordering::Relaxed);
        Self::complete_gathering(&mut state);
        self.changed.notify_all();
        loop {
            if let Stage::Writing {
                round: writing,
                work,
                parts,
                taken,
                ..
            } = &mut state.stage
                && *writing == round
            {
                let part = Part {
                    index,
                    work: Arc::clone(work.as_ref()?),
                };
                *taken += 1;
                if *taken == *parts {
                    *work = None;
                }
                return Some(part);
            }
            if stopped() {
                return None;
            }
            self.wait(&mut state);
        }
    }

    /// Reports a written range (`None`: it failed, and the error is recorded elsewhere).
    /// The last one gets the run's files in range order (if all were written). The round's
    /// tables no longer count against the budget: each worker frees its own right after
    /// this ([`RoundWork::free`], once [`Rounds::wait_written`] says all are written).
    pub(crate) fn finish(
        &self,
        round: u64,
        index: usize,
        file: Option<SpillFile>,
    ) -> Option<Vec<SpillFile>> {
        let mut state = self.state.lock();
        let Stage::Writing {
            round: writing,
            parts,
            files,
            finished,
            ..
        } = &mut state.stage
        else {
            return None;
        };
        if *writing != round {
            return None;
        }
        if let Some(slot) = files.get_mut(index) {
            *slot = file;
        }
        *finished += 1;
        if *finished < *parts {
            return None;
        }
        let files: Option<Vec<SpillFile>> = std::mem::take(files).into_iter().collect();
        state.stage = Stage::Idle;
        self.pending.store(0, Ordering::Relaxed);
        self.changed.notify_all();
        files
    }

    /// Waits until `round` is written (or `stopped`).
    pub(crate) fn wait_written(&self, round: u64, stopped: impl Fn() -> bool) {
        let mut state = self.state.lock();
        while matches!(state.stage, Stage::Writing { round: r, .. } if r == round) && !stopped() {
            self.wait(&mut state);
        }
    }

    /// A worker is done parsing: its tables stay for the final merge, and it waits in
    /// [`Rounds::idle`] to join the rounds the others may still start.
    pub(crate) fn done_parsing(&self) {
        let mut state = self.state.lock();
        state.parsing = state.parsing.saturating_sub(1);
        self.changed.notify_all();
    }

    /// For a worker done parsing: waits for a round it has not joined (returns it), or until
    /// every worker is done parsing, or `stopped` (`None`).
    pub(crate) fn idle(&self, joined: u64, stopped: impl Fn() -> bool) -> Option<u64> {
        let mut state = self.state.lock();
        loop {
            let latest = self.latest();
            if latest != joined {
                return Some(latest);
            }
            if state.parsing == 0 || stopped() {
                return None;
            }
            self.wait(&mut state);
        }
    }

    /// A worker is gone (returned or panicked): rounds no longer wait for it.
    pub(crate) fn leave(&self) {
        let mut state = self.state.lock();
        state.workers = state.workers.saturating_sub(1);
        Self::complete_gathering(&mut state);
        self.changed.notify_all();
    }

    /// Moves a round to writing once every worker has handed its tables in.
    fn complete_gathering(state: &mut MutexGuard<'_, State>) {
        let workers = state.workers;
        if let Stage::Gathering { round, tables } = &mut state.stage
            && !tables.is_empty()
            && tables.len() >= workers
        {
            let (round, tables) = (*round, std::mem::take(tables));
            let parts = tables.len();
            state.stage = Stage::Writing {
                round,
                work: Some(Arc::new(RoundWork::new(tables, parts))),
                parts,
                taken: 0,
                files: (0..parts).map(|_| None).collect(),
                finished: 0,
            };
        }
    }

    fn wait(&self, state: &mut MutexGuard<'_, State>) {
        // Timed, so that a stop (error, cancellation) is seen without a notification.
        self.changed.wait_for(state, Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::run::{DiskRun, Run, SpillWriter, SpilledRun};

    fn table(songs: &[&str]) -> ShardedTable {
        let mut table = ShardedTable::new(1 << 10);
        for (day, song) in songs.iter().enumerate() {
            table.add(song.as_bytes(), day as u32 % 3, 1);
        }
        table.flush().expect("no overflow");
        table
    }

    fn never() -> bool {
        false
    }

    /// Two workers hand their tables in to one round, each writes a range, and the files in
    /// order make one sorted run with the songs both tables hold summed.
    #[test]
    fn a_round_writes_all_tables_as_one_run() {
        let rounds = Rounds::new(2);
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<String> = (0..500).map(|i| format!("song {i:03}")).collect();
        let (first, second): (Vec<&str>, Vec<&str>) = (
            names.iter().map(String::as_str).step_by(2).collect(),
            names.iter().map(String::as_str).skip(100).collect(),
        );
        let Room::Join(round) = rounds.need_room() else {
            panic!("no round under way");
        };
        assert_eq!(rounds.latest(), round);
        let run = std::thread::scope(|scope| {
            let workers: Vec<_> = [table(&first), table(&second)]
                .into_iter()
                .map(|tables| {
                    let (rounds, dir) = (&rounds, dir.path());
                    scope.spawn(move || {
                        let part = rounds.join(round, tables, 1000, never).expect("joined");
                        let file = part.work.write(part.index, dir).expect("written");
                        // Both have joined: a new round must wait for this one's memory.
                        assert!(matches!(rounds.need_room(), Room::Wait(r) if r == round));
                        assert_eq!(rounds.pending_bytes(), 2000);
                        rounds.finish(round, part.index, Some(file))
                    })
                })
                .collect();
            let runs: Vec<_> = workers
                .into_iter()
                .filter_map(|worker| worker.join().expect("no panic"))
                .collect();
            assert_eq!(runs.len(), 1, "exactly one worker gets the run");
            runs.into_iter().next().expect("a run")
        });
        assert_eq!(run.len(), 2);
        assert_eq!(rounds.pending_bytes(), 0);
        assert!(
            run.iter()
                .all(|f| f.file.metadata().expect("size").len() > 0)
        );
        let run = SpilledRun::new(run);
        let mut disk = DiskRun::whole(&run, dir.path()).expect("readable");
        let mut read = Vec::new();
        while let Some((name, days)) = disk.current() {
            let plays: u64 = days.iter().map(|d| d.1).sum();
            read.push((String::from_utf8_lossy(name).into_owned(), plays));
            disk.advance().expect("readable");
        }
        let expected: Vec<(String, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), u64::from(i % 2 == 0) + u64::from(i >= 100)))
            .filter(|(_, plays)| *plays > 0)
            .collect();
        assert_eq!(read, expected);
    }

    /// A worker that leaves (done, or panicked) no longer holds a round up; one done parsing
    /// is told of rounds to join until every worker is done parsing.
    #[test]
    fn rounds_wait_only_for_workers_still_there() {
        let rounds = Rounds::new(3);
        rounds.done_parsing();
        let Room::Join(round) = rounds.need_room() else {
            panic!("no round under way");
        };
        assert_eq!(rounds.idle(0, never), Some(round));
        rounds.leave();
        rounds.leave();
        let part = rounds.join(round, table(&["a"]), 10, never).expect("alone");
        assert_eq!(part.index, 0);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = SpillWriter::create(dir.path())
            .and_then(SpillWriter::finish)
            .expect("temp file");
        drop(part);
        assert!(rounds.finish(round, 0, Some(file)).is_some());
        rounds.done_parsing();
        rounds.done_parsing();
        assert_eq!(rounds.idle(round, never), None);
        // Stopped: a round that would wait forever gives up.
        let rounds = Rounds::new(2);
        let Room::Join(round) = rounds.need_room() else {
            panic!("no round under way");
        };
        assert!(rounds.join(round, table(&["a"]), 10, || true).is_none());
    }
}
