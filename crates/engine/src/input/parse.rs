//! Parses the records of one block. A fast path takes plain records (unquoted song, a
//! 10-byte date, digits); everything else goes through the general RFC 4180 path, which also
//! diagnoses invalid records and finds where they end.

use std::ops::Range;

use crate::date::{PackedDate, parse_date, parse_date_exact};
use crate::error::{Field, show_value};
use crate::input::scan::{Delimiters, find_delimiter};

/// Receives the parsed rows of a block (`'d`: the block's bytes). Returning `Err(Stop)` ends
/// the block early; the sink keeps the reason itself.
pub(crate) trait RowSink<'d> {
    /// A valid row whose record starts `line` lines into the block.
    fn row(&mut self, song: &[u8], date: PackedDate, plays: u64, line: u64) -> Result<(), Stop>;
    /// A valid row whose song is a slice of the block, which the sink may keep until
    /// [`RowSink::end`].
    #[inline]
    fn block_row(
        &mut self,
        song: &'d [u8],
        date: PackedDate,
        plays: u64,
        line: u64,
    ) -> Result<(), Stop> {
        self.row(song, date, plays, line)
    }
    /// [`RowSink::block_row`] of a song known to be ASCII, hence valid UTF-8.
    #[inline]
    fn ascii_row(
        &mut self,
        song: &'d [u8],
        date: PackedDate,
        plays: u64,
        line: u64,
    ) -> Result<(), Stop> {
        self.block_row(song, date, plays, line)
    }
    /// An invalid record starting `line` lines into the block.
    fn invalid(&mut self, line: u64, field: Option<Field>, reason: String) -> Result<(), Stop>;
    /// The block's rows are all given.
    fn end(&mut self) -> Result<(), Stop> {
        Ok(())
    }
}

/// Signal from a [`RowSink`] to stop parsing.
#[derive(Debug)]
pub(crate) struct Stop;

/// Counts of one parsed block.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockStats {
    /// Line ends (`\n`) consumed, including those inside quoted fields.
    pub lines: u64,
    /// Records (data rows) seen, valid or not.
    pub rows: u64,
}

/// What ends a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Term {
    Comma,
    Line,
    End,
}

/// A field read by the general path: plain (a range of the block) or quoted (unescaped into a
/// buffer).
pub(super) struct FieldRead {
    pub plain: Option<Range<usize>>,
    pub term: Term,
    pub next: usize,
    pub newlines: u64,
}

pub(super) struct FieldError {
    pub reason: String,
    next: usize,
    newlines: u64,
}

/// A record diagnosed as invalid.
struct RecordError {
    field: Option<Field>,
    reason: String,
}

/// Block parser with its reusable buffers (no allocation per row).
#[derive(Default)]
pub(crate) struct Parser {
    song: Vec<u8>,
    other: Vec<u8>,
    dates: DateCache,
}

/// Direct-mapped cache of recently parsed date texts: inputs repeat a few dates millions of
/// times, and a hit costs a hash and two compares instead of a full validation.
struct DateCache {
    slots: Box<[(u64, u16, PackedDate); DateCache::SLOTS]>,
}

impl Default for DateCache {
    fn default() -> Self {
        // (0, 0) never matches a date text, whose first byte is a digit.
        DateCache {
            slots: Box::new([(0, 0, 0); DateCache::SLOTS]),
        }
    }
}

impl DateCache {
    const SLOTS: usize = 256;

