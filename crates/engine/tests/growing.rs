//! A file read while it grows (`Input::Growing`) against the same file read whole: records
//! longer than a block and oversized records give the same result or the same error,
//! whatever the steps the file grows by.

use std::io::Write;

use engine::{Config, Control, Input};
use fixtures::growing::Revealed;

/// The engine's output or error message for `data`, read whole or revealed `step` bytes at
/// a time (its length announced or not), in blocks of `block_bytes`.
fn aggregate(
    data: &[u8],
    block_bytes: usize,
    step: Option<u64>,
    announced: bool,
) -> Result<Vec<u8>, String> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(data).expect("write");
    let config = Config {
        block_bytes,
        threads: 2,
        ..Config::default()
    };
    let revealed = Revealed::new(data.len() as u64, step.unwrap_or(1));
    let opened = file.reopen().expect("reopen");
    let input = match step {
        None => Input::File(file.path()),
        Some(_) => Input::Growing {
            file: &opened,
            capacity: announced.then_some(2 * data.len() as u64),
            growth: &revealed,
        },
    };
    let mut out = Vec::new();
    engine::aggregate_to_writer(input, &mut out, &config, &Control::new())
        .map(|_| out)
        .map_err(|e| e.to_string())
}

#[test]
fn long_and_oversized_records_end_as_in_the_whole_file() {
    let mut long = b"Song,Date,Number of Plays\n".to_vec();
    for i in 0..3000 {
        long.extend_from_slice(format!("song {},2020-01-01,{i}\n", i % 70).as_bytes());
        if i == 1000 {
            // A quoted name longer than a block.
            long.extend_from_slice(b"\"long\n");
            long.extend(std::iter::repeat_n(b'x', 20_000));
            long.extend_from_slice(b"\",2020-01-01,1\n");
        }
    }
    // The last record without its line end.
    long.extend_from_slice(b"last,2020-01-01,1");
    let whole = aggregate(&long, 4096, None, true).expect("valid");
    let has = |row: &[u8]| whole.windows(row.len()).any(|w| w == row);
    assert!(
        has(b"\nlast,2020-01-01,1\n") && has(b"\n\"long\n"),
        "rows missing"
    );

    // A field never closed: over the record limit (1 MiB beyond the block).
    let mut oversized = b"Song,Date,Number of Plays\na,2020-01-01,1\n\"".to_vec();
    oversized.extend(std::iter::repeat_n(b'y', (1 << 20) + 10_000));
    let refused = aggregate(&oversized, 4096, None, true).expect_err("oversized");

    for step in [1, 777, 4096, 300_000] {
        assert_eq!(
            aggregate(&long, 4096, Some(step), true),
            Ok(whole.clone()),
            "step {step}"
        );
        assert_eq!(
            aggregate(&oversized, 4096, Some(step), true),
            Err(refused.clone()),
            "step {step}"
        );
    }
    // Without an announced length, the engine waits for the whole file.
    assert_eq!(aggregate(&long, 4096, Some(777), false), Ok(whole));
    assert_eq!(aggregate(&oversized, 4096, Some(777), false), Err(refused));
}

/// A writer that says more is written than the length it announced, or that gives up: the run
/// ends with a read error of the upload, never reads past the map, and writes no row.
#[test]
fn a_writer_that_overruns_its_length_or_gives_up_ends_the_run() {
    struct Lying(u64);
    impl engine::Growth for Lying {
        fn wait_beyond(&self, _: u64) -> std::io::Result<u64> {
            Ok(self.0)
        }
    }
    struct GivesUp;
    impl engine::Growth for GivesUp {
        fn wait_beyond(&self, _: u64) -> std::io::Result<u64> {
            Err(std::io::Error::other("the upload was aborted"))
        }
    }
    let data = b"Song,Date,Number of Plays\na,2020-01-01,1\n";
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(data).expect("write");
    let opened = file.reopen().expect("reopen");
    let len = data.len() as u64;
    let cases: [(&dyn engine::Growth, &str); 2] = [
        (
            &Lying(len + 1),
            "cannot read <upload>: the file grew beyond its announced size",
        ),
        (&GivesUp, "cannot read <upload>: the upload was aborted"),
    ];
    for (growth, expected) in cases {
        let mut out = Vec::new();
        let input = Input::Growing {
            file: &opened,
            capacity: Some(len),
            growth,
        };
        let err = engine::aggregate_to_writer(input, &mut out, &Config::default(), &Control::new())
            .expect_err(expected);
        assert_eq!(err.to_string(), expected);
        assert!(out.is_empty(), "{expected}: wrote {out:?}");
    }
}
