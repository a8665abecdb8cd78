//! CSV output: RFC 4180 quoting only where a field needs it.

use std::io::{self, Write};

use super::validate::{PackedDate, format_date};

/// Appends one output line `song,date,plays\n` to `buf`.
pub(crate) fn push_row(buf: &mut Vec<u8>, song: &[u8], date: PackedDate, plays: u64) {
    push_field(buf, song);
    let mut date_text = [0u8; 10];
    format_date(date, &mut date_text);
    buf.push(b',');
    buf.extend_from_slice(&date_text);
    buf.push(b',');
    let mut digits = itoa_buf(plays);
    buf.extend_from_slice(digits.as_slice());
    buf.push(b'\n');
    digits.clear();
}

/// Appends a field, quoted (inner quotes doubled) when it holds a comma, quote, CR or LF.
pub(crate) fn push_field(buf: &mut Vec<u8>, field: &[u8]) {
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

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    fn clear(&mut self) {
        self.start = self.buf.len();
    }
}

fn itoa_buf(mut value: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    Digits { buf, start }
}

/// Writes the header line.
pub(crate) fn write_header(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(crate::HEADER.as_bytes())?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let mut buf = Vec::new();
        let day = |y, m, d| super::super::validate::pack_date(y, m, d);
        push_row(&mut buf, b"In The End", day(2020, 1, 1), 1500);
        push_row(&mut buf, b"Hello, \"World\"", day(2020, 12, 31), 0);
        push_row(&mut buf, "Café".as_bytes(), day(2020, 1, 1), u64::MAX);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "In The End,2020-01-01,1500\n\"Hello, \"\"World\"\"\",2020-12-31,0\nCafé,2020-01-01,18446744073709551615\n"
        );
    }
}
