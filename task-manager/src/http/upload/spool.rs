//! Writes an upload to its file on a blocking thread, so the async threads only pass chunks
//! along. Writeback to the disk starts while the bytes still arrive (every
//! [`WRITEBACK_STEP`]), so that making the file durable at the end (when asked to) waits for
//! what the disk has not caught up with only, not for the whole upload. When given an
//! [`Arrival`], the writer reports the bytes in the file as it goes, for a reader that
//! follows the upload (early aggregation).

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use axum::body::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::arrival::Arrival;

/// Bytes gathered for one write between the network and the disk.
const WRITE_BUFFER: usize = 1 << 20;
/// Chunks in flight between the network and the writer thread, at most.
const CHUNKS_IN_FLIGHT: usize = 16;
/// Bytes written between two requests to start writing back to the disk.
const WRITEBACK_STEP: u64 = 32 << 20;

/// An upload on its way to a file.
pub struct Spool {
    chunks: Option<mpsc::Sender<Piece>>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

/// What the writer thread receives.
enum Piece {
    Chunk(Bytes),
    /// The upload is complete (without it, the upload stopped early).
    End,
}

impl Spool {
    /// Starts the writer thread for `file`; `sync`: make the file durable at the end;
    /// `arrival`: where to report the bytes written.
    pub fn new(file: File, sync: bool, arrival: Option<Arc<Arrival>>) -> Spool {
        let (chunks, received) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let writer = tokio::task::spawn_blocking(move || {
            let result = write_all(file, received, sync, arrival.as_deref());
            if let Some(arrival) = arrival {
                // A no-op when the upload was complete.
                arrival.abort();
            }
            result
        });
        Spool {
            chunks: Some(chunks),
            writer: Some(writer),
        }
    }

    /// Queues a chunk; fails with the writer's error once it has failed.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        if let Some(chunks) = &self.chunks
            && chunks.send(Piece::Chunk(chunk)).await.is_ok()
        {
            return Ok(());
        }
        // The writer stopped: its error is the answer.
        match self.finish().await {
            Ok(()) => Err(io::Error::other("the upload writer stopped early")),
            Err(e) => Err(e),
        }
    }

    /// Writes what is queued (and makes the file durable when asked to).
    pub async fn finish(&mut self) -> io::Result<()> {
        if let Some(chunks) = self.chunks.take() {
            // When the writer has stopped, its error is the answer.
            let _ = chunks.send(Piece::End).await;
        }
        let Some(writer) = self.writer.take() else {
            return Err(io::Error::other("the upload writer has already stopped"));
        };
        writer
            .await
            .map_err(|e| io::Error::other(format!("the upload writer failed: {e}")))?
    }
}

/// The writer thread: writes the chunks as they come, gathered up to [`WRITE_BUFFER`] bytes
/// per system call (vectored: the chunks are not copied into a buffer first), then syncs the
/// file if `sync`. Returns an error when the upload stopped before its end.
fn write_all(
    mut file: File,
    mut chunks: mpsc::Receiver<Piece>,
    sync: bool,
    arrival: Option<&Arrival>,
) -> io::Result<()> {
    let mut gathered: Vec<Bytes> = Vec::new();
    let mut pending = 0usize;
    let mut written = 0u64;
    let mut written_back = 0u64;
    loop {
        // Waits only when nothing is pending: what has arrived is written first.
        let piece = match chunks.try_recv() {
            Ok(piece) => Some(piece),
            Err(mpsc::error::TryRecvError::Empty) if pending > 0 => None,
            Err(_) => chunks.blocking_recv(),
        };
        match piece {
            Some(Piece::Chunk(chunk)) => {
                pending += chunk.len();
                gathered.push(chunk);
                if pending < WRITE_BUFFER {
                    continue;
                }
            }
            Some(Piece::End) => break,
            None if pending > 0 => {}
            None => return Err(io::Error::other("the upload stopped before its end")),
        }
        write_gathered(&mut file, &mut gathered)?;
        written += std::mem::take(&mut pending) as u64;
        if let Some(arrival) = arrival {
            arrival.advance(written);
        }
        if written - written_back >= WRITEBACK_STEP {
            start_writeback(&file, written_back, written - written_back);
            written_back = written;
        }
    }
    write_gathered(&mut file, &mut gathered)?;
    written += pending as u64;
    if let Some(arrival) = arrival {
        arrival.advance(written);
        arrival.complete();
    }
    if sync {
        file.sync_all()?;
    }
    Ok(())
}

/// Writes all of `chunks` with vectored writes and empties it.
fn write_gathered(file: &mut File, chunks: &mut Vec<Bytes>) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    drop(slices);
    chunks.clear();
    Ok(())
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

    #[tokio::test]
    async fn writes_every_chunk_in_order() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut spool = Spool::new(file.reopen().unwrap(), true, None);
        let mut expected = Vec::new();
        for i in 0..1000u32 {
            // Small chunks gathered into one write, and now and then one larger than that.
            let repeat = if i % 250 == 7 { WRITE_BUFFER } else { 100 };
            let chunk = Bytes::from(i.to_string().repeat(repeat));
            expected.extend_from_slice(&chunk);
            spool.write(chunk).await.unwrap();
        }
        spool.finish().await.unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_follows_the_whole_upload_and_only_a_complete_one() {
        use crate::arrival::FollowedUpload;
        use processor::{Config, Control, Input};

        let data = fixtures::generate(fixtures::Spec {
            length: fixtures::Length::Rows(30_000),
            tricky_names: true,
            ..fixtures::Spec::default()
        })
        .unwrap();
        for complete in [true, false] {
            let file = tempfile::NamedTempFile::new().unwrap();
            let arrival = Arrival::new();
            let follower = {
                let (file, arrival) = (file.reopen().unwrap(), arrival.clone());
                let capacity = Some(data.len() as u64);
                std::thread::spawn(move || {
                    let growth = FollowedUpload::new(arrival, Control::new());
                    let input = Input::Growing {
                        file: &file,
                        capacity,
                        growth: &growth,
                    };
                    // Small blocks: many of them are cut while the upload arrives.
                    let config = Config {
                        block_bytes: 4 << 10,
                        ..Config::default()
                    };
                    let mut out = Vec::new();
                    processor::aggregate_to_writer(input, &mut out, &config, &Control::new())
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
        let read_only = File::open(file.path()).unwrap();
        let mut spool = Spool::new(read_only, false, None);
        let chunk = Bytes::from(vec![b'x'; 2 * WRITE_BUFFER]);
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
