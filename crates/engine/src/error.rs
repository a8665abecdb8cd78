//! Engine errors. Every message about the input names the line, the field and the value.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A field of the input, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Song,
    Date,
    Plays,
}

impl Field {
    /// The column name as in the header.
    pub fn name(self) -> &'static str {
        match self {
            Field::Song => "Song",
            Field::Date => "Date",
            Field::Plays => "Number of Plays",
        }
    }
}

/// An invalid row (or header): where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRow {
    /// 1-based line number where the record starts (the header is line 1).
    pub line: u64,
    /// The offending field, when one is to blame.
    pub field: Option<Field>,
    /// What is wrong, quoting the (shortened) value.
    pub reason: String,
}

impl fmt::Display for InvalidRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(
                f,
                "line {}, field \"{}\": {}",
                self.line,
                field.name(),
                self.reason
            ),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// Why an aggregation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    Invalid(InvalidRow),
    #[error("the input is empty: expected the header \"Song,Date,Number of Plays\"")]
    EmptyInput,
    #[error("the sum of plays for song {song:?} on {date} overflows a 64-bit integer")]
    SumOverflow { song: String, date: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("temporary file in {}: {source}", path.display())]
    Temp { path: PathBuf, source: io::Error },
    #[error("cannot start worker threads: {0}")]
    Threads(String),
    #[error("cancelled")]
    Cancelled,
}

/// Shortens a value for an error message: at most 40 characters, lossy UTF-8, quoted.
pub(crate) fn show_value(bytes: &[u8]) -> String {
    const MAX: usize = 40;
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(MAX).collect();
    if chars.next().is_some() {
        format!("{:?}...", short)
    } else {
        format!("{:?}", short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_line_field_and_value() {
        let row = InvalidRow {
            line: 7,
            field: Some(Field::Plays),
            reason: format!("{} is not a non-negative integer", show_value(b"abc")),
        };
        assert_eq!(
            Error::Invalid(row).to_string(),
            "invalid input: line 7, field \"Number of Plays\": \"abc\" is not a non-negative integer"
        );
    }

    #[test]
    fn long_values_are_shortened() {
        let long = "x".repeat(100);
        let shown = show_value(long.as_bytes());
        assert!(shown.len() < 50, "{shown}");
        assert!(shown.ends_with("..."));
    }
}
