//! The task manager's public HTTP API as the upload client uses it: upload (streamed from
//! disk), status, download (streamed to disk).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Body, Response};
use task_protocol::{Accepted, ErrorBody, TaskView};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Timeout of the short requests (status); uploads and downloads take as long as they need.
const SHORT_REQUEST: Duration = Duration::from_secs(30);
/// Size of the pieces the upload is sent in.
const UPLOAD_CHUNK: usize = 1 << 20;

/// A task manager at a base URL.
pub struct Api {
    http: reqwest::Client,
    base_url: String,
}

/// Why a status request failed: worth retrying or not.
pub enum StatusError {
    /// Connection problem or 5xx: the task manager may come back.
    Transient(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Api {
    /// A client of the task manager at `base_url`, sending `token` (its `API_TOKEN`) when given.
    pub fn new(base_url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .default_headers(crate::bearer::headers(token)?)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// Checks that the task manager answers and takes the token, with a cheap request: a
    /// server refuses a wrong token before reading an upload's body, which the client would
    /// only see as a broken connection.
    pub async fn check_access(&self) -> anyhow::Result<()> {
        let url = format!("{}/v1/tasks?page_size=1", self.base_url);
        let response = self
            .http
            .get(&url)
            .timeout(SHORT_REQUEST)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        success(response, &url).await.map(drop)
    }

    /// Uploads `path` as a raw CSV body named by the query's `filename` (no multipart framing
    /// for the server to parse), streamed from disk; returns the task id.
    pub async fn upload(&self, path: &Path, bar: &ProgressBar) -> anyhow::Result<Uuid> {
        let content = map_file(path).with_context(|| format!("cannot read {}", path.display()))?;
        let len = content.len() as u64;
        bar.set_length(len);
        let counter = bar.clone();
        let stream = futures_util::stream::iter(chunks(content, UPLOAD_CHUNK)).map(move |chunk| {
            counter.inc(chunk.len() as u64);
            Ok::<_, std::io::Error>(chunk)
        });
        let name = path
            .file_name()
            .map_or_else(|| "upload.csv".into(), |n| n.to_string_lossy().into_owned());
        let url = format!("{}/v1/data_processor/upload", self.base_url);
        let response = self
            .http
            .post(&url)
            .query(&[("filename", name)])
            .header(CONTENT_TYPE, "text/csv")
            .header(CONTENT_LENGTH, len)
            .body(Body::wrap_stream(stream))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let accepted: Accepted = success(response, &url)
            .await?
            .json()
            .await
            .with_context(|| format!("POST {url}: unexpected answer"))?;
        Ok(accepted.task_id)
    }

    /// The task's state as soon as it is finished, or after `wait` at most.
    pub async fn status(&self, task_id: Uuid, wait: Duration) -> Result<TaskView, StatusError> {
        let url = format!(
            "{}/v1/tasks/status/{task_id}?wait={}",
            self.base_url,
            wait.as_secs_f64()
        );
        let response = self
            .http
            .get(&url)
            .timeout(SHORT_REQUEST + wait)
            .send()
            .await
            .with_context(|| format!("GET {url}"))
            .map_err(StatusError::Transient)?;
        let code = response.status();
        let response = success(response, &url).await.map_err(|err| {
            if code.is_server_error() {
                StatusError::Transient(err)
            } else {
                StatusError::Fatal(err)
            }
        })?;
        response
            .json()
            .await
            .with_context(|| format!("GET {url}: unexpected answer"))
            .map_err(StatusError::Fatal)
    }

    /// Streams the task's result into `out` (an open file that the caller commits).
    pub async fn download(
        &self,
        task_id: Uuid,
        out: &mut tokio::fs::File,
        bar: &ProgressBar,
    ) -> anyhow::Result<u64> {
        let url = format!("{}/v1/data_processor/download/{task_id}", self.base_url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let mut response = success(response, &url).await?;
        if let Some(len) = response.content_length() {
            bar.set_length(len);
        }
        let mut written = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("GET {url}: download interrupted"))?
        {
            out.write_all(&chunk)
                .await
                .context("cannot write the result")?;
            written += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
        }
        // Synced by the caller's commit, for a regular file only: a device or FIFO has no sync.
        out.flush().await.context("cannot write the result")?;
        Ok(written)
    }
}

/// The content of the file at `path`, mapped into memory: the upload sends it from the page
/// cache without reading it into buffers first.
fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is only read. Another process truncating the file during the upload
    // would fault (SIGBUS), as with any memory-mapped reader (the `aggregate` command maps
    // its input too).
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(map))
}

/// `content` in pieces of `size` bytes (the last one shorter), sharing its memory.
fn chunks(content: Bytes, size: usize) -> impl Iterator<Item = Bytes> {
    (0..content.len())
        .step_by(size)
        .map(move |start| content.slice(start..content.len().min(start + size)))
}

/// The response when it is a success, else an error with the server's `{"error": ...}` message.
async fn success(response: Response, url: &str) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&body)
        .ok()
        .map(|body| body.error)
        .unwrap_or_else(|| body.chars().take(500).collect());
    bail!("{url}: HTTP {status}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_sent_whole_in_pieces_of_its_own_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plays.csv");
        let content: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&path, &content).unwrap();
        let mapped = map_file(&path).unwrap();
        assert_eq!(mapped, content);
        for size in [
            1,
            7,
            4096,
            content.len() - 1,
            content.len(),
            content.len() + 1,
        ] {
            let pieces: Vec<Bytes> = chunks(mapped.clone(), size).collect();
            assert!(
                pieces
                    .iter()
                    .all(|piece| !piece.is_empty() && piece.len() <= size)
            );
            assert_eq!(
                pieces.len(),
                content.len().div_ceil(size),
                "pieces of {size}"
            );
            assert_eq!(pieces.concat(), content, "pieces of {size}");
            let whole = mapped.as_ptr_range();
            assert!(pieces.iter().all(|piece| whole.contains(&piece.as_ptr())));
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_upload_and_a_missing_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.csv");
        std::fs::write(&path, b"").unwrap();
        assert!(map_file(&path).unwrap().is_empty());
        assert_eq!(chunks(Bytes::new(), 10).count(), 0);
        assert!(map_file(&dir.path().join("missing.csv")).is_err());
    }
}
