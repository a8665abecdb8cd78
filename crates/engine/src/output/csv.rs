//! CSV output: RFC 4180 quoting only where a field needs it.

use std::io::{self, Write};

use crate::date::{PackedDate, format_date};
use crate::input::header::HEADER;

/// Appends the output lines of one song, `song,date,plays\n` for each of its (date, sum)
/// pairs; the song's field is encoded once.
pub(crate) fn push_song_rows(buf: &mut Vec<u8>, song: &[u8], days: &[(PackedDate, u64)]) {
    let Some((&(date, plays), rest)) = days.split_first() else {
        return;
    };
    let start = buf.len();
    push_field(buf, song);
    buf.push(b',');
    let end = buf.len();
    // The song, a date, a comma, at most 20 digits and a line end per row.
    buf.reserve(rest.len() * (end - start + 32) + 32);
    push_date_plays(buf, date, plays);
    for &(date, plays) in rest {
        buf.extend_from_within(start..end);
        push_date_plays(buf, date, plays);
    }
}

/// Appends `date,plays\n`.
#[inline]
fn push_date_plays(buf: &mut Vec<u8>, date: PackedDate, plays: u64) {
    // The date, a comma, at most 20 digits and the line end.
    let mut line = [0u8; 32];
    let mut date_text = [0u8; 10];
    format_date(date, &mut date_text);
    line[..10].copy_from_slice(&date_text);
    line[10] = b',';
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(plays).as_bytes();
    line[11..11 + digits.len()].copy_from_slice(digits);
    line[11 + digits.len()] = b'\n';
    buf.extend_from_slice(&line[..12 + digits.len()]);
}

/// Appends a field, quoted (inner quotes doubled) when it holds a comma, quote, CR or LF.
fn push_field(buf: &mut Vec<u8>, field: &[u8]) {
    if field
        .iter()
        .any(|&b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        buf.push(b'"');
        for &b in field {
            if b == b'"' {
                buf.push(b'"');
            }
            buf.push(b);
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(field);
    }
}

/// Writes the header line.
pub(crate) fn write_header(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(HEADER.as_bytes())?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let mut buf = Vec::new();
        let day = |y, m, d| crate::date::pack_date(y, m, d);
        push_song_rows(&mut buf, b"Nothing", &[]);
        push_song_rows(
            &mut buf,
            b"In The End",
            &[(day(2020, 1, 1), 1500), (day(2020, 1, 2), 7)],
        );
        push_song_rows(
            &mut buf,
            b"Hello, \"World\"",
            &[(day(2020, 12, 31), 0), (day(2021, 1, 1), 10)],
        );
        push_song_rows(&mut buf, "Café".as_bytes(), &[(day(2020, 1, 1), u64::MAX)]);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "In The End,2020-01-01,1500\nIn The End,2020-01-02,7\n\
             \"Hello, \"\"World\"\"\",2020-12-31,0\n\"Hello, \"\"World\"\"\",2021-01-01,10\n\
             Café,2020-01-01,18446744073709551615\n"
        );
    }
}
