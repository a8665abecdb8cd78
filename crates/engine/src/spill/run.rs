//! Sorted runs: streams of songs in name-byte order, each with its (date, sum) pairs in date
//! order. A run is either a worker's in-memory table read through a sorted index, or a run
//! spilled to an anonymous temporary file (unlinked at creation, so it disappears with the
//! process whatever happens).
//!
//! Spill format, little endian, per song: `u32` name length, name bytes, `u32` date count,
//! then per date `u32` packed date and `u64` sum. Runs group dates under their song, which
//! makes them smaller than one record per (song, date) as a generic external sorter writes
//! when a song has several dates in a run, and slightly larger when it has one. Each file
//! keeps a sparse index of its songs (`spill::index`), so that the final merge can read a range
//! of names from each run in parallel (`merge::ranges`); files are read with positional reads,
//! so that several ranges share them.
//!
//! Hand-written rather than built on the extsort crate: faster on spill and merge in the
//! engine benchmark (`bench/src/bin/spill_merge.rs compare`), whose extsort variant spends its
//! time sorting boxed records and allocating one per record read back.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::aggregate::days::add_sorted_days;
use crate::aggregate::hash::{u32_at, u64_at};
use crate::aggregate::shards::ShardedTable;
use crate::aggregate::table::{NameKey, Pivot, SongRef, name_key, prefetch_ahead};
use crate::date::PackedDate;
use crate::spill::index::SparseIndex;

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
/// a new anonymous file in `dir`, summing the songs that several tables share. `expected` is
/// about how many songs that is.
pub(crate) fn spill_range(
    tables: &[&ShardedTable],
    lo: Option<&Pivot>,
    hi: Option<&Pivot>,
    expected: usize,
    dir: &Path,
) -> Result<SpillFile, Error> {
    let mut writer = SpillWriter::create(dir)?;
    let mut songs = Vec::with_capacity(expected);
    for table in tables {
        table.songs_in_into(lo, hi, &mut songs);
    }
    songs.sort_unstable_by(SongRef::cmp_name);
    let (mut days, mut other, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    let mut rest = &songs[..];
    while let Some((first, next)) = rest.split_first() {
        prefetch_ahead(&songs, songs.len() - rest.len());
        let same = 1 + next
            .iter()
            .take_while(|song| song.cmp_name(first).is_eq())
            .count();
        days.clear();
        first.sorted_days_into(&mut days);
        for song in &rest[1..same] {
            other.clear();
            song.sorted_days_into(&mut other);
            add_sorted_days(first.name, &mut days, &other, &mut scratch)?;
        }
        writer.write(first.name, &days)?;
        rest = &rest[same..];
    }
    writer.finish()
}

/// A spilled file with its sparse index.
pub(crate) struct SpillFile {
    pub file: File,
    pub index: SparseIndex,
}

/// A spilled run: files holding consecutive ranges of its songs, in order.
pub(crate) struct SpilledRun {
    files: Vec<SpillFile>,
}

impl SpilledRun {
    pub(crate) fn new(files: Vec<SpillFile>) -> Self {
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
            .map(|f| f.file.metadata().map(|m| m.len()))
            .sum()
    }

    /// Bytes written to its files, as they were written (no system call, unlike
    /// [`SpilledRun::bytes`]).
    pub(crate) fn written_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.index.written()).sum()
    }

    /// The sparse indexes of its files, in order.
    pub(crate) fn indexes(&self) -> impl Iterator<Item = &SparseIndex> {
        self.files.iter().map(|f| &f.index)
    }

    /// Where to start reading for the songs from `pivot` on: the last indexed song at or
    /// before it (file, offset), or the start.
    fn start_for(&self, pivot: &Pivot) -> (usize, u64) {
        self.files
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, f)| f.index.start_for(pivot).map(|offset| (i, offset)))
            .unwrap_or((0, 0))
    }
}

