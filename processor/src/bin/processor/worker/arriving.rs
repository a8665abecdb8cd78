//! Uploads still arriving: a task message published as the upload starts names the file the
//! upload is being written to ([`task_protocol::TaskMessage::arriving_path`]), so that the
//! engine aggregates the upload while it arrives. The upload is complete once the task
//! manager has renamed that file to the task's input path (after recording the task); it was
//! refused when the file disappears without being renamed.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use processor::Control;

/// Pause between two looks at a file that has not grown.
const POLL: Duration = Duration::from_millis(10);

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    Arriving,
    /// Renamed to the input path: complete, and its task recorded.
    Complete,
    /// Gone without being renamed: there is no task.
    Refused,
}

/// Where the upload being written to `arriving` (to be renamed to `input`) stands.
pub fn upload_state(arriving: &Path, input: &Path) -> io::Result<UploadState> {
    if input.try_exists()? {
        return Ok(UploadState::Complete);
    }
    if arriving.try_exists()? {
        return Ok(UploadState::Arriving);
    }
    // Renamed between the two looks?
    Ok(if input.try_exists()? {
        UploadState::Complete
    } else {
        UploadState::Refused
    })
}

/// How reading an arriving upload ended, when it did not end with the upload's last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    Refused,
    /// The file did not grow for the idle timeout.
    Stalled,
}

/// What the reader found out, shared with whoever runs the engine on it.
pub type ReadEnd = Arc<Mutex<Option<Unfinished>>>;

/// Reads an arriving upload's file as it grows, to its end.
pub struct ArrivingFile {
    file: File,
    pos: u64,
    arriving: PathBuf,
    input: PathBuf,
    control: Control,
    idle_timeout: Duration,
    last_growth: Instant,
    end: ReadEnd,
}

impl ArrivingFile {
    /// Reads `file` (open at `arriving`) until its upload is complete; a wait ends with an
    /// error when `control` is cancelled, when the upload is refused, or when the file does
    /// not grow for `idle_timeout` (then `end` tells which).
    pub fn new(
        file: File,
        arriving: PathBuf,
        input: PathBuf,
        control: Control,
        idle_timeout: Duration,
        end: ReadEnd,
    ) -> ArrivingFile {
        ArrivingFile {
            file,
            pos: 0,
            arriving,
            input,
            control,
            idle_timeout,
            last_growth: Instant::now(),
            end,
        }
    }

    fn unfinished(&self, why: Unfinished, message: &str) -> io::Error {
        *self.end.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        io::Error::other(message.to_string())
    }
}

impl Read for ArrivingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let size = self.file.metadata()?.len();
            if self.pos < size {
                let want = buf
                    .len()
                    .min(usize::try_from(size - self.pos).unwrap_or(usize::MAX));
                let read = self.file.read_at(&mut buf[..want], self.pos)?;
                self.pos += read as u64;
                self.last_growth = Instant::now();
                return Ok(read);
            }
            match upload_state(&self.arriving, &self.input)? {
                // Renamed once all was written: the size seen after the rename is final.
                UploadState::Complete if self.file.metadata()?.len() > self.pos => continue,
                UploadState::Complete => return Ok(0),
                UploadState::Refused => {
                    return Err(self.unfinished(Unfinished::Refused, "the upload was refused"));
                }
                UploadState::Arriving => {}
            }
            if self.control.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            if self.last_growth.elapsed() > self.idle_timeout {
                return Err(self.unfinished(
                    Unfinished::Stalled,
                    "the upload stopped arriving (WORKER_ARRIVAL_TIMEOUT)",
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    struct Upload {
        _dir: tempfile::TempDir,
        arriving: PathBuf,
        input: PathBuf,
    }

    fn upload() -> Upload {
        let dir = tempfile::tempdir().unwrap();
        let arriving = dir.path().join(".upload-1.partial");
        let input = dir.path().join("task.csv");
        std::fs::write(&arriving, b"").unwrap();
        Upload {
            _dir: dir,
            arriving,
            input,
        }
    }

    fn reader(upload: &Upload, idle: Duration, end: &ReadEnd) -> ArrivingFile {
        ArrivingFile::new(
            File::open(&upload.arriving).unwrap(),
            upload.arriving.clone(),
            upload.input.clone(),
            Control::new(),
            idle,
            end.clone(),
        )
    }

    #[test]
    fn reads_to_the_end_of_a_renamed_upload() {
        let upload = upload();
        let end = ReadEnd::default();
        let mut reader = reader(&upload, Duration::from_secs(60), &end);
        let (arriving, input) = (upload.arriving.clone(), upload.input.clone());
        let writer = std::thread::spawn(move || {
            let mut out = std::fs::OpenOptions::new()
                .append(true)
                .open(&arriving)
                .unwrap();
            for i in 0..300 {
                writeln!(out, "line {i}").unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(30));
                }
            }
            assert_eq!(
                upload_state(&arriving, &input).unwrap(),
                UploadState::Arriving
            );
            std::fs::rename(&arriving, &input).unwrap();
        });
        let mut read = String::new();
        reader.read_to_string(&mut read).unwrap();
        writer.join().unwrap();
        let expected: String = (0..300).map(|i| format!("line {i}\n")).collect();
        assert_eq!(read, expected);
        assert_eq!(*end.lock().unwrap(), None);
        assert_eq!(
            upload_state(&upload.arriving, &upload.input).unwrap(),
            UploadState::Complete
        );
    }

    #[test]
    fn a_removed_upload_is_refused() {
        let upload = upload();
        std::fs::write(&upload.arriving, b"Song,Date").unwrap();
        let end = ReadEnd::default();
        let mut reader = reader(&upload, Duration::from_secs(60), &end);
        let mut buf = [0u8; 64];
        assert_eq!(reader.read(&mut buf).unwrap(), 9);
        std::fs::remove_file(&upload.arriving).unwrap();
        assert!(reader.read(&mut buf).is_err());
        assert_eq!(*end.lock().unwrap(), Some(Unfinished::Refused));
        assert_eq!(
            upload_state(&upload.arriving, &upload.input).unwrap(),
            UploadState::Refused
        );
    }

    #[test]
    fn a_stalled_upload_ends_the_read() {
        let upload = upload();
        let end = ReadEnd::default();
        let mut reader = reader(&upload, Duration::from_millis(50), &end);
        assert!(reader.read(&mut [0u8; 16]).is_err());
        assert_eq!(*end.lock().unwrap(), Some(Unfinished::Stalled));
    }
}
