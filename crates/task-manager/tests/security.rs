//! Security of the API: bearer tokens on `/v1` (API_TOKEN) and on the workers' callbacks
//! (WORKER_TOKEN), loopback-only listening without tokens, the upload size limit
//! (MAX_UPLOAD_BYTES) and the header check at the start of an upload. Embedded mode on SQLite:
//! none of it depends on the database.

use test_support as common;

use common::*;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::multipart::{Form, Part};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::json;
use std::time::Duration;
use task_manager::Tokens;
use uuid::Uuid;

const API_TOKENS: [&str; 2] = ["first-api-token", "second-api-token"];
const WORKER_TOKEN: &str = "the-worker-token";

/// Longest wait for the answer to an upload that never ends (a guard against hangs).
const ANSWER_DEADLINE: Duration = Duration::from_secs(120);

async fn start_with_tokens() -> TestServer {
    start_server_with(DbKind::Sqlite, |settings| {
        settings.api_tokens = Tokens::parse(&API_TOKENS.join(","));
        settings.worker_tokens = Tokens::parse(WORKER_TOKEN);
    })
    .await
}

fn csv_form(content: &str) -> Form {
    let part = Part::bytes(content.as_bytes().to_vec()).file_name("plays.csv");
    Form::new().part("file", part)
}

/// Every `/v1` request `client` can make about task `id`.
fn v1_requests(client: &Client, server: &TestServer, id: Uuid) -> Vec<(String, RequestBuilder)> {
    let upload = server.url("/v1/data_processor/upload");
    vec![
        (
            "upload".into(),
            client.post(&upload).multipart(csv_form(SEED_INPUT)),
        ),
        (
            "raw upload".into(),
            client
                .post(&upload)
                .header(CONTENT_TYPE, "text/csv")
                .body(SEED_INPUT),
        ),
        (
            "status".into(),
            client.get(server.url(&format!("/v1/tasks/status/{id}"))),
        ),
        (
            "task".into(),
            client.get(server.url(&format!("/v1/tasks/{id}"))),
        ),
        (
            "download".into(),
            client.get(server.url(&format!("/v1/data_processor/download/{id}"))),
        ),
        ("list".into(), client.get(server.url("/v1/tasks"))),
        (
            "delete".into(),
            client.delete(server.url(&format!("/v1/tasks/{id}"))),
        ),
    ]
}

async fn assert_unauthorized(what: &str, request: RequestBuilder) {
    let response = request.send().await.expect("request");
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|value| value.to_str().unwrap_or_default().to_string());
    let (code, body) = json_of(response).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(
        challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "{what}: WWW-Authenticate {challenge:?}"
    );
}

/// Asserts that no task was recorded and no upload was stored.
async fn assert_nothing_recorded(server: &TestServer) {
    assert_eq!(
        task_count(&server.client, &server.base_url).await,
        0,
        "a task was recorded"
    );
    assert_eq!(
        server.raw_data_files(),
        Vec::<String>::new(),
        "a file was left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_needs_one_of_the_api_tokens() {
    let server = start_with_tokens().await;
    let first = client_with_token(API_TOKENS[0]);
    let second = client_with_token(API_TOKENS[1]);

    // A task made with the first token, followed and downloaded with the second.
    let id = upload(&first, &server.base_url, "plays.csv", SEED_INPUT).await;
    let status = wait_finished(&second, &server.base_url, id).await;
    assert_eq!(status["status"], "DONE", "{status}");
    let response = download(&second, &server.base_url, id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), SEED_OUTPUT);
    assert_eq!(task_count(&first, &server.base_url).await, 1);

    let anonymous = Client::new();
    let strangers = [
        ("no token", anonymous.clone()),
        ("a wrong token", client_with_token("first-api-tokens")),
        ("the worker token", client_with_token(WORKER_TOKEN)),
        ("an empty token", client_with_token("")),
    ];
    for (who, client) in &strangers {
        for (what, request) in v1_requests(client, &server, id) {
            assert_unauthorized(&format!("{what} with {who}"), request).await;
        }
    }
    let basic = anonymous
        .get(server.url("/v1/tasks"))
        .basic_auth(API_TOKENS[0], Some(API_TOKENS[0]));
    assert_unauthorized("Basic authentication", basic).await;

    // Nothing was recorded, stored or cancelled by the refused requests.
    assert_eq!(task_count(&second, &server.base_url).await, 1);
    assert_eq!(server.raw_data_files(), vec![format!("{id}.csv")]);
    assert_eq!(server_status(&first, &server, id).await, "DONE");

    // Each right request goes through, whichever token.
    for (i, (what, request)) in v1_requests(&second, &server, id).into_iter().enumerate() {
        let code = request.send().await.unwrap().status();
        // The delete of a finished task is a conflict, not an authentication failure.
        let expected = match what.as_str() {
            "upload" | "raw upload" => StatusCode::ACCEPTED,
            "delete" => StatusCode::CONFLICT,
            _ => StatusCode::OK,
        };
        assert_eq!(code, expected, "{what} (request {i}) with the second token");
    }

    let (code, health) = json_of(anonymous.get(server.url("/health")).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::OK, "/health stays open: {health}");
    for task in list_ids(&first, &server).await {
        wait_finished(&first, &server.base_url, task).await;
    }
    server.stop().await;
}

