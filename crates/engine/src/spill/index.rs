//! Sparse indexes of spilled files, so that a merge can start reading a run in the middle:
//! while a file is written, every [`MIN_STRIDE`] bytes or so the name and byte offset of the
//! song starting there are kept, with an estimate of the CSV bytes the songs before it make.
//! The entries of a file stay few whatever its size: past [`MAX_ENTRIES`] every other one is
//! dropped and the stride doubles, so the memory they take is bounded by the number of open
//! files, not by the input.

use crate::aggregate::table::{Pivot, name_key};

/// Bytes between two entries of a file while it is small (tiny in unit tests, so that their
/// few songs make several entries).
pub(crate) const MIN_STRIDE: u64 = if cfg!(test) { 64 } else { 4 << 10 };
/// Most entries kept per file (between half and all of it once the stride has grown).
const MAX_ENTRIES: usize = if cfg!(test) { 16 } else { 1024 };
/// Songs with longer names are not indexed (the next song is), so that an entry is never
/// large.
pub(crate) const MAX_INDEXED_NAME: usize = 128;

/// About the CSV bytes a song with `days` dates makes: per row the name, two commas, the
/// date, a line end and a few digits.
pub(crate) fn output_estimate(name: &[u8], days: usize) -> u64 {
    days as u64 * (name.len() as u64 + 20)
}

/// A song of a file where reading may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// End of its name in [`SparseIndex::names`] (the name starts where the previous ends).
    name_end: usize,
    /// Byte offset of the song's record.
    offset: u64,
    /// [`output_estimate`] of the songs before it in the file.
    before: u64,
}

/// The sparse index of one spilled file.
#[derive(Debug, Default)]
pub(crate) struct SparseIndex {
    names: Vec<u8>,
    entries: Vec<Entry>,
    /// Bytes between entries.
    stride: u64,
    /// Offset from which the next song is indexed.
    next_at: u64,
    /// Bytes written so far.
    written: u64,
    /// [`output_estimate`] of the songs written so far.
    estimate: u64,
}

impl SparseIndex {
    pub(crate) fn new() -> Self {
        SparseIndex {
            stride: MIN_STRIDE,
            ..SparseIndex::default()
        }
    }

    /// Records a song about to be written as `bytes` bytes at the end of the file.
    pub(crate) fn record(&mut self, name: &[u8], days: usize, bytes: u64) {
        if self.written >= self.next_at && name.len() <= MAX_INDEXED_NAME {
            if self.entries.len() == MAX_ENTRIES {
                self.thin_out();
            }
            self.names.extend_from_slice(name);
            self.entries.push(Entry {
                name_end: self.names.len(),
                offset: self.written,
                before: self.estimate,
            });
            self.next_at = self.written + self.stride;
        }
        self.written += bytes;
        self.estimate += output_estimate(name, days);
    }

    /// Bytes written to the file so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Keeps every other entry and doubles the stride.
    fn thin_out(&mut self) {
        let mut names = Vec::with_capacity(self.names.len() / 2 + MAX_INDEXED_NAME);
        let mut kept = Vec::with_capacity(MAX_ENTRIES);
        for (i, entry) in self.entries.iter().enumerate().step_by(2) {
            names.extend_from_slice(self.name(i));
            kept.push(Entry {
                name_end: names.len(),
                ..*entry
            });
        }
        self.names = names;
        self.entries = kept;
        self.stride *= 2;
    }

