//! An upload's bytes as they arrive, followed by the engine: it can aggregate an upload while
//! it still arrives (embedded mode). The upload writer hands the engine the pieces it
//! receives, up to [`RECENT_WINDOW`] bytes ahead of it (the upload waits for the engine
//! beyond), and reports the bytes that reached the file; the engine ([`UploadReader`]) parses
//! the pieces where they are, so that the writer can write them straight to the disk and
//! nobody copies or reads them back. Bytes in the file but not handed over are read from the
//! file.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use engine::{Control, Pieces};
use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::Semaphore;

/// How often a waiting reader checks whether its engine was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(50);
/// Bytes of received pieces held for the reader, at most. The pieces it has taken (which the
/// engine parses where they are) are not counted: the engine holds a few, as many as it would
/// hold buffers of its own.
pub const RECENT_WINDOW: usize = 32 << 20;
/// Bytes read from the file at once, where the reader finds them there.
const FILE_PIECE: usize = 4 << 20;
/// Longest wait for the reader to make room for a piece; then the writer stops handing
/// pieces over, and the reader reads the rest from the file.
const READER_PATIENCE: Duration = Duration::from_secs(30);

/// How far an upload has arrived: the pieces the reader has not read yet, and the bytes in
/// the file.
#[derive(Debug)]
pub struct Arrival {
    state: Mutex<State>,
    changed: Condvar,
    /// Room for pieces, in bytes; closed once nobody reads them.
    room: Semaphore,
    /// Longest wait for room.
    patience: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes in the file, from its start.
    written: u64,
    end: End,
    /// Received pieces not read yet, and their offsets, in order.
    recent: VecDeque<(u64, Bytes)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum End {
    #[default]
    Open,
    /// Every byte of the upload is in the file.
    Complete,
    /// The upload stopped early: its bytes are not an input.
    Aborted,
}

/// Where the reader finds the bytes at its position.
enum Next {
    /// In this received piece, which starts at the position.
    Memory(Bytes),
    /// In the file, up to this offset.
    File(u64),
    /// Nowhere: the upload ends there.
    End,
}

impl Arrival {
    pub fn new() -> Arc<Arrival> {
        Self::with_patience(READER_PATIENCE)
    }

    fn with_patience(patience: Duration) -> Arc<Arrival> {
        Arc::new(Arrival {
            state: Mutex::default(),
            changed: Condvar::new(),
            room: Semaphore::new(RECENT_WINDOW),
            patience,
        })
    }

    /// Hands the reader `piece`, received at `offset` (the pieces come in order, at most
    /// [`RECENT_WINDOW`] bytes long); waits while the reader is a window behind. Returns at
    /// once when nobody reads the pieces any more.
    pub async fn offer(&self, offset: u64, piece: Bytes) {
        let bytes = piece.len().min(RECENT_WINDOW);
        let Ok(room) = u32::try_from(bytes) else {
            return;
        };
        let permit = match tokio::time::timeout(self.patience, self.room.acquire_many(room)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return,
            Err(_elapsed) => {
                tracing::warn!(
                    "the engine read nothing of the upload for {:?}: it reads the rest from the \
                     file",
                    self.patience
                );
                self.room.close();
                return;
            }
        };
        // Given back as the reader moves past the piece.
        permit.forget();
        let mut state = self.lock();
        if state.end == End::Aborted {
            return;
        }
        state.recent.push_back((offset, piece));
        self.changed.notify_all();
    }

    /// The first `written` bytes are in the file.
    pub fn advance(&self, written: u64) {
        let mut state = self.lock();
        if state.end == End::Open && written > state.written {
            state.written = written;
            self.changed.notify_all();
        }
    }

    /// The upload is entirely in the file.
    pub fn complete(&self) {
        self.end(End::Complete);
    }

    /// The upload stopped before its end; readers fail.
    pub fn abort(&self) {
        self.end(End::Aborted);
    }

    fn end(&self, end: End) {
        let mut state = self.lock();
        if state.end == End::Open {
            state.end = end;
            self.changed.notify_all();
            drop(state);
            if end == End::Aborted {
                self.unread();
            }
        }
    }

