//! A worker's table split into cache-sized shards by song hash. Rows are first appended to a
//! per-shard buffer (sequential writes); when the buffers fill, each shard's rows are added
//! to that shard's table in one go, so the random accesses of the hash lookups stay within
//! a table small enough for the CPU caches instead of missing to memory on every row.

use crate::aggregate::days::Overflow;
use crate::aggregate::hash::{u32_at, u64_at};
use crate::aggregate::hot::{self, HotSongs};
use crate::aggregate::table::{NO_ENTRY, Pivot, SongRef, SongTable};
use crate::date::{PackedDate, date_string};
use crate::error::Error;

/// log2 of the number of shards.
const SHARD_BITS: u32 = 7;
const SHARDS: usize = 1 << SHARD_BITS;
/// Bytes of a buffered row before the name: hash, plays, date, name length.
const ROW_HEADER: usize = 24;

/// Which shard a hash goes to. Middle bits: a shard's table places songs by the low bits and
/// tells them apart by the high half, which keeps enough of its entropy within a shard.
#[inline]
fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize & (SHARDS - 1)
}

/// Rows ahead of the one being added whose table entries [`ShardedTable::flush_within`] asks
/// the CPU to load (and half as far ahead, their sums).
const AHEAD: usize = 16;

/// A row of a [`RowBuffer`].
struct BufferedRow<'a> {
    hash: u64,
    plays: u64,
    date: PackedDate,
    song: &'a [u8],
}

/// The rows of a [`RowBuffer`], in order.
struct BufferedRows<'a> {
    rows: &'a [u8],
    at: usize,
}

impl<'a> Iterator for BufferedRows<'a> {
    type Item = BufferedRow<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<BufferedRow<'a>> {
        let at = self.at;
        let header = self.rows.get(at..at + ROW_HEADER)?;
        let end = at + ROW_HEADER + u32_at(header, 20) as usize;
        let row = BufferedRow {
            hash: u64_at(header, 0),
            plays: u64_at(header, 8),
            date: u32_at(header, 16),
            song: self.rows.get(at + ROW_HEADER..end)?,
        };
        self.at = end;
        Some(row)
    }
}

pub(crate) struct ShardedTable {
    shards: Vec<SongTable>,
    buffers: Buffers,
    hot: HotSongs,
}

/// The rows waiting to be added to the shard tables, by shard.
struct Buffers {
    shards: Vec<RowBuffer>,
    buffered: usize,
    flush_at: usize,
}

impl Buffers {
    /// Appends a row to its shard's buffer.
    #[inline]
    fn push(&mut self, hash: u64, song: &[u8], date: PackedDate, plays: u64) {
        let mut header = [0u8; ROW_HEADER];
        header[..8].copy_from_slice(&hash.to_le_bytes());
        header[8..16].copy_from_slice(&plays.to_le_bytes());
        header[16..20].copy_from_slice(&date.to_le_bytes());
        header[20..].copy_from_slice(&(song.len() as u32).to_le_bytes());
        self.shards[shard_of(hash)].push(&header, song);
        self.buffered += ROW_HEADER + song.len();
    }
}

/// A shard's buffered rows: `bytes[..len]`. The bytes beyond stay allocated and initialised,
/// so that a row is written with a few fixed-size copies rather than a `memcpy` call.
#[derive(Default, Clone)]
struct RowBuffer {
    bytes: Vec<u8>,
    len: usize,
}

impl RowBuffer {
    fn with_capacity(bytes: usize) -> Self {
        RowBuffer {
            bytes: vec![0; bytes],
            len: 0,
        }
    }

    #[inline]
    fn push(&mut self, header: &[u8; ROW_HEADER], song: &[u8]) {
        let end = self.len + ROW_HEADER + song.len();
        if end > self.bytes.len() {
            self.grow(end);
        }
        let row = &mut self.bytes[self.len..end];
        let (head, name) = row.split_at_mut(ROW_HEADER);
        head.copy_from_slice(header);
        copy_short(name, song);
        self.len = end;
    }

    #[cold]
    fn grow(&mut self, needed: usize) {
        self.bytes.resize(needed.max(self.bytes.len() * 2), 0);
    }

    fn rows(&self) -> BufferedRows<'_> {
        BufferedRows {
            rows: &self.bytes[..self.len],
            at: 0,
        }
    }
}

