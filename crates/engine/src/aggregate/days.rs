//! Per-song sums by date, in the representation that suits how many dates a song has.

use std::mem::size_of;

use crate::date::{PackedDate, date_string};
use crate::error::Error;

/// Bytes malloc adds to each allocation (header and rounding), for the memory estimate.
const MALLOC_OVERHEAD: usize = 16;
/// Entries kept in an unsorted list before switching to a denser layout.
const SMALL_MAX: usize = 16;
/// Extra slots a dense array may have beyond 4 per present date (packed dates of
/// consecutive days are at most 4 apart).
const DENSE_SLACK: usize = 256;

/// The sums of one song, keyed by date.
pub(crate) enum Days {
    /// One date (no allocation): most songs of a high-cardinality input.
    One(PackedDate, u64),
    /// Few dates: unsorted pairs, searched linearly.
    Small(Vec<(PackedDate, u64)>),
    /// Many dates in a compact range: slots indexed by `date - base` holding `sum + 1` as
    /// u32 (0: no such date), so one small slot tells presence and sum. A sum that outgrows
    /// u32 moves the song to `Map`.
    Dense { base: PackedDate, slots: Vec<u32> },
    /// Many scattered dates.
    Map(hashbrown::HashMap<PackedDate, u64, foldhash::fast::FixedState>),
}

/// A sum overflowed u64: the engine's one overflow, which the sharded table reports as
/// [`Error::SumOverflow`](crate::Error::SumOverflow) with the song and date.
#[derive(Debug)]
pub(crate) struct Overflow;

impl Days {
    pub(crate) fn new() -> Days {
        Days::Small(Vec::new())
    }

    /// A song's first date.
    pub(crate) fn first(date: PackedDate, plays: u64) -> Days {
        Days::One(date, plays)
    }

    /// Adds `plays` to `date`. Returns the change in heap bytes.
    #[inline]
    pub(crate) fn add(&mut self, date: PackedDate, plays: u64) -> Result<isize, Overflow> {
        match self {
            Days::One(first, sum) => {
                if *first == date {
                    *sum = sum.checked_add(plays).ok_or(Overflow)?;
                    return Ok(0);
                }
                // Room for four: songs with a second date mostly get more.
                let mut list = Vec::with_capacity(4);
                list.extend([(*first, *sum), (date, plays)]);
                let bytes = bytes_of::<(PackedDate, u64)>(list.capacity());
                *self = Days::Small(list);
                Ok(bytes)
            }
            Days::Small(list) => {
                if let Some(entry) = list.iter_mut().find(|entry| entry.0 == date) {
                    entry.1 = entry.1.checked_add(plays).ok_or(Overflow)?;
                    return Ok(0);
                }
                let full = list.len() == list.capacity();
                if list.len() < SMALL_MAX && !(full && dense_is_smaller(list, date)) {
                    let before = list.capacity();
                    list.push((date, plays));
                    return Ok(bytes_of::<(PackedDate, u64)>(list.capacity() - before));
                }
                let before = self.heap_bytes();
                self.grow_out_of_small();
                self.add(date, plays)?;
                Ok(self.heap_bytes() as isize - before as isize)
            }
            Days::Dense { base, slots } => {
                if let Some(slot) = slots.get_mut(date.wrapping_sub(*base) as usize) {
                    // `sum + 1 + plays`, with the +1 already in a used slot.
                    let updated = u64::from(*slot) + plays + u64::from(*slot == 0);
                    if let Ok(updated) = u32::try_from(updated) {
                        *slot = updated;
                        return Ok(0);
                    }
                }
                let before = self.heap_bytes();
                self.widen_or_scatter(date, plays)?;
                Ok(self.heap_bytes() as isize - before as isize)
            }
            Days::Map(map) => {
                let before = map.capacity();
                let sum = map.entry(date).or_insert(0);
                *sum = sum.checked_add(plays).ok_or(Overflow)?;
                Ok(bytes_of::<(PackedDate, u64)>(map.capacity() - before))
            }
        }
    }