    /// No reader follows the upload any more: what is held is released, and the writer no
    /// longer hands pieces over.
    fn unread(&self) {
        self.room.close();
        self.lock().recent.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Waits until the bytes at `pos` are in memory or in the file, or the upload is complete
    /// and ends there; an error when it was aborted or `control` cancelled. Forgets the pieces
    /// before `pos`.
    fn next(&self, pos: u64, control: &Control) -> io::Result<Next> {
        let mut state = self.lock();
        loop {
            if state.end == End::Aborted {
                return Err(io::Error::other("the upload stopped before its end"));
            }
            if control.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            let forgotten = state.forget_before(pos);
            if forgotten > 0 {
                self.room.add_permits(forgotten);
            }
            let next_piece = state.recent.front().map(|(start, _)| *start);
            if let Some((start, piece)) = state.recent.front()
                && *start <= pos
            {
                let from = usize::try_from(pos - start).unwrap_or(usize::MAX);
                return Ok(Next::Memory(piece.slice(from..)));
            }
            if state.written > pos {
                let upto = next_piece.map_or(state.written, |start| start.min(state.written));
                return Ok(Next::File(upto));
            }
            if state.end == End::Complete {
                return Ok(Next::End);
            }
            self.changed.wait_for(&mut state, CANCEL_CHECK);
        }
    }
}

impl State {
    /// Drops the pieces that end at or before `pos`; returns the room they took.
    fn forget_before(&mut self, pos: u64) -> usize {
        let mut forgotten = 0;
        while let Some((start, piece)) = self.recent.front() {
            if start + piece.len() as u64 > pos {
                break;
            }
            forgotten += piece.len().min(RECENT_WINDOW);
            self.recent.pop_front();
        }
        forgotten
    }
}

/// The engine's input while an upload arrives ([`Pieces`]): the pieces [`Arrival`] keeps,
/// handed over as they are, else the file, [`FILE_PIECE`] bytes at a time (its own open file
/// description: the writer's may be set for direct I/O). Asking for a piece waits for its
/// bytes; it fails when the upload was aborted or `control` cancelled.
pub struct UploadReader {
    arrival: Arc<Arrival>,
    file: File,
    pos: u64,
    control: Control,
}

impl UploadReader {
    /// Reads the upload whose arrival `arrival` reports, written into `file`, for the engine
    /// run under `control`.
    pub fn new(arrival: Arc<Arrival>, file: File, control: Control) -> UploadReader {
        UploadReader {
            arrival,
            file,
            pos: 0,
            control,
        }
    }
}

impl Pieces for UploadReader {
    fn next_piece(&mut self) -> io::Result<Option<Bytes>> {
        let piece = match self.arrival.next(self.pos, &self.control)? {
            Next::Memory(piece) => piece,
            Next::File(upto) => {
                let want =
                    usize::try_from(upto - self.pos).map_or(FILE_PIECE, |n| n.min(FILE_PIECE));
                let mut buf = vec![0; want];
                self.file
                    .read_exact_at(&mut buf, self.pos)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => io::Error::new(
                            e.kind(),
                            "the upload's file is shorter than what was written",
                        ),
                        _ => e,
                    })?;
                Bytes::from(buf)
            }
            Next::End => return Ok(None),
        };
        self.pos += piece.len() as u64;
        Ok(Some(piece))
    }
}

impl Drop for UploadReader {
    fn drop(&mut self) {
        self.arrival.unread();
    }
}

