//! Writes an upload to its file on a blocking thread, so the async threads only pass pieces
//! along. It owns the upload's way to the disk: gathered writes, and, when the upload is to be
//! made durable, writeback started while the bytes still arrive (every [`WRITEBACK_STEP`]) and
//! the disk's write cache flushed behind the writes ([`FlushBehind`]), so that the sync at the
//! end waits only for what the disk has not caught up with. An upload not to be synced is left
//! to the kernel's own writeback: starting it early gets the file's blocks allocated, and on
//! ext4 (`data=ordered`) every later `fsync` on the file system, the task database's commit
//! that records the upload among them, then waits until those blocks are written.
//!
//! When the engine in this process follows the upload ([`Arrival`]), the bytes are gathered
//! into blocks of [`BLOCK`] bytes, taken from a pool that keeps their memory mapped from one
//! upload to the next; each block is handed to the engine, then written. When the upload is to
//! be synced anyway, the file is set for direct I/O ([`set_direct`]): the blocks go to the
//! disk without a copy in the page cache, which the engine does not need (direct I/O for
//! followed synced uploads: less system time than filling fresh page-cache pages, when
//! measured here). The last block, when it is no whole number of pages, goes through the page
//! cache (direct writes are in whole pages), and so does the rest where direct I/O is not
//! supported. A worker in another process reads the file, from the page cache: those uploads
//! are not written direct.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use memmap2::MmapMut;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::arrival::{Arrival, RECENT_WINDOW};
use super::flush_behind::FlushBehind;

/// Bytes gathered for one write between the network and the disk.
const WRITE_BUFFER: usize = 1 << 20;
/// Chunks in flight between the network and the writer thread, at most.
const CHUNKS_IN_FLIGHT: usize = 16;
/// Size of the blocks of a followed upload.
pub const BLOCK: usize = 4 << 20;
/// Blocks in flight between the network and the writer thread, at most.
const BLOCKS_IN_FLIGHT: usize = 2;
/// Alignment of a direct write's memory, offset and length.
const DIRECT_ALIGN: usize = 4096;
/// Blocks the engine holds while it parses them, beyond those waiting for it: queued for its
/// workers and being parsed (two of each on two cores), and the one it is cutting.
const ENGINE_BLOCKS: usize = 5;
/// Idle blocks kept for the next followed upload: enough for one (on two cores).
const IDLE_BLOCKS: usize = RECENT_WINDOW / BLOCK + BLOCKS_IN_FLIGHT + ENGINE_BLOCKS + 2;
/// Bytes written between two requests to start writing back to the disk.
const WRITEBACK_STEP: u64 = 32 << 20;

/// The pool of idle blocks.
static IDLE: Mutex<Vec<MmapMut>> = Mutex::new(Vec::new());

/// An upload on its way to a file.
pub struct Spool {
    pieces: Option<mpsc::Sender<Piece>>,
    writer: Option<JoinHandle<io::Result<()>>>,
    /// The blocks of a followed upload.
    blocks: Option<Blocks>,
    /// Time the network side waited for the engine and for the writer.
    waited: Waited,
}

/// How long the network side waited for the engine and for the writer (a debug log).
#[derive(Default)]
struct Waited {
    engine: Duration,
    writer: Duration,
}

/// What the writer thread receives.
enum Piece {
    Data(Bytes),
    /// The upload is complete (without it, the upload stopped early).
    End,
}

impl Spool {
    /// Starts the writer thread for `file`; `sync`: make the file durable at the end;
    /// `arrival`: the engine following the upload in this process, to hand the bytes to and
    /// to report the bytes written to (then the upload is written with direct I/O when
    /// `sync`, where the file system allows).
    pub fn new(file: File, sync: bool, arrival: Option<Arc<Arrival>>) -> Spool {
        let direct = arrival.is_some() && sync && set_direct(&file, true).is_ok();
        let in_flight = if arrival.is_some() {
            BLOCKS_IN_FLIGHT
        } else {
            CHUNKS_IN_FLIGHT
        };
        let (pieces, received) = mpsc::channel(in_flight);
        let blocks = arrival.clone().map(|arrival| Blocks {
            arrival,
            block: None,
            filled: 0,
            offset: 0,
        });
        let writer = tokio::task::spawn_blocking(move || {
            let result = write_all(file, received, sync, direct, arrival.as_deref());
            if let Some(arrival) = arrival {
                // A no-op when the upload was complete.
                arrival.abort();
            }
            result
        });
        Spool {
            pieces: Some(pieces),
            writer: Some(writer),
            blocks,
            waited: Waited::default(),
        }
    }

