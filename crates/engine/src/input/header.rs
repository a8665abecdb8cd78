//! The header line `Song,Date,Number of Plays`: found after an optional BOM, its fields read
//! like a record's and checked, then stripped from the input before its blocks are cut. The
//! public [`check_header`] makes the same check on the start of an upload.

use crate::error::{Error, InvalidRow, show_value};
use crate::input::MAX_RECORD_BYTES;
use crate::input::parse::{Term, read_field};

/// The header of input and output files.
pub const HEADER: &str = "Song,Date,Number of Plays";

/// Where the header ended and how many line ends it had.
pub(crate) struct Header {
    pub newlines: u64,
    /// Bytes of the BOM and the header line.
    pub bytes: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

pub(super) fn header_of(data: &[u8], at_end: bool) -> Result<Option<(usize, HeaderEnd)>, Error> {
    let skip = if data.starts_with(BOM) { BOM.len() } else { 0 };
    if at_end && data.len() == skip {
        return Err(Error::EmptyInput);
    }
    Ok(parse_header(&data[skip..], at_end)
        .map_err(Error::Invalid)?
        .map(|end| (skip, end)))
}

/// Checks the start of an input (e.g. the first bytes of an upload): `Ok(Some(n))` when it
/// opens with the header `Song,Date,Number of Plays` (after an optional BOM), `n` being the
/// bytes of BOM and header line; `Ok(None)` when `start` is too short to tell and more bytes
/// are needed (`at_end` false: `start` is not the whole input); otherwise the error the
/// engine would report (wrong header, empty input, header over 1 MiB).
pub fn check_header(start: &[u8], at_end: bool) -> Result<Option<usize>, Error> {
    match header_of(start, at_end)? {
        Some((skip, end)) => Ok(Some(skip + end.end)),
        None if start.len() >= MAX_RECORD_BYTES => Err(header_too_long()),
        None => Ok(None),
    }
}

pub(super) fn header_too_long() -> Error {
    Error::Invalid(InvalidRow {
        line: 1,
        field: None,
        reason: format!(
            "the header is longer than {} bytes; expected \"Song,Date,Number of Plays\"",
            MAX_RECORD_BYTES
        ),
    })
}

/// The header at the start of `data` (after a BOM), removed from it; `None` when `data` is
/// too short to tell and more may come (`at_end` false).
pub(super) fn strip_header(data: &mut Vec<u8>, at_end: bool) -> Result<Option<Header>, Error> {
    // As for mapped input: the header is looked for in its first MAX_RECORD_BYTES.
    let head = &data[..data.len().min(MAX_RECORD_BYTES)];
    match header_of(head, at_end && head.len() == data.len())? {
        Some((skip, end)) => {
            let bytes = skip + end.end;
            data.drain(..bytes);
            Ok(Some(Header {
                newlines: end.newlines,
                bytes,
            }))
        }
        None if data.len() >= MAX_RECORD_BYTES || at_end => Err(header_too_long()),
        None => Ok(None),
    }
}

/// Where the header ends, after checking it: `Ok(None)` when `data` (not the whole input
/// unless `at_end`) does not yet hold the complete header line.
fn parse_header(data: &[u8], at_end: bool) -> Result<Option<HeaderEnd>, InvalidRow> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut pos = 0;
    let mut newlines = 0;
    loop {
        let mut buf = Vec::new();
        let read = match read_field(data, pos, &mut buf) {
            Ok(read) => read,
            Err(_) if !at_end => return Ok(None),
            Err(err) => {
                return Err(InvalidRow {
                    line: 1,
                    field: None,
                    reason: format!("the header {}", err.reason),
                });
            }
        };
        if read.term == Term::End && !at_end {
            return Ok(None);
        }
        fields.push(match read.plain {
            Some(range) => data[range].to_vec(),
            None => buf,
        });
        pos = read.next;
        newlines += read.newlines;
        if read.term != Term::Comma {
            break;
        }
    }
    let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    check_fields(&fields)?;
    Ok(Some(HeaderEnd { end: pos, newlines }))
}

/// The end of a valid header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeaderEnd {
    /// Index just past the header's line end.
    pub end: usize,
    /// Line ends inside and at the end of the header.
    pub newlines: u64,
}

/// Checks the header fields (already unquoted, BOM removed).
fn check_fields(fields: &[&[u8]]) -> Result<(), InvalidRow> {
    let expected: [&[u8]; 3] = [b"Song", b"Date", b"Number of Plays"];
    if fields == expected {
        return Ok(());
    }
    let found = fields
        .iter()
        .map(|f| String::from_utf8_lossy(f))
        .collect::<Vec<_>>()
        .join(",");
    Err(InvalidRow {
        line: 1,
        field: None,
        reason: format!(
            "expected the header \"Song,Date,Number of Plays\", found {}",
            show_value(found.as_bytes())
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let end = parse_header(b"Song,Date,Number of Plays\r\nA,2020-01-01,1\n", false)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            end,
            HeaderEnd {
                end: 27,
                newlines: 1
            }
        );
        assert_eq!(parse_header(b"Song,Date,Numb", false), Ok(None));
        assert!(
            parse_header(b"Song,Date,Number of Plays", true)
                .expect("valid")
                .is_some()
        );
        let quoted = parse_header(b"\"Song\",\"Date\",\"Number of Plays\"\n", false);
        assert!(quoted.expect("valid").is_some());
        let err = parse_header(b"song,date,plays\n", false).expect_err("wrong header");
        assert!(err.reason.contains("song,date,plays"), "{}", err.reason);
        assert!(parse_header(b"A,2020-01-01,1\n", false).is_err());
    }

    #[test]
    fn header_checks() {
        let header = check_header(b"Song,Date,Number of Plays\n", false);
        assert_eq!(header.ok(), Some(Some(26)));
        let bom = check_header(b"\xEF\xBB\xBFSong,Date,Number of Plays\r\nA", false);
        assert_eq!(bom.ok(), Some(Some(30)));
        assert_eq!(check_header(b"Song,Date,Num", false).ok(), Some(None));
        let whole = check_header(b"Song,Date,Number of Plays", true);
        assert_eq!(whole.ok(), Some(Some(25)));
        let err = check_header(b"song,day\n", false).expect_err("wrong header");
        assert!(err.to_string().contains("song,day"), "{err}");
        assert!(check_header(b"", true).is_err());
    }

    #[test]
    fn fields() {
        assert!(check_fields(&[b"Song", b"Date", b"Number of Plays"]).is_ok());
        let err = check_fields(&[b"Song", b"Day", b"Plays"]).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.reason.contains("Song,Day,Plays"), "{}", err.reason);
    }
}
