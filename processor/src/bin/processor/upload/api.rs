//! The task manager's public HTTP API as the upload client uses it: upload (streamed from
//! disk), status, download (streamed to disk).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use indicatif::ProgressBar;
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Response};
use serde::Deserialize;
use task_protocol::TaskStatus;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use uuid::Uuid;

/// Timeout of the short requests (status); uploads and downloads take as long as they need.
const SHORT_REQUEST: Duration = Duration::from_secs(30);
/// Read size when streaming the upload from disk.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// A task manager at a base URL.
pub struct Api {
    http: reqwest::Client,
    base_url: String,
}

/// The parts of `GET /v1/tasks/status/{id}` the client uses.
#[derive(Debug, Deserialize)]
pub struct TaskState {
    pub status: TaskStatus,
    /// 0.0 to 1.0.
    #[serde(default)]
    pub progress: f64,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct Accepted {
    task_id: Uuid,
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

    /// Uploads `path` as the multipart field `file`, streamed from disk; returns the task id.
    pub async fn upload(&self, path: &Path, bar: &ProgressBar) -> anyhow::Result<Uuid> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .await
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        bar.set_length(len);
        let counter = bar.clone();
        let stream = ReaderStream::with_capacity(file, UPLOAD_CHUNK)
            .inspect_ok(move |chunk| counter.inc(chunk.len() as u64));
        let name = path
            .file_name()
            .map_or_else(|| "upload.csv".into(), |n| n.to_string_lossy().into_owned());
        let part = Part::stream_with_length(Body::wrap_stream(stream), len)
            .file_name(name)
            .mime_str("text/csv")?;
        let url = format!("{}/v1/data_processor/upload", self.base_url);
        let response = self
            .http
            .post(&url)
            .multipart(Form::new().part("file", part))
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
    pub async fn status(&self, task_id: Uuid, wait: Duration) -> Result<TaskState, StatusError> {
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

    /// Streams the task's result into `out` (an open file that the caller persists).
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
        out.flush().await.context("cannot write the result")?;
        out.sync_all().await.context("cannot write the result")?;
        Ok(written)
    }
}

/// The response when it is a success, else an error with the server's `{"error": ...}` message.
async fn success(response: Response, url: &str) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|json| json.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(500).collect());
    bail!("{url}: HTTP {status}: {message}")
}
