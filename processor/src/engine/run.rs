//! Sorted runs: streams of songs in name-byte order, each with its (date, sum) pairs in date
//! order. A run is either a worker's in-memory table read through a sorted index, or a run
//! spilled to an anonymous temporary file (unlinked at creation, so it disappears with the
//! process whatever happens).
//!
//! Spill format, little endian, per song: `u32` name length, name bytes, `u32` date count,
//! then per date `u32` packed date and `u64` sum. Runs group dates under their song, which
//! makes them smaller than one record per (song, date) as a generic external sorter writes
//! when a song has several dates in a run, and slightly larger when it has one.
//!
//! Why not the extsort crate (issue #2): measured with `bench/src/bin/spill_merge.rs` against
//! an extsort 0.5 variant (rows summed in a `HashMap` up to half the budget, each fill pushed
//! to extsort as one sorted segment of (song, date, sum) records, extsort's merge with equal
//! keys summed while writing), one thread each, on 256 MB of generated "wide" data (2M songs x
//! 365 days, uniform: 7.46M groups), medians of 3 interleaved runs on a shared 2-core machine,
//! outputs byte-identical. Budget 96 MB: engine 5.4 s / 71 MB peak RSS / 270 MB spilled in 52
//! runs, extsort-based 12.0 s / 100 MB / 257 MB in 11 segments; spill + merge phases alone
//! 4.0 s against 7.6 s (1.9x). Budget 384 MB: engine 5.2 s / 209 MB / 231 MB in 8 runs,
//! extsort-based 12.7 s / 393 MB / 256 MB in 3; spill + merge 3.8 s against 7.2 s (1.9x).
//! With the engine on both threads (`--threads 2`, budget 96 MB) its runs are half the size: 168
//! of them, merged in two passes (424 MB written), and its lead falls to 1.4x on spill + merge
//! (6.8 s against 12.8 s whole run; phases sampled from the shared progress, so approximate).
//! Extsort's cost is in its spill (sorting boxed records, one encode call per record) and an
//! allocation per record read back; its merge alone is on par with this one. The variant's
//! parsing (csv crate, a key allocation per row) is slower too, but that is not what the
//! comparison is about. (Measured before the shared table budget and spill rounds of issue #2:
//! the engine's runs no longer multiply with threads, e.g. 26 at 96 MB with two threads.)
//! Reproduce (about 2 minutes per budget):
//! `cargo run --release -p bench --bin spill_merge -- compare --size 256M --limit 96M`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::hash::{u32_at, u64_at};
use super::merge::sum_equal_dates;
use super::shards::ShardedTable;
use super::table::{NameKey, SongBound, SongRef, name_key, prefetch_ahead};
use super::validate::PackedDate;
use crate::Error;

/// A song's name and its (date, sum) pairs in date order.
pub(crate) type SongDays<'a> = (&'a [u8], &'a [(PackedDate, u64)]);

/// A position in a sorted run.
pub(crate) trait Run {
    /// The current song and its dates, or `None` at the end.
    fn current(&self) -> Option<SongDays<'_>>;
    /// [`name_key`] of the current song's name (zero at the end).
    fn key(&self) -> NameKey;
    /// Moves to the next song.
    fn advance(&mut self) -> Result<(), Error>;
}

/// A table read in the order of a sorted index (or a slice of it).
pub(crate) struct TableRun<'a> {
    order: &'a [SongRef<'a>],
    pos: usize,
    days: Vec<(PackedDate, u64)>,
}

impl<'a> TableRun<'a> {
    pub(crate) fn new(order: &'a [SongRef<'a>]) -> Self {
        let mut run = TableRun {
            order,
            pos: 0,
            days: Vec::new(),
        };
        run.load();
        run
    }

    fn load(&mut self) {
        self.days.clear();
        prefetch_ahead(self.order, self.pos);
        if let Some(song) = self.order.get(self.pos) {
            song.sorted_days_into(&mut self.days);
        }
    }
}

impl Run for TableRun<'_> {
    fn current(&self) -> Option<SongDays<'_>> {
        let song = self.order.get(self.pos)?;
        Some((song.name, &self.days))
    }

    fn key(&self) -> NameKey {
        self.order.get(self.pos).map_or((0, 0), SongRef::key)
    }

    fn advance(&mut self) -> Result<(), Error> {
        self.pos += 1;
        self.load();
        Ok(())
    }
}

/// Writes the songs of `tables` whose names are in `lo..hi` (`None`: unbounded), sorted, to
/// a new anonymous file in `dir`, summing the songs that several tables share; returns the
/// file rewound. `expected` is about how many songs that is.
pub(crate) fn spill_range(
    tables: &[&ShardedTable],
    lo: Option<&SongBound>,
    hi: Option<&SongBound>,
    expected: usize,
    dir: &Path,
) -> Result<File, Error> {
    let mut writer = SpillWriter::create(dir)?;
    let mut songs = Vec::with_capacity(expected);
    for table in tables {
        table.songs_in_into(lo, hi, &mut songs);
    }
    songs.sort_unstable_by(SongRef::cmp_name);
    let mut days = Vec::new();
    let mut rest = &songs[..];
    while let Some((first, next)) = rest.split_first() {
        prefetch_ahead(&songs, songs.len() - rest.len());
        let same = 1 + next
            .iter()
            .take_while(|song| song.cmp_name(first).is_eq())
            .count();
        days.clear();
        for song in &rest[..same] {
            song.sorted_days_into(&mut days);
        }
        if same > 1 {
            days.sort_unstable_by_key(|entry| entry.0);
            sum_equal_dates(first.name, &mut days)?;
        }
        writer.write(first.name, &days)?;
        rest = &rest[same..];
    }
    writer.finish()
}

