//! `STORAGE_URL`: `s3://bucket/prefix` for a bucket, or a local directory (a path, or a
//! `file://` URL).

use std::path::PathBuf;

use crate::StorageError;

/// Where uploads and results live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local (or mounted) directory.
    Dir(PathBuf),
    /// An S3-compatible bucket, the keys under `prefix` (empty, or without slashes at its ends).
    Bucket { name: String, prefix: String },
}

impl Location {
    /// Reads a `STORAGE_URL`.
    pub fn parse(url: &str) -> Result<Location, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            if url.trim().is_empty() {
                return Err(invalid("it is empty"));
            }
            return Ok(Location::Dir(PathBuf::from(url)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" if rest.starts_with('/') => Ok(Location::Dir(PathBuf::from(rest))),
            "file" => Err(invalid("a file:// URL takes an absolute path")),
            "s3" | "s3a" => {
                let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if name.is_empty() {
                    return Err(invalid("it names no bucket (s3://bucket/prefix)"));
                }
                let prefix = prefix.trim_matches('/');
                if prefix.split('/').any(|part| part == ".." || part == ".") {
                    return Err(invalid("the prefix may not contain `.` or `..`"));
                }
                Ok(Location::Bucket {
                    name: name.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            _ => Err(invalid("expected s3://bucket/prefix or a local directory")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read() {
        assert_eq!(
            Location::parse("local_storage").unwrap(),
            Location::Dir("local_storage".into())
        );
        assert_eq!(
            Location::parse("file:///data").unwrap(),
            Location::Dir("/data".into())
        );
        assert_eq!(
            Location::parse("s3://plays/tasks/").unwrap(),
            Location::Bucket {
                name: "plays".into(),
                prefix: "tasks".into()
            }
        );
        assert_eq!(
            Location::parse("s3://plays").unwrap(),
            Location::Bucket {
                name: "plays".into(),
                prefix: String::new()
            }
        );
        for bad in [
            "",
            "s3://",
            "s3:///x",
            "gs://b/p",
            "file://relative",
            "s3://b/../x",
        ] {
            let err = Location::parse(bad).unwrap_err();
            assert!(err.to_string().contains("STORAGE_URL"), "{bad}: {err}");
        }
    }
}
