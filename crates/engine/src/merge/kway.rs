//! The k-way merge of sorted runs: a heap of runs by their current song name; the songs that
//! several runs share are emitted once, their days summed.

use crate::Error;
use crate::aggregate::days::add_sorted_days;
use crate::aggregate::table::cmp_same_key;
use crate::date::{PackedDate, date_string};
use crate::output::csv::push_song_rows;
use crate::spill::run::{Run, SongDays};

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
    use super::*;

    #[test]
    fn equal_dates_are_summed_in_place() {
        let mut days = vec![(1, 1), (1, 2), (3, 5), (4, 1), (4, 1), (4, 1)];
        sum_equal_dates(b"x", &mut days).unwrap();
        assert_eq!(days, [(1, 3), (3, 5), (4, 3)]);
        let mut days = vec![(2, u64::MAX), (2, 1)];
        let err = sum_equal_dates(b"x", &mut days);
        assert!(matches!(err, Err(Error::SumOverflow { .. })), "{err:?}");
    }
}
