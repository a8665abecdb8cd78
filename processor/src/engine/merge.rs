//! K-way merge of sorted runs into CSV rows, summing the groups that several runs share.

use super::output::push_row;
use super::run::Run;
use super::validate::{PackedDate, date_string};
use crate::Error;

/// Merges `runs` in (song, date) order, appending CSV rows to `out`; `flush` is called with
/// `out` whenever it holds more than `flush_at` bytes (and it should empty it).
/// Returns the number of groups written.
pub(crate) fn merge_runs<R: Run>(
    runs: &mut [R],
    out: &mut Vec<u8>,
    flush_at: usize,
    flush: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut heap = RunHeap::new(runs);
    let mut groups = 0u64;
    let mut same: Vec<usize> = Vec::new();
    let mut merged: Vec<(PackedDate, u64)> = Vec::new();
    while let Some(first) = heap.pop(runs) {
        same.clear();
        same.push(first);
        while let Some(next) = heap.peek() {
            if runs[next].current().map(|c| c.0) == runs[first].current().map(|c| c.0) {
                same.push(heap.pop(runs).unwrap_or(next));
            } else {
                break;
            }
        }
        if let Some((name, days)) = runs[first].current() {
            if same.len() == 1 {
                for &(date, sum) in days {
                    push_row(out, name, date, sum);
                }
                groups += days.len() as u64;
            } else {
                merged.clear();
                for &i in &same {
                    if let Some((_, days)) = runs[i].current() {
                        merged.extend_from_slice(days);
                    }
                }
                merged.sort_unstable_by_key(|entry| entry.0);
                let mut i = 0;
                while i < merged.len() {
                    let (date, mut sum) = merged[i];
                    i += 1;
                    while i < merged.len() && merged[i].0 == date {
                        sum = sum
                            .checked_add(merged[i].1)
                            .ok_or_else(|| Error::SumOverflow {
                                song: String::from_utf8_lossy(name).into_owned(),
                                date: date_string(date),
                            })?;
                        i += 1;
                    }
                    push_row(out, name, date, sum);
                    groups += 1;
                }
            }
        }
        if out.len() > flush_at {
            flush(out)?;
        }
        for &i in &same {
            runs[i].advance()?;
            heap.push(runs, i);
        }
    }
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
