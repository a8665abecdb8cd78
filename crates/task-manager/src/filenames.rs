//! The names of uploaded files: kept for the download's name, sanitized, never used as a
//! path (the storage names files by task id).

use uuid::Uuid;

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
