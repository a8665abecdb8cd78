//! A small cache of the songs a worker meets most, in front of its sharded table: most inputs
//! are skewed (a few thousand songs make most of the rows), and a row of a cached song is
//! summed in place, in a structure small enough for the CPU caches (its slot prefetched while
//! the next row is parsed), instead of being buffered and added to the big table later. The
//! cache is direct-mapped by song hash; a song takes a slot from another only once that one
//! has lost its hits to misses (so that the long tail of rare songs does not keep evicting the
//! frequent ones). An evicted song's sums go to the table like any row, and all of them do at
//! the end, so the result does not depend on what the cache held.

use crate::aggregate::table::{INLINE, inline_name_is, prefetch};
use crate::date::PackedDate;

/// Longest name a slot holds (longer ones always go to the table).
const NAME_BYTES: usize = INLINE;
/// Dates a slot sums: the packed dates that differ only in their low bits, two calendar
/// months (a packed date holds the day in its low five bits, the month above). The date
/// alone then tells where its sum is, so that it can be prefetched with the slot.
const WINDOW: usize = 64;
const WINDOW_BITS: PackedDate = WINDOW as PackedDate - 1;
/// A slot's score (hits, saturating): a song needs that many misses of others to lose it.
const MAX_SCORE: u8 = 8;
/// Most slots in a cache (5 MiB: with its slots prefetched, it need not fit the second-level
/// cache).
pub(crate) const MAX_SLOTS: usize = 16384;
/// Slots a cache starts with.
const START_SLOTS: usize = 1024;
/// Rows between two looks at the hit rate.
const SAMPLE_ROWS: u32 = 1 << 16;
/// Below this many hits per sample, the cache pauses (high-cardinality inputs).
const MIN_SAMPLE_HITS: u32 = SAMPLE_ROWS / 8;
/// Samples the cache stays paused before it tries again.
const PAUSE_SAMPLES: u32 = 16;

/// One cached song: its name, hash, and sums for a window of dates. The fields a lookup
/// reads share the first cache line.
#[repr(C, align(64))]
struct Slot {
    hash: u64,
    /// The window's first date (its low bits clear).
    base: PackedDate,
    /// Name length; 0: the slot is free.
    len: u8,
    score: u8,
    /// Bit `i`: `sums[i]` holds a sum.
    used: u64,
    name: [u8; NAME_BYTES],
    sums: [u32; WINDOW],
}

impl Slot {
    const FREE: Slot = Slot {
        hash: 0,
        len: 0,
        score: 0,
        base: 0,
        used: 0,
        name: [0; NAME_BYTES],
        sums: [0; WINDOW],
    };

    /// `count` free slots.
    fn free(count: usize) -> Box<[Slot]> {
        (0..count).map(|_| Slot::FREE).collect()
    }

    #[inline(always)]
    fn holds(&self, hash: u64, song: &[u8]) -> bool {
        // A free slot's length is 0, which no song's is.
        self.hash == hash && usize::from(self.len) == song.len() && inline_name_is(&self.name, song)
    }

    /// Adds `plays` to `date` if the window holds it and the sum fits the slot.
    #[inline(always)]
    fn add(&mut self, date: PackedDate, plays: u64) -> bool {
        if date & !WINDOW_BITS != self.base {
            return false;
        }
        let at = (date & WINDOW_BITS) as usize;
        let Ok(sum) = u32::try_from(u64::from(self.sums[at]) + plays) else {
            return false;
        };
        self.sums[at] = sum;
        self.used |= 1 << at;
        true
    }

    /// Hands the sums to `emit` as (hash, name, date, sum) and frees the slot.
    #[inline(never)]
    fn drain(&mut self, emit: &mut impl FnMut(u64, &[u8], PackedDate, u64)) {
        let name = &self.name[..usize::from(self.len)];
        let mut used = self.used;
        while used != 0 {
            let at = used.trailing_zeros() as usize;
            used &= used - 1;
            emit(
                self.hash,
                name,
                self.base + at as PackedDate,
                u64::from(self.sums[at]),
            );
            self.sums[at] = 0;
        }
        self.used = 0;
        self.len = 0;
    }
}

