//! Byte scanning: delimiter search and record boundaries that respect quoted fields.

/// Index of the first `,`, `"` or `\n` in `data[from..]`, or `data.len()`.
#[inline]
pub(crate) fn find_delimiter(data: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    #[inline]
    fn has_byte(word: u64, byte: u8) -> u64 {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    let mut i = from;
    while let Some(chunk) = data.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
        let word = u64::from_le_bytes(*chunk);
        // The lowest flagged byte is exact (borrows only spill into higher bytes).
        let hits = has_byte(word, b',') | has_byte(word, b'"') | has_byte(word, b'\n');
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < data.len() && !matches!(data[i], b',' | b'"' | b'\n') {
        i += 1;
    }
    i
}

/// Number of `"` bytes in `data`.
pub(crate) fn count_quotes(data: &[u8]) -> usize {
    memchr::memchr_iter(b'"', data).count()
}

/// Given `data` starting at a record start (outside quotes), the index just past the last
/// record terminator (`\n` outside quotes), or `None` when `data` holds no complete record.
///
/// A byte is inside a quoted field exactly when an odd number of `"` precede it in the record
/// stream: RFC 4180 escapes (`""`) keep the parity, and a quote inside an unquoted field is an
/// error the parser reports.
pub(crate) fn last_record_end(data: &[u8]) -> Option<usize> {
    let mut inside = count_quotes(data) % 2 == 1;
    let mut end = data.len();
    while let Some(i) = memchr::memrchr2(b'"', b'\n', &data[..end]) {
        if data[i] == b'"' {
            inside = !inside;
        } else if !inside {
            return Some(i + 1);
        }
        end = i;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiters() {
        assert_eq!(find_delimiter(b"abc,def", 0), 3);
        assert_eq!(find_delimiter(b"abcdefghijkl,m", 0), 12);
        assert_eq!(find_delimiter(b"abcdefghijklmnop\"", 2), 16);
        assert_eq!(find_delimiter(b"abcdefghijklmnop", 0), 16);
        assert_eq!(find_delimiter(b"ab\ncd,", 0), 2);
        assert_eq!(find_delimiter("Café Ü,x".as_bytes(), 0), 8);
        for len in 0..20 {
            let mut data = vec![b'x'; len];
            data.push(b',');
            assert_eq!(find_delimiter(&data, 0), len);
        }
    }

    #[test]
    fn record_ends_respect_quotes() {
        assert_eq!(last_record_end(b"a,b\nc,d\ne"), Some(8));
        assert_eq!(last_record_end(b"a,b\n\"c\nd\",e"), Some(4));
        assert_eq!(last_record_end(b"\"x\ny\",1\n\"p\nq"), Some(8));
        assert_eq!(last_record_end(b"\"a\"\"b\",1\nc"), Some(9));
        assert_eq!(last_record_end(b"abc"), None);
        assert_eq!(last_record_end(b"\"a\nb"), None);
    }
}