    #[inline]
    fn parse(&mut self, text: &[u8; 10]) -> Option<PackedDate> {
        let (head, tail) = text.split_at(8);
        let head = u64::from_le_bytes(head.try_into().ok()?);
        let tail = u16::from_le_bytes(tail.try_into().ok()?);
        let mixed = (head ^ (u64::from(tail) << 13)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = &mut self.slots[(mixed >> 56) as usize];
        if slot.0 == head && slot.1 == tail {
            return Some(slot.2);
        }
        let date = parse_date_exact(text)?;
        *slot = (head, tail, date);
        Some(date)
    }
}

impl Parser {
    /// Parses `data`, which starts at a record start and ends at a record end (or the input's
    /// end), feeding `sink`.
    pub(crate) fn parse_block<'d>(
        &mut self,
        data: &'d [u8],
        sink: &mut impl RowSink<'d>,
    ) -> Result<BlockStats, Stop> {
        let n = data.len();
        let mut p = 0;
        let mut stats = BlockStats::default();
        let mut delimiters = Delimiters::new(data);
        while p < n {
            // A blank line is no fast record (its line end is a delimiter at `p`).
            if let Some(fast) = fast_record(data, p, &mut delimiters, &mut self.dates) {
                let song = &data[p..fast.song_end];
                if delimiters.ascii_from(p) {
                    sink.ascii_row(song, fast.date, fast.plays, stats.lines)?;
                } else {
                    sink.block_row(song, fast.date, fast.plays, stats.lines)?;
                }
                stats.rows += 1;
                p = fast.next;
                stats.lines += fast.newlines;
                continue;
            }
            match data[p] {
                b'\n' => {
                    p += 1;
                    stats.lines += 1;
                    continue;
                }
                b'\r' if p + 1 == n => break,
                b'\r' if data[p + 1] == b'\n' => {
                    p += 2;
                    stats.lines += 1;
                    continue;
                }
                _ => {}
            }
            stats.rows += 1;
            let line = stats.lines;
            let (result, next, newlines) = self.general_record(data, p);
            p = next;
            stats.lines += newlines;
            match result {
                Ok((Some(range), date, plays)) => {
                    sink.block_row(&data[range], date, plays, line)?
                }
                Ok((None, date, plays)) => sink.row(&self.song, date, plays, line)?,
                Err(err) => sink.invalid(line, err.field, err.reason)?,
            }
        }
        sink.end()?;
        Ok(stats)
    }

    /// Parses one record at `start` by the general path. Returns the row (song as a block
    /// range, or `None` for the unescaped copy in `self.song`) or what is wrong, and where the
    /// next record starts with the newlines consumed.
    #[allow(clippy::type_complexity)]
    fn general_record(
        &mut self,
        data: &[u8],
        start: usize,
    ) -> (
        Result<(Option<Range<usize>>, PackedDate, u64), RecordError>,
        usize,
        u64,
    ) {
        let mut pos = start;
        let mut newlines = 0;
        let mut count = 0usize;
        let mut song = None;
        let mut date = Err(String::new());
        let mut plays = Err(String::new());
        loop {
            let buf = if count == 0 {
                &mut self.song
            } else {
                &mut self.other
            };
            let read = match read_field(data, pos, buf) {
                Ok(read) => read,
                Err(err) => {
                    let field = [Field::Song, Field::Date, Field::Plays].get(count).copied();
                    let error = RecordError {
                        field,
                        reason: err.reason,
                    };
                    return (Err(error), err.next, newlines + err.newlines);
                }
            };
            pos = read.next;
            newlines += read.newlines;
            let value = match &read.plain {
                Some(range) => &data[range.clone()],
                None => &buf[..],
            };
            match count {
                0 => song = Some(read.plain.clone()),
                1 => date = parse_date(value),
                2 => plays = parse_plays(value),
                _ => {}
            }
            count += 1;
            if read.term != Term::Comma {
                break;
            }
        }
        let invalid = |field, reason| Err(RecordError { field, reason });
        let result = if count != 3 {
            invalid(
                None,
                format!("expected 3 fields (Song,Date,Number of Plays), found {count}"),
            )
        } else {
            let song = song.flatten();
            let song_empty = match &song {
                Some(range) => range.is_empty(),
                None => self.song.is_empty(),
            };
            if song_empty {
                invalid(Some(Field::Song), "is empty".to_string())
            } else {
                match (date, plays) {
                    (Err(reason), _) => invalid(Some(Field::Date), reason),
                    (_, Err(reason)) => invalid(Some(Field::Plays), reason),
                    (Ok(date), Ok(plays)) => Ok((song, date, plays)),
                }
            }
        };
        (result, pos, newlines)
    }
}

