//! Partial output files: `.NAME.XXXX.partial` beside the output, renamed onto it once complete.
//! Each is locked (`flock`) while its writer lives, so that the partial file of a writer that
//! was killed can be told from one being written, and removed.

use std::fs::File;
use std::io;
use std::path::Path;

/// A temporary file in `output`'s directory (`.NAME.XXXX.partial`), to be renamed onto
/// `output` once complete, so that `output` never exists half-written. It is removed when
/// dropped unpersisted, is locked until closed (see [`remove_stale_partials`]), and gets the
/// permissions of any new file (0666 less the umask), not the owner-only mode of temporary files.
pub fn partial_file_beside(output: &Path) -> io::Result<tempfile::NamedTempFile> {
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
}