/// A spilled run: files holding consecutive ranges of its songs, in order.
pub(crate) struct SpilledRun {
    files: Vec<File>,
}

impl SpilledRun {
    pub(crate) fn new(files: Vec<File>) -> Self {
        SpilledRun { files }
    }

    /// Files it holds open.
    pub(crate) fn files(&self) -> usize {
        self.files.len()
    }

    /// Bytes on disk.
    pub(crate) fn bytes(&self) -> io::Result<u64> {
        self.files
            .iter()
            .map(|file| file.metadata().map(|m| m.len()))
            .sum()
    }
}

/// Writes a sorted run to an anonymous temporary file.
pub(crate) struct SpillWriter {
    writer: BufWriter<File>,
    dir: PathBuf,
}

impl SpillWriter {
    pub(crate) fn create(dir: &Path) -> Result<Self, Error> {
        let file = tempfile::tempfile_in(dir).map_err(|source| Error::Temp {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(SpillWriter {
            writer: BufWriter::with_capacity(1 << 20, file),
            dir: dir.to_path_buf(),
        })
    }

    /// Appends a song; songs must come in name order.
    pub(crate) fn write(&mut self, name: &[u8], days: &[(PackedDate, u64)]) -> Result<(), Error> {
        write_song(&mut self.writer, name, days).map_err(|e| self.error(e))
    }

    /// The finished run, rewound for reading.
    pub(crate) fn finish(self) -> Result<File, Error> {
        let dir = self.dir;
        let temp_err = |source| Error::Temp {
            path: dir.clone(),
            source,
        };
        let mut file = self
            .writer
            .into_inner()
            .map_err(|e| temp_err(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(temp_err)?;
        Ok(file)
    }

    fn error(&self, source: io::Error) -> Error {
        Error::Temp {
            path: self.dir.clone(),
            source,
        }
    }
}

fn write_song(out: &mut impl Write, name: &[u8], days: &[(PackedDate, u64)]) -> io::Result<()> {
    out.write_all(&(name.len() as u32).to_le_bytes())?;
    out.write_all(name)?;
    out.write_all(&(days.len() as u32).to_le_bytes())?;
    for &(date, sum) in days {
        out.write_all(&date.to_le_bytes())?;
        out.write_all(&sum.to_le_bytes())?;
    }
    Ok(())
}

/// Read buffer of a spilled run being merged.
pub(crate) const RUN_BUFFER_BYTES: usize = 64 << 10;

/// The files of a [`SpilledRun`] read one after the other.
struct Files(std::collections::VecDeque<File>);

impl Read for Files {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(file) = self.0.front_mut() {
            let read = file.read(buf)?;
            if read > 0 || buf.is_empty() {
                return Ok(read);
            }
            self.0.pop_front();
        }
        Ok(0)
    }
}

/// A spilled run read back from its files.
pub(crate) struct DiskRun {
    reader: BufReader<Files>,
    name: Vec<u8>,
    key: NameKey,
    days: Vec<(PackedDate, u64)>,
    done: bool,
    dir: PathBuf,
}

impl DiskRun {
    pub(crate) fn open(run: SpilledRun, dir: &Path) -> Result<Self, Error> {
        let mut run = DiskRun {
            reader: BufReader::with_capacity(RUN_BUFFER_BYTES, Files(run.files.into())),
            name: Vec::new(),
            key: (0, 0),
            days: Vec::new(),
            done: false,
            dir: dir.to_path_buf(),
        };
        run.advance()?;
        Ok(run)
    }

    fn read_song(&mut self) -> io::Result<bool> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        self.name.resize(u32::from_le_bytes(len) as usize, 0);
        self.reader.read_exact(&mut self.name)?;
        self.key = name_key(&self.name);
        self.reader.read_exact(&mut len)?;
        let count = u32::from_le_bytes(len) as usize;
        self.days.clear();
        let mut entry = [0u8; 12];
        for _ in 0..count {
            self.reader.read_exact(&mut entry)?;
            self.days.push((u32_at(&entry, 0), u64_at(&entry, 4)));
        }
        Ok(true)
    }
}

impl Run for DiskRun {
    fn current(&self) -> Option<SongDays<'_>> {
        (!self.done).then_some((&self.name[..], &self.days[..]))
    }

    fn key(&self) -> NameKey {
        self.key
    }

    fn advance(&mut self) -> Result<(), Error> {
        if !self.done {
            self.done = !self.read_song().map_err(|source| Error::Temp {
                path: self.dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Either kind of run, so that one merge takes both.
pub(crate) enum AnyRun<'a> {
    Table(TableRun<'a>),
    Disk(DiskRun),
}

impl Run for AnyRun<'_> {
    fn current(&self) -> Option<SongDays<'_>> {
        match self {
            AnyRun::Table(run) => run.current(),
            AnyRun::Disk(run) => run.current(),
        }
    }

    fn key(&self) -> NameKey {
        match self {
            AnyRun::Table(run) => run.key(),
            AnyRun::Disk(run) => run.key(),
        }
    }

    fn advance(&mut self) -> Result<(), Error> {
        match self {
            AnyRun::Table(run) => run.advance(),
            AnyRun::Disk(run) => run.advance(),
        }
    }
}