/// Copies `src` into `dst` (of the same length) with overlapping word copies for the short
/// names most inputs hold.
#[inline]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    if (8..=16).contains(&len) {
        dst[..8].copy_from_slice(&src[..8]);
        dst[len - 8..].copy_from_slice(&src[len - 8..]);
    } else if (17..=32).contains(&len) {
        dst[..16].copy_from_slice(&src[..16]);
        dst[len - 16..].copy_from_slice(&src[len - 16..]);
    } else {
        dst.copy_from_slice(src);
    }
}

/// Adds the rows of `buffer` to `table`.
#[inline]
fn add_rows(table: &mut SongTable, buffer: &RowBuffer) -> Result<(), Error> {
    // Rows `AHEAD` ahead have their entries loaded, rows half as far their sums. The entry
    // each row's look-up found is kept (`hints[i % AHEAD]` for row `i`), so that neither the
    // sums' prefetch nor the add probes the index again (two probes fewer per row).
    table.prefetch_index();
    let mut hints = [NO_ENTRY; AHEAD];
    let mut ahead = buffer.rows();
    for (hint, row) in hints.iter_mut().zip(ahead.by_ref()) {
        *hint = table.prefetch_entry(row.hash);
    }
    for (i, row) in buffer.rows().enumerate() {
        let hint = hints[i % AHEAD];
        if let Some(next) = ahead.next() {
            hints[i % AHEAD] = table.prefetch_entry(next.hash);
        }
        table.prefetch_days_of(hints[(i + AHEAD / 2) % AHEAD]);
        table
            .add_hinted(row.song, row.hash, row.date, row.plays, hint)
            .map_err(|Overflow| Error::SumOverflow {
                song: String::from_utf8_lossy(row.song).into_owned(),
                date: date_string(row.date),
            })?;
    }
    Ok(())
}

impl ShardedTable {
    /// A table that buffers up to about `flush_at` bytes of rows before adding them.
    pub(crate) fn new(flush_at: usize) -> Self {
        // A shard's buffer gets its share with some room for unevenness, so that buffers
        // rarely grow (doubling would hold up to twice what they need).
        let per_shard = flush_at / SHARDS + flush_at / SHARDS / 4 + 2 * ROW_HEADER;
        // The cache of frequent songs takes at most a quarter of what the buffers hold.
        let hot_slots = (flush_at / 4 / HotSongs::bytes_for(1)).clamp(16, hot::MAX_SLOTS);
        ShardedTable {
            shards: (0..SHARDS).map(|_| SongTable::default()).collect(),
            buffers: Buffers {
                shards: (0..SHARDS)
                    .map(|_| RowBuffer::with_capacity(per_shard))
                    .collect(),
                buffered: 0,
                flush_at,
            },
            hot: HotSongs::new(hot_slots),
        }
    }

    /// Sums `plays` for (`song`, `date`) in the cache of frequent songs, or buffers the row;
    /// [`ShardedTable::flush_within`] adds the buffered rows, [`ShardedTable::drain_hot`]
    /// the cached sums.
    #[cfg(test)]
    pub(crate) fn add(&mut self, song: &[u8], date: PackedDate, plays: u64) {
        self.add_hashed(crate::aggregate::hash::hash_bytes(song), song, date, plays);
    }

    /// [`ShardedTable::add`] with the song's hash (`hash_bytes(song)`).
    #[inline(always)]
    pub(crate) fn add_hashed(&mut self, hash: u64, song: &[u8], date: PackedDate, plays: u64) {
        let buffers = &mut self.buffers;
        let mut evicted = |hash, song: &[u8], date, sum| buffers.push(hash, song, date, sum);
        if !self.hot.add(hash, song, date, plays, &mut evicted) {
            self.buffers.push(hash, song, date, plays);
        }
    }

    /// Starts loading what adding a row of the song with this hash, on `date`, will touch.
    #[inline(always)]
    pub(crate) fn prefetch(&self, hash: u64, date: PackedDate) {
        self.hot.prefetch(hash, date);
    }

    /// Moves the sums of the cache of frequent songs to the buffers (before the last flush).
    pub(crate) fn drain_hot(&mut self) {
        let buffers = &mut self.buffers;
        self.hot
            .drain(|hash, song, date, sum| buffers.push(hash, song, date, sum));
    }

    /// True when the buffers hold enough rows to be added to the tables.
    pub(crate) fn wants_flush(&self) -> bool {
        self.buffers.buffered >= self.buffers.flush_at
    }

