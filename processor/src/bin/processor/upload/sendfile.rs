//! The upload of a file over plain HTTP/1.1 with `sendfile(2)`: the kernel sends the file from
//! its page cache, so the bytes never pass through the client's memory. Sending the mapped file
//! through reqwest copies each byte into the socket (and faults the map in): about 0.17 CPU-s
//! of the client's 0.37 per GB on loopback here, on a machine whose two cores the task
//! manager's engine needs at the same time. Used for `http://` URLs when no proxy is set;
//! reqwest does everything else (TLS, proxies) and every other request.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use reqwest::Url;
use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Bytes handed to one `sendfile` call at most (the progress moves between calls).
const SEND_STEP: usize = 8 << 20;
/// Longest response head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Longest response body accepted (the answer to an upload is a small JSON).
const MAX_BODY: usize = 1 << 20;
/// How long an answer sent before the whole body (a refusal) is waited for once the server
/// stopped reading.
const EARLY_ANSWER: Duration = Duration::from_secs(5);

/// A status and a body.
#[derive(Debug)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub body: Vec<u8>,
}

/// Whether [`post_file`] can send to `url`: plain `http`, no proxy in the environment.
pub fn applies_to(url: &Url) -> bool {
    const PROXIES: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];
    cfg!(target_os = "linux")
        && url.scheme() == "http"
        && url.host_str().is_some()
        && PROXIES.iter().all(|name| std::env::var_os(name).is_none())
}

/// POSTs the `len` bytes of `file` to `url` as `text/csv` with `headers`; the server's answer.
pub async fn post_file(
    url: &Url,
    headers: &HeaderMap,
    file: &File,
    len: u64,
    bar: &ProgressBar,
) -> anyhow::Result<Answer> {
    let host = url.host_str().context("no host in the URL")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))
    .and_then(|connected| connected)
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    stream.set_nodelay(true)?;
    stream.write_all(&request_head(url, headers, len)).await?;
    let sent = send_file(&stream, file, len, bar).await;
    if let Err(error) = sent {
        // A server that refuses the upload may answer and close before reading it all.
        return match tokio::time::timeout(EARLY_ANSWER, read_answer(&mut stream)).await {
            Ok(Ok(answer)) if !answer.status.is_success() => Ok(answer),
            _ => Err(error.context("the upload was interrupted")),
        };
    }
    read_answer(&mut stream).await
}

/// The request line and headers.
fn request_head(url: &Url, headers: &HeaderMap, len: u64) -> Vec<u8> {
    let mut target = url.path().to_owned();
    if let Some(query) = url.query() {
        target.push('?');
        target.push_str(query);
    }
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut head = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/csv\r\n\
         Content-Length: {len}\r\nConnection: close\r\n"
    )
    .into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends `len` bytes of `file` from its start.
