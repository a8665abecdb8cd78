//! The S3 test server itself: moto starts with a bucket, answers plain HTTP through the proxy,
//! is listed and read by the helpers, survives a cut of the proxy with its data, and is gone
//! (reaped) after the drop.

use std::path::Path;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use test_support::s3::{MultipartUpload, S3Server, s3_request};

/// `url` of an object in the bucket through the proxy (the code under test's way in).
fn via_proxy(s3: &S3Server, key: &str) -> String {
    format!("{}/{}/{key}", s3.endpoint(), s3.bucket())
}

#[tokio::test]
async fn objects_round_trip_through_the_proxy_and_are_listed() {
    let s3 = S3Server::start().await;
    let client = Client::new();
    let put = s3_request(
        &client,
        Method::PUT,
        &via_proxy(&s3, "tasks/raw_data/a.csv"),
    )
    .header("content-type", "application/octet-stream")
    .body("Song,Date,Number of Plays\n")
    .send()
    .await
    .expect("PUT through the proxy");
    assert_eq!(put.status(), StatusCode::OK, "{}", s3.log());
    let got = s3_request(
        &client,
        Method::GET,
        &via_proxy(&s3, "tasks/raw_data/a.csv"),
    )
    .send()
    .await
    .expect("GET through the proxy");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(
        got.text().await.expect("body"),
        "Song,Date,Number of Plays\n"
    );

    s3.put_object("tasks/processed_data/b.csv", b"x\n").await;
    s3.put_object("other/c.csv", b"").await;
    s3.put_object("tasks/raw_data/with space+plus.csv", b"y")
        .await;
    assert_eq!(
        s3.list_keys("tasks/").await,
        [
            "tasks/processed_data/b.csv",
            "tasks/raw_data/a.csv",
            "tasks/raw_data/with space+plus.csv"
        ]
    );
    assert_eq!(s3.list_keys("").await.len(), 4);
    assert!(s3.list_keys("nothing/").await.is_empty());
    assert_eq!(
        s3.get_object("tasks/raw_data/a.csv").await.as_deref(),
        Some(&b"Song,Date,Number of Plays\n"[..])
    );
    assert_eq!(
        s3.get_object("tasks/raw_data/with space+plus.csv")
            .await
            .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(s3.get_object("tasks/missing.csv").await, None);
}

#[tokio::test]
async fn many_keys_are_listed_across_pages() {
    let s3 = S3Server::start().await;
    let mut expected: Vec<String> = (0..1005).map(|i| format!("p/{i:04}")).collect();
    for key in &expected {
        s3.put_object(key, b"").await;
    }
    expected.sort();
    assert_eq!(s3.list_keys("p/").await, expected);
}

#[tokio::test]
async fn a_cut_fails_requests_and_keeps_the_data() {
    let s3 = S3Server::start().await;
    s3.put_object("kept.csv", b"still here").await;
    let client = Client::new();
    // moto closes each connection after its answer: a connection open across the cut is
    // the next test's.
    let before = s3_request(&client, Method::GET, &via_proxy(&s3, "kept.csv"))
        .send()
        .await
        .expect("GET before the cut");
    assert_eq!(before.text().await.expect("body"), "still here");

    s3.set_reachable(false);
    assert!(!s3.is_reachable());
    for _ in 0..3 {
        let during = s3_request(&client, Method::GET, &via_proxy(&s3, "kept.csv"))
            .send()
            .await;
        assert!(during.is_err(), "answered during the cut: {during:?}");
    }
    let fresh = s3_request(&Client::new(), Method::GET, &via_proxy(&s3, "kept.csv"))
        .send()
        .await;
    assert!(fresh.is_err(), "a new client was answered: {fresh:?}");
    // The test's own look goes to moto directly.
    assert_eq!(s3.list_keys("").await, ["kept.csv"]);

    s3.set_reachable(true);
    let after = s3_request(&client, Method::GET, &via_proxy(&s3, "kept.csv"))
        .send()
        .await
        .expect("GET after the cut");
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(after.text().await.expect("body"), "still here");
}

#[tokio::test]
async fn a_cut_resets_a_connection_in_the_middle_of_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s3 = S3Server::start().await;
    s3.put_object("kept.csv", b"still here").await;
    let proxy = s3.endpoint().trim_start_matches("http://").to_string();
    let mut connection = tokio::net::TcpStream::connect(&proxy)
        .await
        .expect("connect to the proxy");
    let head = format!(
        "GET /{}/kept.csv HTTP/1.1\r\nHost: {proxy}\r\n",
        s3.bucket()
    );
    connection
        .write_all(head.as_bytes())
        .await
        .expect("first half of the request");

    s3.set_reachable(false);
    // moto waits for the rest of the head: only the cut ends this connection.
    let _ = connection.write_all(b"\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), connection.read_to_end(&mut answer))
        .await
        .expect("the cut left the connection open");
    assert!(
        answer.is_empty(),
        "answered through a cut: {:?} {read:?}",
        String::from_utf8_lossy(&answer)
    );

    // A connection opened during the cut is reset before it carries anything (when the reset
    // comes early enough, the connect itself fails with it).
    match tokio::net::TcpStream::connect(&proxy).await {
        Ok(mut during) => {
            let _ = during.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), during.read_to_end(&mut answer))
                .await
                .expect("the proxy kept a connection open during the cut");
            assert!(answer.is_empty());
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    s3.set_reachable(true);
    assert_eq!(
        s3.get_object("kept.csv").await.as_deref(),
        Some(&b"still here"[..])
    );
}

#[tokio::test]
async fn unfinished_multipart_uploads_are_listed() {
    let s3 = S3Server::start().await;
    assert!(s3.multipart_uploads("").await.is_empty());
    let client = Client::new();
    let begun = s3_request(
        &client,
        Method::POST,
        &via_proxy(&s3, "tasks/big.csv?uploads"),
    )
    .send()
    .await
    .expect("CreateMultipartUpload");
    assert_eq!(begun.status(), StatusCode::OK);
    let uploads = s3.multipart_uploads("tasks/").await;
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let MultipartUpload { key, upload_id } = &uploads[0];
    assert_eq!(key, "tasks/big.csv");
    assert!(s3.multipart_uploads("other/").await.is_empty());

    let aborted = s3_request(
        &client,
        Method::DELETE,
        &via_proxy(&s3, &format!("tasks/big.csv?uploadId={upload_id}")),
    )
    .send()
    .await
    .expect("AbortMultipartUpload");
    assert!(aborted.status().is_success(), "{}", aborted.status());
    assert!(s3.multipart_uploads("").await.is_empty());
}

#[tokio::test]
async fn the_environment_names_the_proxy_and_the_bucket() {
    let s3 = S3Server::start().await;
    assert!(s3.bucket().starts_with("test-"));
    assert_eq!(s3.url("tasks"), format!("s3://{}/tasks", s3.bucket()));
    assert_eq!(s3.url("/tasks/"), format!("s3://{}/tasks/", s3.bucket()));
    let env = s3.env();
    let value = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(value("AWS_ENDPOINT_URL"), Some(s3.endpoint().as_str()));
    assert_ne!(s3.endpoint(), s3.moto_endpoint());
    assert_eq!(value("AWS_ACCESS_KEY_ID"), Some("test"));
    assert_eq!(value("AWS_SECRET_ACCESS_KEY"), Some("test"));
    assert_eq!(value("AWS_REGION"), Some("us-east-1"));
    assert_eq!(value("AWS_ALLOW_HTTP"), Some("true"));
}

#[tokio::test]
async fn two_servers_are_apart_and_a_dropped_one_is_reaped() {
    let first = S3Server::start().await;
    let second = S3Server::start().await;
    assert_ne!(first.bucket(), second.bucket());
    first.put_object("only-in-first", b"1").await;
    assert!(second.list_keys("").await.is_empty());

    let pid = first.pid();
    let proc = format!("/proc/{pid}");
    assert!(Path::new(&proc).exists());
    drop(first);
    // Killed and waited for: no process, not even a zombie, is left.
    assert!(
        !Path::new(&proc).exists(),
        "moto_server {pid} is still there"
    );
}

#[tokio::test]
#[should_panic(expected = "scripts/install-test-tools")]
async fn a_missing_moto_server_fails_the_test_saying_how_to_install_it() {
    S3Server::start_with(Path::new("/nonexistent/moto_server")).await;
}