    /// Queues a chunk; fails with the writer's error once it has failed.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let Some(blocks) = &mut self.blocks else {
                return self.send(Piece::Data(chunk)).await;
            };
            if let Some(full) = blocks.fill(&mut rest)? {
                self.hand_over(full).await?;
            }
        }
        Ok(())
    }

    /// Hands a block to the engine, then to the writer.
    async fn hand_over(&mut self, (arrival, offset, block): Sealed) -> io::Result<()> {
        let start = Instant::now();
        arrival.offer(offset, block.clone()).await;
        let offered = Instant::now();
        self.waited.engine += offered - start;
        let sent = self.send(Piece::Data(block)).await;
        self.waited.writer += offered.elapsed();
        sent
    }

    async fn send(&mut self, piece: Piece) -> io::Result<()> {
        if let Some(pieces) = &self.pieces
            && pieces.send(piece).await.is_ok()
        {
            return Ok(());
        }
        // The writer stopped: its error is the answer.
        match self.end().await {
            Ok(()) => Err(io::Error::other("the upload writer stopped early")),
            Err(e) => Err(e),
        }
    }

    /// Writes what is queued (and makes the file durable when asked to).
    pub async fn finish(&mut self) -> io::Result<()> {
        if let Some(last) = self.blocks.as_mut().and_then(Blocks::seal) {
            self.hand_over(last).await?;
        }
        let start = Instant::now();
        let ended = self.end().await;
        tracing::debug!(
            waited_for_engine_seconds = self.waited.engine.as_secs_f64(),
            waited_for_writer_seconds = self.waited.writer.as_secs_f64(),
            waited_at_end_seconds = start.elapsed().as_secs_f64(),
            "upload handed over"
        );
        ended
    }

    /// Tells the writer that the upload is complete, and waits for it.
    async fn end(&mut self) -> io::Result<()> {
        if let Some(pieces) = self.pieces.take() {
            // When the writer has stopped, its error is the answer.
            let _ = pieces.send(Piece::End).await;
        }
        let Some(writer) = self.writer.take() else {
            return Err(io::Error::other("the upload writer has already stopped"));
        };
        writer
            .await
            .map_err(|e| io::Error::other(format!("the upload writer failed: {e}")))?
    }
}

/// A followed upload cut into blocks.
struct Blocks {
    arrival: Arc<Arrival>,
    /// The block being filled, and its bytes so far.
    block: Option<MmapMut>,
    filled: usize,
    /// Where the block starts in the upload.
    offset: u64,
}

impl Blocks {
    /// Copies the start of `rest` into the block, and advances `rest`; returns the block once
    /// it is full.
    fn fill(&mut self, rest: &mut &[u8]) -> io::Result<Option<Sealed>> {
        let block = match &mut self.block {
            Some(block) => block,
            None => self.block.insert(take_block()?),
        };
        let n = rest.len().min(BLOCK - self.filled);
        block[self.filled..self.filled + n].copy_from_slice(&rest[..n]);
        self.filled += n;
        *rest = &rest[n..];
        Ok(if self.filled == BLOCK {
            self.seal()
        } else {
            None
        })
    }

    /// The block so far (none when empty).
    fn seal(&mut self) -> Option<Sealed> {
        let block = self.block.take()?;
        let len = std::mem::take(&mut self.filled);
        let offset = self.offset;
        self.offset += len as u64;
        let block = Bytes::from_owner(PooledBlock(Some(block))).slice(..len);
        Some((self.arrival.clone(), offset, block))
    }
}

/// A block ready for the engine and the writer: the engine, where it starts in the upload,
/// its bytes.
type Sealed = (Arc<Arrival>, u64, Bytes);

/// A block from the pool, which it returns to when dropped.
struct PooledBlock(Option<MmapMut>);

impl AsRef<[u8]> for PooledBlock {
    fn as_ref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        let mut idle = IDLE.lock();
        if idle.len() < IDLE_BLOCKS
            && let Some(block) = self.0.take()
        {
            idle.push(block);
        }
    }
}

fn take_block() -> io::Result<MmapMut> {
    let idle = IDLE.lock().pop();
    idle.map_or_else(|| MmapMut::map_anon(BLOCK), Ok)
}

