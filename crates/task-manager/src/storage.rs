//! The storage root: `raw_data/` (uploads), `processed_data/` (results) and `tmp/` (engine
//! spill files). File names are built from task ids only, never from user input.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use task_protocol::{processed_data_path, raw_data_path};
use uuid::Uuid;

use crate::settings::TEMP_DIR;

/// Names of uploads being received: `raw_data/.upload-XXXXXX.partial`.
const UPLOAD_PREFIX: &str = ".upload-";
const UPLOAD_SUFFIX: &str = ".partial";
/// Age after which a partial upload is taken for a crash's leftover.
const STALE_UPLOAD_AGE: Duration = Duration::from_secs(24 * 3600);

/// The storage root and the paths of a task's files.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Creates the directories that are missing.
    pub fn open(root: &Path) -> io::Result<Storage> {
        for dir in ["raw_data", "processed_data", TEMP_DIR] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
            })?;
        }
        let storage = Storage {
            root: root.to_path_buf(),
        };
        storage.remove_stale_uploads();
        Ok(storage)
    }

    /// Removes partial uploads that a crash left behind. Only old ones: another task manager
    /// sharing the storage may be receiving the recent ones.
    fn remove_stale_uploads(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("raw_data")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let partial = name.starts_with(UPLOAD_PREFIX) && name.ends_with(UPLOAD_SUFFIX);
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > STALE_UPLOAD_AGE);
            if partial && stale {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!("removed the stale partial upload {name}"),
                    Err(e) => tracing::warn!("cannot remove the partial upload {name}: {e}"),
                }
            }
        }
    }

    /// Where a task's upload is stored.
    pub fn input_path(&self, id: Uuid) -> PathBuf {
        self.root.join(raw_data_path(id))
    }

    /// Where a task's result is written.
    pub fn output_path(&self, id: Uuid) -> PathBuf {
        self.root.join(processed_data_path(id))
    }

    /// `path` relative to the storage root, as task messages carry paths.
    pub fn relative_path(&self, path: &Path) -> Option<String> {
        Some(path.strip_prefix(&self.root).ok()?.to_str()?.to_string())
    }

    /// A new temporary file beside the uploads, removed when dropped unless persisted.
    pub fn upload_temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .suffix(UPLOAD_SUFFIX)
            .tempfile_in(self.root.join("raw_data"))
    }
}

/// Keeps the last path component of an uploaded file's name, with any character other than
/// ASCII letters, digits, `.`, `-` and `_` replaced by `_`; `None` when nothing usable is left.
pub fn sanitize_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(crate::store::MAX_FILENAME_CHARS)
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean.chars().all(|c| c == '_' || c == '.') {
        None
    } else {
        Some(clean)
    }
}

/// The name a result is downloaded as: `<stem>_aggregated.csv` from the upload's (sanitized)
/// name, or `<task_id>.csv`.
pub fn download_filename(id: Uuid, original_filename: Option<&str>) -> String {
    let stem =
        original_filename
            .and_then(sanitize_filename)
            .map(|name| match name.rsplit_once('.') {
                Some((stem, _ext)) if !stem.is_empty() => stem.to_string(),
                _ => name,
            });
    match stem {
        Some(stem) => format!("{stem}_aggregated.csv"),
        None => format!("{id}.csv"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_sanitized() {
        assert_eq!(sanitize_filename("plays.csv").as_deref(), Some("plays.csv"));
        assert_eq!(
            sanitize_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            sanitize_filename("C:\\data\\my plays \"2020\".csv").as_deref(),
            Some("my_plays__2020_.csv")
        );
        assert_eq!(sanitize_filename(".hidden").as_deref(), Some("hidden"));
        assert_eq!(sanitize_filename(".."), None);
        assert_eq!(sanitize_filename("\"\";"), None);
        assert_eq!(sanitize_filename(""), None);
    }

    #[test]
    fn old_partial_uploads_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let old = storage.upload_temp_file().unwrap().keep().unwrap().1;
        let recent = storage.upload_temp_file().unwrap().keep().unwrap().1;
        let kept = dir.path().join("raw_data/.upload-kept.csv");
        std::fs::write(&kept, "not partial").unwrap();
        let two_days_ago = std::time::SystemTime::now() - 2 * STALE_UPLOAD_AGE;
        for path in [&old, &kept] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(two_days_ago)
                .unwrap();
        }
        Storage::open(dir.path()).unwrap();
        assert!(!old.exists());
        assert!(recent.exists());
        assert!(kept.exists());
    }

    #[test]
    fn download_names() {
        let id = Uuid::nil();
        assert_eq!(
            download_filename(id, Some("plays.csv")),
            "plays_aggregated.csv"
        );
        assert_eq!(download_filename(id, Some("data")), "data_aggregated.csv");
        assert_eq!(
            download_filename(id, None),
            "00000000-0000-0000-0000-000000000000.csv"
        );
        assert_eq!(
            download_filename(id, Some("/")),
            "00000000-0000-0000-0000-000000000000.csv"
        );
    }
}
