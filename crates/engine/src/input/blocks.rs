//! Cuts the input into blocks of whole records for the workers: ranges of a memory-mapped
//! file, or buffers read from a stream (recycled through a pool, so memory stays bounded), or
//! slices of shared pieces. The pages of a mapped file are released behind the workers
//! ([`ReleaseFrontier`]), so that resident memory does not grow with the input.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;

use bytes::Bytes;
use memmap2::Mmap;
use parking_lot::Mutex;

use crate::input::MAX_RECORD_BYTES;
use crate::input::header::{Header, header_of, header_too_long, strip_header};
use crate::input::scan::{count_quotes, last_record_end, last_record_end_from};
use crate::input::{Growth, Pieces};
use crate::{Control, Error};

/// A run of whole records.
pub(crate) struct Block {
    /// Position in the input, from 0.
    pub index: u64,
    pub data: BlockData,
    /// The block's first record is longer than [`MAX_RECORD_BYTES`]; nothing follows it.
    pub oversized: bool,
}

pub(crate) enum BlockData {
    /// `start..end` of the memory map.
    Mapped { start: usize, end: usize },
    /// The first `len` bytes of a buffer from the pool (to be given back). The bytes past
    /// `len` stay initialised for the buffer's next use, so that reading into it does not
    /// zero it first.
    Owned { buf: Vec<u8>, len: usize },
    /// Part of a piece of [`Input::Pieces`](crate::input::Input::Pieces), parsed where it is.
    Shared(Bytes),
}

impl BlockData {
    pub(crate) fn len(&self) -> usize {
        match self {
            BlockData::Mapped { start, end } => end - start,
            BlockData::Owned { len, .. } => *len,
            BlockData::Shared(bytes) => bytes.len(),
        }
    }
}

/// Which pages of a memory-mapped input can be dropped from the process: those below the
/// first block still being parsed, and those around the boundary of two finished blocks. A
/// finished block's own range is not enough: the page a block boundary falls in is shared
/// with the next block, and when a dropped page is read again the kernel maps its neighbours
/// with it (fault-around), pages of a block that was already released, which then stayed
/// mapped: on 10 GB with `--memory-limit 512M`, file pages grew by about 2.5 MB a second and
/// the peak RSS reached 960 MB (500 MB with the frontier). Below the frontier no page is read
/// again (the blocks above it are populated ahead and nothing drops their pages first).
#[derive(Debug, Default)]
pub(crate) struct ReleaseFrontier {
    state: Mutex<FrontierState>,
}

#[derive(Debug, Default)]
struct FrontierState {
    /// The first block not finished yet.
    next: u64,
    /// Bytes below this offset are dropped already.
    upto: usize,
    /// Finished blocks above `next`, by index: their byte ranges.
    finished: BTreeMap<u64, Range<usize>>,
}

/// The pages [`ReleaseFrontier::finish`] found droppable.
pub(crate) type Released = [Option<Range<usize>>; 4];

impl ReleaseFrontier {
    /// Block `index`, the bytes `block`, is finished: returns the ranges of whole pages (of
    /// `page` bytes) that can be dropped now: its own away from its ends ([`inner_pages`]),
    /// around its boundaries with finished neighbours (the margins `inner_pages` kept), and
    /// below the first unfinished block.
    pub(crate) fn finish(&self, index: u64, block: Range<usize>, page: usize) -> Released {
        let inner = inner_pages(block.start, block.end, page);
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let previous = index.checked_sub(1).and_then(|i| state.finished.get(&i));
        let before = previous.map(|previous| boundary_pages(previous, &block, page));
        let following = state.finished.get(&(index + 1));
        let after = following.map(|following| boundary_pages(&block, following, page));
        state.finished.insert(index, block);
        let mut frontier = None;
        while let Some(block) = state.finished.remove(&state.next) {
            frontier = Some(block.end);
            state.next += 1;
        }
        // The page the frontier falls in is still the next block's.
        let below = frontier.map(|end| end / page * page).and_then(|to| {
            let from = state.upto;
            (to > from).then(|| {
                state.upto = to;
                from..to
            })
        });
        [inner, before.flatten(), after.flatten(), below]
    }
}

