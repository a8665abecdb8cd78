//! An S3-compatible server for one test: `moto_server` (moto, in memory) as a child process
//! with a bucket of its own, behind a [`TcpProxy`] that can cut it off without losing its data;
//! and the test's own look at the bucket (objects, keys, unfinished multipart uploads).
//!
//! `moto_server` comes from `scripts/install-test-tools` (which `scripts/test` runs first) or
//! from `TEST_MOTO_SERVER`; when it is missing the test fails saying so, it is never skipped.
//! moto checks no signature: any credentials do. Like S3 it refuses a multipart upload whose
//! parts, all but the last, are smaller than 5 MiB.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder, StatusCode};
use uuid::Uuid;

use crate::proxy::TcpProxy;

/// Longest wait for `moto_server` to answer HTTP after its start (a guard against hangs).
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// Starts on another port when the free one was taken in the meantime.
const START_ATTEMPTS: usize = 3;
/// The region of the bucket and of [`S3Server::env`].
pub const REGION: &str = "us-east-1";

/// The `moto_server` the tests run: `TEST_MOTO_SERVER`, or the one that
/// `scripts/install-test-tools` installs into the workspace's `target/test-tools/venv`.
pub fn moto_server_binary() -> PathBuf {
    match std::env::var_os("TEST_MOTO_SERVER") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/test-tools/venv/bin/moto_server"),
    }
}

/// A request to an S3 endpoint with an `Authorization` header of the placeholder credentials.
/// moto checks no signature, but routes a request by the service in its header and treats one
/// without it as anonymous (`GET` of an object: 403).
pub fn s3_request(client: &Client, method: Method, url: &str) -> RequestBuilder {
    let date = "20260101";
    client.request(method, url).header(
        reqwest::header::AUTHORIZATION,
        format!(
            "AWS4-HMAC-SHA256 Credential=test/{date}/{REGION}/s3/aws4_request, \
             SignedHeaders=host, Signature=0"
        ),
    )
}

/// A multipart upload begun and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
}

/// `moto_server` with a fresh bucket, behind a proxy; the server is killed (and reaped) when
/// this is dropped, and its log printed when that happens during a panic.
pub struct S3Server {
    child: Child,
    proxy: TcpProxy,
    bucket: String,
    client: Client,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts [`moto_server_binary`] and creates the bucket; panics with how to install
    /// `moto_server` when it is missing.
    pub async fn start() -> S3Server {
        S3Server::start_with(&moto_server_binary()).await
    }

