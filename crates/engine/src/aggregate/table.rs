//! A worker thread's aggregation table: songs interned once (short names stored inline in
//! the hash table's slots, long ones in an arena), each with its sums by date.

use std::mem::size_of;

use crate::aggregate::days::{Days, Overflow};
use crate::aggregate::hash::{u32_at, u64_at};
use crate::date::PackedDate;

/// A song of a table with its name resolved.
#[derive(Clone, Copy)]
pub(crate) struct SongRef<'a> {
    /// See [`name_key`].
    key: NameKey,
    pub name: &'a [u8],
    song: &'a Song,
}

impl<'a> SongRef<'a> {
    fn new(name: &'a [u8], song: &'a Song) -> Self {
        SongRef {
            key: name_key(name),
            name,
            song,
        }
    }

    /// See [`name_key`].
    pub(crate) fn key(&self) -> NameKey {
        self.key
    }

    /// Orders by name bytes.
    #[inline]
    pub(crate) fn cmp_name(&self, other: &Self) -> std::cmp::Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| cmp_same_key(self.name, other.name))
    }

    /// Appends the song's (date, sum) pairs sorted by date.
    pub(crate) fn sorted_days_into(&self, out: &mut Vec<(PackedDate, u64)>) {
        self.song.days.sorted_into(out);
    }

    /// Asks the CPU to start loading the song's entry (name and sums): walks in name order
    /// jump around tables far larger than the caches, and waiting for each entry in turn
    /// would leave the CPU idle most of the time.
    #[inline]
    pub(crate) fn prefetch(&self) {
        let entry = (self.song as *const Song).cast::<u8>();
        prefetch(entry);
        prefetch(entry.wrapping_add(size_of::<Song>() - 1));
    }

    /// Asks the CPU to start loading the song's sums kept apart from its entry (after
    /// [`SongRef::prefetch`], once the entry is loaded).
    #[inline]
    pub(crate) fn prefetch_days(&self) {
        if let Some(days) = self.song.days.heap_ptr() {
            prefetch(days);
        }
    }
}

/// Songs ahead of the current one whose entries [`prefetch_ahead`] asks for (enough to cover
/// a miss to memory, few enough to stay in the first-level cache).
const PREFETCH_AHEAD: usize = 16;

