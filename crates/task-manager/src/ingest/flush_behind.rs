//! Flushes an upload's file to the disk behind its writer, so that making it durable at the
//! end waits only for the last bytes. A direct write, or a write back from the page cache,
//! leaves the data in the disk's volatile write cache, which the final `fsync` would otherwise
//! have to empty all at once; flushing every [`FLUSH_STEP`] on another thread while the
//! writes go on made that final sync short, for about the same total time, when measured.

use std::fs::File;
use std::io;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;

/// Bytes written between two flushes.
pub const FLUSH_STEP: u64 = 64 << 20;

/// A thread that flushes a file each time it is asked to. Dropped without [`finish`]
/// (the upload failed: nothing waits for its file), the thread ends after the flush under way.
///
/// [`finish`]: FlushBehind::finish
pub struct FlushBehind {
    requests: SyncSender<()>,
    thread: JoinHandle<io::Result<u32>>,
    /// Bytes written when the last flush was asked for.
    asked_at: u64,
}

impl FlushBehind {
    /// Starts the thread for `file` (a descriptor of its own).
    pub fn new(file: &File) -> io::Result<FlushBehind> {
        let file = file.try_clone()?;
        // One request waits at most: a request made while one waits is covered by it.
        let (requests, asked) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("upload-flush".into())
            .spawn(move || {
                let mut flushes = 0;
                for () in asked {
                    // The first error ends the thread: Linux reports a failed write-back once,
                    // so it must reach the upload's answer.
                    file.sync_data()?;
                    flushes += 1;
                }
                Ok(flushes)
            })?;
        Ok(FlushBehind {
            requests,
            thread,
            asked_at: 0,
        })
    }

    /// Tells how many bytes are written so far: asks for a flush every [`FLUSH_STEP`].
    pub fn written(&mut self, written: u64) {
        if written < self.asked_at + FLUSH_STEP {
            return;
        }
        self.asked_at = written;
        // Full: a flush is already asked for, and covers these bytes. Disconnected: the thread
        // stopped on an error, which `finish` returns.
        let _ = self.requests.try_send(());
    }

    /// Waits for the flush under way, if any, and stops the thread; returns the flushes done,
    /// or the first flush's error.
    pub fn finish(self) -> io::Result<u32> {
        let FlushBehind {
            requests, thread, ..
        } = self;
        drop(requests);
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the upload's flush thread panicked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_flush_is_asked_for_once_per_step() {
        let mut file = tempfile::tempfile().unwrap();
        let mut flush = FlushBehind::new(&file).unwrap();
        file.write_all(b"data").unwrap();
        flush.written(FLUSH_STEP - 1);
        flush.written(FLUSH_STEP);
        flush.written(FLUSH_STEP + 1);
        let flushes = flush.finish().unwrap();
        assert_eq!(flushes, 1, "one step written, one flush");

        let flush = FlushBehind::new(&file).unwrap();
        assert_eq!(flush.finish().unwrap(), 0, "nothing asked, nothing flushed");
    }

    #[test]
    fn a_failed_flush_is_the_answer() {
        // A pipe cannot be synced (EINVAL), as a disk that lost a write back reports EIO.
        let (_reader, writer) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut flush = FlushBehind::new(&file).unwrap();
        flush.written(FLUSH_STEP);
        let err = flush.finish().expect_err("the flush failed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
}