/// The writer thread: writes the pieces as they come, gathered up to [`WRITE_BUFFER`] bytes
/// per system call (vectored: the pieces are not copied into a buffer first), then syncs the
/// file if `sync` (flushed to the disk behind the writes meanwhile, [`FlushBehind`]). Returns
/// an error when the upload stopped before its end.
fn write_all(
    mut file: File,
    mut pieces: mpsc::Receiver<Piece>,
    sync: bool,
    mut direct: bool,
    arrival: Option<&Arrival>,
) -> io::Result<()> {
    let started = Instant::now();
    let mut flush = sync.then(|| FlushBehind::new(&file)).transpose()?;
    let mut gathered: Vec<Bytes> = Vec::new();
    let mut pending = 0usize;
    let mut written = 0u64;
    let mut written_back = 0u64;
    // Time spent waiting for the network side (a debug log).
    let mut starved = Duration::ZERO;
    loop {
        // Waits only when nothing is pending: what has arrived is written first.
        let piece = match pieces.try_recv() {
            Ok(piece) => Some(piece),
            Err(mpsc::error::TryRecvError::Empty) if pending > 0 => None,
            Err(_) => {
                let waiting = Instant::now();
                let piece = pieces.blocking_recv();
                starved += waiting.elapsed();
                piece
            }
        };
        match piece {
            Some(Piece::Data(data)) => {
                pending += data.len();
                gathered.push(data);
                if pending < WRITE_BUFFER {
                    continue;
                }
            }
            Some(Piece::End) => break,
            None if pending > 0 => {}
            None => return Err(io::Error::other("the upload stopped before its end")),
        }
        write_gathered(&mut file, &mut gathered, &mut direct)?;
        written += std::mem::take(&mut pending) as u64;
        if let Some(arrival) = arrival {
            arrival.advance(written);
        }
        // Only an upload to be synced is written back and flushed behind (see the module).
        if let Some(flush) = &mut flush {
            if !direct && written - written_back >= WRITEBACK_STEP {
                start_writeback(&file, written_back, written - written_back);
                written_back = written;
            }
            flush.written(written);
        }
    }
    write_gathered(&mut file, &mut gathered, &mut direct)?;
    written += pending as u64;
    if let Some(arrival) = arrival {
        arrival.advance(written);
        arrival.complete();
    }
    let Some(flush) = flush else {
        return Ok(());
    };
    let syncing = Instant::now();
    let flushes = flush.finish()?;
    file.sync_all()?;
    tracing::debug!(
        bytes = written,
        seconds = started.elapsed().as_secs_f64(),
        final_sync_seconds = syncing.elapsed().as_secs_f64(),
        waited_for_data_seconds = starved.as_secs_f64(),
        flushes,
        "upload written and synced"
    );
    Ok(())
}