/// The whole pages around the boundary of the finished neighbours `first` and `second` that
/// [`inner_pages`] kept: neither block faults there again, so the kernel's fault-around cannot
/// map them back. Without this, blocks finishing above an unfinished one kept their margins
/// until it finished: with 64 threads on 2 cores, the file pages reached 105 MB.
fn boundary_pages(
    first: &Range<usize>,
    second: &Range<usize>,
    page: usize,
) -> Option<Range<usize>> {
    // Outward around the boundary, inward at the blocks' outer ends (pages shared with
    // blocks that may not be finished).
    let boundary = second.start;
    let from = boundary.saturating_sub(BOUNDARY_MARGIN) / page * page;
    let to = (boundary + BOUNDARY_MARGIN).div_ceil(page) * page;
    let from = from.max(first.start.div_ceil(page) * page);
    let to = to.min(second.end / page * page);
    (from < to).then_some(from..to)
}

/// Bytes kept mapped at each end of a finished block by [`inner_pages`]: the kernel's
/// fault-around window (64 KiB), which a fault maps around the faulting page, so that a fault
/// on a page a neighbouring block shares never maps released pages of the block back in.
const BOUNDARY_MARGIN: usize = 64 << 10;

/// The whole pages of the finished block `start..end` that can be dropped at once, away from
/// its ends (which neighbouring blocks share). Without this, the pages of every finished block
/// above the first unfinished one stayed mapped: with 32 threads on 2 cores at
/// `--memory-limit 256M`, file pages reached 174 MB and the peak RSS 450 MB. The frontier
/// ([`ReleaseFrontier`]) drops the rest later.
fn inner_pages(start: usize, end: usize, page: usize) -> Option<Range<usize>> {
    let from = (start + BOUNDARY_MARGIN).div_ceil(page) * page;
    let to = end.saturating_sub(BOUNDARY_MARGIN) / page * page;
    (from < to).then_some(from..to)
}

/// An error reading a growing file (an upload that still arrives, which has no path of its
/// own to name).
pub(crate) fn growth_error(source: std::io::Error) -> Error {
    Error::Read {
        path: "<upload>".into(),
        source,
    }
}

/// Checks the header of a mapped file and sends its blocks. Returns the header, or an error
/// about the header; `send` returning false stops early. With `growth`, the file is still
/// being written: a block is cut once the bytes it spans are written, exactly where it would
/// be cut in the whole file.
pub(crate) fn produce_mapped(
    map: &Mmap,
    growth: Option<&dyn Growth>,
    block_bytes: usize,
    control: &Control,
    mut send: impl FnMut(Block) -> bool,
) -> Result<Header, Error> {
    // The part of the map written once more than `want` bytes are, and whether that is the
    // whole input (it is, when it is `want` bytes or fewer).
    let readable = |want: usize| -> Result<(&[u8], bool), Error> {
        let Some(growth) = growth else {
            return Ok((map, true));
        };
        let written = growth.wait_beyond(want as u64).map_err(growth_error)?;
        match usize::try_from(written) {
            // More than the map holds can only be a writer's error: never read past the map.
            Ok(len) if len <= map.len() => Ok((&map[..len], len <= want)),
            _ => Err(growth_error(std::io::Error::other(
                "the file grew beyond its announced size",
            ))),
        }
    };
    let mut want = 0;
    let (skip, header) = loop {
        let (data, complete) = readable(want)?;
        let head = &data[..data.len().min(MAX_RECORD_BYTES)];
        if let Some(found) = header_of(head, complete && head.len() == data.len())? {
            break found;
        }
        if complete || head.len() == MAX_RECORD_BYTES {
            return Err(header_too_long());
        }
        want = 2 * data.len();
    };
    // The end of the block at `pos` and whether it is oversized; `None` at the input's end.
    let next_cut = |pos: usize| -> Result<Option<(usize, bool)>, Error> {
        let mut want = pos + block_bytes;
        loop {
            let (data, complete) = readable(want)?;
            if pos >= data.len() {
                return Ok(None);
            }
            populate(map, pos, block_bytes.min(data.len() - pos));
            let (end, oversized) = cut(data, pos, block_bytes);
            // A cut short of the written part is where the whole file is cut too.
            if complete || end < data.len() {
                return Ok(Some((end, oversized)));
            }
            want = pos + 2 * (data.len() - pos);
        }
    };
    let mut pos = skip + header.end;
    let mut index = 0;
    while !control.is_cancelled() {
        let Some((end, oversized)) = next_cut(pos)? else {
            break;
        };
        let block = Block {
            index,
            data: BlockData::Mapped { start: pos, end },
            oversized,
        };
        if !send(block) || oversized {
            break;
        }
        pos = end;
        index += 1;
    }
    Ok(Header {
        newlines: header.newlines,
        bytes: skip + header.end,
    })
}