/// A record taken by the fast path.
struct FastRecord {
    song_end: usize,
    date: PackedDate,
    plays: u64,
    next: usize,
    newlines: u64,
}

/// The fast path: `song,YYYY-MM-DD,digits` with a plain song, ending in `\n`, `\r\n` or the
/// end of the data. `None` sends the record to the general path.
#[inline]
fn fast_record(
    data: &[u8],
    start: usize,
    delimiters: &mut Delimiters<'_>,
    dates: &mut DateCache,
) -> Option<FastRecord> {
    let n = data.len();
    // A quoted song stops here: its quote is a delimiter at `start`.
    let song_end = delimiters.next(start);
    if song_end == start || song_end >= n || data[song_end] != b',' {
        return None;
    }
    let date_start = song_end + 1;
    let date_text = data.get(date_start..)?.first_chunk::<10>()?;
    if data.get(date_start + 10) != Some(&b',') {
        return None;
    }
    // A valid date holds digits and dashes only, so the next delimiter ends the plays.
    let date = dates.parse(date_text)?;
    let digits_start = date_start + 11;
    let end = delimiters.next(digits_start);
    let (next, newlines) = match data.get(end) {
        None => (end, 0),
        Some(b'\n') => (end + 1, 1),
        Some(_) => return None,
    };
    // `end - 1` is at least the comma before the plays; a CR ending the line is no digit.
    let digits_end = if data[end - 1] == b'\r' { end - 1 } else { end };
    let digits = data.get(digits_start..digits_end)?;
    // Up to 19 digits always fit u64; longer numbers take the checked general path.
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut plays: u64 = 0;
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        plays = plays * 10 + u64::from(digit);
    }
    Some(FastRecord {
        song_end,
        date,
        plays,
        next,
        newlines,
    })
}

/// Reads the field at `pos`: a plain field as a range, a quoted one unescaped into `out`.
pub(super) fn read_field(
    data: &[u8],
    pos: usize,
    out: &mut Vec<u8>,
) -> Result<FieldRead, FieldError> {
    if data.get(pos) == Some(&b'"') {
        read_quoted(data, pos, out)
    } else {
        read_plain(data, pos)
    }
}

fn read_plain(data: &[u8], pos: usize) -> Result<FieldRead, FieldError> {
    let end = find_delimiter(data, pos);
    let (term, next, newlines) = match data.get(end) {
        None => (Term::End, end, 0),
        Some(b',') => (Term::Comma, end + 1, 0),
        Some(b'\n') => (Term::Line, end + 1, 1),
        Some(_) => {
            let field_end =
                memchr::memchr2(b',', b'\n', &data[end..]).map_or(data.len(), |i| end + i);
            let (next, newlines) = skip_record(data, end);
            return Err(FieldError {
                reason: format!(
                    "{} has a double quote in an unquoted field (quote the whole field and double the quote)",
                    show_value(&data[pos..field_end])
                ),
                next,
                newlines,
            });
        }
    };
    let mut value_end = end;
    if term != Term::Comma && value_end > pos && data[value_end - 1] == b'\r' {
        value_end -= 1;
    }
    Ok(FieldRead {
        plain: Some(pos..value_end),
        term,
        next,
        newlines,
    })
}

