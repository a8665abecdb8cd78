//! The binaries' logs, set up the same way for the task manager and the worker: `RUST_LOG`
//! filters them; `LOG_FORMAT=json` writes one JSON object per line (for a log collector), else
//! (`text`, the default) human-readable lines, coloured only when they go to a terminal and
//! `NO_COLOR` is unset, so that a log redirected to a file holds no escape codes.
//! Work on one task runs in its [`task_span`], so that each of its lines names the task.

use std::io::{self, IsTerminal};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// The span of the work on one task: every line logged in it carries `task_id`.
pub fn task_span(id: impl std::fmt::Display) -> tracing::Span {
    tracing::info_span!("task", task_id = %id)
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A `LOG_FORMAT` this program does not know.
#[derive(Debug, thiserror::Error)]
#[error("invalid LOG_FORMAT={0:?}: expected text or json")]
pub struct InvalidFormat(String);

impl Format {
    /// Reads `LOG_FORMAT`'s value; unset or empty: text.
    pub fn parse(value: Option<&str>) -> Result<Format, InvalidFormat> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "text") => Ok(Format::Text),
            Some("json") => Ok(Format::Json),
            Some(_) => Err(InvalidFormat(value.unwrap_or_default().to_string())),
        }
    }
}

/// Installs the process's log subscriber, writing to `stream`, filtered by `RUST_LOG` or else
/// `default_filter` (e.g. `info`), in the format `LOG_FORMAT` names. Does nothing when one is
/// installed already.
pub fn init(default_filter: &str, stream: Stream) -> Result<(), InvalidFormat> {
    let format = Format::parse(std::env::var("LOG_FORMAT").ok().as_deref())?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, terminal) = match stream {
        Stream::Stdout => (BoxMakeWriter::new(io::stdout), io::stdout().is_terminal()),
        Stream::Stderr => (BoxMakeWriter::new(io::stderr), io::stderr().is_terminal()),
    };
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // Err: a subscriber is installed already (a test, say); it stays.
    let _ = match format {
        Format::Text => builder.with_ansi(colour).try_init(),
        Format::Json => builder.json().try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_read() {
        assert_eq!(Format::parse(None).unwrap(), Format::Text);
        assert_eq!(Format::parse(Some("")).unwrap(), Format::Text);
        assert_eq!(Format::parse(Some("Text")).unwrap(), Format::Text);
        assert_eq!(Format::parse(Some(" json ")).unwrap(), Format::Json);
        let err = Format::parse(Some("xml")).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }
}
