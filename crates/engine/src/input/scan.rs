//! Byte scanning: delimiter search and record boundaries that respect quoted fields.

/// Finds the delimiters (`,`, `"`, `\n`) of a block in order, 64 bytes at a time: vector
/// compares yield a bit mask per 64-byte window, and each search is then a shift and a count
/// of trailing zeros. Records are about 30 bytes, so a window serves two of them. The masks
/// are computed [`BATCH`] windows at a time, in one call of the vector code (one call per
/// window cost about 35 instructions per row, callgrind). The same loads also tell whether a
/// batch holds a byte from `0x80` up, so that a song lying past the last such batch is known
/// to be ASCII without a check of its own ([`Delimiters::ascii_from`]): about 13 instructions
/// fewer per row on plain ASCII input (callgrind).
pub(crate) struct Delimiters<'a> {
    data: &'a [u8],
    /// Whether the CPU has AVX2 (32-byte compares).
    avx2: bool,
    /// Start of the current window.
    base: usize,
    /// Delimiter bits of `data[base..base + 64]` (bit `i`: byte `base + i`).
    mask: u64,
    /// Start of the windows whose masks `batch` holds.
    batch_base: usize,
    /// Delimiter bits of the windows at `batch_base + 64 * i`.
    batch: [u64; BATCH],
    /// The end of the furthest batch computed so far that holds a non-ASCII byte (0: none).
    non_ascii_until: usize,
}

/// Windows whose masks are computed at once.
const BATCH: usize = 8;

impl<'a> Delimiters<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        let mut delimiters = Delimiters {
            data,
            avx2: has_avx2(),
            base: 0,
            mask: 0,
            batch_base: 0,
            batch: [0; BATCH],
            non_ascii_until: 0,
        };
        delimiters.fill_batch(0);
        delimiters.mask = delimiters.batch[0];
        delimiters
    }

    /// Index of the first delimiter in `data[from..]`, or `data.len()`.
    #[inline(always)]
    pub(crate) fn next(&mut self, from: usize) -> usize {
        let offset = from.wrapping_sub(self.base);
        if offset < 64 {
            let mask = self.mask & (u64::MAX << offset);
            if mask != 0 {
                return self.base + mask.trailing_zeros() as usize;
            }
            // Most often the delimiter is in the next window, whose mask is at hand.
            let next = self.base + 64;
            let at = next.wrapping_sub(self.batch_base) / 64;
            if at < BATCH && next < self.data.len() {
                self.base = next;
                self.mask = self.batch[at];
                if self.mask != 0 {
                    return next + self.mask.trailing_zeros() as usize;
                }
            }
        }
        self.next_in_later_window(from)
    }

    /// Whether the bytes from `from` up to a delimiter that [`Delimiters::next`] returned are
    /// all ASCII, as far as the batches computed so far tell (false: check them). Every window
    /// from `from` to that delimiter was computed, and a non-ASCII byte among them would have
    /// moved `non_ascii_until` past `from`.
    #[inline(always)]
    pub(crate) fn ascii_from(&self, from: usize) -> bool {
        from >= self.non_ascii_until
    }

    /// [`Delimiters::next`] past the current window. Searches move forward: the window
    /// only ever jumps ahead (or, should a caller go back, to the window of `from`).
    #[inline(never)]
    fn next_in_later_window(&mut self, from: usize) -> usize {
        let len = self.data.len();
        let mut base = if from.wrapping_sub(self.base) < 64 {
            self.base + 64
        } else {
            from & !63
        };
        while base < len {
            let mut at = base.wrapping_sub(self.batch_base) / 64;
            if at >= BATCH {
                self.fill_batch(base);
                at = 0;
            }
            self.base = base;
            self.mask = self.batch[at];
            let mask = self.mask & (u64::MAX << from.saturating_sub(base));
            if mask != 0 {
                return base + mask.trailing_zeros() as usize;
            }
            base += 64;
        }
        len
    }

    /// Computes the masks of the [`BATCH`] windows from `base` (a multiple of 64).
    #[inline(never)]
    fn fill_batch(&mut self, base: usize) {
        self.batch_base = base;
        let rest = self.data.get(base..).unwrap_or_default();
        let non_ascii = match rest.first_chunk::<{ 64 * BATCH }>() {
            Some(windows) => batch_masks(windows, self.avx2, &mut self.batch),
            None => {
                let mut non_ascii = false;
                for (i, mask) in self.batch.iter_mut().enumerate() {
                    let (delimiters, high) = window_mask(self.data, base + 64 * i, self.avx2);
                    *mask = delimiters;
                    non_ascii |= high;
                }
                non_ascii
            }
        };
        if non_ascii {
            self.non_ascii_until = self.non_ascii_until.max(base + 64 * BATCH);
        }
    }
}

