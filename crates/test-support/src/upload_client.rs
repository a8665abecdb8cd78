//! `processor upload` (the client) run to completion by a test of the processor crate.

use std::path::Path;
use std::process::{Command, Output};

use crate::worker_process::processor_binary;

/// Runs `processor upload INPUT [-o OUTPUT] --url BASE_URL --quiet`, with `API_TOKEN` set to
/// `api_token` (unset when `None`); its exit status and output.
pub async fn run(
    base_url: &str,
    api_token: Option<&str>,
    input: &Path,
    output: Option<&Path>,
) -> Output {
    let mut command = Command::new(processor_binary());
    command.arg("upload");
    if let Some(output) = output {
        command.arg("-o").arg(output);
    }
    match api_token {
        Some(token) => command.env("API_TOKEN", token),
        None => command.env_remove("API_TOKEN"),
    };
    command.arg(input).args(["--url", base_url, "--quiet"]);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("client thread")
        .expect("run processor upload")
}
