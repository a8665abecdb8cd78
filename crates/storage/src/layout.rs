//! [`Storage`]: the local directory and, when one is configured, the bucket, behind the
//! storage's keys. The directory holds `raw_data/` (uploads), `processed_data/` (results)
//! and `tmp/` (the engine's spills); with a bucket, the bucket holds the uploads and results
//! and the directory only what is being written. File names come from task ids, never from
//! user input; keys from a queue message are checked ([`Storage::local_path`]).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use task_protocol::{processed_data_path, raw_data_path};
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use crate::{Bucket, Download, ObjectReader, StorageError};

/// The engine's spill directory under the root.
pub const TEMP_DIR: &str = "tmp";
/// Names of uploads being received: `raw_data/.upload-XXXXXX.partial`.
const UPLOAD_PREFIX: &str = ".upload-";
const UPLOAD_SUFFIX: &str = ".partial";
/// Age after which a partial upload is taken for a crash's leftover.
const STALE_UPLOAD_AGE: Duration = Duration::from_secs(24 * 3600);
/// Read size of a local file streamed as a download.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Where a task's files live; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    bucket: Option<Bucket>,
}

/// A task's input, as the engine reads it.
pub enum Input {
    /// A local file (memory-mapped by the engine).
    File(PathBuf),
    /// An object, streamed.
    Object(ObjectReader),
}

impl Storage {
    /// The directory `root` (its missing folders created, partial uploads a crash left there
    /// removed) and the `bucket`, if any.
    pub fn open(root: &Path, bucket: Option<Bucket>) -> Result<Storage, StorageError> {
        for dir in ["raw_data", "processed_data", TEMP_DIR] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|e| StorageError::io(format!("cannot create {}", path.display()), e))?;
        }
        let storage = Storage {
            root: root.to_path_buf(),
            bucket,
        };
        storage.remove_stale_uploads();
        Ok(storage)
    }

    /// The local directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bucket, when uploads and results live in one.
    pub fn bucket(&self) -> Option<&Bucket> {
        self.bucket.as_ref()
    }

    /// Where uploads and results live, for logs and `/health`.
    pub fn describe(&self) -> String {
        match &self.bucket {
            Some(bucket) => bucket.url(),
            None => self.root.display().to_string(),
        }
    }

    /// The local file of `key`: the key joined to the root, refusing empty and absolute keys
    /// and any `..` component.
    pub fn local_path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let refuse = |reason| StorageError::UnsafeKey {
            key: key.to_owned(),
            reason,
        };
        let path = Path::new(key);
        if key.is_empty() {
            return Err(refuse("it is empty"));
        }
        for component in path.components() {
            match component {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => return Err(refuse("it contains `..`")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refuse("it must be relative to the storage"));
                }
            }
        }
        if path.file_name().is_none() {
            return Err(refuse("it names no file"));
        }
        Ok(self.root.join(path))
    }

    /// Where a task's upload is, in the local directory.
    pub fn input_path(&self, id: Uuid) -> PathBuf {
        self.root.join(raw_data_path(id))
    }

    /// Where a task's result is written, in the local directory.
    pub fn output_path(&self, id: Uuid) -> PathBuf {
        self.root.join(processed_data_path(id))
    }

    /// `path` relative to the root, as task messages carry keys.
    pub fn relative_path(&self, path: &Path) -> Option<String> {
        Some(path.strip_prefix(&self.root).ok()?.to_str()?.to_string())
    }

    /// A new temporary file beside the uploads, removed when dropped unless persisted.
    pub fn upload_temp_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .suffix(UPLOAD_SUFFIX)
            .tempfile_in(self.root.join("raw_data"))
    }

    /// The input stored at `key`, for the engine.
    pub async fn input(&self, key: &str) -> Result<Input, StorageError> {
        match &self.bucket {
            Some(bucket) => Ok(Input::Object(bucket.reader(key).await?)),
            // A missing file is the engine's to report, as any unreadable input.
            None => Ok(Input::File(self.local_path(key)?)),
        }
    }

    /// Whether something is stored at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match &self.bucket {
            Some(bucket) => Ok(bucket.size(key).await?.is_some()),
            None => tokio::fs::try_exists(self.local_path(key)?)
                .await
                .map_err(|e| StorageError::io(format!("cannot look for {key}"), e)),
        }
    }

    /// Makes the local file of `key` (a result the engine wrote) the storage's: stored in the
    /// bucket, then removed from the directory. The directory alone already holds it.
    pub async fn commit(&self, key: &str) -> Result<(), StorageError> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let path = self.local_path(key)?;
        let bytes = bucket.put_file(key, &path).await?;
        tracing::debug!(key, bytes, "stored in the bucket");
        remove_file(&path).await
    }

    /// Removes what is stored at `key`, in the directory and in the bucket; nothing there is
    /// no error.
    pub async fn remove(&self, key: &str) -> Result<(), StorageError> {
        remove_file(&self.local_path(key)?).await?;
        match &self.bucket {
            Some(bucket) => bucket.delete(key).await,
            None => Ok(()),
        }
    }

    /// What is stored at `key`, as a download; `None` when nothing is.
    pub async fn download(&self, key: &str) -> Result<Option<Download>, StorageError> {
        if let Some(bucket) = &self.bucket {
            return bucket.download(key).await;
        }
        let path = self.local_path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(format!("cannot open {key}"), e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| StorageError::io(format!("cannot read {key}"), e))?
            .len();
        let body = ReaderStream::with_capacity(file, DOWNLOAD_CHUNK).boxed();
        Ok(Some(Download { len, body }))
    }

    /// Removes partial uploads that a crash left behind. Only old ones: another task manager
    /// sharing the directory may be receiving the recent ones.
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
}

async fn remove_file(path: &Path) -> Result<(), StorageError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(
            format!("cannot remove {}", path.display()),
            e,
        )),
    }
}

#[cfg(test)]
mod tests;