/// Maps the `len` bytes of the block at `pos` in one call rather than a page fault every few
/// pages when the block is first read (here, by the quote count of [`cut`]). Only a hint:
/// where the system lacks it, the pages fault in as usual.
fn populate(map: &Mmap, pos: usize, len: usize) {
    #[cfg(target_os = "linux")]
    let _ = map.advise_range(memmap2::Advice::PopulateRead, pos, len);
    #[cfg(not(target_os = "linux"))]
    let _ = (map, pos, len);
}

/// End of the block starting at record start `pos`, and whether its first record is oversized
/// (no record end within `block_bytes + MAX_RECORD_BYTES` bytes, and the input goes on).
/// A window without a record end is doubled, so long records cost linear time whatever the
/// block size.
fn cut(data: &[u8], pos: usize, block_bytes: usize) -> (usize, bool) {
    let limit = (pos + block_bytes + MAX_RECORD_BYTES).min(data.len());
    let mut end = (pos + block_bytes).min(data.len());
    loop {
        if end == data.len() {
            return (end, false);
        }
        if let Some(offset) = last_record_end(&data[pos..end]) {
            return (pos + offset, false);
        }
        if end == limit {
            return (limit, true);
        }
        end = (pos + 2 * (end - pos)).min(limit);
    }
}

/// Reads `reader` into pooled buffers, checks the header and sends blocks of whole records.
/// `take_buffer` blocks until a buffer is free.
pub(crate) fn produce_stream(
    reader: &mut dyn Read,
    block_bytes: usize,
    control: &Control,
    mut take_buffer: impl FnMut() -> Vec<u8>,
    mut send: impl FnMut(Block) -> bool,
) -> Result<Header, Error> {
    let read_err = |source| Error::Read {
        path: "<input>".into(),
        source,
    };
    let mut carry: Vec<u8> = Vec::new();
    let mut header = None;
    let mut index = 0;
    let mut eof = false;
    while !eof && !control.is_cancelled() {
        // `buf[..filled]` is the block so far, `carry` (the end of the previous read) first.
        let mut buf = take_buffer();
        let mut filled = carry.len();
        if buf.len() < filled {
            buf.resize(filled, 0);
        }
        buf[..filled].copy_from_slice(&carry);
        carry.clear();
        let mut target = block_bytes;
        loop {
            eof = fill(reader, &mut buf, &mut filled, target).map_err(read_err)?;
            if header.is_none() {
                match header_of(&buf[..filled], eof)? {
                    Some((skip, end)) => {
                        let bytes = skip + end.end;
                        buf.copy_within(bytes..filled, 0);
                        filled -= bytes;
                        header = Some(Header {
                            newlines: end.newlines,
                            bytes,
                        });
                    }
                    None if filled >= MAX_RECORD_BYTES => return Err(header_too_long()),
                    None => {
                        target = filled + block_bytes.max(filled);
                        continue;
                    }
                }
            }
            // The same rule as `cut` for mapped input: the first record must end within
            // `limit` bytes unless the input ends there.
            let limit = block_bytes + MAX_RECORD_BYTES;
            if filled > limit && last_record_end(&buf[..limit]).is_none() {
                let block = Block {
                    index,
                    data: BlockData::Owned { buf, len: filled },
                    oversized: true,
                };
                send(block);
                return header.ok_or(Error::EmptyInput);
            }
            if eof {
                break;
            }
            if let Some(end) = last_record_end(&buf[..filled]) {
                carry.extend_from_slice(&buf[end..filled]);
                filled = end;
                break;
            }
            // Doubling: a long record costs linear time whatever the block size.
            target = (filled + block_bytes.max(filled)).min(limit + 1);
        }
        if filled == 0 {
            continue;
        }
        let block = Block {
            index,
            data: BlockData::Owned { buf, len: filled },
            oversized: false,
        };
        if !send(block) {
            break;
        }
        index += 1;
    }
    header.ok_or(Error::EmptyInput)
}

