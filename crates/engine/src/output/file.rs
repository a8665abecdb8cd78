//! The output file. A result bound for a regular file is written to a partial file
//! (`.NAME.XXXX.partial`) beside it and renamed onto it once complete. Each partial file is
//! locked (`flock`) while its writer lives, so that the partial file of a writer that was killed
//! can be told from one being written, and removed.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Where a result goes: created with [`OutputFile::create`], written through [`OutputFile::file`],
/// completed by [`OutputFile::commit`]; dropped uncommitted, it leaves no output behind.
pub enum OutputFile {
    /// A regular file (new or existing), written beside and renamed onto `target`.
    Atomic {
        partial: tempfile::NamedTempFile,
        target: PathBuf,
    },
    /// Something that exists and is not a regular file (`/dev/null`, a FIFO, a terminal):
    /// written in place, since renaming a file onto it would replace the device or pipe.
    InPlace(File),
}

impl OutputFile {
    /// Prepares `output`. A symbolic link to a regular file is followed, so the link stays and
    /// the file it names gets the result.
    pub fn create(output: &Path) -> io::Result<Self> {
        let target = match std::fs::metadata(output) {
            // Found now rather than by the rename, after all the work.
            Ok(meta) if meta.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "the output is a directory",
                ));
            }
            Ok(meta) if !meta.is_file() => {
                let file = std::fs::OpenOptions::new().write(true).open(output)?;
                return Ok(Self::InPlace(file));
            }
            Ok(_) => std::fs::canonicalize(output)?,
            Err(_) => output.to_path_buf(),
        };
        Ok(Self::Atomic {
            partial: partial_file_beside(&target)?,
            target,
        })
    }

    /// The file the result is written to.
    pub fn file(&self) -> &File {
        match self {
            Self::Atomic { partial, .. } => partial.as_file(),
            Self::InPlace(file) => file,
        }
    }

    /// Makes the written result the output: synced to disk and renamed onto the target, for a
    /// regular file.
    pub fn commit(self) -> io::Result<()> {
        match self {
            Self::Atomic { partial, target } => {
                partial.as_file().sync_all()?;
                partial.persist(target).map(drop).map_err(|e| e.error)
            }
            Self::InPlace(_) => Ok(()),
        }
    }
}

/// A temporary file in `output`'s directory (`.NAME.XXXX.partial`), to be renamed onto
/// `output` once complete, so that `output` never exists half-written. It is removed when
/// dropped unpersisted, is locked until closed (see [`remove_stale_partials`]), and gets the
/// permissions of any new file (0666 less the umask), not the owner-only mode of temporary files.
pub(crate) fn partial_file_beside(output: &Path) -> io::Result<tempfile::NamedTempFile> {
    let prefix = prefix_of(output);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(SUFFIX);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let file = builder.tempfile_in(dir_of(output))?;
    // Only a cleaner that found the file in the instant before this lock can hold it: then
    // the file is already unlinked, and the rename onto `output` reports it.
    let _ = file.as_file().try_lock();
    Ok(file)
}

/// Removes the partial files of `output` that no live writer holds (left by a process that was
/// killed); returns how many. Partial files being written, by this process or another one
/// sharing the directory, are left alone.
pub fn remove_stale_partials(output: &Path) -> io::Result<usize> {
    let prefix = prefix_of(output);
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir_of(output)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(SUFFIX)) {
            continue;
        }
        let path = entry.path();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file.try_lock().is_ok() {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

const SUFFIX: &str = ".partial";

fn dir_of(output: &Path) -> &Path {
    match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn prefix_of(output: &Path) -> String {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_abandoned_partials_of_the_output_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("task.csv");
        let live = partial_file_beside(&output).unwrap();
        let other = partial_file_beside(&dir.path().join("other.csv")).unwrap();
        // A writer that died: its file stays, unlocked (the `File` is dropped at once).
        let (_, abandoned) = partial_file_beside(&output).unwrap().keep().unwrap();

        assert_eq!(remove_stale_partials(&output).unwrap(), 1);
        assert!(!abandoned.exists());
        assert!(
            live.path().exists(),
            "a partial file being written was removed"
        );
        assert!(
            other.path().exists(),
            "another output's partial file was removed"
        );
        live.persist(&output).unwrap();
        assert!(output.exists());
        assert_eq!(remove_stale_partials(&output).unwrap(), 0);
    }

    fn write_and_commit(output: &Path, text: &str) {
        let out = OutputFile::create(output).unwrap();
        io::Write::write_all(&mut out.file(), text.as_bytes()).unwrap();
        out.commit().unwrap();
    }

    #[test]
    fn a_new_or_existing_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.csv");
        std::fs::write(&output, "old").unwrap();
        let out = OutputFile::create(&output).unwrap();
        io::Write::write_all(&mut out.file(), b"half").unwrap();
        drop(out);
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "old");
        write_and_commit(&output, "new");
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = OutputFile::create(dir.path()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_stays_and_its_file_gets_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.csv");
        let link = dir.path().join("link.csv");
        std::fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_and_commit(&link, "new");
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_in_place_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        write_and_commit(&fifo, "through the pipe");
        assert_eq!(reader.join().unwrap(), "through the pipe");
        assert!(fifo.metadata().unwrap().file_type().is_fifo());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