async fn server_status(client: &Client, server: &TestServer, id: Uuid) -> String {
    let status = common::status(client, &server.base_url, id).await;
    status["status"].as_str().unwrap_or_default().to_string()
}

async fn list_ids(client: &Client, server: &TestServer) -> Vec<Uuid> {
    let (_, list) = json_of(client.get(server.url("/v1/tasks")).send().await.unwrap()).await;
    list["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|task| Uuid::parse_str(task["task_id"].as_str()?).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_need_the_worker_token() {
    let server = start_with_tokens().await;
    let api = client_with_token(API_TOKENS[0]);
    let id = upload(&api, &server.base_url, "plays.csv", SEED_INPUT).await;
    assert_eq!(
        wait_finished(&api, &server.base_url, id).await["status"],
        "DONE"
    );
    let events = server.url(&task_protocol::events_path(id));
    let event = json!({"event": "failed", "error": "sent by a stranger"});
    for (who, client) in [
        ("no token", Client::new()),
        ("the first API token", api.clone()),
        ("the second API token", client_with_token(API_TOKENS[1])),
        ("a wrong token", client_with_token("the-worker-token2")),
    ] {
        let request = client.post(&events).json(&event);
        assert_unauthorized(&format!("callback with {who}"), request).await;
    }
    let worker = client_with_token(WORKER_TOKEN);
    let (code, ack) = json_of(worker.post(&events).json(&event).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::OK, "{ack}");
    assert_eq!(ack["status"], "DONE", "a late event moved a finished task");
    let unknown = server.url(&task_protocol::events_path(Uuid::new_v4()));
    let (code, body) = json_of(worker.post(&unknown).json(&event).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_the_loopback_address_is_served() {
    // BIND asks for every address; without tokens (and without ALLOW_INSECURE_BIND) the
    // server takes 127.0.0.1 instead.
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.bind = [0, 0, 0, 0].into();
    })
    .await;
    let addr = server.server.addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "listening on {addr}");
    // And it serves without authentication.
    let id = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(server.wait_finished(id).await["status"], "DONE");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_size_limit_are_refused() {
    const LIMIT: usize = 1000;
    let server = start_server_with(DbKind::Sqlite, |settings| {
        settings.max_upload_bytes = LIMIT as u64;
    })
    .await;
    let rows = "Umbrella,2020-01-02,200\n".repeat(LIMIT / 24 + 1);
    let oversized = format!("Song,Date,Number of Plays\n{rows}");
    let upload_url = server.url("/v1/data_processor/upload");
    let requests = [
        (
            "multipart",
            server
                .client
                .post(&upload_url)
                .multipart(csv_form(&oversized)),
        ),
        (
            "raw body",
            server
                .client
                .post(&upload_url)
                .header(CONTENT_TYPE, "text/csv")
                .body(oversized.clone()),
        ),
    ];
    for (what, request) in requests {
        let (code, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("MAX_UPLOAD_BYTES"), "{what}: {body}");
    }

    // Refused while it streams: a body that passes the limit and then never ends gets its
    // answer all the same.
    let head = oversized.as_bytes()[..LIMIT + 1].to_vec();
    let endless = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(futures_util::stream::pending());
    let request = server
        .client
        .post(&upload_url)
        .header(CONTENT_TYPE, "text/csv")
        .body(reqwest::Body::wrap_stream(endless));
    let response = tokio::time::timeout(ANSWER_DEADLINE, request.send())
        .await
        .expect("no answer before the end of the upload: the limit is not checked while streaming")
        .expect("upload request");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_nothing_recorded(&server).await;

    // Up to the limit is fine.
    let id = server.upload("plays.csv", SEED_INPUT).await;
    assert_eq!(server.wait_finished(id).await["status"], "DONE");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_without_the_csv_header_are_refused() {
    let server = start_server(DbKind::Sqlite).await;
    let upload_url = server.url("/v1/data_processor/upload");
    // Refused as its last byte arrives, so that the client is not cut off while sending.
    let long_line = "x".repeat(1 << 20);
    let cases: [(&str, String, &str); 5] = [
        (
            "other columns",
            "song,date,plays\nA,2020-01-01,1\n".into(),
            "song,date,plays",
        ),
        (
            "no header",
            "Umbrella,2020-01-01,100\n".into(),
            "Umbrella,2020-01-01,100",
        ),
        (
            "semicolons",
            "Song;Date;Number of Plays\r\n".into(),
            "Song;Date;Number of Plays",
        ),
        ("header only in part", "Song,Date".into(), "Song,Date"),
        ("a first line over 1 MiB", long_line, "longer than"),
    ];
    for (what, content, named) in cases {
        for (form, request) in [
            (
                "multipart",
                server
                    .client
                    .post(&upload_url)
                    .multipart(csv_form(&content)),
            ),
            (
                "raw body",
                server
                    .client
                    .post(&upload_url)
                    .header(CONTENT_TYPE, "text/csv")
                    .body(content.clone()),
            ),
        ] {
            let (code, body) = json_of(request.send().await.unwrap()).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{what}, {form}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(named), "{what}, {form}: {error}");
            assert!(
                error.contains("Song,Date,Number of Plays"),
                "{what}, {form}: {error}"
            );
        }
    }
    assert_nothing_recorded(&server).await;

    // A BOM, quoted header fields and CRLF are a right header.
    let id = server
        .upload(
            "bom.csv",
            &format!(
                "\u{FEFF}\"Song\",Date,\"Number of Plays\"\r\n{}",
                &SEED_INPUT[26..]
            ),
        )
        .await;
    let status = server.wait_finished(id).await;
    assert_eq!(status["status"], "DONE", "{status}");
    assert_eq!(server.download(id).await.text().await.unwrap(), SEED_OUTPUT);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_upload_refused_early_gets_its_answer() {
    let server = start_server(DbKind::Sqlite).await;
    let upload_url = server.url("/v1/data_processor/upload");
    // Refused at its first line (or at its content type) with 64 MiB still to send: the
    // server reads the rest, so the client gets the answer rather than a reset connection.
    let rest = "x".repeat(64 << 20);
    for (content_type, first_line, code) in [
        (
            "text/csv",
            "Song;Date;Number of Plays",
            StatusCode::BAD_REQUEST,
        ),
        (
            "image/png",
            "Song,Date,Number of Plays",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        for attempt in 0..3 {
            let response = server
                .client
                .post(&upload_url)
                .header("content-type", content_type)
                .body(format!("{first_line}\n{rest}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{content_type}, attempt {attempt}: no answer: {e}"));
            assert_eq!(response.status(), code, "{content_type}");
        }
    }
    server.stop().await;
}