/// The delimiter bits of `data[base..base + 64]` (bytes past the end count as none), and
/// whether it holds a non-ASCII byte.
#[inline]
fn window_mask(data: &[u8], base: usize, avx2: bool) -> (u64, bool) {
    let rest = data.get(base..).unwrap_or_default();
    match rest.first_chunk::<64>() {
        Some(window) => delimiter_mask(window, avx2),
        None => tail_mask(rest, avx2),
    }
}

/// [`window_mask`] of the last bytes, fewer than a window.
#[cold]
#[inline(never)]
fn tail_mask(rest: &[u8], avx2: bool) -> (u64, bool) {
    let mut padded = [0u8; 64];
    padded[..rest.len()].copy_from_slice(rest);
    delimiter_mask(&padded, avx2)
}

/// Whether the CPU has AVX2 (checked once, then cached by the standard library).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// The delimiters by their low four bits: a byte is a delimiter exactly when it equals the
/// entry its low four bits select (`0x80` matches no byte the lookup compares it with:
/// bytes from `0x80` up select 0).
#[cfg(target_arch = "x86_64")]
const BY_LOW_NIBBLE: [u8; 16] = {
    let mut table = [0x80u8; 16];
    table[(b',' & 15) as usize] = b',';
    table[(b'"' & 15) as usize] = b'"';
    table[(b'\n' & 15) as usize] = b'\n';
    table
};

/// The masks of [`BATCH`] consecutive windows, and whether they hold a non-ASCII byte.
fn batch_masks(windows: &[u8; 64 * BATCH], avx2: bool, out: &mut [u64; BATCH]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller found AVX2 on this CPU.
        return unsafe { avx2_batch_masks(windows, out) };
    }
    let mut non_ascii = false;
    for (mask, window) in out.iter_mut().zip(windows.as_chunks::<64>().0) {
        let (delimiters, high) = delimiter_mask(window, avx2);
        *mask = delimiters;
        non_ascii |= high;
    }
    non_ascii
}

/// [`batch_masks`] with AVX2: the windows' compares inlined in one function.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2_batch_masks(windows: &[u8; 64 * BATCH], out: &mut [u64; BATCH]) -> bool {
    let mut non_ascii = false;
    for (mask, window) in out.iter_mut().zip(windows.as_chunks::<64>().0) {
        let (delimiters, high) = avx2_delimiter_mask(window);
        *mask = delimiters;
        non_ascii |= high;
    }
    non_ascii
}

/// Bit `i` set when `window[i]` is `,`, `"` or `\n`; true when a byte is `0x80` or above.
#[cfg(target_arch = "x86_64")]
#[inline]
fn delimiter_mask(window: &[u8; 64], avx2: bool) -> (u64, bool) {
    if avx2 {
        // SAFETY: the caller found AVX2 on this CPU.
        unsafe { avx2_delimiter_mask(window) }
    } else {
        // SAFETY: SSE2 is part of the x86_64 baseline: every CPU that runs this target has it.
        unsafe { sse2_delimiter_mask(window) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2_delimiter_mask(window: &[u8; 64]) -> (u64, bool) {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm256_broadcastsi128_si256, _mm256_cmpeq_epi8,
        _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_setzero_si256,
        _mm256_shuffle_epi8,
    };
    // SAFETY: `BY_LOW_NIBBLE` holds 16 readable bytes; no alignment requirement.
    let table = unsafe { _mm_loadu_si128(BY_LOW_NIBBLE.as_ptr().cast::<__m128i>()) };
    let table = _mm256_broadcastsi128_si256(table);
    let mut mask = 0u64;
    let mut high = _mm256_setzero_si256();
    for (i, half) in window.chunks_exact(32).enumerate() {
        // SAFETY: `half` holds 32 readable bytes; the load has no alignment requirement.
        let bytes = unsafe { _mm256_loadu_si256(half.as_ptr().cast::<__m256i>()) };
        let hits = _mm256_cmpeq_epi8(_mm256_shuffle_epi8(table, bytes), bytes);
        mask |= u64::from(_mm256_movemask_epi8(hits) as u32) << (32 * i);
        high = _mm256_or_si256(high, bytes);
    }
    (mask, _mm256_movemask_epi8(high) != 0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn sse2_delimiter_mask(window: &[u8; 64]) -> (u64, bool) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128,
    };
    let (comma, quote, newline) = (
        _mm_set1_epi8(b',' as i8),
        _mm_set1_epi8(b'"' as i8),
        _mm_set1_epi8(b'\n' as i8),
    );
    let mut mask = 0u64;
    let mut high = _mm_setzero_si128();
    for (i, part) in window.chunks_exact(16).enumerate() {
        // SAFETY: `part` holds 16 readable bytes; the load has no alignment requirement.
        let bytes = unsafe { _mm_loadu_si128(part.as_ptr().cast::<__m128i>()) };
        let hits = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(bytes, comma), _mm_cmpeq_epi8(bytes, quote)),
            _mm_cmpeq_epi8(bytes, newline),
        );
        mask |= u64::from(_mm_movemask_epi8(hits) as u16) << (16 * i);
        high = _mm_or_si128(high, bytes);
    }
    (mask, _mm_movemask_epi8(high) != 0)
}