/// Bytes of a piece first copied after the end of the previous one to complete the record that
/// straddles them (doubled while no record ends there).
const STITCH_BYTES: usize = 4 << 10;

/// Sends the pieces of `pieces` as blocks of whole records without copying them: each piece
/// gives blocks of at most `block_bytes` (longer when a record is), cut at record ends, and
/// the record that straddles two pieces (with the header, at the start) is copied into a
/// small block of its own, in a buffer from `take_buffer`. The same rules as
/// [`produce_stream`] for the header and for overlong records.
pub(crate) fn produce_pieces(
    pieces: &mut dyn Pieces,
    block_bytes: usize,
    control: &Control,
    mut take_buffer: impl FnMut() -> Vec<u8>,
    send: impl FnMut(Block) -> bool,
) -> Result<Header, Error> {
    let mut out = Blocks {
        send,
        index: 0,
        stopped: false,
    };
    // Bytes no block holds yet: from a record start (or from the input's start while the
    // header is not found), without a record end; and the double quotes among them.
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_quotes = 0;
    // A pooled buffer for `pending` when it has none (it went out as a block).
    let mut give_buffer = |pending: &mut Vec<u8>| {
        if pending.capacity() == 0 {
            *pending = take_buffer();
            pending.clear();
        }
    };
    let mut header = None;
    let limit = block_bytes + MAX_RECORD_BYTES;
    while !out.stopped && !control.is_cancelled() {
        let next = pieces.next_piece().map_err(|source| Error::Read {
            path: "<input>".into(),
            source,
        })?;
        let Some(piece) = next else {
            if header.is_none() {
                header = strip_header(&mut pending, true)?;
            }
            if !pending.is_empty() {
                out.owned(pending, false);
            }
            break;
        };
        // Completes what is pending (the header first) from the head of the piece.
        let mut taken = 0;
        while (header.is_none() || !pending.is_empty()) && taken < piece.len() && !out.stopped {
            let more = STITCH_BYTES.max(pending.len()).min(piece.len() - taken);
            let (mut from, mut quotes) = (pending.len(), pending_quotes);
            give_buffer(&mut pending);
            pending.extend_from_slice(&piece[taken..taken + more]);
            taken += more;
            if header.is_none() {
                // Looked for once a line ends (or the header is too long), so that a header
                // arriving byte by byte is read once.
                let new_line = memchr::memchr(b'\n', &pending[from..]).is_some();
                if new_line || pending.len() >= MAX_RECORD_BYTES {
                    header = strip_header(&mut pending, false)?;
                }
                if header.is_none() {
                    continue;
                }
                (from, quotes) = (0, 0);
            }
            // The same rule as `produce_stream`: the first record ends within `limit` bytes.
            if pending.len() > limit
                && (from >= limit
                    || last_record_end_from(&pending[..limit], from, quotes).is_none())
            {
                out.owned(std::mem::take(&mut pending), true);
                break;
            }
            match last_record_end_from(&pending, from, quotes) {
                Some(end) => {
                    // What follows the cut came from the piece: the bytes pending before had
                    // no record end, and the header ended in the piece.
                    taken -= pending.len() - end;
                    pending.truncate(end);
                    pending_quotes = 0;
                    out.owned(std::mem::take(&mut pending), false);
                }
                None => pending_quotes = quotes + count_quotes(&pending[from..]),
            }
        }
        if !pending.is_empty() {
            continue;
        }
        // The rest of the piece starts at a record start: blocks of it, shared.
        let mut pos = taken;
        while pos < piece.len() && !out.stopped {
            let most = (pos + limit).min(piece.len());
            let mut end = (pos + block_bytes).min(most);
            let cut = loop {
                if let Some(offset) = last_record_end(&piece[pos..end]) {
                    break Some(pos + offset);
                }
                if end == most {
                    break None;
                }
                end = (pos + 2 * (end - pos)).min(most);
            };
            match cut {
                Some(cut) => {
                    out.shared(piece.slice(pos..cut), false);
                    pos = cut;
                }
                None if most < piece.len() => out.shared(piece.slice(pos..most), true),
                None => {
                    give_buffer(&mut pending);
                    pending.extend_from_slice(&piece[pos..]);
                    pending_quotes = count_quotes(&pending);
                    break;
                }
            }
        }
    }
    header.ok_or(Error::EmptyInput)
}

