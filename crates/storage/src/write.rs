//! Objects written as S3 multipart uploads: parts of [`PART_BYTES`], a few in flight, so that
//! memory stays bounded whatever the object's size. An object appears only when its upload
//! completes; an upload dropped before that is aborted, and leaves nothing.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::{Bucket, StorageError};

/// Size of a part: S3 allows 10,000 parts, which makes objects of up to 100 GB.
pub const PART_BYTES: usize = 10 << 20;
/// Parts being sent at once, at most: the memory of an upload is about one more than this.
const PARTS_IN_FLIGHT: usize = 3;
/// Bytes read from a local file at once, when one is stored.
const FILE_READ: usize = 1 << 20;

/// An object being written; see the module's documentation.
pub struct ObjectWriter {
    upload: Option<WriteMultipart>,
    key: String,
    written: u64,
}

impl Bucket {
    /// Starts writing the object `key`.
    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, StorageError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| StorageError::object(key, e))?;
        Ok(ObjectWriter {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            key: key.to_string(),
            written: 0,
        })
    }

    /// Stores the local file `path` as the object `key`; returns its size.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let what = || format!("cannot read {}", path.display());
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::io(what(), e))?;
        let mut writer = self.writer(key).await?;
        loop {
            let mut buffer = BytesMut::with_capacity(FILE_READ);
            let read = file
                .read_buf(&mut buffer)
                .await
                .map_err(|e| StorageError::io(what(), e))?;
            if read == 0 {
                break;
            }
            writer.write(buffer.freeze()).await?;
        }
        writer.finish().await
    }
}

impl ObjectWriter {
    /// Adds `bytes` to the object; waits while [`PARTS_IN_FLIGHT`] parts are being sent.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(self.ended());
        };
        if let Err(e) = upload.wait_for_capacity(PARTS_IN_FLIGHT).await {
            return Err(StorageError::object(&self.key, e));
        }
        self.written += bytes.len() as u64;
        upload.put(bytes);
        Ok(())
    }

    /// Completes the upload: the object is there once this returns; returns its size.
    pub async fn finish(mut self) -> Result<u64, StorageError> {
        let Some(upload) = self.upload.take() else {
            return Err(self.ended());
        };
        match upload.finish().await {
            Ok(_) => Ok(self.written),
            Err(e) => Err(StorageError::object(&self.key, e)),
        }
    }

    /// Drops the upload and its parts (an upload dropped unfinished is aborted too, in the
    /// background).
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            abort(upload, &self.key).await;
        }
    }

    fn ended(&self) -> StorageError {
        StorageError::Unavailable {
            key: self.key.clone(),
            message: "the upload already ended".into(),
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { abort(upload, &key).await });
            }
            Err(_) => tracing::warn!("the unfinished upload of {key} was left to the bucket"),
        }
    }
}

async fn abort(upload: WriteMultipart, key: &str) {
    if let Err(e) = upload.abort().await {
        // The bucket removes it by its lifecycle rule for incomplete uploads, if it has one.
        tracing::warn!("cannot abort the unfinished upload of {key}: {e}");
    }
}