    /// Starts the `moto_server` at `binary` and creates the bucket.
    pub async fn start_with(binary: &Path) -> S3Server {
        assert!(
            binary.is_file(),
            "moto_server is missing at {}: the S3 tests run it as their S3 server.\n\
             Install it with scripts/install-test-tools (scripts/test, the README's test \
             command, runs it first), or set TEST_MOTO_SERVER to a moto_server.",
            binary.display()
        );
        let log_dir = tempfile::tempdir().expect("temporary directory");
        let log = log_dir.path().join("moto_server.log");
        let client = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        let mut attempt = 1;
        let (child, moto) = loop {
            let (mut child, moto) = spawn(binary, &log);
            match wait_until_up(&mut child, moto, &client).await {
                Ok(()) => break (child, moto),
                Err(exited) => {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if attempt < START_ATTEMPTS && text.contains("Address already in use") {
                        attempt += 1;
                        continue;
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} did not start: {exited}\n--- moto_server log ---\n{text}",
                        binary.display()
                    );
                }
            }
        };
        let server = S3Server {
            child,
            proxy: TcpProxy::start(moto),
            bucket: format!("test-{}", Uuid::new_v4().simple()),
            client,
            log,
            _log_dir: log_dir,
        };
        let response = s3_request(&server.client, Method::PUT, &server.bucket_url())
            .send()
            .await
            .expect("create the bucket");
        let code = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(code.is_success(), "creating the bucket: {code} {body}");
        server
    }

    /// `http://127.0.0.1:PORT`, through the proxy: the endpoint of the code under test.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.proxy.addr())
    }

    /// moto's own address, which the proxy does not cut: what this type's look at the bucket
    /// uses, so that it works during a cut too.
    pub fn moto_endpoint(&self) -> String {
        format!("http://{}", self.proxy.upstream())
    }

    /// The bucket's name (`test-<uuid>`).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// The environment of a process that uses the bucket: placeholder credentials, the region,
    /// [`S3Server::endpoint`] and plain HTTP allowed.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The settings of a worker that keeps its files under `dir` alone and its uploads and
    /// results in the bucket under `prefix`: [`S3Server::env`], `STORAGE_URL` and
    /// `ENGINE_TEMP_DIR` (`dir/spill`, made here); with the storage directory to start it in
    /// (`dir/storage`).
    pub fn worker_env(&self, prefix: &str, dir: &Path) -> (Vec<(&'static str, String)>, PathBuf) {
        let spill = dir.join("spill");
        std::fs::create_dir_all(&spill).expect("spill directory");
        let mut env = self.env();
        env.push(("STORAGE_URL", self.url(prefix)));
        env.push(("ENGINE_TEMP_DIR", spill.display().to_string()));
        (env, dir.join("storage"))
    }

    /// Cuts (`false`) or restores (`true`) [`S3Server::endpoint`]'s path to moto, whose data
    /// stays. While cut, open connections are reset and new ones accepted and reset at once
    /// (see [`TcpProxy`]); a cut returns once no connection is forwarded any more.
    pub fn set_reachable(&self, reachable: bool) {
        self.proxy.set_reachable(reachable);
    }

    /// Whether [`S3Server::endpoint`] reaches moto now.
    pub fn is_reachable(&self) -> bool {
        self.proxy.is_reachable()
    }

    /// The process id of `moto_server`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `moto_server`'s log so far, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "--- moto_server log ---\n{}--- end of moto_server log ---",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Stores `bytes` as `key`, directly in moto.
    pub async fn put_object(&self, key: &str, bytes: &[u8]) {
        let response = s3_request(&self.client, Method::PUT, &self.object_url(key))
            // Without it moto's web framework reads the body as a form and stores nothing.
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT object");
        let code = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(code.is_success(), "PUT {key}: {code} {body}");
    }

    /// Deletes `key`, directly in moto.
    pub async fn delete_object(&self, key: &str) {
        let response = s3_request(&self.client, Method::DELETE, &self.object_url(key))
            .send()
            .await
            .expect("DELETE object");
        let code = response.status();
        assert!(code.is_success(), "DELETE {key}: {code}");
    }

    /// The content of `key`, `None` when there is no such object; read directly from moto.
    pub async fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let response = s3_request(&self.client, Method::GET, &self.object_url(key))
            .send()
            .await
            .expect("GET object");
        let code = response.status();
        let body = response.bytes().await.expect("object body");
        if code == StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            code.is_success(),
            "GET {key}: {code} {}",
            String::from_utf8_lossy(&body)
        );
        Some(body.to_vec())
    }

    /// The keys of the objects under `prefix` (`""`: all), in S3's order (sorted by bytes);
    /// read directly from moto.
    pub async fn list_keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_string()), ("prefix", prefix.into())];
            if let Some(token) = continuation.take() {
                query.push(("continuation-token", token));
            }
            let xml = self.get_xml(&query, "list objects").await;
            keys.extend(elements(&xml, "Key").into_iter().map(unescape));
            match elements(&xml, "NextContinuationToken").first() {
                Some(token) if elements(&xml, "IsTruncated") == ["true"] => {
                    continuation = Some(unescape(token));
                }
                _ => return keys,
            }
        }
    }

    /// The multipart uploads begun under `prefix` and neither completed nor aborted (the
    /// first 1000); read directly from moto.
    pub async fn multipart_uploads(&self, prefix: &str) -> Vec<MultipartUpload> {
        let query = [("uploads", String::new()), ("prefix", prefix.to_string())];
        let xml = self.get_xml(&query, "list multipart uploads").await;
        elements(&xml, "Upload")
            .into_iter()
            .map(|upload| MultipartUpload {
                key: elements(upload, "Key")
                    .first()
                    .map_or_else(String::new, |k| unescape(k)),
                upload_id: elements(upload, "UploadId")
                    .first()
                    .map_or_else(String::new, |id| unescape(id)),
            })
            // Also where moto would ignore the prefix.
            .filter(|upload| upload.key.starts_with(prefix))
            .collect()
    }

    /// `GET /<bucket>?<query>` from moto: the XML answer, asserting success.
    async fn get_xml(&self, query: &[(&str, String)], what: &str) -> String {
        let response = s3_request(&self.client, Method::GET, &self.bucket_url())
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let code = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(code.is_success(), "{what}: {code} {body}");
        body
    }

    fn bucket_url(&self) -> String {
        format!("{}/{}", self.moto_endpoint(), self.bucket)
    }

    fn object_url(&self, key: &str) -> String {
        format!("{}/{}", self.bucket_url(), encode_key(key))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// Starts `moto_server` on a port that was free a moment ago; its output goes to `log`.
fn spawn(binary: &Path, log: &Path) -> (Child, SocketAddr) {
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let output = File::create(log).expect("moto_server log file");
    let errors = output.try_clone().expect("moto_server log file");
    let child = Command::new(binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    (child, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// Waits until moto answers HTTP on `addr`; the reason when it exits or does not answer in time.
async fn wait_until_up(child: &mut Child, addr: SocketAddr, client: &Client) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("it exited with {status}"));
        }
        let answer = client
            .get(format!("http://{addr}/"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok() {
            return Ok(());
        }
        if started.elapsed() > STARTUP_DEADLINE {
            return Err(format!("no answer on {addr} within {STARTUP_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The contents of the `<tag>` elements of `xml`, in order (no nesting of the same tag).
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

/// Text with XML's five predefined entities replaced.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `key` for a URL path: bytes other than unreserved ones and `/` percent-encoded.
fn encode_key(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl S3Server {
    /// The task manager's settings of this bucket, keys under `prefix`: [`S3Server::env`]'s
    /// variables, and a short retry timeout, so that a cut shows within seconds.
    pub fn bucket_settings(&self, prefix: &str) -> storage::BucketSettings {
        let env = self.env();
        let lookup = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        };
        let options = storage::BucketOptions {
            retry_timeout: Duration::from_secs(2),
            ..storage::BucketOptions::default()
        };
        storage::BucketSettings::read(&self.bucket, prefix, lookup, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_and_entities() {
        let xml = "<R><Contents><Key>a/1.csv</Key></Contents><KeyMarker/>\
                   <Contents><Key>b&amp;c&lt;d</Key></Contents></R>";
        assert_eq!(elements(xml, "Key"), ["a/1.csv", "b&amp;c&lt;d"]);
        assert_eq!(unescape("b&amp;c&lt;d&amp;lt;"), "b&c<d&lt;");
        let uploads = "<Upload><UploadId>u1</UploadId><Key>k</Key></Upload>";
        assert_eq!(elements(uploads, "Upload").len(), 1);
        assert_eq!(elements(uploads, "UploadId"), ["u1"]);
        assert!(elements("<Key>open", "Key").is_empty());
    }

    #[test]
    fn keys_in_paths() {
        assert_eq!(
            encode_key("tasks/raw_data/a b+c.csv"),
            "tasks/raw_data/a%20b%2Bc.csv"
        );
        assert_eq!(encode_key("é"), "%C3%A9");
    }
}