/// Everything `reader` gives, to its end.
#[cfg(test)]
pub(crate) fn read_all(reader: &mut UploadReader) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    while let Some(piece) = reader.next_piece()? {
        all.extend_from_slice(&piece);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An upload of `data` written into a file in pieces of `piece` bytes, each piece handed to
    /// the reader first when `offered(index)`; the reader's result.
    fn read_while_written(
        data: &[u8],
        piece: usize,
        offered: impl Fn(usize) -> bool + Send + 'static,
    ) -> io::Result<Vec<u8>> {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let arrival = Arrival::new();
        let mut reader = UploadReader::new(
            arrival.clone(),
            file.reopen().expect("reopen"),
            Control::new(),
        );
        let writer = {
            let (data, mut out) = (data.to_vec(), file.reopen().expect("reopen"));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime");
                let mut written = 0;
                for (index, piece) in data.chunks(piece).enumerate() {
                    if offered(index) {
                        let piece = Bytes::copy_from_slice(piece);
                        runtime.block_on(arrival.offer(written as u64, piece));
                    }
                    out.write_all(piece).expect("write");
                    written += piece.len();
                    arrival.advance(written as u64);
                    if index % 97 == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                arrival.complete();
            })
        };
        let outcome = read_all(&mut reader);
        writer.join().expect("writer");
        outcome
    }

    #[test]
    fn reads_the_whole_upload_from_memory_from_the_file_or_both() {
        let data: Vec<u8> = (0..25_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for piece in [3, 999, 4096, 30_000] {
            assert_eq!(read_while_written(&data, piece, |_| true).unwrap(), data);
            assert_eq!(read_while_written(&data, piece, |_| false).unwrap(), data);
            // Gaps: the reader goes from memory to the file and back.
            let read = read_while_written(&data, piece, |index| index % 3 != 1).unwrap();
            assert_eq!(read, data, "pieces of {piece} with gaps");
        }
    }

    #[tokio::test]
    async fn holds_a_window_at_most_and_nothing_once_the_reader_is_gone() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let arrival = Arrival::new();
        let piece = Bytes::from(vec![b'x'; RECENT_WINDOW / 4]);
        let wait = Duration::from_millis(50);
        for index in 0..4 {
            arrival
                .offer(index * piece.len() as u64, piece.clone())
                .await;
        }
        // The window is full: the next piece waits for the reader.
        let fifth = arrival.offer(4 * piece.len() as u64, piece.clone());
        let mut fifth = std::pin::pin!(fifth);
        assert!(tokio::time::timeout(wait, fifth.as_mut()).await.is_err());
        let mut reader = UploadReader::new(arrival.clone(), file.reopen().unwrap(), Control::new());
        // The first piece is read from memory although the file is still empty, where it is.
        let first = reader.next_piece().unwrap().expect("a piece");
        assert_eq!(first, piece);
        assert_eq!(first.as_ptr(), piece.as_ptr());
        // The reader takes the next piece: the first one's room takes the fifth, although the
        // engine still holds the first (its workers may wait for one another, in a spill
        // round, until the reader gives them more).
        let second = reader.next_piece().unwrap().expect("a piece");
        assert_eq!(second.len(), piece.len());
        tokio::time::timeout(wait, fifth)
            .await
            .expect("room for the fifth piece");
        assert_eq!(arrival.lock().recent.len(), 4);
        drop((first, second));
        drop(reader);
        assert!(arrival.lock().recent.is_empty());
        // Nobody reads: a piece is not held, and not waited for.
        for index in 5..10 {
            let offer = arrival.offer(index * piece.len() as u64, piece.clone());
            tokio::time::timeout(wait, offer).await.expect("no wait");
        }
        assert!(arrival.lock().recent.is_empty());
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_is_not_waited_for_and_reads_the_rest_from_the_file() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        let arrival = Arrival::with_patience(Duration::from_millis(50));
        let mut reader = UploadReader::new(arrival.clone(), file.reopen().unwrap(), Control::new());
        let pieces: Vec<Bytes> = (0..6u8)
            .map(|i| Bytes::from(vec![b'a' + i; RECENT_WINDOW / 4]))
            .collect();
        let mut written = 0;
        for piece in &pieces {
            let offer = arrival.offer(written as u64, piece.clone());
            tokio::time::timeout(Duration::from_secs(5), offer)
                .await
                .expect("the writer waited for a reader that does not read");
            file.write_all(piece).unwrap();
            written += piece.len();
            arrival.advance(written as u64);
        }
        arrival.complete();
        let read = read_all(&mut reader).unwrap();
        assert!(read == pieces.concat(), "the reader read something else");
    }

    #[tokio::test]
    async fn an_aborted_upload_is_an_error_and_not_an_end() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let arrival = Arrival::new();
        let mut reader = UploadReader::new(arrival.clone(), file.reopen().unwrap(), Control::new());
        arrival.offer(0, Bytes::from_static(b"0123456789")).await;
        assert_eq!(reader.next_piece().unwrap().map(|p| p.len()), Some(10));
        arrival.abort();
        assert!(reader.next_piece().is_err());
        // Completing after an abort changes nothing.
        arrival.complete();
        assert!(reader.next_piece().is_err());
    }

    #[test]
    fn a_complete_upload_ends_and_a_waiting_reader_stops_when_cancelled() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let arrival = Arrival::new();
        arrival.complete();
        let mut reader = UploadReader::new(arrival, file.reopen().unwrap(), Control::new());
        assert_eq!(reader.next_piece().unwrap(), None);

        let control = Control::new();
        let mut reader = UploadReader::new(Arrival::new(), file.reopen().unwrap(), control.clone());
        let waiting = std::thread::spawn(move || reader.next_piece().is_err());
        std::thread::sleep(Duration::from_millis(100));
        control.cancel();
        assert!(
            waiting.join().expect("reader thread"),
            "the wait did not fail"
        );
    }
}
