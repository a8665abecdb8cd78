//! An upload's bytes as they reach its file, and a reader that follows them: the engine can
//! aggregate an upload while it still arrives (embedded mode), reading what the upload writer
//! has written and waiting for the rest.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use processor::Control;

/// How often a waiting reader checks whether its engine was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// How far an upload has reached its file.
#[derive(Debug, Default)]
pub struct Arrival {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    /// Bytes in the file, from its start.
    written: u64,
    end: End,
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

impl Arrival {
    pub fn new() -> Arc<Arrival> {
        Arc::default()
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
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until bytes past `pos` are in the file (returns how many), the upload is
    /// complete at `pos` (returns 0), it was aborted or `control` cancelled (an error).
    fn wait_past(&self, pos: u64, control: &Control) -> io::Result<u64> {
        let mut state = self.lock();
        loop {
            if state.end == End::Aborted {
                return Err(io::Error::other("the upload stopped before its end"));
            }
            if control.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            if state.written > pos || state.end == End::Complete {
                return Ok(state.written.saturating_sub(pos));
            }
            state = self
                .changed
                .wait_timeout(state, CANCEL_CHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Reads an upload's file as it arrives, to its end.
pub struct ArrivalReader {
    file: File,
    pos: u64,
    arrival: Arc<Arrival>,
    control: Control,
}

impl ArrivalReader {
    /// Reads `file` (the upload's, open) from its start as `arrival` reports its bytes; a
    /// wait ends with an error when `control` is cancelled.
    pub fn new(file: File, arrival: Arc<Arrival>, control: Control) -> ArrivalReader {
        ArrivalReader {
            file,
            pos: 0,
            arrival,
            control,
        }
    }
}

impl Read for ArrivalReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = self.arrival.wait_past(self.pos, &self.control)?;
        let want = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..want], self.pos)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upload's file is shorter than what was written to it",
            ));
        }
        self.pos += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn reader_of(arrival: &Arc<Arrival>, file: &tempfile::NamedTempFile) -> ArrivalReader {
        let file = file.reopen().expect("reopen");
        ArrivalReader::new(file, arrival.clone(), Control::new())
    }

    #[test]
    fn follows_the_writer_to_the_end() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        let arrival = Arrival::new();
        let mut reader = reader_of(&arrival, &file);
        let writer = {
            let arrival = arrival.clone();
            let mut out = file.reopen().expect("reopen");
            std::thread::spawn(move || {
                let mut written = 0;
                for i in 0..200u32 {
                    let piece = format!("line {i}\n");
                    out.write_all(piece.as_bytes()).expect("write");
                    written += piece.len() as u64;
                    arrival.advance(written);
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                arrival.complete();
            })
        };
        let mut read = String::new();
        reader.read_to_string(&mut read).expect("read to the end");
        writer.join().expect("writer");
        let expected: String = (0..200).map(|i| format!("line {i}\n")).collect();
        assert_eq!(read, expected);
        file.flush().expect("flush");
    }

    #[test]
    fn an_aborted_upload_is_an_error_and_not_an_end() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), b"Song,Date,Number of Plays\n").expect("write");
        let arrival = Arrival::new();
        arrival.advance(10);
        let mut reader = reader_of(&arrival, &file);
        let mut buf = [0u8; 64];
        assert_eq!(reader.read(&mut buf).expect("first bytes"), 10);
        arrival.abort();
        assert!(reader.read(&mut buf).is_err());
        // Completing after an abort changes nothing.
        arrival.complete();
        assert!(reader.read(&mut buf).is_err());
    }

    #[test]
    fn a_waiting_reader_stops_when_cancelled() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let arrival = Arrival::new();
        let control = Control::new();
        let mut reader =
            ArrivalReader::new(file.reopen().expect("reopen"), arrival, control.clone());
        let waiting = std::thread::spawn(move || reader.read(&mut [0u8; 16]).is_err());
        std::thread::sleep(Duration::from_millis(100));
        control.cancel();
        assert!(waiting.join().expect("reader thread"), "read did not fail");
    }
}
