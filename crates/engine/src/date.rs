//! Dates: the packed day ordinal that rows are keyed and sorted on, parsed from and formatted
//! to `YYYY-MM-DD` (the input, the output and error messages all use it).

use crate::error::show_value;

/// A calendar date as a day ordinal `(year * 12 + month - 1) * 31 + day - 1`: its numeric order
/// is the date order, it is computed and formatted with a few multiplications, and consecutive
/// dates are at most 4 apart (so per-song arrays indexed by it stay dense).
pub(crate) type PackedDate = u32;

/// Packs a validated year, month and day.
pub(crate) fn pack_date(year: u32, month: u32, day: u32) -> PackedDate {
    (year * 12 + month - 1) * 31 + day - 1
}

/// Parses a real calendar date `YYYY-MM-DD` (years 0001 to 9999).
pub(crate) fn parse_date(bytes: &[u8]) -> Result<PackedDate, String> {
    let Some(text) = bytes.first_chunk::<10>().filter(|_| bytes.len() == 10) else {
        return Err(format!("{} is not a date YYYY-MM-DD", show_value(bytes)));
    };
    match parse_date_exact(text) {
        Some(date) => Ok(date),
        None if text.iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        }) =>
        {
            Err(format!("{} is not a real calendar date", show_value(bytes)))
        }
        None => Err(format!("{} is not a date YYYY-MM-DD", show_value(bytes))),
    }
}

/// The hot-path date parser: `None` for anything but a real date `YYYY-MM-DD`.
#[inline]
pub(crate) fn parse_date_exact(text: &[u8; 10]) -> Option<PackedDate> {
    let &[y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = text else {
        return None;
    };
    let mut digits = [y0, y1, y2, y3, m0, m1, d0, d1];
    for d in &mut digits {
        *d = d.wrapping_sub(b'0');
        if *d > 9 {
            return None;
        }
    }
    let [y0, y1, y2, y3, m0, m1, d0, d1] = digits.map(u32::from);
    let year = y0 * 1000 + y1 * 100 + y2 * 10 + y3;
    let month = m0 * 10 + m1;
    let day = d0 * 10 + d1;
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(pack_date(year, month, day))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Two-digit texts "00" to "99".
const PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        pairs[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    pairs
};

/// "MM-DD" of each day of a year's 12 x 31 packed slots.
const MONTH_DAYS: [[u8; 5]; 372] = {
    let mut texts = [[0u8; 5]; 372];
    let mut i = 0;
    while i < 372 {
        let (month, day) = (PAIRS[i / 31 + 1], PAIRS[i % 31 + 1]);
        texts[i] = [month[0], month[1], b'-', day[0], day[1]];
        i += 1;
    }
    texts
};

/// Formats as `YYYY-MM-DD`.
#[inline]
pub(crate) fn format_date(date: PackedDate, out: &mut [u8; 10]) {
    let year = (date / 372) as usize;
    let (high, low) = (PAIRS[year / 100 % 100], PAIRS[year % 100]);
    let md = MONTH_DAYS[(date % 372) as usize];
    *out = [
        high[0], high[1], low[0], low[1], b'-', md[0], md[1], md[2], md[3], md[4],
    ];
}

/// The date as text, for messages.
pub(crate) fn date_string(date: PackedDate) -> String {
    let mut buf = [0u8; 10];
    format_date(date, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date(b"2020-01-02"), Ok(pack_date(2020, 1, 2)));
        assert_eq!(parse_date(b"2020-02-29"), Ok(pack_date(2020, 2, 29)));
        assert_eq!(parse_date(b"2000-02-29"), Ok(pack_date(2000, 2, 29)));
        assert!(parse_date(b"2020-01-31") < parse_date(b"2020-02-01"));
        assert!(parse_date(b"2019-12-31") < parse_date(b"2020-01-01"));
        assert!(parse_date(b"1900-02-29").is_err());
        assert!(parse_date(b"2021-02-29").is_err());
        assert!(parse_date(b"2021-04-31").is_err());
        assert!(parse_date(b"2021-13-01").is_err());
        assert!(parse_date(b"2021-00-01").is_err());
        assert!(parse_date(b"0000-01-01").is_err());
        assert!(parse_date(b"2021-1-01").is_err());
        assert!(parse_date(b"2021/01/01").is_err());
        assert!(parse_date(b" 2021-01-01").is_err());
        let mut buf = [0u8; 10];
        format_date(pack_date(2020, 1, 2), &mut buf);
        assert_eq!(&buf, b"2020-01-02");
        format_date(pack_date(9999, 12, 31), &mut buf);
        assert_eq!(&buf, b"9999-12-31");
        format_date(pack_date(1, 1, 1), &mut buf);
        assert_eq!(&buf, b"0001-01-01");
        // Every day of a few years, leap ones included, round-trips through the text.
        for year in [1, 1999, 2000, 2020, 2100, 9999] {
            for month in 1..=12 {
                for day in 1..=31 {
                    let text = format!("{year:04}-{month:02}-{day:02}");
                    if let Ok(date) = parse_date(text.as_bytes()) {
                        assert_eq!(date, pack_date(year, month, day));
                        format_date(date, &mut buf);
                        assert_eq!(&buf, text.as_bytes());
                    }
                }
            }
        }
    }
}
