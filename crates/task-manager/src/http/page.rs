//! The web page at `GET /`: upload a CSV file, follow its task, download the result, and see
//! the recent tasks. Plain HTML, CSS and JavaScript from `page/`, built into the binary and
//! served at fixed paths. The page is public like `/health`; only the `/v1` calls it makes
//! need a token (kept in the browser's session storage, sent as a bearer header).
//!
//! Every file is sent with a Content-Security-Policy that allows nothing but this origin (the
//! page has no inline script or style), `Cache-Control: no-cache` and an `ETag`, so a browser
//! keeps a copy and asks whether it is still current (304) rather than loading it again.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use sha2::{Digest, Sha256};

/// What the page may load: its own files and API only, never a frame of another site.
const POLICY: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; \
                      frame-ancestors 'none'; object-src 'none'";

/// One file of the page.
struct Asset {
    content_type: &'static str,
    body: &'static str,
    /// A digest of `body`, quoted as the header has it.
    etag: String,
    etag_header: HeaderValue,
}

impl Asset {
    fn new(content_type: &'static str, body: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let etag = format!("\"{hex}\"");
        Asset {
            content_type,
            body,
            // Quoted hexadecimal digits are a valid header value.
            etag_header: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
            etag,
        }
    }

    /// The file, or 304 when the request's `If-None-Match` names this version.
    fn respond(&self, request: &HeaderMap) -> Response {
        let headers = [
            (CONTENT_TYPE, HeaderValue::from_static(self.content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (ETAG, self.etag_header.clone()),
        ];
        if matches_etag(request, &self.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        (headers, self.body).into_response()
    }
}

/// Whether `If-None-Match` lists `etag` (or is `*`).
fn matches_etag(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/html; charset=utf-8", include_str!("page/index.html")));
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "text/javascript; charset=utf-8",
        include_str!("page/page.js"),
    )
});
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/css; charset=utf-8", include_str!("page/page.css")));
static ICON: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("image/svg+xml", include_str!("page/favicon.svg")));

/// The page's routes: `/`, `/page.js`, `/page.css` and `/favicon.svg`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", serve(&INDEX))
        .route("/page.js", serve(&SCRIPT))
        .route("/page.css", serve(&STYLE))
        .route("/favicon.svg", serve(&ICON))
}

/// `GET` (and `HEAD`) of `asset`.
fn serve<S: Clone + Send + Sync + 'static>(asset: &'static LazyLock<Asset>) -> MethodRouter<S> {
    get(move |headers: HeaderMap| async move { asset.respond(&headers) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_matched() {
        let mut headers = HeaderMap::new();
        assert!(!matches_etag(&headers, "\"abc\""));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"abc\""));
        assert!(matches_etag(&headers, "\"abc\""));
        assert!(!matches_etag(&headers, "\"ab\""));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches_etag(&headers, "\"abc\""));
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let index = &INDEX.body;
        assert!(index.contains("src=\"page.js\""), "{index}");
        assert!(index.contains("href=\"page.css\""), "{index}");
        // No inline script or style: the policy would block them.
        assert_eq!(index.matches("<script").count(), 1, "{index}");
        assert!(!index.contains("<style") && !index.contains("style="));
        let handlers = index
            .split_whitespace()
            .filter(|word| word.starts_with("on") && word.contains('='));
        assert_eq!(handlers.count(), 0, "an inline event handler: {index}");
    }
}
