//! Resolution of the storage-relative paths carried by task messages.

use std::path::{Component, Path, PathBuf};

/// A message path that would escape the storage directory.
#[derive(Debug, thiserror::Error)]
#[error("refused path {path:?} in the task message: {reason}")]
pub struct UnsafePath {
    path: String,
    reason: &'static str,
}

/// Joins `relative` to `root`, refusing empty and absolute paths and any `..` component.
pub fn resolve(root: &Path, relative: &str) -> Result<PathBuf, UnsafePath> {
    let refuse = |reason| UnsafePath {
        path: relative.to_owned(),
        reason,
    };
    let path = Path::new(relative);
    if relative.is_empty() {
        return Err(refuse("it is empty"));
    }
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(refuse("it contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("it must be relative to the storage directory"));
            }
        }
    }
    if path.file_name().is_none() {
        return Err(refuse("it names no file"));
    }
    Ok(root.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_under_the_root() {
        let root = Path::new("/data");
        assert_eq!(
            resolve(root, "raw_data/a.csv").unwrap(),
            Path::new("/data/raw_data/a.csv")
        );
        assert_eq!(
            resolve(root, "./processed_data/a.csv").unwrap(),
            Path::new("/data/processed_data/a.csv")
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        let root = Path::new("/data");
        for bad in [
            "",
            "/etc/passwd",
            "../secret.csv",
            "raw_data/../../x.csv",
            ".",
        ] {
            let err = resolve(root, bad).unwrap_err();
            assert!(err.to_string().contains("refused path"), "{bad}: {err}");
        }
    }
}
