//! Limits of the HTTP side: the upload size announced by `Content-Length`, slow clients
//! (header-read, upload idle and total timeouts) and the number of uploads at the same time.
//! Hand-written requests over TCP send bodies in pieces and stall. Embedded mode on SQLite.

use test_support as common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::io::AsyncWriteExt;

/// Longest wait for a condition the test waits for (a guard against hangs).
const WAIT_DEADLINE: Duration = Duration::from_secs(120);

/// Asserts that no task was recorded and no upload (not even a partial one) was stored, and
/// that no result remains once an engine that started on the upload has stopped.
async fn assert_nothing_stored(server: &TestServer) {
    assert_eq!(task_count(&server.client, &server.base_url).await, 0);
    assert_eq!(server.raw_data_files(), Vec::<String>::new());
    let started = std::time::Instant::now();
    while !server.processed_data_files().is_empty() {
        assert!(
            started.elapsed() < WAIT_DEADLINE,
            "results of refused uploads: {:?}",
            server.processed_data_files()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A multipart body with `content` as its field `file`, and its content type.
fn multipart_body(content: &str) -> (Vec<u8>, &'static str) {
    let body = format!(
        "--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"plays.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n{content}\r\n--XYZ--\r\n"
    );
    (body.into_bytes(), "multipart/form-data; boundary=XYZ")
}

/// Waits until `raw_data/` holds `count` partial uploads.
async fn wait_for_partial_uploads(server: &TestServer, count: usize) {
    let started = std::time::Instant::now();
    loop {
        let partial = server
            .raw_data_files()
            .iter()
            .filter(|name| name.ends_with(".partial"))
            .count();
        if partial == count {
            return;
        }
        assert!(
            started.elapsed() < WAIT_DEADLINE,
            "{partial} partial uploads instead of {count}: {:?}",
            server.raw_data_files()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_length_over_the_limit_is_refused_before_the_body() {
    const LIMIT: usize = 1000;
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.max_upload_bytes = LIMIT as u64;
    })
    .await;
    let (multipart, multipart_type) = multipart_body(SEED_INPUT);
    for (what, content_type, length, first_bytes) in [
        ("raw body", "text/csv", LIMIT + 1, SEED_INPUT.as_bytes()),
        ("multipart", multipart_type, 10 << 20, &multipart[..]),
    ] {
        // Only the head and a first piece are sent: the answer cannot wait for the body.
        let connection = raw_upload(&server.base_url, content_type, length, first_bytes).await;
        let (code, _, body) = raw_answer(connection)
            .await
            .unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(code, 413, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("MAX_UPLOAD_BYTES"), "{what}: {body}");
    }
    assert_nothing_stored(&server).await;

    // An exact length within the limit is accepted.
    let connection = raw_upload(
        &server.base_url,
        "text/csv",
        SEED_INPUT.len(),
        SEED_INPUT.as_bytes(),
    )
    .await;
    let (code, _, body) = raw_answer(connection).await.expect("an answer");
    assert_eq!(code, 202, "{body}");
    let id = task_id_of(&body);
    assert_eq!(server.wait_finished(id).await["status"], "DONE");
    assert_eq!(server.download(id).await.text().await.unwrap(), SEED_OUTPUT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_get_408_and_leave_nothing() {
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.upload_idle_timeout = Duration::from_millis(500);
    })
    .await;
    let (multipart, multipart_type) = multipart_body(SEED_INPUT);
    for (what, content_type, body) in [
        ("raw body", "text/csv", SEED_INPUT.as_bytes()),
        ("multipart", multipart_type, &multipart[..]),
    ] {
        // Half the body, then nothing more.
        let half = &body[..body.len() / 2];
        let connection = raw_upload(&server.base_url, content_type, body.len(), half).await;
        let (code, _, answer) = raw_answer(connection)
            .await
            .unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(code, 408, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains("UPLOAD_IDLE_TIMEOUT"), "{what}: {answer}");
    }
    assert_nothing_stored(&server).await;
    // The server still works.
    let id = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(server.wait_finished(id).await["status"], "DONE");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_trickles_past_the_total_timeout_gets_408() {
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.upload_timeout = Duration::from_secs(1);
    })
    .await;
    let body = SEED_INPUT.repeat(1000);
    let header_line = &SEED_INPUT[..26];
    let connection = raw_upload(
        &server.base_url,
        "text/csv",
        header_line.len() + body.len(),
        header_line.as_bytes(),
    )
    .await;
    let (reader, mut writer) = connection.into_split();
    // A row every 20 ms, well within the idle timeout, until the server answers.
    let trickle = tokio::spawn(async move {
        for row in body.lines() {
            let line = format!("{row}\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (code, _, answer) = raw_answer(reader).await.expect("an answer");
    trickle.abort();
    assert_eq!(code, 408, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not complete within") && error.contains("UPLOAD_TIMEOUT"),
        "{answer}"
    );
    assert_nothing_stored(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_headers_is_closed() {
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut connection = tokio::net::TcpStream::connect(host_of(&server.base_url))
        .await
        .unwrap();
    connection
        .write_all(b"POST /v1/data_processor/upload HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Closed (hyper answers nothing when the headers are late), never held open.
    assert_eq!(raw_answer(connection).await, None);
    let (code, health) = server.get_json("/health").await;
    assert_eq!(code, StatusCode::OK, "{health}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_concurrency_limit_get_503() {
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.max_concurrent_uploads = 2;
    })
    .await;
    // Two uploads in progress: half sent each.
    let half = SEED_INPUT.len() / 2;
    let mut receiving = Vec::new();
    for _ in 0..2 {
        receiving.push(
            raw_upload(
                &server.base_url,
                "text/csv",
                SEED_INPUT.len(),
                &SEED_INPUT.as_bytes()[..half],
            )
            .await,
        );
    }
    wait_for_partial_uploads(&server, 2).await;

    let response = server
        .client
        .post(server.url("/v1/data_processor/upload"))
        .header(CONTENT_TYPE, "text/csv")
        .body(SEED_INPUT)
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get(RETRY_AFTER).cloned();
    let (code, body) = json_of(response).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("MAX_CONCURRENT_UPLOADS"), "{body}");
    let seconds: u64 = retry_after
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(seconds > 0);
    // Nothing stored for the refused upload.
    wait_for_partial_uploads(&server, 2).await;
    assert_eq!(task_count(&server.client, &server.base_url).await, 0);

    // The two complete, after which there is room again.
    let mut ids = Vec::new();
    for mut connection in receiving {
        connection
            .write_all(&SEED_INPUT.as_bytes()[half..])
            .await
            .unwrap();
        let (code, _, body) = raw_answer(connection).await.expect("an answer");
        assert_eq!(code, 202, "{body}");
        ids.push(task_id_of(&body));
    }
    ids.push(server.upload("plays.csv", SEED_INPUT).await);
    for id in ids {
        assert_eq!(server.wait_finished(id).await["status"], "DONE");
        assert_eq!(server.download(id).await.text().await.unwrap(), SEED_OUTPUT);
    }
    assert_eq!(task_count(&server.client, &server.base_url).await, 3);
    server.stop().await;
}