/// The cache of a worker's most frequent songs.
pub(crate) struct HotSongs {
    slots: Box<[Slot]>,
    /// Slots the cache may grow to.
    max_slots: usize,
    /// `slots.len() - 1`: a hash's slot is `hash & mask`.
    mask: usize,
    /// Rows until the next look at the hit rate.
    countdown: u32,
    hits: u32,
    /// Samples left before a paused cache tries again (0: active).
    paused: u32,
}

impl HotSongs {
    /// A cache that may grow to `max_slots` slots (rounded down to a power of two, at most
    /// [`MAX_SLOTS`]). It starts small, so that a small input does not pay for a large
    /// cache, and doubles while it hits.
    pub(crate) fn new(max_slots: usize) -> Self {
        let max_slots = 1 << max_slots.clamp(1, MAX_SLOTS).ilog2();
        let slots = max_slots.min(START_SLOTS);
        HotSongs {
            slots: Slot::free(slots),
            max_slots,
            mask: slots - 1,
            countdown: SAMPLE_ROWS,
            hits: 0,
            paused: 0,
        }
    }

    /// Heap bytes of a cache of `slots` slots (what a cache of that many slots at most is
    /// budgeted for).
    pub(crate) fn bytes_for(slots: usize) -> usize {
        slots * size_of::<Slot>()
    }

    /// Heap bytes it may hold.
    pub(crate) fn heap_bytes(&self) -> usize {
        Self::bytes_for(self.max_slots)
    }

    /// Sums `plays` for (`song`, `date`) in the cache when it can; false when the row must go
    /// to the table. A song taking a slot may first push the previous song's sums to `emit`.
    #[inline(always)]
    pub(crate) fn add(
        &mut self,
        hash: u64,
        song: &[u8],
        date: PackedDate,
        plays: u64,
        emit: &mut impl FnMut(u64, &[u8], PackedDate, u64),
    ) -> bool {
        self.countdown -= 1;
        if self.countdown == 0 {
            self.sample(emit);
        }
        if self.paused != 0 {
            return false;
        }
        let Some(slot) = self.slots.get_mut(hash as usize & self.mask) else {
            return false;
        };
        if slot.holds(hash, song) {
            if slot.add(date, plays) {
                slot.score = (slot.score + 1).min(MAX_SCORE);
                self.hits += 1;
                return true;
            }
            return false;
        }
        Self::miss(slot, hash, song, date, plays, emit)
    }

    /// A row whose song is not in its slot: the song takes the slot if the one there has lost
    /// its score, else the row goes to the table.
    #[inline(never)]
    fn miss(
        slot: &mut Slot,
        hash: u64,
        song: &[u8],
        date: PackedDate,
        plays: u64,
        emit: &mut impl FnMut(u64, &[u8], PackedDate, u64),
    ) -> bool {
        if song.len() > NAME_BYTES || plays > u64::from(u32::MAX) {
            return false;
        }
        if slot.len != 0 {
            if slot.score > 0 {
                slot.score -= 1;
                return false;
            }
            slot.drain(emit);
        }
        slot.hash = hash;
        slot.len = song.len() as u8;
        slot.score = 1;
        slot.name[..song.len()].copy_from_slice(song);
        slot.base = date & !WINDOW_BITS;
        slot.add(date, plays)
    }

    /// Starts loading the slot of the song with this hash and its sum for `date`.
    #[inline(always)]
    pub(crate) fn prefetch(&self, hash: u64, date: PackedDate) {
        if let Some(slot) = self.slots.get(hash as usize & self.mask) {
            prefetch((slot as *const Slot).cast());
            prefetch((&slot.sums[(date & WINDOW_BITS) as usize] as *const u32).cast());
        }
    }

    /// Checks the hit rate of the last sample: a cache that rarely hits only costs time, so
    /// it pauses for a while (its songs keep their sums until [`HotSongs::drain`]); one that
    /// hits doubles until it reaches its size.
    #[cold]
    #[inline(never)]
    fn sample(&mut self, emit: &mut impl FnMut(u64, &[u8], PackedDate, u64)) {
        self.countdown = SAMPLE_ROWS;
        if self.paused != 0 {
            self.paused -= 1;
        } else if self.hits < MIN_SAMPLE_HITS {
            self.paused = PAUSE_SAMPLES;
        } else if self.slots.len() < self.max_slots {
            self.drain(&mut *emit);
            let slots = self.slots.len() * 2;
            self.slots = Slot::free(slots);
            self.mask = slots - 1;
        }
        self.hits = 0;
    }

