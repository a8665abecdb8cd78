//! The JSON form of a task, and the absolute URLs in it.

use axum::http::HeaderMap;
use axum::http::header::HOST;
use task_protocol::{TaskStatus, TaskView};
use uuid::Uuid;

use crate::store::Task;

/// The view of `task`; `base_url` is the service's public base URL.
pub fn task_view(task: Task, base_url: &str) -> TaskView {
    let done = task.status == TaskStatus::Done && task.expired_at.is_none();
    let failed = task.status == TaskStatus::Failed;
    TaskView {
        task_id: task.id,
        status: task.status,
        created_at: rfc3339(task.created_at),
        updated_at: rfc3339(task.updated_at),
        filename: task.original_filename,
        input_bytes: task.input_bytes,
        progress: f64::from(task.progress_permille) / 1000.0,
        rows: task.rows,
        groups: task.groups,
        output_bytes: task.output_bytes,
        download_link: done.then(|| download_url(base_url, task.id)),
        error: if failed { task.error } else { None },
        expired_at: task.expired_at.map(rfc3339),
    }
}

/// Absolute URL of a task's result.
pub fn download_url(base_url: &str, id: Uuid) -> String {
    format!("{base_url}/v1/data_processor/download/{id}")
}

/// The base URL clients reach the service at: `PUBLIC_URL` when set, else the request's
/// `Host` (with `X-Forwarded-Proto`), else `fallback`.
pub fn base_url(public_url: Option<&str>, headers: &HeaderMap, fallback: &str) -> String {
    if let Some(url) = public_url {
        return url.to_string();
    }
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| is_plausible_host(host));
    let Some(host) = host else {
        return fallback.to_string();
    };
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

/// A `Host` value made of host-name, IP and port characters only.
fn is_plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
}

fn rfc3339(unix_millis: i64) -> String {
    let millis = u64::try_from(unix_millis).unwrap_or(0);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn base_url_sources() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            base_url(None, &headers, "http://127.0.0.1:1"),
            "http://127.0.0.1:1"
        );
        headers.insert(HOST, HeaderValue::from_static("example.org:5000"));
        assert_eq!(base_url(None, &headers, "x"), "http://example.org:5000");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(None, &headers, "x"), "https://example.org:5000");
        assert_eq!(base_url(Some("https://a.b"), &headers, "x"), "https://a.b");
        headers.insert(HOST, HeaderValue::from_static("evil/path?"));
        assert_eq!(
            base_url(None, &headers, "http://fallback"),
            "http://fallback"
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(1_600_000_000_123), "2020-09-13T12:26:40.123Z");
    }
}