    /// Adds all cached and buffered rows to the shard tables.
    #[cfg(test)]
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        self.drain_hot();
        while !self.flush_within(|_, _| false)? {}
        Ok(())
    }

    /// Adds buffered rows to the shard tables, shard after shard, until all are added
    /// (returns true) or `over`, called with [`ShardedTable::table_bytes`] and
    /// [`ShardedTable::buffer_bytes`] after each shard, says to stop (returns false: spill,
    /// then call again).
    pub(crate) fn flush_within(
        &mut self,
        mut over: impl FnMut(usize, usize) -> bool,
    ) -> Result<bool, Error> {
        for shard in 0..SHARDS {
            let (table, buffer) = (&mut self.shards[shard], &mut self.buffers.shards[shard]);
            if buffer.len == 0 {
                continue;
            }
            add_rows(table, buffer)?;
            self.buffers.buffered -= buffer.len;
            buffer.len = 0;
            if over(self.table_bytes(), self.buffer_bytes()) {
                return Ok(self.buffers.buffered == 0);
            }
        }
        Ok(true)
    }

    /// Takes the shard tables out (for spilling), leaving empty ones, the buffers and the
    /// cache of frequent songs (whose sums go to later tables).
    pub(crate) fn take_tables(&mut self) -> ShardedTable {
        let empty = (0..SHARDS).map(|_| SongTable::default()).collect();
        ShardedTable {
            shards: std::mem::replace(&mut self.shards, empty),
            buffers: Buffers {
                shards: vec![RowBuffer::default(); SHARDS],
                buffered: 0,
                flush_at: self.buffers.flush_at,
            },
            hot: HotSongs::new(1),
        }
    }

    /// Heap bytes of the row buffers and of the cache of frequent songs.
    pub(crate) fn buffer_bytes(&self) -> usize {
        let rows = self.buffers.shards.iter().map(|b| b.bytes.len());
        rows.sum::<usize>() + self.hot.heap_bytes()
    }

    /// Estimated heap bytes of the tables alone (what a spill frees).
    pub(crate) fn table_bytes(&self) -> usize {
        self.shards.iter().map(SongTable::heap_bytes).sum()
    }

    /// Songs in the tables.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(SongTable::len).sum()
    }

    /// Appends the names of `count` songs (or all) to `out`: the first ones of the first
    /// shards, a random sample since songs go to shards and buckets by hash.
    pub(crate) fn sample_names<'a>(&'a self, count: usize, out: &mut Vec<&'a [u8]>) {
        out.extend(self.shards.iter().flat_map(SongTable::names).take(count));
    }

    /// Appends the songs whose names are in `lo..hi` (`None`: unbounded) to `out`.
    pub(crate) fn songs_in_into<'a>(
        &'a self,
        lo: Option<&Pivot>,
        hi: Option<&Pivot>,
        out: &mut Vec<SongRef<'a>>,
    ) {
        for shard in &self.shards {
            out.extend(shard.songs().filter(|song| {
                lo.is_none_or(|lo| lo.at_or_before(song))
                    && hi.is_none_or(|hi| !hi.at_or_before(song))
            }));
        }
    }

    /// The songs in the tables (not the buffers), sorted by name.
    pub(crate) fn sorted_songs(&self) -> Vec<SongRef<'_>> {
        let mut songs = Vec::with_capacity(self.len());
        for shard in &self.shards {
            shard.songs_into(&mut songs);
        }
        songs.sort_unstable_by(SongRef::cmp_name);
        songs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_rows_are_summed_after_flush() {
        let mut table = ShardedTable::new(100);
        for i in 0..1000u64 {
            let song = format!("song {}", i % 37);
            table.add(song.as_bytes(), (i % 5) as u32, i);
        }
        table.flush().expect("fits");
        let songs = table.sorted_songs();
        assert_eq!(songs.len(), 37);
        assert!(songs.windows(2).all(|w| w[0].name < w[1].name));
        let mut total = 0;
        let mut days = Vec::new();
        for song in &songs {
            days.clear();
            song.sorted_days_into(&mut days);
            total += days.iter().map(|d| d.1).sum::<u64>();
        }
        assert_eq!(total, (0..1000).sum::<u64>());
    }

    #[test]
    fn overflow_names_the_group() {
        let mut table = ShardedTable::new(1 << 20);
        table.add(b"x", 10, u64::MAX);
        table.add(b"x", 10, 1);
        let err = table.flush().expect_err("overflows");
        assert!(
            matches!(&err, Error::SumOverflow { song, .. } if song == "x"),
            "{err:?}"
        );
    }
}