/// Prefetches for a walk over `songs` at `at`: the entry of the song [`PREFETCH_AHEAD`]
/// ahead, and the sums of the one half as far (whose entry should have arrived).
#[inline]
pub(crate) fn prefetch_ahead(songs: &[SongRef<'_>], at: usize) {
    if let Some(song) = songs.get(at + PREFETCH_AHEAD) {
        song.prefetch();
    }
    if let Some(song) = songs.get(at + PREFETCH_AHEAD / 2) {
        song.prefetch_days();
    }
}

/// A hint to load the cache line holding `ptr`; never faults, whatever the address.
#[inline(always)]
pub(crate) fn prefetch(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch instruction only hints the cache; it reads nothing the program
    // sees and does not fault on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// A song name where a range of names starts (and the previous one ends), with its
/// [`NameKey`] for quick comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pivot {
    key: NameKey,
    name: Box<[u8]>,
}

impl Pivot {
    pub(crate) fn new(name: &[u8]) -> Self {
        Pivot {
            key: name_key(name),
            name: name.into(),
        }
    }

    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    /// How the name `name` (with its [`name_key`] `key`) sorts against the pivot.
    #[inline]
    pub(crate) fn cmp_name(&self, key: NameKey, name: &[u8]) -> std::cmp::Ordering {
        key.cmp(&self.key)
            .then_with(|| cmp_same_key(name, &self.name))
    }

    /// Whether `song`'s name sorts at or after the pivot.
    #[inline]
    pub(crate) fn at_or_before(&self, song: &SongRef<'_>) -> bool {
        self.cmp_name(song.key, song.name).is_ge()
    }
}

/// A name's first 24 bytes as big-endian words, zero padded: names with different keys
/// compare as their keys do, so most comparisons need not touch the names.
pub(crate) type NameKey = (u128, u64);

/// Orders two names that have the same [`NameKey`]. Names that fit the key are then equal up
/// to the shorter one's length, with only zero bytes after it: the lengths decide, without
/// comparing bytes (a song met in several tables or runs would otherwise cost a `memcmp`
/// call at every comparison).
#[inline]
pub(crate) fn cmp_same_key(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    if a.len() <= KEY_BYTES && b.len() <= KEY_BYTES {
        a.len().cmp(&b.len())
    } else {
        a.cmp(b)
    }
}

/// Bytes of a name in its [`NameKey`].
const KEY_BYTES: usize = 24;

/// The [`NameKey`] of `name`.
#[inline]
pub(crate) fn name_key(name: &[u8]) -> NameKey {
    let mut prefix = [0u8; KEY_BYTES];
    let len = name.len().min(KEY_BYTES);
    prefix[..len].copy_from_slice(&name[..len]);
    let (high, low) = prefix.split_at(16);
    let high: [u8; 16] = high.try_into().unwrap_or_default();
    let low: [u8; 8] = low.try_into().unwrap_or_default();
    (u128::from_be_bytes(high), u64::from_be_bytes(low))
}

/// Names up to this length live in the slot itself.
pub(crate) const INLINE: usize = 24;

/// Whether the first `name.len()` (at most [`INLINE`]) bytes of `stored` are `name`, compared
/// by words rather than with a `memcmp` call for the short names that most inputs hold.
#[inline(always)]
pub(crate) fn inline_name_is(stored: &[u8; INLINE], name: &[u8]) -> bool {
    let len = name.len();
    if len >= 8 {
        // Overlapping windows cover the name: [0, 8), [8, 16) and [len - 8, len).
        u64_at(stored, 0) == u64_at(name, 0)
            && u64_at(stored, len - 8) == u64_at(name, len - 8)
            && (len <= 16 || u64_at(stored, 8) == u64_at(name, 8))
    } else if len >= 4 {
        u32_at(stored, 0) == u32_at(name, 0) && u32_at(stored, len - 4) == u32_at(name, len - 4)
    } else {
        stored[..len] == *name
    }
}

pub(crate) struct Song {
    hash: u64,
    len: u32,
    /// The name when `len <= INLINE`, else its start in the arena (first 8 bytes).
    name: [u8; INLINE],
    days: Days,
}

impl Song {
    /// Whether the song's name is `name`.
    #[inline]
    fn is_named(&self, arena: &[u8], name: &[u8]) -> bool {
        let len = name.len();
        if self.len as usize != len {
            return false;
        }
        if len > INLINE {
            return self.name(arena) == name;
        }
        inline_name_is(&self.name, name)
    }

    #[inline]
    fn name<'a>(&'a self, arena: &'a [u8]) -> &'a [u8] {
        let len = self.len as usize;
        if len <= INLINE {
            &self.name[..len]
        } else {
            let mut start = [0u8; 8];
            start.copy_from_slice(&self.name[..8]);
            let start = u64::from_le_bytes(start) as usize;
            &arena[start..start + len]
        }
    }
}

/// Songs and their sums by date, with an estimate of the heap bytes held.
///
/// The songs are kept in insertion order in `entries`, found through `index`, an open-addressed
/// array (linear probing, at most half full) of `tag << 32 | (entry + 1)` words, 0 for a free
/// slot, the tag being the high half of the song's hash. A shard's index is small enough for
/// the CPU caches, so [`SongTable::prefetch_entry`] can find a song's entry without waiting for
/// memory and start loading it, and [`SongTable::prefetch_days_of`] its sums, while earlier rows
/// are added: a hash table that only finds an entry by comparing it could not.
#[derive(Default)]
pub(crate) struct SongTable {
    index: Vec<u64>,
    entries: Vec<Song>,
    /// Names longer than [`INLINE`].
    arena: Vec<u8>,
    days_bytes: usize,
}

/// The index word of `entry`, whose song has `hash`: the tag (the hash's high half) and
/// `entry + 1` (0 marks a free slot).
#[inline]
fn index_word(hash: u64, entry: usize) -> u64 {
    ((hash >> 32) << 32) | (entry as u64 + 1)
}

/// No entry, as a hint of [`SongTable::add_hinted`].
pub(crate) const NO_ENTRY: u32 = u32::MAX;

/// Bytes of a CPU cache line.
const CACHE_LINE: usize = 64;

/// Fewest index slots, once a song is added.
const MIN_INDEX: usize = 16;

impl SongTable {
    /// Adds `plays` to (`song`, `date`); `hash` is `hash_bytes(song)`.
    #[cfg(test)]
    pub(crate) fn add(
        &mut self,
        song: &[u8],
        hash: u64,
        date: PackedDate,
        plays: u64,
    ) -> Result<(), Overflow> {
        self.add_hinted(song, hash, date, plays, NO_ENTRY)
    }

    /// [`SongTable::add`] given `hint`, the entry [`SongTable::prefetch_entry`] found for
    /// `hash` a few rows before (or [`NO_ENTRY`]): when it is the song's, the index is not
    /// probed again. Entries never move, but songs may have been added since, so a hint that
    /// is not the song's sends the row through the index.
    #[inline]
    pub(crate) fn add_hinted(
        &mut self,
        song: &[u8],
        hash: u64,
        date: PackedDate,
        plays: u64,
        hint: u32,
    ) -> Result<(), Overflow> {
        let hinted = self
            .entries
            .get(hint as usize)
            .filter(|entry| entry.hash == hash && entry.is_named(&self.arena, song));
        let (found, slot) = match hinted {
            Some(_) => (Some(hint as usize), 0),
            None => self.find(song, hash),
        };
        let Some(entry) = found else {
            self.insert(slot, song, hash, date, plays);
            return Ok(());
        };
        let delta = self.entries[entry].days.add(date, plays)?;
        self.days_bytes = self.days_bytes.wrapping_add_signed(delta);
        Ok(())
    }

    /// The entry of `song`, or the free index slot where it would go.
    #[inline]
    fn find(&self, song: &[u8], hash: u64) -> (Option<usize>, usize) {
        self.probe(hash, |entry| {
            entry.hash == hash && entry.is_named(&self.arena, song)
        })
    }

    /// Probes the index from `hash`'s slot: the first entry with `hash`'s tag that `accept`
    /// takes, or none, with the slot where the probe stopped.
    #[inline(always)]
    fn probe(&self, hash: u64, mut accept: impl FnMut(&Song) -> bool) -> (Option<usize>, usize) {
        let Some(mask) = self.index.len().checked_sub(1) else {
            return (None, 0);
        };
        let tag = hash >> 32;
        let mut at = hash as usize & mask;
        loop {
            let word = self.index[at];
            if word == 0 {
                return (None, at);
            }
            let entry = (word as u32 - 1) as usize;
            if word >> 32 == tag && self.entries.get(entry).is_some_and(&mut accept) {
                return (Some(entry), at);
            }
            at = (at + 1) & mask;
        }
    }

    /// Starts loading the whole index, before a batch of rows is added (for the first look-ups
    /// of [`SongTable::prefetch_entry`] not to wait for it; a shard's index is small).
    pub(crate) fn prefetch_index(&self) {
        for line in self.index.chunks(CACHE_LINE / size_of::<u64>()) {
            prefetch(line.as_ptr().cast());
        }
    }

    /// Starts loading the entry that the song with this hash most likely has, and returns
    /// it ([`NO_ENTRY`]: none), a hint for [`SongTable::prefetch_days_of`] and
    /// [`SongTable::add_hinted`].
    #[inline(always)]
    pub(crate) fn prefetch_entry(&self, hash: u64) -> u32 {
        let (entry, _) = self.probe(hash, |_| true);
        let Some(entry) = entry else {
            return NO_ENTRY;
        };
        if let Some(song) = self.entries.get(entry) {
            let start = (song as *const Song).cast::<u8>();
            prefetch(start);
            prefetch(start.wrapping_add(size_of::<Song>() - 1));
        }
        entry as u32
    }

    /// Starts loading the sums of `entry` kept apart from it (once the entry has arrived).
    #[inline(always)]
    pub(crate) fn prefetch_days_of(&self, entry: u32) {
        let days = self.entries.get(entry as usize);
        if let Some(days) = days.and_then(|song| song.days.heap_ptr()) {
            prefetch(days);
        }
    }

    #[cold]
    fn insert(&mut self, mut slot: usize, song: &[u8], hash: u64, date: PackedDate, plays: u64) {
        if (self.entries.len() + 1) * 2 > self.index.len() {
            self.grow_index();
            slot = self.find(song, hash).1;
        }
        let mut name = [0u8; INLINE];
        if song.len() <= INLINE {
            name[..song.len()].copy_from_slice(song);
        } else {
            name[..8].copy_from_slice(&(self.arena.len() as u64).to_le_bytes());
            self.arena.extend_from_slice(song);
        }
        self.entries.push(Song {
            hash,
            len: song.len() as u32,
            name,
            days: Days::first(date, plays),
        });
        self.index[slot] = index_word(hash, self.entries.len() - 1);
    }

    /// Doubles the index and places every entry again.
    fn grow_index(&mut self) {
        let slots = (self.index.len() * 2).max(MIN_INDEX);
        let mask = slots - 1;
        let mut index = vec![0u64; slots];
        for (entry, song) in self.entries.iter().enumerate() {
            let mut at = song.hash as usize & mask;
            while index[at] != 0 {
                at = (at + 1) & mask;
            }
            index[at] = index_word(song.hash, entry);
        }
        self.index = index;
    }

    /// Estimated heap bytes held. The growth of the entries and the index is not reserved
    /// ahead: tables are filled shard after shard and checked against the budget after each,
    /// so a doubling overshoots by one shard's arrays at most.
    pub(crate) fn heap_bytes(&self) -> usize {
        // Each song also takes a `SongRef` in the sorted order built to spill or merge.
        self.index.capacity() * size_of::<u64>()
            + self.entries.capacity() * size_of::<Song>()
            + self.entries.len() * size_of::<SongRef<'_>>()
            + self.arena.capacity()
            + self.days_bytes
    }

    /// Songs held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends the songs with their names to `out` (unsorted).
    pub(crate) fn songs_into<'a>(&'a self, out: &mut Vec<SongRef<'a>>) {
        out.extend(self.songs());
    }

    /// The songs with their names (unsorted).
    pub(crate) fn songs(&self) -> impl Iterator<Item = SongRef<'_>> {
        self.entries
            .iter()
            .map(|song| SongRef::new(song.name(&self.arena), song))
    }

    /// The song names (unsorted).
    pub(crate) fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|song| song.name(&self.arena))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::hash::hash_bytes;

    fn add(
        table: &mut SongTable,
        song: &[u8],
        date: PackedDate,
        plays: u64,
    ) -> Result<(), Overflow> {
        table.add(song, hash_bytes(song), date, plays)
    }

    #[test]
    fn names_compare_exactly_at_every_length() {
        for len in 1..=30usize {
            let name: Vec<u8> = (0..len as u8).map(|i| b'a' + i).collect();
            let mut table = SongTable::default();
            add(&mut table, &name, 1, 1).expect("fits");
            let song = table.entries.first().expect("a song");
            assert!(song.is_named(&table.arena, &name), "len {len}");
            assert!(!song.is_named(&table.arena, &name[..len - 1]), "len {len}");
            for at in 0..len {
                let mut other = name.clone();
                other[at] = b'Z';
                assert!(!song.is_named(&table.arena, &other), "len {len}, byte {at}");
            }
        }
    }

    #[test]
    fn songs_sharing_a_hash_or_a_tag_stay_apart_as_the_index_grows() {
        let mut table = SongTable::default();
        let mut expected = std::collections::BTreeMap::new();
        for i in 0..5000u64 {
            let name = format!("song {}", i % 1500);
            // Few distinct hashes: many songs share a whole hash, others only its tag
            // (high half) or only its low half.
            let hash = match i % 1500 % 3 {
                0 => 42,
                1 => (7 << 32) | (i % 1500),
                _ => ((i % 1500) << 32) | 7,
            };
            let date = (i % 40) as PackedDate;
            // As a shard adds its rows: the hint the prefetch found may be another song's.
            let hint = table.prefetch_entry(hash);
            table.prefetch_days_of(hint);
            table
                .add_hinted(name.as_bytes(), hash, date, i, hint)
                .expect("fits");
            *expected.entry((name.into_bytes(), date)).or_insert(0) += i;
        }
        assert_eq!(table.len(), 1500);
        let mut actual = std::collections::BTreeMap::new();
        let mut days = Vec::new();
        for song in table.songs() {
            days.clear();
            song.sorted_days_into(&mut days);
            for &(date, sum) in &days {
                actual.insert((song.name.to_vec(), date), sum);
            }
        }
        assert_eq!(actual, expected);
    }

    #[test]
    fn interns_and_sums() {
        let mut table = SongTable::default();
        let long = "a song name longer than the inline slot".as_bytes();
        add(&mut table, b"b", 2, 5).expect("fits");
        add(&mut table, b"a", 1, 1).expect("fits");
        add(&mut table, long, 1, 1).expect("fits");
        add(&mut table, b"b", 2, 5).expect("fits");
        add(&mut table, b"b", 1, 3).expect("fits");
        add(&mut table, long, 1, 2).expect("fits");
        let mut songs = Vec::new();
        table.songs_into(&mut songs);
        songs.sort_by(SongRef::cmp_name);
        let names: Vec<&[u8]> = songs.iter().map(|s| s.name).collect();
        assert_eq!(names, vec![&b"a"[..], long, &b"b"[..]]);
        let mut days = Vec::new();
        songs[2].sorted_days_into(&mut days);
        assert_eq!(days, vec![(1, 3), (2, 10)]);
        days.clear();
        songs[1].sorted_days_into(&mut days);
        assert_eq!(days, vec![(1, 3)]);
        assert!(table.heap_bytes() > 0);
        add(&mut table, b"c", 1, u64::MAX).expect("fits");
    }
}
