//! Every golden case (valid and invalid, `fixtures/golden`) and every generated hostile input
//! (`fixtures::hostile`: binary garbage, 100 MiB lines, records over the limit, ...) uploaded
//! to the task manager in embedded mode. Each upload is refused with 400 (a bad header or an
//! empty file), or its task ends FAILED with the engine's message, or DONE with the expected
//! download; never a 500, never a hang (requests and tasks have deadlines).

use test_support as common;

use fixtures::golden as golden_cases;

use std::time::Duration;

use common::*;
use fixtures::hostile::Outcome;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use reqwest::multipart::{Form, Part};

/// Longest an upload or a download may take before it counts as hung.
const REQUEST_DEADLINE: Duration = Duration::from_secs(300);
/// Inputs from this size on are sent as a raw body, smaller ones as multipart.
const RAW_FROM: usize = 1 << 20;

/// How the server answered an upload and how its task ended.
enum Answer {
    /// The upload was refused with this code and error.
    Refused(StatusCode, String),
    /// The task failed with this error.
    Failed(String),
    /// The task is DONE; the download.
    Done(Vec<u8>),
}

async fn with_deadline<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(REQUEST_DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer after {REQUEST_DEADLINE:?}: hung"))
}

async fn submit(server: &TestServer, name: &str, input: &[u8]) -> Answer {
    let url = server.url("/v1/data_processor/upload");
    let request = if input.len() >= RAW_FROM {
        server
            .client
            .post(url)
            .header(CONTENT_TYPE, "text/csv")
            .body(input.to_vec())
    } else {
        let part = Part::bytes(input.to_vec()).file_name(format!("{name}.csv"));
        server
            .client
            .post(url)
            .multipart(Form::new().part("file", part))
    };
    let response = with_deadline(name, request.send())
        .await
        .unwrap_or_else(|e| panic!("{name}: upload failed: {e}"));
    let (code, body) = with_deadline(name, json_of(response)).await;
    if code != StatusCode::ACCEPTED {
        assert!(
            code.is_client_error(),
            "{name}: upload answered {code} {body}"
        );
        return Answer::Refused(code, body["error"].as_str().unwrap_or_default().into());
    }
    let id = task_id_of(&body);
    let status = with_deadline(name, server.wait_finished(id)).await;
    match status["status"].as_str() {
        Some("FAILED") => Answer::Failed(status["error"].as_str().unwrap_or_default().into()),
        Some("DONE") => {
            let response = with_deadline(name, server.download(id)).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}: download");
            let bytes = with_deadline(name, response.bytes())
                .await
                .unwrap_or_else(|e| panic!("{name}: download failed: {e}"));
            Answer::Done(bytes.to_vec())
        }
        _ => panic!("{name}: task ended {status}"),
    }
}

/// Checks an answer against the expected output or the parts of the expected message.
/// Only errors about the header or an empty input may be refused at upload.
fn check(name: &str, answer: Answer, expected: &Outcome) {
    match (answer, expected) {
        (Answer::Done(download), Outcome::Output(output)) => assert!(
            &download == output,
            "{name}: download differs: {}",
            golden_cases::first_difference(&download, output)
        ),
        (Answer::Failed(error), Outcome::Error(parts)) => {
            for part in parts {
                assert!(
                    error.contains(part.as_str()),
                    "{name}: {error:?} lacks {part:?}"
                );
            }
        }
        (Answer::Refused(code, error), Outcome::Error(parts)) => {
            assert_eq!(code, StatusCode::BAD_REQUEST, "{name}: {error}");
            let about_the_start = parts
                .iter()
                .any(|part| part.contains("line 1:") || part.contains("empty"));
            assert!(about_the_start, "{name}: refused at upload: {error}");
            for part in parts.iter().filter(|part| !part.contains("empty")) {
                assert!(
                    error.contains(part.as_str()),
                    "{name}: {error:?} lacks {part:?}"
                );
            }
        }
        (Answer::Done(download), Outcome::Error(parts)) => panic!(
            "{name}: DONE ({} bytes), expected an error with {parts:?}",
            download.len()
        ),
        (Answer::Failed(error) | Answer::Refused(_, error), Outcome::Output(_)) => {
            panic!("{name}: failed with {error:?}, expected success")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_and_generated_hostile_inputs_over_http() {
    let server = start_server(DbKind::Sqlite).await;
    let golden = golden_cases::valid()
        .into_iter()
        .chain(golden_cases::invalid());
    let mut count = 0;
    for case in golden {
        let input = std::fs::read(&case.input).expect("golden input");
        let expected = match &case.expected {
            golden_cases::Expected::Output(output) => Outcome::Output(output.clone()),
            golden_cases::Expected::Error(message) => Outcome::Error(vec![message.clone()]),
        };
        check(
            &case.name,
            submit(&server, &case.name, &input).await,
            &expected,
        );
        count += 1;
    }
    for case in fixtures::hostile::generated() {
        let answer = submit(&server, case.name, &case.input).await;
        check(case.name, answer, &case.strict);
        count += 1;
    }
    assert!(count > 100, "only {count} cases");
    server.stop().await;
}