    fn name(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |p| self.entries[p].name_end);
        &self.names[start..self.entries[i].name_end]
    }

    /// Offset of the last indexed song at or before `pivot`: every song of the file from
    /// `pivot` on starts there or later. `None` when no indexed song is at or before it.
    pub(crate) fn start_for(&self, pivot: &Pivot) -> Option<u64> {
        // Binary search for the first entry past the pivot.
        let (mut lo, mut hi) = (0, self.entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let name = self.name(mid);
            if pivot.cmp_name(name_key(name), name).is_le() {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|i| self.entries[i].offset)
    }

    /// The indexed names with the [`output_estimate`] of the songs from each to the next
    /// (to the end of the file for the last).
    pub(crate) fn weighted_names(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        (0..self.entries.len()).map(|i| {
            let end = self.entries.get(i + 1).map_or(self.estimate, |e| e.before);
            (self.name(i), end - self.entries[i].before)
        })
    }

    /// [`output_estimate`] of all the songs of the file.
    pub(crate) fn estimate(&self) -> u64 {
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index a writer makes of songs `names`, each `bytes` long with one date.
    fn index_of(names: &[String], bytes: u64) -> SparseIndex {
        let mut index = SparseIndex::new();
        for name in names {
            index.record(name.as_bytes(), 1, bytes);
        }
        index
    }

    fn start(index: &SparseIndex, pivot: &str) -> Option<u64> {
        index.start_for(&Pivot::new(pivot.as_bytes()))
    }

    #[test]
    fn entries_follow_the_stride_and_stay_few() {
        let names: Vec<String> = (0..2000).map(|i| format!("song {i:05}")).collect();
        let bytes = 10;
        let index = index_of(&names, bytes);
        let entries: Vec<(&[u8], u64)> = index.weighted_names().collect();
        // 20000 bytes at a stride of 64 would make over 300 entries: thinned out.
        assert!(
            entries.len() <= MAX_ENTRIES && entries.len() > MAX_ENTRIES / 2,
            "{} entries",
            entries.len()
        );
        assert_eq!(entries[0].0, names[0].as_bytes());
        assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        let each = output_estimate(names[0].as_bytes(), 1);
        assert_eq!(index.estimate(), each * names.len() as u64);
        assert_eq!(entries.iter().map(|e| e.1).sum::<u64>(), index.estimate());
        // Each entry is where its song starts, and weighs the songs up to the next one.
        for (i, (name, weight)) in entries.iter().enumerate() {
            let song = names
                .iter()
                .position(|n| n.as_bytes() == *name)
                .expect("a song");
            let name = std::str::from_utf8(name).expect("utf8");
            assert_eq!(start(&index, name), Some(song as u64 * bytes));
            let next = entries.get(i + 1).map_or(names.len(), |(n, _)| {
                names
                    .iter()
                    .position(|s| s.as_bytes() == *n)
                    .expect("a song")
            });
            assert_eq!(*weight, (next - song) as u64 * each);
        }
    }

    #[test]
    fn reading_for_a_pivot_starts_at_the_last_entry_at_or_before_it() {
        let names: Vec<String> = ["b", "d", "f", "h"].map(String::from).to_vec();
        // One song per stride: each is indexed.
        let index = index_of(&names, MIN_STRIDE);
        assert_eq!(start(&index, "a"), None, "below every song");
        assert_eq!(start(&index, "b"), Some(0), "a pivot equal to a song");
        assert_eq!(start(&index, "c"), Some(0));
        assert_eq!(start(&index, "d"), Some(MIN_STRIDE));
        assert_eq!(start(&index, "g"), Some(2 * MIN_STRIDE));
        assert_eq!(
            start(&index, "zzz"),
            Some(3 * MIN_STRIDE),
            "past every song"
        );
        assert_eq!(start(&SparseIndex::new(), "b"), None, "an empty file");
    }

    #[test]
    fn long_names_are_not_indexed() {
        let long = "x".repeat(MAX_INDEXED_NAME + 1);
        let names = vec![long, "y".to_string()];
        let index = index_of(&names, 1);
        let entries: Vec<(&[u8], u64)> = index.weighted_names().collect();
        assert_eq!(entries, [(&b"y"[..], output_estimate(b"y", 1))]);
        assert_eq!(start(&index, "y"), Some(1));
        assert_eq!(start(&index, "xz"), None);
    }

    #[test]
    fn pivots_order_names_by_their_bytes() {
        let pivot = Pivot::new(b"abc");
        let cmp = |name: &str| pivot.cmp_name(name_key(name.as_bytes()), name.as_bytes());
        assert!(cmp("abb").is_lt());
        assert!(cmp("ab").is_lt());
        assert!(cmp("abc").is_eq());
        assert!(cmp("abc\0").is_gt());
        assert!(cmp("abd").is_gt());
        let long = Pivot::new(&[b'a'; 40]);
        let cmp = |name: &[u8]| long.cmp_name(name_key(name), name);
        assert!(cmp(&[b'a'; 39]).is_lt());
        assert!(cmp(&[b'a'; 40]).is_eq());
        assert!(cmp(&[b'a'; 41]).is_gt());
    }
}