fn read_quoted(data: &[u8], pos: usize, out: &mut Vec<u8>) -> Result<FieldRead, FieldError> {
    out.clear();
    let mut i = pos + 1;
    let mut newlines = 0;
    loop {
        let Some(offset) = memchr::memchr(b'"', &data[i..]) else {
            let rest = &data[i..];
            return Err(FieldError {
                reason: format!(
                    "{} has an opening double quote that is never closed",
                    show_value(first_line(&data[pos..]))
                ),
                next: data.len(),
                newlines: newlines + memchr::memchr_iter(b'\n', rest).count() as u64,
            });
        };
        let chunk = &data[i..i + offset];
        newlines += memchr::memchr_iter(b'\n', chunk).count() as u64;
        out.extend_from_slice(chunk);
        let quote = i + offset;
        if data.get(quote + 1) == Some(&b'"') {
            out.push(b'"');
            i = quote + 2;
            continue;
        }
        let after = quote + 1;
        let (term, next, ends_line) = match data.get(after) {
            None => (Term::End, after, 0),
            Some(b',') => (Term::Comma, after + 1, 0),
            Some(b'\n') => (Term::Line, after + 1, 1),
            Some(b'\r') if data.get(after + 1) == Some(&b'\n') => (Term::Line, after + 2, 1),
            Some(b'\r') if after + 1 == data.len() => (Term::End, after + 1, 0),
            Some(_) => {
                let (next, skipped) = skip_record(data, after);
                return Err(FieldError {
                    reason: format!(
                        "has {} after its closing double quote (expected a comma or the end of the line)",
                        show_value(&data[after..after + 1])
                    ),
                    next,
                    newlines: newlines + skipped,
                });
            }
        };
        return Ok(FieldRead {
            plain: None,
            term,
            next,
            newlines: newlines + ends_line,
        });
    }
}

/// Parses a non-negative integer that fits u64: ASCII digits only.
pub(crate) fn parse_plays(bytes: &[u8]) -> Result<u64, String> {
    if bytes.is_empty() {
        return Err("is empty: expected a non-negative integer".into());
    }
    let mut value: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return Err(format!(
                "{} is not a non-negative integer",
                show_value(bytes)
            ));
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| format!("{} does not fit a 64-bit integer", show_value(bytes)))?;
    }
    Ok(value)
}

/// `data` up to its first line end.
fn first_line(data: &[u8]) -> &[u8] {
    memchr::memchr(b'\n', data).map_or(data, |end| &data[..end])
}