async fn send_file(
    stream: &TcpStream,
    file: &File,
    len: u64,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut offset: libc::off_t = 0;
    while (offset as u64) < len {
        let step = usize::try_from(len - offset as u64).map_or(SEND_STEP, |n| n.min(SEND_STEP));
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the call; `offset` is a valid pointer.
            let n =
                unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut offset, step) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match sent {
            Ok(0) => bail!("the file is shorter than when the upload started"),
            Ok(n) => bar.inc(n as u64),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the response: its status and body (sized by `Content-Length`, chunked, or up to the
/// end of the connection).
async fn read_answer(stream: &mut TcpStream) -> anyhow::Result<Answer> {
    let mut buf = Vec::new();
    let (status, head_len, length, chunked) = loop {
        if buf.is_empty() && read_more(stream, &mut buf).await? == 0 {
            bail!("the connection closed before the answer");
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf).context("malformed HTTP answer")? {
            httparse::Status::Complete(head_len) => {
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
                let chunked = header("transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let status = reqwest::StatusCode::from_u16(response.code.unwrap_or(0))
                    .context("malformed HTTP status")?;
                // An interim answer (100 Continue) is followed by the real one.
                if status.is_informational() {
                    buf.drain(..head_len);
                    continue;
                }
                break (status, head_len, length, chunked);
            }
            httparse::Status::Partial if buf.len() > MAX_HEAD => bail!("HTTP answer too long"),
            httparse::Status::Partial => {
                if read_more(stream, &mut buf).await? == 0 {
                    bail!("the connection closed before the answer");
                }
            }
        }
    };
    buf.drain(..head_len);
    let body = if chunked {
        read_chunked(stream, buf).await?
    } else {
        let want = length.unwrap_or(MAX_BODY + 1);
        while buf.len() < want && read_more(stream, &mut buf).await? > 0 {}
        if length.is_some_and(|n| buf.len() < n) {
            bail!("the connection closed in the middle of the answer");
        }
        buf.truncate(want);
        buf
    };
    if body.len() > MAX_BODY {
        bail!("HTTP answer too long");
    }
    Ok(Answer { status, body })
}

/// Decodes a chunked body whose first bytes are in `buf`.
async fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = loop {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            if buf.len() > MAX_HEAD || read_more(stream, &mut buf).await? == 0 {
                bail!("malformed chunked answer");
            }
        };
        let size = std::str::from_utf8(&buf[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .context("malformed chunk size")?;
        if body.len() + size > MAX_BODY {
            bail!("HTTP answer too long");
        }
        // The chunk and its CRLF (the trailer section's end after the last chunk).
        while buf.len() < line + 2 + size + 2 {
            if read_more(stream, &mut buf).await? == 0 {
                bail!("the connection closed in the middle of the answer");
            }
        }
        body.extend_from_slice(&buf[line + 2..line + 2 + size]);
        buf.drain(..line + 2 + size + 2);
        if size == 0 {
            return Ok(body);
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-connection server that reads the request's head, then its body when
    /// `read_body`, answers `answer` and closes; returns its URL and what it read.
    fn serve_once(
        answer: &'static [u8],
        read_body: bool,
    ) -> (Url, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/v1/data_processor/upload?filename=a%20b.csv",
            listener.local_addr().unwrap()
        );
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0];
            while !request.ends_with(b"\r\n\r\n") {
                socket.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            let head = String::from_utf8(request).unwrap();
            let len: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            let mut body = vec![0; if read_body { len } else { 0 }];
            socket.read_exact(&mut body).unwrap();
            socket.write_all(answer).unwrap();
            (head, body)
        });
        (Url::parse(&url).unwrap(), server)
    }

    fn temp_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file
    }

    fn content() -> Vec<u8> {
        (0..1_000_000u32).flat_map(|i| i.to_le_bytes()).collect()
    }

    #[tokio::test]
    async fn sends_the_head_and_the_whole_file_and_reads_a_chunked_answer() {
        let content = content();
        let file = temp_file(&content);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().unwrap());
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n\
            Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n";
        let (url, server) = serve_once(answer, true);
        let bar = ProgressBar::hidden();
        let got = post_file(&url, &headers, file.as_file(), content.len() as u64, &bar)
            .await
            .unwrap();
        assert_eq!(got.status, 202);
        assert_eq!(got.body, b"{\"a\": 1}");
        assert_eq!(bar.position(), content.len() as u64);
        let (head, body) = server.join().unwrap();
        assert!(
            head.starts_with("POST /v1/data_processor/upload?filename=a%20b.csv HTTP/1.1\r\n"),
            "{head}"
        );
        let host = format!("Host: {}\r\n", url.authority());
        for line in [
            host.as_str(),
            "Content-Type: text/csv\r\n",
            &format!("Content-Length: {}\r\n", content.len()),
            "authorization: Bearer t\r\n",
        ] {
            assert!(head.contains(line), "{line:?} missing in {head}");
        }
        assert!(body == content, "the body differs");
    }

    #[tokio::test]
    async fn an_answer_sized_by_its_length_or_by_the_end_of_the_connection() {
        let content = b"Song,Date,Number of Plays\n".to_vec();
        let file = temp_file(&content);
        for answer in [
            &b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}ignored"[..],
            b"HTTP/1.0 202 Accepted\r\n\r\n{}",
        ] {
            let (url, _server) = serve_once(answer, true);
            let bar = ProgressBar::hidden();
            let len = content.len() as u64;
            let got = post_file(&url, &HeaderMap::new(), file.as_file(), len, &bar)
                .await
                .unwrap();
            assert_eq!(
                (got.status.as_u16(), got.body.as_slice()),
                (202, &b"{}"[..])
            );
        }
        // Cut short: an error, not a truncated answer.
        let (url, _server) = serve_once(
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 9\r\n\r\n{}",
            true,
        );
        let bar = ProgressBar::hidden();
        let len = content.len() as u64;
        assert!(
            post_file(&url, &HeaderMap::new(), file.as_file(), len, &bar)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_refusal_before_the_body_is_read_is_the_answer() {
        // More than the sockets' buffers take: the server's close interrupts the upload.
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 << 20).unwrap();
        let answer =
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 17\r\n\r\n{\"error\":\"token\"}";
        let (url, server) = serve_once(answer, false);
        let bar = ProgressBar::hidden();
        let got = post_file(&url, &HeaderMap::new(), file.as_file(), 64 << 20, &bar).await;
        server.join().unwrap();
        assert!(bar.position() < 64 << 20, "the whole file was sent");
        let got = got.unwrap();
        assert_eq!(got.status, 401);
        assert_eq!(got.body, b"{\"error\":\"token\"}");
    }
}
