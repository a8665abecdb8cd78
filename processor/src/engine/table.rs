//! A worker thread's aggregation table: songs interned once (name bytes copied on first
//! sight), each with its sums by date.

use std::hash::BuildHasher;
use std::mem::size_of;

use hashbrown::HashTable;

use super::days::{Days, Overflow};
use super::validate::PackedDate;

/// Why a row could not be added.
#[derive(Debug)]
pub(crate) enum AddError {
    /// The song name is not valid UTF-8.
    InvalidUtf8,
    /// The sum for (song, date) overflowed u64.
    Overflow,
}

struct Song {
    name_start: usize,
    name_len: u32,
    days: Days,
}

/// Songs and their sums by date, with an estimate of the heap bytes held.
pub(crate) struct SongTable {
    /// Entries are `(hash tag << 32) | song index`, so most probes decide without touching names.
    index: HashTable<u64>,
    songs: Vec<Song>,
    names: Vec<u8>,
    days_bytes: usize,
    hasher: foldhash::fast::FixedState,
}

impl Default for SongTable {
    fn default() -> Self {
        SongTable {
            index: HashTable::new(),
            songs: Vec::new(),
            names: Vec::new(),
            days_bytes: 0,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
        }
    }
}

impl SongTable {
    /// Adds `plays` to (`song`, `date`).
    #[inline]
    pub(crate) fn add(
        &mut self,
        song: &[u8],
        date: PackedDate,
        plays: u64,
    ) -> Result<(), AddError> {
        let hash = self.hasher.hash_one(song);
        let tag = hash >> 32;
        let (songs, names) = (&self.songs, &self.names);
        let found = self.index.find(hash, |&entry| {
            entry >> 32 == tag && {
                let s = &songs[(entry & 0xffff_ffff) as usize];
                &names[s.name_start..s.name_start + s.name_len as usize] == song
            }
        });
        let index = match found {
            Some(&entry) => (entry & 0xffff_ffff) as usize,
            None => self.insert(song, hash)?,
        };
        let delta = self.songs[index]
            .days
            .add(date, plays)
            .map_err(|Overflow| AddError::Overflow)?;
        self.days_bytes = self.days_bytes.wrapping_add_signed(delta);
        Ok(())
    }

    #[cold]
    fn insert(&mut self, song: &[u8], hash: u64) -> Result<usize, AddError> {
        if std::str::from_utf8(song).is_err() {
            return Err(AddError::InvalidUtf8);
        }
        let index = self.songs.len();
        let entry = (hash >> 32 << 32) | index as u64;
        let (songs, hasher) = (&self.songs, &self.hasher);
        let names = &self.names;
        self.index.insert_unique(hash, entry, |&e| {
            let s = &songs[(e & 0xffff_ffff) as usize];
            hasher.hash_one(&names[s.name_start..s.name_start + s.name_len as usize])
        });
        let name_start = self.names.len();
        self.names.extend_from_slice(song);
        let days = Days::new();
        self.days_bytes += days.heap_bytes();
        self.songs.push(Song {
            name_start,
            name_len: song.len() as u32,
            days,
        });
        Ok(index)
    }

    /// Estimated heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.index.capacity() * (size_of::<u64>() + 1)
            + self.songs.capacity() * size_of::<Song>()
            + self.names.capacity()
            + self.days_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.songs.is_empty()
    }

    /// Name of song `index`.
    pub(crate) fn name(&self, index: u32) -> &[u8] {
        let s = &self.songs[index as usize];
        &self.names[s.name_start..s.name_start + s.name_len as usize]
    }

    /// Appends song `index`'s (date, sum) pairs sorted by date.
    pub(crate) fn sorted_days_into(&self, index: u32, out: &mut Vec<(PackedDate, u64)>) {
        self.songs[index as usize].days.sorted_into(out);
    }

    /// Song indices sorted by name bytes.
    pub(crate) fn sorted_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.songs.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_and_sums() {
        let mut table = SongTable::default();
        table.add(b"b", 2, 5).expect("valid");
        table.add(b"a", 1, 1).expect("valid");
        table.add(b"b", 2, 5).expect("valid");
        table.add(b"b", 1, 3).expect("valid");
        let order = table.sorted_order();
        assert_eq!(table.name(order[0]), b"a");
        let mut days = Vec::new();
        table.sorted_days_into(order[1], &mut days);
        assert_eq!(days, vec![(1, 3), (2, 10)]);
        assert!(table.heap_bytes() > 0);
        assert!(matches!(
            table.add(b"\xff", 1, 1),
            Err(AddError::InvalidUtf8)
        ));
        table.add(b"c", 1, u64::MAX).expect("fits");
        assert!(matches!(table.add(b"c", 1, 1), Err(AddError::Overflow)));
    }
}