    /// Heap bytes held (capacity based, an estimate for the memory budget).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Days::One(..) => 0,
            Days::Small(list) => list.capacity() * size_of::<(PackedDate, u64)>() + MALLOC_OVERHEAD,
            Days::Dense { slots, .. } => slots.capacity() * 4 + MALLOC_OVERHEAD,
            Days::Map(map) => {
                // hashbrown allocates a power of two of buckets, at most 7/8 of them usable.
                map.capacity() * 8 / 7 * (size_of::<(PackedDate, u64)>() + 1) + MALLOC_OVERHEAD
            }
        }
    }

    /// Appends the (date, sum) pairs sorted by date to `out`.
    pub(crate) fn sorted_into(&self, out: &mut Vec<(PackedDate, u64)>) {
        let start = out.len();
        match self {
            Days::One(date, sum) => out.push((*date, *sum)),
            Days::Small(list) => {
                out.extend_from_slice(list);
                out[start..].sort_unstable_by_key(|entry| entry.0);
            }
            Days::Dense { base, slots } => {
                for (i, &slot) in slots.iter().enumerate() {
                    if slot != 0 {
                        out.push((*base + i as PackedDate, u64::from(slot) - 1));
                    }
                }
            }
            Days::Map(map) => {
                out.extend(map.iter().map(|(&date, &sum)| (date, sum)));
                out[start..].sort_unstable_by_key(|entry| entry.0);
            }
        }
    }

    /// Where the sums live when not inline (for prefetching).
    #[inline]
    pub(crate) fn heap_ptr(&self) -> Option<*const u8> {
        match self {
            Days::One(..) | Days::Map(_) => None,
            Days::Small(list) => Some(list.as_ptr().cast()),
            Days::Dense { slots, .. } => Some(slots.as_ptr().cast()),
        }
    }

    fn entries(&self) -> Vec<(PackedDate, u64)> {
        let mut all = Vec::new();
        self.sorted_into(&mut all);
        all
    }

    /// Replaces a full `Small` list by `Dense` or `Map`.
    fn grow_out_of_small(&mut self) {
        if let Days::Small(list) = self {
            let list = std::mem::take(list);
            *self = Self::from_entries(&list);
        }
    }

    /// Adds `plays` to `date` where the dense array cannot take it: out of its range (widen
    /// it, or use a map when the dates are scattered) or a sum beyond u32.
    fn widen_or_scatter(&mut self, date: PackedDate, plays: u64) -> Result<(), Overflow> {
        let mut entries = self.entries();
        match entries.binary_search_by_key(&date, |entry| entry.0) {
            Ok(i) => entries[i].1 = entries[i].1.checked_add(plays).ok_or(Overflow)?,
            Err(i) => entries.insert(i, (date, plays)),
        }
        *self = Self::from_entries(&entries);
        Ok(())
    }

    /// Chooses the layout for these entries (each date once, in any order; more than
    /// `SMALL_MAX` or about to be). Unsorted: a dense array needs only the first and last date.
    fn from_entries(entries: &[(PackedDate, u64)]) -> Days {
        let Some(&(date, _)) = entries.first() else {
            return Days::new();
        };
        let (first, last) = entries.iter().fold((date, date), |(low, high), entry| {
            (low.min(entry.0), high.max(entry.0))
        });
        let span = (last - first) as usize + 1;
        let fits_u32 = entries.iter().all(|entry| entry.1 < u64::from(u32::MAX));
        if fits_u32 && span <= entries.len() * 4 + DENSE_SLACK {
            // Leave room on both sides so that neighbouring dates rarely force a rebuild.
            let margin = (span / 4).min(first as usize);
            let base = first - margin as PackedDate;
            let mut slots = vec![0u32; span + 2 * margin];
            for &(date, sum) in entries {
                // `fits_u32` checked `sum + 1` fits.
                slots[(date - base) as usize] = sum as u32 + 1;
            }
            Days::Dense { base, slots }
        } else {
            let mut map = hashbrown::HashMap::with_capacity_and_hasher(
                entries.len() * 2,
                foldhash::fast::FixedState::default(),
            );
            map.extend(entries.iter().copied());
            Days::Map(map)
        }
    }
}

/// Whether a full `list` (about to double) with `date` added takes less room as a dense
/// array, which is also faster to update: a song on most days of a short period.
fn dense_is_smaller(list: &[(PackedDate, u64)], date: PackedDate) -> bool {
    const MIN_LEN: usize = 8;
    if list.len() < MIN_LEN {
        return false;
    }
    let (low, high) = list.iter().fold((date, date), |(low, high), entry| {
        (low.min(entry.0), high.max(entry.0))
    });
    let span = (high - low) as usize + 1;
    // `from_entries` adds a quarter of the span on each side.
    let dense = (span + span / 2) * size_of::<u32>();
    dense <= 2 * list.len() * size_of::<(PackedDate, u64)>()
}

fn bytes_of<T>(count: usize) -> isize {
    (count * size_of::<T>()) as isize
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn check(dates: &[(PackedDate, u64)]) {
        let Some(&(first, plays)) = dates.first() else {
            return;
        };
        let mut days = Days::first(first, plays);
        let dates = &dates[1..];
        let mut expected = BTreeMap::from([(first, plays)]);
        for &(date, plays) in dates {
            days.add(date, plays).expect("no overflow");
            *expected.entry(date).or_insert(0) += plays;
        }
        let mut got = Vec::new();
        days.sorted_into(&mut got);
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn songs_on_most_days_of_a_period_turn_dense_early() {
        let mut days = Days::first(100, 1);
        for date in 101..109 {
            days.add(date, 1).expect("no overflow");
        }
        assert!(matches!(days, Days::Dense { .. }), "9 consecutive dates");
        let mut days = Days::first(0, 1);
        for i in 1..9 {
            days.add(i * 50, 1).expect("no overflow");
        }
        assert!(matches!(days, Days::Small(_)), "9 dates over a year");
    }

    #[test]
    fn all_layouts_sum_and_sort() {
        check(&[(5, 1), (3, 2), (5, 0), (9, 4)]);
        // dense: 40 consecutive-ish dates, zero sums kept
        check(
            &(0..200)
                .map(|i| (1000 + (i * 7) % 40, i as u64 % 3))
                .collect::<Vec<_>>(),
        );
        // dense widening on both sides
        check(
            &(0..100)
                .map(|i| (5000 + (i * 37) % 300 - 150 + 150, 1))
                .collect::<Vec<_>>(),
        );
        // scattered: becomes a map
        check(&(0..100).map(|i| (i * 10_000, 2)).collect::<Vec<_>>());
        // small dates near zero
        check(&(0..50).map(|i| (i, 1)).collect::<Vec<_>>());
        // dense sums growing past u32 move to a map
        check(
            &(0..100)
                .map(|i| (200 + i % 20, u64::from(u32::MAX) / 3))
                .collect::<Vec<_>>(),
        );
        // huge single plays into a dense song
        let mut dates: Vec<(PackedDate, u64)> = (0..40).map(|i| (i, 1)).collect();
        dates.push((3, u64::MAX - 10));
        dates.push((41, u64::from(u32::MAX)));
        check(&dates);
    }

    #[test]
    fn overflow_is_reported() {
        let mut days = Days::first(1, u64::MAX);
        assert!(days.add(1, 1).is_err());
    }

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
}
