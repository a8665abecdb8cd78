//! The input stage: where the CSV comes from ([`Input`]), cut into blocks of whole records
//! (`blocks`), its header checked (`header`), its records found (`scan`) and parsed (`parse`).

pub(crate) mod blocks;
pub(crate) mod header;
pub(crate) mod parse;
pub(crate) mod scan;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use memmap2::Mmap;

/// Where the CSV comes from.
pub enum Input<'a> {
    /// A local file, memory-mapped (a named pipe or a device, such as `<(command)`, is read
    /// as a stream).
    File(&'a Path),
    /// Any byte stream (stdin, an upload); `len` is its size when known, for progress.
    Reader {
        reader: Box<dyn Read + Send + 'a>,
        len: Option<u64>,
    },
    /// A local file still being written (an upload as it arrives), at most `capacity` bytes
    /// long: memory-mapped like [`Input::File`], and read as far as `growth` reports it
    /// written. Without a `capacity`, the engine waits for the whole file first.
    Growing {
        file: &'a File,
        capacity: Option<u64>,
        growth: &'a dyn Growth,
    },
    /// A series of shared buffers (an upload's pieces as they arrive), parsed where they are
    /// rather than copied into the engine's own buffers; `len` is the total when known.
    Pieces {
        pieces: Box<dyn Pieces + 'a>,
        len: Option<u64>,
    },
}

/// The input, opened.
pub(crate) enum Source<'a> {
    Mapped(Mmap),
    /// The map of a file still being written, read as far as it has grown.
    Growing(Mmap, &'a dyn Growth),
    Stream(&'a mut dyn Read),
    Pieces(&'a mut dyn Pieces),
}

/// The input of [`Input::Pieces`]: its bytes, piece by piece.
pub trait Pieces: Send {
    /// The next piece, in order; `None` at the end of the input. An error ends the run.
    fn next_piece(&mut self) -> std::io::Result<Option<Bytes>>;
}

/// How far a file still being written has reached.
pub trait Growth: Send + Sync {
    /// Waits until more than `pos` bytes are written, or the file is complete; returns the
    /// length written so far (at most `pos` only when that is the whole file). An error (the
    /// writer gave up, the run was cancelled) ends the run.
    fn wait_beyond(&self, pos: u64) -> std::io::Result<u64>;
}

/// Record limit beyond the block size: a record longer than `block_bytes + MAX_RECORD_BYTES`
/// (5 MiB with the default blocks), or a double quote never closed that makes the rest of
/// the input one field that long, is an error, for mapped and streamed input alike.
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 20;
