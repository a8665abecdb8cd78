//! Uploads still arriving: a task message published as the upload starts names the file the
//! upload is being written to ([`task_protocol::TaskMessage::arriving_path`]), so that the
//! engine aggregates the upload while it arrives. The upload is complete once the task
//! manager has renamed that file to the task's input path (after recording the task); it was
//! refused when the file disappears without being renamed.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Control, Growth};
use parking_lot::Mutex;
use runner::GrowingFile;

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

/// An arriving upload's file as the engine follows it, to its end.
pub struct ArrivingFile {
    file: File,
    arriving: PathBuf,
    input: PathBuf,
    control: Control,
    idle_timeout: Duration,
    /// The largest size seen, and when it was first seen.
    growth: Mutex<(u64, Instant)>,
    end: ReadEnd,
}

impl ArrivingFile {
    /// Follows `file` (open at `arriving`) until its upload is complete; a wait ends with an
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
            arriving,
            input,
            control,
            idle_timeout,
            growth: Mutex::new((0, Instant::now())),
            end,
        }
    }

    fn unfinished(&self, why: Unfinished, message: &str) -> io::Error {
        *self.end.lock() = Some(why);
        io::Error::other(message.to_string())
    }

    /// The file's size, noting when it last grew.
    fn size(&self) -> io::Result<u64> {
        let size = self.file.metadata()?.len();
        let mut growth = self.growth.lock();
        if size > growth.0 {
            *growth = (size, Instant::now());
        }
        Ok(size)
    }

    fn idle(&self) -> Duration {
        let growth = self.growth.lock();
        growth.1.elapsed()
    }
}

impl GrowingFile for ArrivingFile {
    fn file(&self) -> &File {
        &self.file
    }
}

impl Growth for ArrivingFile {
    fn wait_beyond(&self, pos: u64) -> io::Result<u64> {
        loop {
            let size = self.size()?;
            if size > pos {
                return Ok(size);
            }
            match upload_state(&self.arriving, &self.input)? {
                // Renamed once all was written: the size seen after the rename is final.
                UploadState::Complete => return self.size(),
                UploadState::Refused => {
                    return Err(self.unfinished(Unfinished::Refused, "the upload was refused"));
                }
                UploadState::Arriving => {}
            }
            if self.control.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            if self.idle() > self.idle_timeout {
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

    fn follower(upload: &Upload, idle: Duration, end: &ReadEnd) -> ArrivingFile {
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
    fn follows_a_renamed_upload_to_its_end() {
        let upload = upload();
        let end = ReadEnd::default();
        let follower = follower(&upload, Duration::from_secs(60), &end);
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
        let expected: String = (0..300).map(|i| format!("line {i}\n")).collect();
        let mut pos = 0;
        loop {
            let size = follower.wait_beyond(pos).unwrap();
            if size <= pos {
                break;
            }
            pos = size;
        }
        writer.join().unwrap();
        assert_eq!(pos, expected.len() as u64);
        assert_eq!(std::fs::read_to_string(&upload.input).unwrap(), expected);
        assert_eq!(*end.lock(), None);
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
        let follower = follower(&upload, Duration::from_secs(60), &end);
        assert_eq!(follower.wait_beyond(0).unwrap(), 9);
        std::fs::remove_file(&upload.arriving).unwrap();
        assert!(follower.wait_beyond(9).is_err());
        assert_eq!(*end.lock(), Some(Unfinished::Refused));
        assert_eq!(
            upload_state(&upload.arriving, &upload.input).unwrap(),
            UploadState::Refused
        );
    }

    #[test]
    fn a_stalled_upload_ends_the_wait() {
        let upload = upload();
        let end = ReadEnd::default();
        let follower = follower(&upload, Duration::from_millis(50), &end);
        assert!(follower.wait_beyond(0).is_err());
        assert_eq!(*end.lock(), Some(Unfinished::Stalled));
    }
}