/// Writes a sorted run to an anonymous temporary file, indexing it as it goes.
pub(crate) struct SpillWriter {
    writer: BufWriter<File>,
    index: SparseIndex,
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
            index: SparseIndex::new(),
            dir: dir.to_path_buf(),
        })
    }

    /// Appends a song; songs must come in name order.
    pub(crate) fn write(&mut self, name: &[u8], days: &[(PackedDate, u64)]) -> Result<(), Error> {
        let bytes = 8 + name.len() as u64 + 12 * days.len() as u64;
        self.index.record(name, days.len(), bytes);
        write_song(&mut self.writer, name, days).map_err(|e| self.error(e))
    }

    /// The finished run (read with positional reads: no need to rewind it).
    pub(crate) fn finish(self) -> Result<SpillFile, Error> {
        let dir = self.dir;
        let file = self.writer.into_inner().map_err(|e| Error::Temp {
            path: dir.clone(),
            source: e.into_error(),
        })?;
        Ok(SpillFile {
            file,
            index: self.index,
        })
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

/// Read buffer of a spilled run being merged (at most: a merge of many runs in parallel
/// ranges may give each less).
pub(crate) const RUN_BUFFER_BYTES: usize = 64 << 10;

/// Reads `buf.len()` bytes at most from `file` at `offset`, leaving its cursor alone (so that
/// several readers may share the file).
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// Reads `buf.len()` bytes at most from `file` at `offset` (readers keep their own offsets).
#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// The files of a [`SpilledRun`] read one after the other from a position.
struct FilesAt<'a> {
    files: &'a [SpillFile],
    file: usize,
    offset: u64,
}

impl Read for FilesAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(f) = self.files.get(self.file) {
            let read = read_at(&f.file, buf, self.offset)?;
            if read > 0 || buf.is_empty() {
                self.offset += read as u64;
                return Ok(read);
            }
            self.file += 1;
            self.offset = 0;
        }
        Ok(0)
    }
}

/// A spilled run read back from its files: all of it, or the songs of a range of names.
pub(crate) struct DiskRun<'a> {
    reader: BufReader<FilesAt<'a>>,
    name: Vec<u8>,
    key: NameKey,
    days: Vec<(PackedDate, u64)>,
    done: bool,
    /// Songs from this one on are past the range.
    end: Option<&'a Pivot>,
    dir: PathBuf,
}

impl<'a> DiskRun<'a> {
    /// Reads all of `run`.
    pub(crate) fn whole(run: &'a SpilledRun, dir: &Path) -> Result<Self, Error> {
        Self::range(run, None, None, RUN_BUFFER_BYTES, dir)
    }

    /// Reads the songs of `run` from `start` (included) to `end` (excluded), `None` meaning
    /// unbounded, through a buffer of `buffer` bytes. It starts at the last indexed song at
    /// or before `start` and skips the songs before it.
    pub(crate) fn range(
        run: &'a SpilledRun,
        start: Option<&Pivot>,
        end: Option<&'a Pivot>,
        buffer: usize,
        dir: &Path,
    ) -> Result<Self, Error> {
        let (file, offset) = start.map_or((0, 0), |pivot| run.start_for(pivot));
        let files = FilesAt {
            files: &run.files,
            file,
            offset,
        };
        let mut run = DiskRun {
            reader: BufReader::with_capacity(buffer, files),
            name: Vec::new(),
            key: (0, 0),
            days: Vec::new(),
            done: false,
            end,
            dir: dir.to_path_buf(),
        };
        run.advance()?;
        if let Some(start) = start {
            while !run.done && start.cmp_name(run.key, &run.name).is_lt() {
                run.advance()?;
            }
        }
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
        if self
            .end
            .is_some_and(|end| end.cmp_name(self.key, &self.name).is_ge())
        {
            return Ok(false);
        }
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

impl Run for DiskRun<'_> {
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
    Disk(DiskRun<'a>),
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