    /// Hands all cached sums to `emit` and empties the cache.
    pub(crate) fn drain(&mut self, mut emit: impl FnMut(u64, &[u8], PackedDate, u64)) {
        for slot in self.slots.iter_mut().filter(|slot| slot.len != 0) {
            slot.drain(&mut emit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::hash::hash_bytes;
    use crate::date::pack_date;
    use std::collections::BTreeMap;

    type Sums = BTreeMap<(Vec<u8>, PackedDate), u64>;

    fn add(hot: &mut HotSongs, table: &mut Sums, song: &[u8], date: PackedDate, plays: u64) {
        let mut emit = |_: u64, name: &[u8], date: PackedDate, sum: u64| {
            *table.entry((name.to_vec(), date)).or_default() += sum;
        };
        if !hot.add(hash_bytes(song), song, date, plays, &mut emit) {
            *table.entry((song.to_vec(), date)).or_default() += plays;
        }
    }

    #[test]
    fn every_row_ends_in_the_table_once_drained() {
        // Few slots, songs colliding, long names, dates out of the window, big sums.
        let mut hot = HotSongs::new(4);
        let (mut table, mut expected) = (Sums::new(), Sums::new());
        let long = "a name longer than twenty-four bytes";
        for i in 0..5000u64 {
            let song = match i % 7 {
                0 => long.to_string(),
                1..=3 => "frequent".to_string(),
                _ => format!("song {}", i % 13),
            };
            let date = (1000 + (i * 7) % 90) as PackedDate;
            let plays = if i % 101 == 0 {
                u64::from(u32::MAX) - 5
            } else {
                i
            };
            add(&mut hot, &mut table, song.as_bytes(), date, plays);
            *expected.entry((song.into_bytes(), date)).or_default() += plays;
        }
        hot.drain(|_, name, date, sum| {
            *table.entry((name.to_vec(), date)).or_default() += sum;
        });
        assert_eq!(table, expected);
        assert!(hot.slots.iter().all(|slot| slot.len == 0 && slot.used == 0));
    }

    #[test]
    fn frequent_songs_are_summed_in_the_cache() {
        let mut hot = HotSongs::new(64);
        let mut table = Sums::new();
        for i in 0..1000u64 {
            let date = pack_date(2020, 1, 1 + (i % 31) as u32);
            add(&mut hot, &mut table, b"frequent", date, 1);
        }
        assert!(table.is_empty(), "{} rows reached the table", table.len());
        let mut total = 0;
        hot.drain(|_, name, _, sum| {
            assert_eq!(name, b"frequent");
            total += sum;
        });
        assert_eq!(total, 1000);
    }

    #[test]
    fn a_cache_that_hits_grows_to_its_size_and_keeps_every_sum() {
        let mut hot = HotSongs::new(START_SLOTS * 4);
        assert_eq!(hot.slots.len(), START_SLOTS);
        let (mut table, mut expected) = (Sums::new(), Sums::new());
        for i in 0..u64::from(SAMPLE_ROWS) * 4 {
            let song = format!("song {}", i % 3000);
            let date = pack_date(2020, 3, 1 + (i % 28) as u32);
            add(&mut hot, &mut table, song.as_bytes(), date, i);
            *expected.entry((song.into_bytes(), date)).or_default() += i;
        }
        assert_eq!(hot.slots.len(), START_SLOTS * 4);
        hot.drain(|_, name, date, sum| {
            *table.entry((name.to_vec(), date)).or_default() += sum;
        });
        assert_eq!(table, expected);
    }

    #[test]
    fn a_cache_that_rarely_hits_pauses() {
        let mut hot = HotSongs::new(16);
        let mut table = Sums::new();
        for i in 0..u64::from(SAMPLE_ROWS) * 2 {
            add(&mut hot, &mut table, format!("song {i}").as_bytes(), 1, 1);
        }
        assert!(hot.paused > 0);
        let total = |table: &Sums| table.values().sum::<u64>();
        let before = total(&table);
        add(&mut hot, &mut table, b"song 0", 1, 1);
        assert_eq!(
            total(&table),
            before + 1,
            "a paused cache sends rows to the table"
        );
    }
}
