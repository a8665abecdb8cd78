//! Feeds arbitrary bytes to the engine and compares the outcome with the strict reference
//! (`fixtures::reference::check`): the same output, or an error about the same record (line
//! and field). The last two bytes of the fuzz input choose how the engine runs: file
//! (memory-mapped, whole or revealed a few bytes at a time as an upload that still arrives) or
//! stream input read in small pieces, block size from 1 byte up, 1 to 3
//! threads, strict or `skip_invalid`, and a spill mode that appends a few thousand generated
//! rows under a tiny memory budget so that sorted runs go to disk and are merged.
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use engine::{Config, Control, Error, Input};
use fixtures::growing::Revealed;
use fixtures::reference::{self, Rejection};
use libfuzzer_sys::fuzz_target;

const HEADER: &[u8] = b"Song,Date,Number of Plays\n";
const BLOCK_BYTES: [usize; 8] = [1, 2, 3, 5, 8, 16, 64, 4 << 20];

/// How one input is run, from two control bytes.
#[derive(Debug)]
struct Mode {
    block_bytes: usize,
    skip_invalid: bool,
    threads: usize,
    stream: bool,
    spill: bool,
    /// The file is mapped as it grows (not with `stream`).
    growing: bool,
    /// Bytes per read of the stream, or per step of a growing file.
    piece: usize,
}

impl Mode {
    fn new(a: u8, b: u8) -> Mode {
        Mode {
            block_bytes: BLOCK_BYTES[usize::from(a & 7)],
            skip_invalid: a & 8 != 0,
            threads: 1 + usize::from((a >> 4) & 3) % 3,
            stream: a & 64 != 0,
            spill: a & 128 != 0,
            growing: b & 16 != 0,
            piece: 1 + usize::from(b % 16),
        }
    }
}

/// Valid rows with enough distinct songs to overflow a 64 KiB table budget.
fn spill_rows() -> &'static [u8] {
    static ROWS: OnceLock<Vec<u8>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let mut rows = Vec::new();
        for i in 0..3000u32 {
            let line = format!("song {},2020-01-0{},{}\n", i % 1500, 1 + i % 7, i);
            rows.extend_from_slice(line.as_bytes());
        }
        rows
    })
}

/// A private directory for inputs and spilled runs.
fn work_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

/// A reader handing out at most `piece` bytes per read.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.piece).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn run_engine(input: &[u8], mode: &Mode) -> Result<(Vec<u8>, engine::Summary), Error> {
    let spill_dir = work_dir().path().join("spill");
    std::fs::create_dir_all(&spill_dir).expect("spill directory");
    let config = Config {
        memory_limit: if mode.spill { 1 } else { 64 << 20 },
        threads: mode.threads,
        temp_dir: Some(spill_dir.clone()),
        skip_invalid: mode.skip_invalid,
        block_bytes: mode.block_bytes,
        ..Config::default()
    };
    let path = work_dir().path().join("input.csv");
    let revealed = Revealed::new(input.len() as u64, mode.piece as u64);
    let growing_file;
    let source = if mode.stream {
        Input::Reader {
            reader: Box::new(Pieces {
                data: input,
                piece: mode.piece,
            }),
            len: None,
        }
    } else if mode.growing {
        std::fs::write(&path, input).expect("write the input");
        growing_file = std::fs::File::open(&path).expect("open the input");
        // Mapped past the file's end, as an upload's announced length may be.
        Input::Growing {
            file: &growing_file,
            capacity: Some(2 * input.len() as u64),
            growth: &revealed,
        }
    } else {
        std::fs::write(&path, input).expect("write the input");
        Input::File(&path)
    };
    let mut out = Vec::new();
    let result = engine::aggregate_to_writer(source, &mut out, &config, &Control::new());
    let left: Vec<_> = std::fs::read_dir(&spill_dir)
        .expect("spill directory")
        .collect();
    assert!(
        left.is_empty(),
        "{mode:?}: spilled runs left behind: {left:?}"
    );
    result.map(|summary| (out, summary))
}

fuzz_target!(|data: &[u8]| {
    let Some((body, control)) = data.split_last_chunk::<2>() else {
        return;
    };
    let mode = Mode::new(control[0], control[1]);
    let input = if mode.spill {
        [HEADER, body, b"\n", spill_rows()].concat()
    } else {
        body.to_vec()
    };
    let expected = reference::check(&input, mode.skip_invalid);
    let actual = run_engine(&input, &mode);
    match (&expected, &actual) {
        (Ok(checked), Ok((output, summary))) => {
            assert!(
                output == &checked.output,
                "{mode:?}: output differs\n  engine    {:?}\n  reference {:?}",
                String::from_utf8_lossy(output),
                String::from_utf8_lossy(&checked.output)
            );
            assert_eq!(
                (summary.rows_read, summary.rows_skipped),
                (checked.rows, checked.skipped),
                "{mode:?}: rows read and skipped"
            );
        }
        (Err(Rejection::Empty), Err(Error::EmptyInput)) => {}
        (Err(Rejection::Overflow), Err(Error::SumOverflow { .. })) => {}
        // Rows after the first invalid one may already have been summed by another thread.
        (Err(Rejection::Invalid { .. }), Err(Error::SumOverflow { .. })) => {}
        (Err(Rejection::Invalid { line, field }), Err(Error::Invalid(row))) => {
            assert_eq!(
                (row.line, row.field.map(|f| f.name())),
                (*line, *field),
                "{mode:?}: {row}"
            );
            let message = Error::Invalid(row.clone()).to_string();
            assert!(
                message.starts_with(&format!("invalid input: line {line}")),
                "{message}"
            );
        }
        _ => panic!(
            "{mode:?}: engine {:?}, reference {:?}",
            actual.as_ref().map(|(out, _)| String::from_utf8_lossy(out)),
            expected
                .as_ref()
                .map(|c| String::from_utf8_lossy(&c.output))
        ),
    }
});