/// Bit `i` set when `window[i]` is `,`, `"` or `\n`; true when a byte is `0x80` or above.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn delimiter_mask(window: &[u8; 64], _avx2: bool) -> (u64, bool) {
    let mask = window.iter().enumerate().fold(0, |mask, (i, &b)| {
        mask | (u64::from((b == b',') | (b == b'"') | (b == b'\n')) << i)
    });
    (mask, !window.is_ascii())
}

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
    last_record_end_from(data, 0, 0)
}

/// [`last_record_end`] of `data` whose first `from` bytes hold no record terminator and
/// `quotes_before` double quotes: only the bytes from `from` on are read, so that a record
/// growing piece by piece is scanned once.
pub(crate) fn last_record_end_from(
    data: &[u8],
    from: usize,
    quotes_before: usize,
) -> Option<usize> {
    let mut inside = (quotes_before + count_quotes(&data[from..])) % 2 == 1;
    let mut end = data.len();
    while let Some(i) = memchr::memrchr2(b'"', b'\n', &data[from..end]) {
        let i = from + i;
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
    fn delimiters_found_window_by_window_match_a_byte_search() {
        // Delimiters near window edges, runs without any, and a tail shorter than a window.
        let mut data = Vec::new();
        for i in 0..1500usize {
            data.push(match i % 23 {
                0 => b',',
                5 if i % 3 == 0 => b'"',
                7 => b'\n',
                _ => b'a' + (i % 26) as u8,
            });
            if i == 100 {
                data.extend_from_slice(&[b'x'; 150]);
            }
            if i == 900 {
                data.extend_from_slice(&[b'y'; 700]);
            }
        }
        // Also past the batches of windows computed at once (512 bytes), full and partial.
        for len in [0, 1, 63, 64, 65, 127, 128, 511, 512, 513, 1100, data.len()] {
            let data = &data[..len];
            let mut delimiters = Delimiters::new(data);
            let mut from = 0;
            while from <= len {
                let expected = find_delimiter(data, from);
                assert_eq!(delimiters.next(from), expected, "len {len}, from {from}");
                from = expected + 1;
            }
            // Any start, also going back.
            let mut delimiters = Delimiters::new(data);
            for from in (0..=len).rev().chain(0..=len) {
                assert_eq!(
                    delimiters.next(from),
                    find_delimiter(data, from),
                    "from {from}"
                );
            }
        }
    }

    #[test]
    fn bytes_said_ascii_are_ascii() {
        // Non-ASCII bytes here and there, some batches (512 bytes) without any.
        let data: Vec<u8> = (0..5000usize)
            .map(|i| match i % 37 {
                0 => b',',
                9 => b'\n',
                20 if (i / 700) % 2 == 1 && i % 3 == 0 => 0xC3,
                _ => b'a' + (i % 26) as u8,
            })
            .collect();
        let mut said = 0;
        for len in [0, 100, 511, 512, 1300, data.len()] {
            let data = &data[..len];
            let mut delimiters = Delimiters::new(data);
            let mut from = 0;
            while from < len {
                let end = delimiters.next(from);
                if delimiters.ascii_from(from) {
                    assert!(data[from..end].is_ascii(), "len {len}, {from}..{end}");
                    said += 1;
                }
                from = end + 1;
            }
        }
        assert!(said > 100, "{said}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_masks_flag_exactly_the_delimiters() {
        for offset in (0..256).step_by(64) {
            let window: [u8; 64] = std::array::from_fn(|i| (offset + i) as u8);
            let expected = window.iter().enumerate().fold(0u64, |mask, (i, &b)| {
                mask | (u64::from(matches!(b, b',' | b'"' | b'\n')) << i)
            });
            let high = !window.is_ascii();
            let want = (expected, high);
            assert_eq!(delimiter_mask(&window, false), want, "sse2 at {offset}");
            if has_avx2() {
                assert_eq!(delimiter_mask(&window, true), want, "avx2 at {offset}");
            }
        }
    }

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

    #[test]
    fn record_ends_found_from_an_offset_equal_those_of_the_whole() {
        let cases: [&[u8]; 5] = [
            b"a,b\nc,d\ne",
            b"\"x\ny\",1\n\"p\nq",
            b"\"a\"\"b\",1\nc",
            b"\"long\nfield\n\",2\n",
            b"abc",
        ];
        for data in cases {
            // From every offset before which no record ends.
            let first = (0..=data.len())
                .find(|&n| last_record_end(&data[..n]).is_some())
                .map_or(data.len(), |n| n - 1);
            for from in 0..=first {
                let quotes = count_quotes(&data[..from]);
                assert_eq!(
                    last_record_end_from(data, from, quotes),
                    last_record_end(data),
                    "{:?} from {from}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }
}
