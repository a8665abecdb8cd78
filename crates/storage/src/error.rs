//! The one error of the storage, whatever the backend.

use std::io;

/// Why the storage could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `STORAGE_URL` names no storage this program knows.
    #[error("invalid STORAGE_URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A key that would leave the storage's root (from a queue message, say).
    #[error("refused key {key:?}: {reason}")]
    UnsafeKey { key: String, reason: &'static str },
    /// The object or file is not there.
    #[error("{0} is missing from the storage")]
    NotFound(String),
    /// The bucket could not be reached, or refused the request, after the client's retries.
    #[error("the object storage failed on {key}: {message}")]
    Unavailable { key: String, message: String },
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    /// The error of a bucket's request about `key`.
    pub(crate) fn object(key: &str, error: object_store::Error) -> StorageError {
        match error {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
            other => StorageError::Unavailable {
                key: key.to_string(),
                message: other.to_string(),
            },
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> StorageError {
        StorageError::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether trying again later may succeed (the bucket or the disk was unavailable),
    /// rather than the request being wrong.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable { .. } | StorageError::Io { .. }
        )
    }
}