/// Numbers the blocks [`produce_pieces`] sends; `stopped` once the receiver is gone or a block
/// was oversized (nothing follows it).
struct Blocks<F> {
    send: F,
    index: u64,
    stopped: bool,
}

impl<F: FnMut(Block) -> bool> Blocks<F> {
    fn owned(&mut self, buf: Vec<u8>, oversized: bool) {
        let len = buf.len();
        self.block(BlockData::Owned { buf, len }, oversized);
    }

    fn shared(&mut self, bytes: Bytes, oversized: bool) {
        self.block(BlockData::Shared(bytes), oversized);
    }

    fn block(&mut self, data: BlockData, oversized: bool) {
        let block = Block {
            index: self.index,
            data,
            oversized,
        };
        self.index += 1;
        self.stopped = !(self.send)(block) || oversized;
    }
}

/// Reads into `buf[*filled..]` until `*filled` reaches `target` or the input ends; returns
/// whether it ended. `buf` grows to `target` when shorter (only then are bytes zeroed).
fn fill(
    reader: &mut dyn Read,
    buf: &mut Vec<u8>,
    filled: &mut usize,
    target: usize,
) -> std::io::Result<bool> {
    if *filled >= target {
        return Ok(false);
    }
    if buf.len() < target {
        buf.resize(target, 0);
    }
    loop {
        match reader.read(&mut buf[*filled..target]) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                *filled += n;
                if *filled == target {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        BOUNDARY_MARGIN, BlockData, Bytes, MAX_RECORD_BYTES, ReleaseFrontier, Released, cut,
        inner_pages, produce_pieces,
    };
    use crate::{Control, Pieces};

    struct Given(std::vec::IntoIter<Bytes>);

    impl Pieces for Given {
        fn next_piece(&mut self) -> std::io::Result<Option<Bytes>> {
            Ok(self.0.next())
        }
    }

    #[test]
    fn pieces_are_cut_at_record_ends_and_parsed_where_they_are() {
        let mut input = b"\xEF\xBB\xBFSong,Date,Number of Plays\r\n".to_vec();
        for i in 0..5000 {
            input.extend_from_slice(format!("\"s{i}\nx\",2020-01-01,{i}\r\n").as_bytes());
        }
        let input = Bytes::from(input);
        for most in [1, 10, 4096, 100_000, input.len()] {
            let pieces: Vec<Bytes> = (0..input.len())
                .step_by(most)
                .map(|at| input.slice(at..input.len().min(at + most)))
                .collect();
            let mut blocks = Vec::new();
            let header = produce_pieces(
                &mut Given(pieces.into_iter()),
                1000,
                &Control::new(),
                Vec::new,
                |block| {
                    blocks.push(block);
                    true
                },
            )
            .expect("valid input");
            assert_eq!((header.bytes, header.newlines), (30, 1), "pieces of {most}");
            let mut shared = 0;
            let mut whole = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                assert_eq!(block.index, i as u64);
                assert!(!block.oversized);
                let data: &[u8] = match &block.data {
                    BlockData::Owned { buf, len } => &buf[..*len],
                    BlockData::Shared(bytes) => {
                        // The piece's own memory.
                        assert!(input.as_ptr_range().contains(&bytes.as_ptr()));
                        shared += bytes.len();
                        bytes
                    }
                    BlockData::Mapped { .. } => panic!("no map"),
                };
                assert!(data.ends_with(b"\r\n") && data.len() <= 1000 + 4096 + 30);
                whole.extend_from_slice(data);
            }
            assert_eq!(whole, input[30..], "pieces of {most}");
            if most >= 100_000 {
                assert!(shared > whole.len() * 9 / 10, "{shared} of {}", whole.len());
            }
        }
    }

    #[test]
    fn blocks_end_at_record_ends_and_overlong_records_are_flagged() {
        let data = b"ab\ncd\n\"e\nf\"\ng";
        assert_eq!(cut(data, 0, 1), (3, false));
        assert_eq!(cut(data, 3, 1), (6, false));
        assert_eq!(cut(data, 6, 1), (data.len(), false));
        assert_eq!(cut(data, 6, 6), (12, false));
        let long = vec![b'x'; 2 + MAX_RECORD_BYTES];
        assert_eq!(cut(&long, 0, 1), (1 + MAX_RECORD_BYTES, true));
        assert_eq!(cut(&long[1..], 0, 1), (1 + MAX_RECORD_BYTES, false));
    }

    #[test]
    fn inner_pages_keep_a_margin_at_both_ends() {
        let page = 4096;
        let (start, end) = (1000, 1000 + (1 << 20));
        let inner = inner_pages(start, end, page).expect("a 1 MiB block has inner pages");
        assert!(inner.start >= start + BOUNDARY_MARGIN && inner.end + BOUNDARY_MARGIN <= end);
        assert_eq!((inner.start % page, inner.end % page), (0, 0));
        assert!(inner.len() >= (1 << 20) - 2 * BOUNDARY_MARGIN - 2 * page);
        assert_eq!(inner_pages(0, 2 * BOUNDARY_MARGIN, page), None);
        assert_eq!(inner_pages(5, 6, page), None);
    }

    #[test]
    fn pages_are_released_below_the_first_unfinished_block_only() {
        // Pages of 4096 bytes; block i is [i * 10_000, end(i)).
        let frontier = ReleaseFrontier::default();
        let block = |i: u64| i as usize * 10_000..(i as usize + 1) * 10_000;
        let below = |released: Released| released[3].clone();
        // Blocks finishing out of order release nothing below them until the ones before
        // them are done.
        assert_eq!(below(frontier.finish(1, block(1), 4096)), None);
        assert_eq!(below(frontier.finish(2, block(2), 4096)), None);
        // Block 0 done: everything below block 3's start (30 000), but not the page it
        // falls in, which block 3 still reads.
        assert_eq!(below(frontier.finish(0, block(0), 4096)), Some(0..28_672));
        // Block 3 done: from there on, each range once.
        assert_eq!(
            below(frontier.finish(3, block(3), 4096)),
            Some(28_672..36_864)
        );
        // A frontier within the page already reached releases nothing more.
        assert_eq!(below(frontier.finish(4, 40_000..40_500, 4096)), None);
        assert_eq!(
            below(frontier.finish(5, 40_500..45_000, 4096)),
            Some(36_864..40_960)
        );
    }

    #[test]
    fn margins_are_released_once_both_neighbours_are_finished() {
        // Blocks of 1 MiB plus a bit, so that boundaries fall within pages.
        let (page, size) = (4096, (1 << 20) + 100);
        let block = |i: usize| i * size..(i + 1) * size;
        let frontier = ReleaseFrontier::default();
        // Block 0 stays unfinished: nothing falls below the frontier.
        let [inner, before, after, below] = frontier.finish(2, block(2), page);
        assert_eq!(inner, inner_pages(block(2).start, block(2).end, page));
        assert!(inner.is_some());
        assert_eq!([before, after, below], [None, None, None]);
        // Block 1's boundary with 2 is released, the one with 0 (unfinished) is not.
        let [_, before, after, below] = frontier.finish(1, block(1), page);
        assert_eq!((before, below), (None, None));
        let after = after.expect("both sides of the boundary are finished");
        let boundary = block(2).start;
        // All that `inner_pages` kept of both blocks there.
        let kept_of_1 = inner_pages(block(1).start, block(1).end, page)
            .expect("inner")
            .end;
        let kept_of_2 = inner_pages(block(2).start, block(2).end, page)
            .expect("inner")
            .start;
        assert!(after.start <= kept_of_1 && after.end >= kept_of_2);
        assert!(
            after.start + 2 * BOUNDARY_MARGIN >= boundary
                && after.end <= boundary + 2 * BOUNDARY_MARGIN
        );
        assert_eq!((after.start % page, after.end % page), (0, 0));
        // Block 3 finishes after 2: its boundary with 2 is released.
        let [_, before, after, _] = frontier.finish(3, block(3), page);
        assert!(before.is_some_and(|range| range.contains(&block(3).start)));
        assert_eq!(after, None);
    }
}