/// Writes all of `chunks` with vectored writes and empties it. Direct I/O is turned off
/// (`direct` turns false) for a write that is no whole number of pages, the last, and when
/// the file refuses a direct write (which is done again through the page cache).
fn write_gathered(file: &mut File, chunks: &mut Vec<Bytes>, direct: &mut bool) -> io::Result<()> {
    if *direct && chunks.iter().any(|c| !c.len().is_multiple_of(DIRECT_ALIGN)) {
        set_direct(file, false)?;
        *direct = false;
    }
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if *direct && e.kind() == io::ErrorKind::InvalidInput => {
                tracing::debug!("direct write refused ({e}): writing through the page cache");
                set_direct(file, false)?;
                *direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    drop(slices);
    chunks.clear();
    Ok(())
}

/// Turns direct I/O on or off for `file`'s open file description (every descriptor sharing
/// it); an error where the file system does not support it.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = status_flags(file)?;
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: a plain system call on an open descriptor; it only changes its status flags.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The status flags of `file`'s open file description (`O_DIRECT` among them).
#[cfg(target_os = "linux")]
fn status_flags(file: &File) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    // SAFETY: reads the status flags of an open descriptor.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

/// Direct I/O is not used on this system.
#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, _on: bool) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Asks the kernel to start writing `len` bytes at `offset` to the disk, without waiting.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on an open descriptor; it only starts writeback.
    let result = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if result != 0 {
        // Only a hint: the final sync still makes the file durable.
        tracing::debug!("sync_file_range failed: {}", io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `file`'s open file description is set for direct I/O.
    fn is_direct(file: &File) -> bool {
        status_flags(file).is_ok_and(|flags| flags & libc::O_DIRECT != 0)
    }

    #[tokio::test]
    async fn writes_every_chunk_in_order_followed_or_not_direct_or_not() {
        use crate::ingest::arrival::{UploadReader, read_all};

        for (followed, sync) in [(false, true), (true, true), (true, false)] {
            let file = tempfile::NamedTempFile::new().unwrap();
            let arrival = followed.then(Arrival::new);
            // What the engine would read.
            let reader = arrival.clone().map(|arrival| {
                let file = file.reopen().unwrap();
                let mut reader = UploadReader::new(arrival, file, engine::Control::new());
                std::thread::spawn(move || read_all(&mut reader))
            });
            let file_for_spool = file.as_file().try_clone().unwrap();
            let mut spool = Spool::new(file_for_spool, sync, arrival);
            let direct = is_direct(file.as_file());
            assert!(
                !direct || (followed && sync),
                "direct I/O for an upload not followed or not synced"
            );
            let mut expected = Vec::new();
            for i in 0..1000u32 {
                // Small chunks gathered into one write, and now and then one larger than a
                // block; the total is no multiple of a direct write's alignment.
                let repeat = if i % 250 == 7 { BLOCK + 3 } else { 100 };
                let chunk = Bytes::from(i.to_string().repeat(repeat));
                expected.extend_from_slice(&chunk);
                spool.write(chunk).await.unwrap();
            }
            spool.finish().await.unwrap();
            assert!(
                std::fs::read(file.path()).unwrap() == expected,
                "followed {followed}, sync {sync}: the file differs"
            );
            // The last write, no whole number of pages, went through the page cache.
            assert!(!is_direct(file.as_file()));
            if let Some(reader) = reader {
                let read = reader.join().unwrap().unwrap();
                assert!(
                    read == expected,
                    "sync {sync}: the reader read something else"
                );
            }
        }
    }

    #[test]
    fn whole_blocks_are_written_direct_and_the_last_one_through_the_page_cache() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        let mut file = temp.reopen().unwrap();
        let mut direct = set_direct(&file, true).is_ok();
        let block = |byte: u8| {
            let mut block = take_block().unwrap();
            block.fill(byte);
            Bytes::from_owner(PooledBlock(Some(block)))
        };
        let mut expected = Vec::new();
        for piece in [block(b'a'), block(b'b'), block(b'c').slice(..BLOCK / 2 + 1)] {
            expected.extend_from_slice(&piece);
            let whole = piece.len() == BLOCK;
            write_gathered(&mut file, &mut vec![piece], &mut direct).unwrap();
            // Where the file system takes direct I/O (this machine's does), whole blocks go
            // direct.
            assert_eq!(direct, whole && is_direct(&file), "whole block: {whole}");
        }
        assert!(!is_direct(&file));
        assert!(std::fs::read(temp.path()).unwrap() == expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_follows_the_whole_upload_and_only_a_complete_one() {
        use crate::ingest::arrival::UploadReader;
        use engine::{Config, Control, Input};

        let data = fixtures::generate(fixtures::Spec {
            length: fixtures::Length::Rows(300_000),
            tricky_names: true,
            ..fixtures::Spec::default()
        })
        .unwrap();
        for complete in [true, false] {
            let file = tempfile::NamedTempFile::new().unwrap();
            let arrival = Arrival::new();
            let follower = {
                let control = Control::new();
                let reader = UploadReader::new(arrival.clone(), file.reopen().unwrap(), control);
                let len = Some(data.len() as u64);
                std::thread::spawn(move || {
                    let input = Input::Pieces {
                        pieces: Box::new(reader),
                        len,
                    };
                    // Small blocks: many of them are cut while the upload arrives.
                    let config = Config {
                        block_bytes: 4 << 10,
                        ..Config::default()
                    };
                    let mut out = Vec::new();
                    engine::aggregate_to_writer(input, &mut out, &config, &Control::new())
                        .map(|_| out)
                })
            };
            let mut spool = Spool::new(file.reopen().unwrap(), false, Some(arrival));
            let sent = if complete { data.len() } else { data.len() / 2 };
            for piece in data[..sent].chunks(1000) {
                spool.write(Bytes::copy_from_slice(piece)).await.unwrap();
            }
            if complete {
                spool.finish().await.unwrap();
                let result = follower.join().unwrap().unwrap();
                assert!(
                    result == fixtures::reference::aggregate(&data),
                    "the result differs from the reference"
                );
            } else {
                drop(spool);
                assert!(
                    follower.join().unwrap().is_err(),
                    "an incomplete upload aggregated as whole"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_write_error_reaches_the_sender() {
        // Writing to a file opened read-only fails.
        let file = tempfile::NamedTempFile::new().unwrap();
        for arrival in [None, Some(Arrival::new())] {
            let read_only = File::open(file.path()).unwrap();
            let mut spool = Spool::new(read_only, false, arrival);
            let chunk = Bytes::from(vec![b'x'; 2 * BLOCK]);
            let mut failed = None;
            for _ in 0..(CHUNKS_IN_FLIGHT + 4) {
                if let Err(e) = spool.write(chunk.clone()).await {
                    failed = Some(e);
                    break;
                }
            }
            assert!(failed.is_some(), "no error reported while writing");
            assert!(spool.finish().await.is_err(), "no error at the end");
        }
    }
}