/// Skips the rest of a malformed record, from `pos` to just past the next `\n` outside
/// quotes, counting every `"` from `pos` on: the rule the block cutter follows
/// ([`crate::input::scan::last_record_end`]), so that the next record starts at the same place
/// whatever the block size. Returns that place and the line ends skipped.
fn skip_record(data: &[u8], pos: usize) -> (usize, u64) {
    let mut quoted = false;
    let mut newlines = 0;
    let mut from = pos;
    while let Some(offset) = memchr::memchr2(b'"', b'\n', &data[from..]) {
        let at = from + offset;
        if data[at] == b'"' {
            quoted = !quoted;
        } else {
            newlines += 1;
            if !quoted {
                return (at + 1, newlines);
            }
        }
        from = at + 1;
    }
    (data.len(), newlines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::date::pack_date;

    #[derive(Default)]
    struct Collect {
        rows: Vec<(String, PackedDate, u64, u64)>,
        invalid: Vec<(u64, Option<Field>, String)>,
    }

    impl RowSink<'_> for Collect {
        fn row(
            &mut self,
            song: &[u8],
            date: PackedDate,
            plays: u64,
            line: u64,
        ) -> Result<(), Stop> {
            self.rows.push((
                String::from_utf8_lossy(song).into_owned(),
                date,
                plays,
                line,
            ));
            Ok(())
        }
        fn invalid(&mut self, line: u64, field: Option<Field>, reason: String) -> Result<(), Stop> {
            self.invalid.push((line, field, reason));
            Ok(())
        }
    }

    fn parse(data: &str) -> (Collect, BlockStats) {
        let mut sink = Collect::default();
        let stats = Parser::default()
            .parse_block(data.as_bytes(), &mut sink)
            .expect("collecting sink never stops");
        (sink, stats)
    }

    #[test]
    fn plain_and_quoted_records() {
        let (sink, stats) = parse(
            "A,2020-01-02,5\r\n\"B, \"\"the\"\" song\",\"2020-01-03\",\"7\"\n\"multi\nline\",2020-01-04,0\n\nC,2020-01-05,9",
        );
        assert!(sink.invalid.is_empty(), "{:?}", sink.invalid);
        assert_eq!(
            sink.rows,
            vec![
                ("A".into(), pack_date(2020, 1, 2), 5, 0),
                ("B, \"the\" song".into(), pack_date(2020, 1, 3), 7, 1),
                ("multi\nline".into(), pack_date(2020, 1, 4), 0, 2),
                ("C".into(), pack_date(2020, 1, 5), 9, 5),
            ]
        );
        assert_eq!(stats, BlockStats { lines: 5, rows: 4 });
    }

    #[test]
    fn plays() {
        assert_eq!(parse_plays(b"0"), Ok(0));
        assert_eq!(parse_plays(b"0042"), Ok(42));
        assert_eq!(parse_plays(b"18446744073709551615"), Ok(u64::MAX));
        assert!(parse_plays(b"18446744073709551616").is_err());
        assert!(parse_plays(b"-1").is_err());
        assert!(parse_plays(b"+1").is_err());
        assert!(parse_plays(b"1.5").is_err());
        assert!(parse_plays(b"").is_err());
        assert!(parse_plays(b" 1").is_err());
    }

    #[test]
    fn invalid_records_are_diagnosed_and_skipped() {
        let (sink, stats) = parse(
            "A,2020-01-02\nB,2020-02-30,1\nC,2020-01-01,-3\n,2020-01-01,1\nD,2020-01-01,1,x\nE\"x\"y,2020-01-01,1\n\"F\"x,2020-01-01,1\nG,2020-01-01,99999999999999999999\nH,2020-01-01,7\n\"open,2020-01-01,1\n",
        );
        let fields: Vec<_> = sink.invalid.iter().map(|(l, f, _)| (*l, *f)).collect();
        assert_eq!(
            fields,
            vec![
                (0, None),
                (1, Some(Field::Date)),
                (2, Some(Field::Plays)),
                (3, Some(Field::Song)),
                (4, None),
                (5, Some(Field::Song)),
                (6, Some(Field::Song)),
                (7, Some(Field::Plays)),
                (9, Some(Field::Song)),
            ]
        );
        assert!(
            sink.invalid[0].2.contains("found 2"),
            "{}",
            sink.invalid[0].2
        );
        assert!(sink.invalid[1].2.contains("real calendar date"));
        assert!(sink.invalid[7].2.contains("does not fit"));
        assert!(sink.invalid[8].2.contains("never closed"));
        assert_eq!(sink.rows, vec![("H".into(), pack_date(2020, 1, 1), 7, 8)]);
        assert_eq!(stats.rows, 10);
    }

    #[test]
    fn after_a_malformed_field_the_record_ends_where_the_block_cutter_says() {
        // The stray quote opens a quoted stretch up to the quote of line 4: whole or cut
        // into blocks at record ends, the first three lines are one bad record.
        let data = "a\"b\nB,2020-01-01,1\n\"x\nC,2020-01-01,2\n";
        let cut = crate::input::scan::last_record_end(&data.as_bytes()[..24]);
        assert_eq!(cut, Some(22));
        let (whole, stats) = parse(data);
        let (first, _) = parse(&data[..22]);
        let (second, _) = parse(&data[22..]);
        assert_eq!(stats, BlockStats { lines: 4, rows: 2 });
        assert_eq!(whole.invalid.len(), 1);
        assert_eq!(first.invalid.len(), 1);
        assert_eq!(whole.rows, vec![("C".into(), pack_date(2020, 1, 1), 2, 3)]);
        assert_eq!(second.rows, vec![("C".into(), pack_date(2020, 1, 1), 2, 0)]);
        assert!(first.rows.is_empty());
    }
}
