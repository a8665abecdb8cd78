//! Direct I/O (`O_DIRECT`): file bytes moved between the disk and the process's memory without
//! a copy in the page cache. The service writes an upload this way when the engine reads it as
//! it arrives: a copy in the page cache would only cost fresh pages (on the virtual machines
//! this was measured on, 2 to 3 s of system time per GB written into pages not used lately).

use std::fs::File;
use std::io::{self, Read};

use memmap2::MmapMut;

use crate::Growth;

/// Alignment of a direct read or write: its memory, file offset and length.
pub const DIRECT_ALIGN: usize = 4096;
/// Bytes a [`DirectReader`] reads at a time.
const DIRECT_READ: usize = 4 << 20;

/// Turns direct I/O on or off for `file`'s open file description (every descriptor sharing
/// it); an error where the file system does not support it.
#[cfg(target_os = "linux")]
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: plain system calls on an open descriptor; they only change its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Direct I/O is not used on this system.
#[cfg(not(target_os = "linux"))]
pub fn set_direct(_file: &File, _on: bool) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// A file read with direct I/O (set on it beforehand, [`set_direct`]) as far as `growth`
/// reports it written, and no further than `capacity` bytes (`u64::MAX`: to its end): a file
/// still being written, or a whole one ([`Whole`]).
pub struct DirectReader<'a> {
    file: &'a File,
    growth: &'a dyn Growth,
    capacity: u64,
    /// `buf[..len]` holds the file's bytes from `start`.
    buf: MmapMut,
    start: u64,
    len: usize,
    pos: u64,
}

impl<'a> DirectReader<'a> {
    pub fn new(file: &'a File, growth: &'a dyn Growth, capacity: u64) -> io::Result<Self> {
        Ok(DirectReader {
            file,
            growth,
            capacity,
            // Page-aligned, as direct reads need.
            buf: MmapMut::map_anon(DIRECT_READ)?,
            start: 0,
            len: 0,
            pos: 0,
        })
    }

    /// Reads the next piece of the file into `buf`; false at its end.
    fn refill(&mut self) -> io::Result<bool> {
        if self.pos >= self.capacity {
            // The file may hold more than `capacity` while it is written; it ends there.
            self.growth.wait_beyond(u64::MAX)?;
            return Ok(false);
        }
        let written = self.growth.wait_beyond(self.pos)?.min(self.capacity);
        if written <= self.pos {
            return Ok(false);
        }
        let start = self.pos - self.pos % DIRECT_ALIGN as u64;
        let available = usize::try_from(written - start).unwrap_or(usize::MAX);
        let want = available
            .min(DIRECT_READ)
            .next_multiple_of(DIRECT_ALIGN)
            .min(DIRECT_READ);
        let read = read_at(self.file, &mut self.buf[..want], start)?.min(available);
        if read as u64 <= self.pos - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than what was written",
            ));
        }
        (self.start, self.len) = (start, read);
        Ok(true)
    }
}

impl Read for DirectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.start + self.len as u64 && !self.refill()? {
            return Ok(0);
        }
        let from = usize::try_from(self.pos - self.start).unwrap_or(usize::MAX);
        let n = (self.len - from).min(out.len());
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A file written whole, `len` bytes long.
pub struct Whole(pub u64);

impl Growth for Whole {
    fn wait_beyond(&self, _pos: u64) -> io::Result<u64> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// A file written in steps: `wait_beyond` writes the next step first.
    struct Steps {
        file: Mutex<File>,
        data: Vec<u8>,
        step: usize,
        written: Mutex<usize>,
    }

    impl Growth for Steps {
        fn wait_beyond(&self, pos: u64) -> io::Result<u64> {
            let mut written = self.written.lock().unwrap();
            while (*written as u64) <= pos && *written < self.data.len() {
                let end = (*written + self.step).min(self.data.len());
                self.file
                    .lock()
                    .unwrap()
                    .write_all(&self.data[*written..end])?;
                *written = end;
            }
            Ok(*written as u64)
        }
    }

    #[test]
    fn reads_a_growing_file_whole_and_stops_at_its_capacity() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for step in [1000, DIRECT_ALIGN, DIRECT_READ + 5, data.len()] {
            for capacity in [u64::MAX, data.len() as u64, 1_234_567] {
                let temp = tempfile::NamedTempFile::new().unwrap();
                let growth = Steps {
                    file: Mutex::new(temp.reopen().unwrap()),
                    data: data.clone(),
                    step,
                    written: Mutex::new(0),
                };
                let file = temp.reopen().unwrap();
                // Buffered where the file system refuses direct I/O: the same bytes.
                let _ = set_direct(&file, true);
                let mut reader = DirectReader::new(&file, &growth, capacity).unwrap();
                let mut read = Vec::new();
                reader.read_to_end(&mut read).unwrap();
                let expected = &data[..data.len().min(usize::try_from(capacity).unwrap())];
                assert!(read == expected, "steps of {step}, capacity {capacity}");
            }
        }
    }

    #[test]
    fn reads_a_whole_file() {
        let mut temp = tempfile::NamedTempFile::new().unwrap();
        let data = b"Song,Date,Number of Plays\nA,2020-01-01,1\n".repeat(100_000);
        temp.write_all(&data).unwrap();
        let file = File::open(temp.path()).unwrap();
        // Buffered where the file system refuses direct I/O: the same bytes.
        let _ = set_direct(&file, true);
        let whole = Whole(data.len() as u64);
        let mut read = Vec::new();
        DirectReader::new(&file, &whole, whole.0)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert!(read == data);
    }
}
