//! Embedded mode with its uploads and results in an S3-compatible bucket (moto's server, see
//! `test_support::s3`): the golden corpus round trip, a multipart upload, invalid CSV, the
//! bucket unreachable during an upload (503, nothing recorded or left) and during a task, and
//! retention. The local directory holds nothing once a task is done.

use std::time::{Duration, Instant};

use test_support as common;

use common::s3::S3Server;
use common::*;
use fixtures::golden::{self, Expected};
use fixtures::{Length, Spec};
use reqwest::StatusCode;

/// Where the tests' keys go in the bucket.
const PREFIX: &str = "tasks";

async fn start(s3: &S3Server, configure: impl FnOnce(&mut task_manager::Settings)) -> TestServer {
    let bucket = s3.bucket_settings(PREFIX);
    start_server_with(DbKind::Sqlite, move |settings| {
        settings.bucket = Some(bucket);
        configure(settings);
    })
    .await
}

/// The keys under the test prefix's `dir`.
async fn keys(s3: &S3Server, dir: &str) -> Vec<String> {
    s3.list_keys(&format!("{PREFIX}/{dir}/")).await
}

/// The chunks sent on `receiver`, as a stream.
fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// Uploads `data` as a raw CSV body: the code, `Retry-After` and JSON answer.
async fn post(tm: &TestServer, data: Vec<u8>) -> (StatusCode, Option<String>, serde_json::Value) {
    let response = tm
        .client
        .post(tm.url("/v1/data_processor/upload"))
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(data)
        .send()
        .await
        .expect("upload request");
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|value| value.to_str().unwrap_or_default().to_string());
    let (code, body) = json_of(response).await;
    (code, retry_after, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_golden_corpus_goes_through_the_bucket() {
    let s3 = S3Server::start().await;
    let tm = start(&s3, |_| {}).await;
    for case in golden::valid() {
        let input = std::fs::read(&case.input).expect("golden input");
        let id = upload_bytes(&tm.client, &tm.base_url, "plays.csv", &input).await;
        let status = tm.wait_finished(id).await;
        let Expected::Output(expected) = &case.expected else {
            unreachable!("valid cases have an output")
        };
        assert_eq!(status["status"], "DONE", "{}: {status}", case.name);
        let response = tm.download(id).await;
        assert_eq!(response.status(), StatusCode::OK, "{}", case.name);
        assert_eq!(attachment_filename(&response), "plays_aggregated.csv");
        let body = response.bytes().await.expect("download");
        assert!(
            body.as_ref() == expected.as_slice(),
            "{}: {}",
            case.name,
            golden::first_difference(&body, expected)
        );
        let key = format!("{PREFIX}/processed_data/{id}.csv");
        assert_eq!(
            s3.get_object(&key).await.as_deref(),
            Some(expected.as_slice())
        );
    }
    for case in golden::invalid().iter().take(5) {
        let input = std::fs::read(&case.input).expect("golden input");
        let (code, _, body) = post(&tm, input).await;
        if code == StatusCode::BAD_REQUEST {
            continue; // refused at the header: no task
        }
        assert_eq!(code, StatusCode::ACCEPTED, "{}: {body}", case.name);
        let status = tm.wait_finished(task_id_of(&body)).await;
        assert_eq!(status["status"], "FAILED", "{}: {status}", case.name);
        let message = case.error().unwrap_or_default();
        assert!(
            status["error"]
                .as_str()
                .unwrap_or_default()
                .contains(message),
            "{}: {status} does not say {message:?}",
            case.name
        );
    }
    // Everything lives in the bucket; the directory kept nothing.
    assert!(tm.raw_data_files().is_empty(), "{:?}", tm.raw_data_files());
    assert!(tm.processed_data_files().is_empty());
    assert!(s3.multipart_uploads(PREFIX).await.is_empty());
    let health = tm.get_json("/health").await;
    assert_eq!(health.1["storage"], "ok", "{}", health.1);
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_is_sent_in_parts() {
    let s3 = S3Server::start().await;
    let tm = start(&s3, |_| {}).await;
    // Over three parts of 10 MiB: moto refuses parts under 5 MiB but the last, as S3 does.
    let data = fixtures::generate(Spec {
        length: Length::Bytes(25 << 20),
        songs: 5_000,
        days: 30,
        seed: 18,
        ..Spec::default()
    })
    .expect("generate the input");
    let expected = fixtures::reference::aggregate(&data);
    let (code, _, body) = post(&tm, data.clone()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = task_id_of(&body);
    let status = tm.wait_finished(id).await;
    assert_eq!(status["status"], "DONE", "{status}");
    let input_key = format!("{PREFIX}/raw_data/{id}.csv");
    assert!(
        s3.get_object(&input_key).await == Some(data),
        "the stored upload differs"
    );
    let result = tm.download(id).await.bytes().await.expect("download");
    assert!(
        result.as_ref() == expected.as_slice(),
        "{}",
        golden::first_difference(&result, &expected)
    );
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_refuses_uploads_and_leaves_nothing() {
    let s3 = S3Server::start().await;
    let tm = start(&s3, |settings| {
        if let Some(bucket) = &mut settings.bucket {
            bucket.options.retry_timeout = Duration::from_secs(1);
        }
    })
    .await;
    // Cut off before the upload starts.
    s3.set_reachable(false);
    let (code, retry_after, body) = post(&tm, SEED_INPUT.as_bytes().to_vec()).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry_after.is_some(), "no Retry-After: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("storage"),
        "{body}"
    );
    let (health, _) = tm.get_json("/health").await;
    assert_eq!(health, StatusCode::SERVICE_UNAVAILABLE);
    s3.set_reachable(true);

    // Cut off in the middle of a large upload: parts were sent, then the bucket vanished.
    let data = fixtures::generate(Spec {
        length: Length::Bytes(40 << 20),
        seed: 3,
        ..Spec::default()
    })
    .expect("generate the input");
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_of(receiver));
    let request = tm
        .client
        .post(tm.url("/v1/data_processor/upload"))
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(body)
        .send();
    let request = tokio::spawn(request);
    let (head, tail) = data.split_at(25 << 20);
    for chunk in head.chunks(1 << 20) {
        sender.send(Ok(chunk.to_vec())).await.expect("send");
    }
    // Two parts on their way (or sent), then the bucket goes.
    let started = Instant::now();
    while s3.multipart_uploads(PREFIX).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no multipart upload began"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s3.set_reachable(false);
    for chunk in tail.chunks(1 << 20) {
        if sender.send(Ok(chunk.to_vec())).await.is_err() {
            break; // the server answered already
        }
    }
    drop(sender);
    let response = request.await.expect("request task").expect("an answer");
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .cloned();
    let (code, body) = json_of(response).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry_after.is_some(), "no Retry-After: {body}");
    s3.set_reachable(true);

    assert_eq!(
        task_count(&tm.client, &tm.base_url).await,
        0,
        "a task was recorded"
    );
    assert!(keys(&s3, "raw_data").await.is_empty());
    // The unfinished upload is aborted once the bucket is back.
    let started = Instant::now();
    while !s3.multipart_uploads(PREFIX).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "parts left behind"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(tm.raw_data_files().is_empty(), "{:?}", tm.raw_data_files());
    // And the next upload goes through.
    let id = tm.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(tm.wait_finished(id).await["status"], "DONE");
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tasks_leave_the_bucket() {
    let s3 = S3Server::start().await;
    let tm = start(&s3, |settings| {
        settings.retention = Some(Duration::from_secs(1))
    })
    .await;
    let id = tm.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(tm.wait_finished(id).await["status"], "DONE");
    let started = Instant::now();
    while tm.status(id).await.get("expired_at").is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "not expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(keys(&s3, "raw_data").await.is_empty());
    assert!(keys(&s3, "processed_data").await.is_empty());
    assert_eq!(tm.download(id).await.status(), StatusCode::GONE);
    tm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_can_be_redirected_to_the_bucket() {
    let s3 = S3Server::start().await;
    let tm = start(&s3, |settings| {
        settings.download_redirect = Some(Duration::from_secs(60))
    })
    .await;
    let id = tm.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(tm.wait_finished(id).await["status"], "DONE");

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let path = format!("/v1/data_processor/download/{id}");
    let response = no_redirects
        .get(tm.url(&path))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let location = response.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("Location")
        .to_string();
    // The bucket's own address, signed for a minute; no byte of the result came from us.
    assert!(location.starts_with(&s3.endpoint()), "{location}");
    assert!(
        location.contains(&format!("processed_data/{id}.csv")),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=60"), "{location}");

    // Followed, as any HTTP client does: the result with the same headers as a streamed one.
    let response = tm.download(id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "text/csv"
    );
    assert_eq!(attachment_filename(&response), "plays_aggregated.csv");
    assert_eq!(response.text().await.expect("result"), SEED_OUTPUT);

    // A result gone from the bucket is 410, not a redirect to the bucket's 404.
    s3.delete_object(&format!("{PREFIX}/processed_data/{id}.csv"))
        .await;
    let response = no_redirects
        .get(tm.url(&path))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::GONE);
    tm.stop().await;
}
