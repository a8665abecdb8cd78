//! Property tests: the engine equals a naive reference (csv crate + BTreeMap) on random
//! inputs, through both input kinds, with and without forced spilling.

use std::io::Write;

use fixtures::{Length, Skew, Spec};
use proptest::prelude::*;

use crate::aggregate::shards::ShardedTable;
use crate::date::PackedDate;
use crate::error::Field;
use crate::input::parse::{Parser, RowSink, Stop};
use crate::{Config, Control, Input, Summary, aggregate_to_writer};

/// How a test hands its input to the engine.
#[derive(Debug, Clone, Copy)]
enum Kind {
    File,
    Reader,
    /// In pieces of 1 to this many bytes ([`Input::Pieces`]).
    Pieces(usize),
}

const KINDS: [Kind; 4] = [Kind::File, Kind::Reader, Kind::Pieces(1), Kind::Pieces(100)];

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::File),
        Just(Kind::Reader),
        (1usize..300).prop_map(Kind::Pieces),
        Just(Kind::Pieces(1 << 20)),
    ]
}

/// `data` in pieces of 1 to `most` bytes, of varying sizes.
struct TestPieces {
    data: bytes::Bytes,
    most: usize,
    given: usize,
}

impl crate::Pieces for TestPieces {
    fn next_piece(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        self.given += 1;
        let len = (1 + self.given * 7919 % self.most).min(self.data.len());
        Ok(Some(self.data.split_to(len)))
    }
}

/// Runs the engine on `input` handed over as `kind` says.
fn try_engine(
    input: &[u8],
    config: &Config,
    kind: Kind,
) -> Result<(Vec<u8>, Summary), crate::Error> {
    let mut out = Vec::new();
    let control = Control::new();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let input = match kind {
        Kind::File => {
            std::fs::write(file.path(), input).expect("write input");
            Input::File(file.path())
        }
        Kind::Reader => Input::Reader {
            reader: Box::new(std::io::Cursor::new(input.to_vec())),
            len: None,
        },
        Kind::Pieces(most) => Input::Pieces {
            pieces: Box::new(TestPieces {
                data: bytes::Bytes::copy_from_slice(input),
                most,
                given: 0,
            }),
            len: Some(input.len() as u64),
        },
    };
    let summary = aggregate_to_writer(input, &mut out, config, &control)?;
    Ok((out, summary))
}

fn run_engine(input: &[u8], config: &Config, kind: Kind) -> Vec<u8> {
    try_engine(input, config, kind).expect("engine succeeds").0
}

/// Runs the engine on a file, returning the output and the summary.
fn run_file(input: &[u8], config: &Config) -> (Vec<u8>, Summary) {
    try_engine(input, config, Kind::File).expect("engine succeeds")
}

/// The in-memory size of all the groups of `input` (a valid CSV with its header): the memory
/// estimate of one table holding them all, the measure of the engine's memory budget.
fn groups_bytes(input: &[u8]) -> usize {
    struct Sink<'a>(&'a mut ShardedTable);
    impl RowSink<'_> for Sink<'_> {
        fn row(&mut self, song: &[u8], date: PackedDate, plays: u64, _: u64) -> Result<(), Stop> {
            self.0.add(song, date, plays);
            Ok(())
        }
        fn invalid(&mut self, _: u64, _: Option<Field>, _: String) -> Result<(), Stop> {
            Err(Stop)
        }
    }
    let rows = input
        .iter()
        .position(|&b| b == b'\n')
        .map_or(&input[..0], |end| &input[end + 1..]);
    let mut table = ShardedTable::new(1 << 20);
    Parser::default()
        .parse_block(rows, &mut Sink(&mut table))
        .expect("valid input");
    table.flush().expect("no overflow");
    table.table_bytes()
}

fn song_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Da-d]{1,3}",
        1 => "[a-z ,\"é日\n]{1,6}",
        1 => "\\PC{1,4}",
    ]
}

fn row() -> impl Strategy<Value = (String, u32, u64)> {
    (
        song_name(),
        0u32..40,
        prop_oneof![0u64..1000, 0u64..=u64::MAX >> 20],
    )
}

/// Writes rows as CSV with the given quoting and line ends.
fn render(
    rows: &[(String, u32, u64)],
    crlf: bool,
    quote_all: bool,
    final_newline: bool,
) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(if crlf {
            csv::Terminator::CRLF
        } else {
            csv::Terminator::Any(b'\n')
        })
        .quote_style(if quote_all {
            csv::QuoteStyle::Always
        } else {
            csv::QuoteStyle::Necessary
        })
        .from_writer(Vec::new());
    writer
        .write_record(["Song", "Date", "Number of Plays"])
        .expect("write");
    for (song, day, plays) in rows {
        let date = format!("2020-{:02}-{:02}", 1 + day / 28, 1 + day % 28);
        writer
            .write_record([song.as_str(), &date, &plays.to_string()])
            .expect("write");
    }
    let mut bytes = writer.into_inner().expect("flush");
    if !final_newline {
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn engine_equals_reference(
        rows in prop::collection::vec(row(), 0..300),
        crlf in any::<bool>(),
        quote_all in any::<bool>(),
        final_newline in any::<bool>(),
        threads in 1usize..4,
        spill in any::<bool>(),
        kind in kind(),
        block in prop_oneof![Just(64usize), Just(1000), Just(4 << 20)],
    ) {
        let input = render(&rows, crlf, quote_all, final_newline || rows.is_empty());
        let expected = fixtures::reference::aggregate(&input);
        let config = Config {
            threads,
            memory_limit: if spill { 1 } else { 1 << 30 },
            block_bytes: block,
            ..Config::default()
        };
        let got = run_engine(&input, &config, kind);
        prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Enough rows for several spilled runs (random ones amid many of a few thousand songs),
    /// merged on several threads: under the unit tests' constants the final merge cuts the
    /// songs into many ranges of a few rows each (see `range_merge`), merged in parallel.
    #[test]
    fn spilled_runs_merged_in_parallel_ranges_equal_reference(
        random in prop::collection::vec(row(), 0..300),
        filler in 3000usize..6000,
        threads in 2usize..5,
        block in prop_oneof![Just(256usize), Just(2048)],
    ) {
        let mut rows: Vec<(String, u32, u64)> = (0..filler)
            .map(|i| (format!("song {}", i * 7919 % 2500), (i % 40) as u32, i as u64))
            .collect();
        for (i, row) in random.into_iter().enumerate() {
            rows.insert(i * 7 % rows.len(), row);
        }
        let input = render(&rows, false, false, true);
        let expected = fixtures::reference::aggregate(&input);
        let config = Config {
            threads,
            memory_limit: 1,
            block_bytes: block,
            ..Config::default()
        };
        let (got, summary) = run_file(&input, &config);
        prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
        prop_assert!(summary.spilled_runs > 1, "{:?}", summary);
    }
}

#[test]
fn seed_example() {
    let input = b"Song,Date,Number of Plays\nUmbrella,2020-01-02,200\nUmbrella,2020-01-01,100\nIn The End,2020-01-01,500\nUmbrella,2020-01-01,50\nIn The End,2020-01-01,1000\nUmbrella,2020-01-02,50\nIn The End,2020-01-02,500\n";
    let expected = "Song,Date,Number of Plays\nIn The End,2020-01-01,1500\nIn The End,2020-01-02,500\nUmbrella,2020-01-01,150\nUmbrella,2020-01-02,250\n";
    for kind in KINDS {
        let got = run_engine(input, &Config::default(), kind);
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }
}

#[test]
fn forced_spills_are_counted_and_merged() {
    let input = spilling_input();
    let config = spilling_config(None);
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(&input).expect("write");
    let mut out = Vec::new();
    let summary = aggregate_to_writer(Input::File(file.path()), &mut out, &config, &Control::new())
        .expect("engine succeeds");
    // More runs than one merge reads at once: exercises the early and intermediate merges.
    let fan_in = crate::merge::fan_in(config.memory_limit) as u64;
    assert!(summary.spilled_runs > fan_in, "{summary:?}");
    assert_eq!(summary.rows_read, 20000);
    assert_eq!(out, fixtures::reference::aggregate(&input));
    assert_eq!(
        summary.groups_written as usize,
        out.iter().filter(|&&b| b == b'\n').count() - 1
    );
}

#[test]
fn first_error_in_file_order_with_its_line() {
    let mut input = String::from("Song,Date,Number of Plays\n");
    for i in 0..2000 {
        input.push_str(&format!("s{i},2020-01-01,{i}\n"));
    }
    input.push_str("\"multi\nline\",2020-01-01,1\n");
    input.push_str("bad,2020-02-30,1\n");
    for i in 0..2000 {
        input.push_str(&format!("t{i},2020-01-01,x\n"));
    }
    let config = Config {
        threads: 3,
        block_bytes: 512,
        ..Config::default()
    };
    for kind in KINDS {
        let err = try_engine(input.as_bytes(), &config, kind).expect_err("invalid date");
        assert_eq!(
            err.to_string(),
            "invalid input: line 2004, field \"Date\": \"2020-02-30\" is not a real calendar date",
            "{kind:?}"
        );
    }
}

/// Overlong records, headers and empty inputs end as the same error, or the same result,
/// whichever way the input comes.
#[test]
fn overlong_records_and_headers_end_alike_in_every_input_kind() {
    let header = "Song,Date,Number of Plays\n";
    let mut unclosed = format!("{header}a,2020-01-01,1\n\"");
    unclosed.push_str(&"y".repeat((1 << 20) + 10_000));
    unclosed.push_str("\",2020-01-01,1\nb,2020-01-01,2\n");
    let mut long_name = format!("{header}\"");
    long_name.push_str(&"z\n".repeat(200_000));
    long_name.push_str("\",2020-01-01,3\n");
    let inputs = [
        unclosed,
        long_name,
        String::new(),
        "\u{feff}".into(),
        header.into(),
        "Song,Date,Number of Plays".into(),
        "\u{feff}Song,Date,Number of Plays\r\nx,2020-01-01,1".into(),
        "Song,Date,Plays\nx,2020-01-01,1\n".into(),
        format!("Song,Date,{}\n", "x".repeat((1 << 20) + 10)),
    ];
    let config = Config {
        threads: 2,
        block_bytes: 4096,
        ..Config::default()
    };
    for input in &inputs {
        let outcome = |kind| {
            try_engine(input.as_bytes(), &config, kind)
                .map(|(out, _)| out)
                .map_err(|e| e.to_string())
        };
        let expected = outcome(Kind::Reader);
        for kind in [Kind::Pieces(1), Kind::Pieces(5000), Kind::Pieces(1 << 22)] {
            assert_eq!(outcome(kind), expected, "{kind:?}: {:.60?}", input);
        }
    }
}

#[test]
fn skip_invalid_reports_first_rows_in_order() {
    let mut input = String::from("\u{feff}Song,Date,Number of Plays\r\n");
    for i in 0..3000 {
        if i % 100 == 7 {
            input.push_str(&format!("s{i},2020-01-01,-{i}\r\n"));
        } else {
            input.push_str(&format!("s{},2020-01-01,1\r\n", i % 10));
        }
    }
    let config = Config {
        threads: 2,
        block_bytes: 700,
        skip_invalid: true,
        max_reported_invalid: 3,
        ..Config::default()
    };
    let mut file = tempfile::NamedTempFile::new().expect("temp");
    file.write_all(input.as_bytes()).expect("write");
    let mut out = Vec::new();
    let summary = aggregate_to_writer(Input::File(file.path()), &mut out, &config, &Control::new())
        .expect("skips");
    assert_eq!(summary.rows_skipped, 30);
    assert_eq!(summary.rows_read, 3000);
    assert_eq!(summary.groups_written, 10);
    assert_eq!(summary.invalid_samples.len(), 3);
    assert!(
        summary.invalid_samples[0].starts_with("line 9, field \"Number of Plays\""),
        "{:?}",
        summary.invalid_samples
    );
    assert!(
        summary.invalid_samples[2].starts_with("line 209,"),
        "{:?}",
        summary.invalid_samples
    );
}

/// Under a small memory limit the engine spills about as many runs as the groups' size over
/// the limit, whatever the number of threads: the tables get most of the limit (the input
/// blocks shrink with it) and the threads share it instead of a fixed split per thread.
#[test]
fn spilled_runs_follow_the_groups_size_over_the_limit() {
    // Wide data: most rows are a group of their own, as in the hardest case for the budget.
    let input = fixtures::generate(Spec {
        length: Length::Rows(300_000),
        songs: 200_000,
        days: 365,
        skew: Skew::Uniform,
        ..Spec::default()
    })
    .expect("a valid spec");
    let groups = groups_bytes(&input);
    let (expected, in_memory) = run_file(&input, &Config::default());
    assert_eq!(in_memory.spilled_runs, 0);
    assert_eq!(in_memory.spilled_bytes, 0);
    for threads in [1, 2] {
        for limit in [12u64 << 20, 24 << 20] {
            let config = Config {
                threads,
                memory_limit: limit,
                ..Config::default()
            };
            let (out, summary) = run_file(&input, &config);
            assert!(out == expected, "different output with {config:?}");
            // The tables get a little less than the limit (the rest is for input blocks and
            // slack), and a song split over several runs costs its overhead in each: a
            // factor 4 leaves room for both. The old split (a fixed 16 MiB and 5 MiB per
            // block off the limit, the rest halved per thread) spilled some 400 runs here.
            let bound = 4 * groups as u64 / limit + 1;
            assert!(
                summary.spilled_runs >= 1 && summary.spilled_runs <= bound,
                "{} runs for {} MiB of groups under {} MiB with {threads} threads (bound {bound})",
                summary.spilled_runs,
                groups >> 20,
                limit >> 20,
            );
            // A run is written from tables that held at most the limit, in a format more
            // compact than the tables.
            assert!(
                summary.spilled_bytes >= summary.spilled_runs
                    && summary.spilled_bytes <= summary.spilled_runs * limit,
                "{summary:?} under {limit} bytes"
            );
        }
    }
}

/// Several workers under a tiny memory limit, tricky names: they spill many runs, finish (in
/// bounded time) and give the reference's output.
#[test]
fn several_workers_under_a_tiny_limit_finish() {
    let input = fixtures::generate(Spec {
        length: Length::Rows(200_000),
        songs: 20_000,
        days: 30,
        skew: Skew::Zipf,
        tricky_names: true,
        ..Spec::default()
    })
    .expect("a valid spec");
    let expected = fixtures::reference::aggregate(&input);
    for threads in [2, 3] {
        let config = Config {
            threads,
            memory_limit: 1 << 20,
            ..Config::default()
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (input, config_run) = (input.clone(), config.clone());
        std::thread::spawn(move || {
            let _ = done_tx.send(run_file(&input, &config_run));
        });
        let (out, summary) = done_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no result within 2 minutes with {config:?}"));
        assert!(out == expected, "different output with {config:?}");
        assert!(summary.spilled_runs > 1, "{summary:?}");
    }
}

/// Rows of 700 songs over 40 dates: beyond a one-byte memory limit, they spill.
fn spilling_input() -> Vec<u8> {
    let rows: Vec<(String, u32, u64)> = (0..20000)
        .map(|i| (format!("song {}", i % 700), (i * 7) % 40, i as u64))
        .collect();
    render(&rows, false, false, true)
}

/// Two threads, a one-byte memory limit and small blocks: [`spilling_input`] spills many
/// runs, into `temp_dir` when given.
fn spilling_config(temp_dir: Option<std::path::PathBuf>) -> Config {
    Config {
        threads: 2,
        memory_limit: 1,
        block_bytes: 4096,
        temp_dir,
        ..Config::default()
    }
}

/// A temporary directory that is missing fails the run before it reads anything, with the
/// directory's name, whichever way the input comes, and `aggregate` leaves no output file.
#[test]
fn a_missing_temp_dir_fails_naming_it() {
    let input = spilling_input();
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-dir");
    let config = spilling_config(Some(missing.clone()));
    for kind in KINDS {
        let err = try_engine(&input, &config, kind).expect_err("no temp dir");
        match &err {
            crate::Error::Temp { path, .. } => assert_eq!(path, &missing, "{kind:?}"),
            other => panic!("{kind:?}: not a temp-file error: {other}"),
        }
        assert!(
            err.to_string()
                .starts_with(&format!("temporary file in {}: ", missing.display())),
            "{err}"
        );
    }
    let source = dir.path().join("in.csv");
    std::fs::write(&source, &input).expect("write input");
    let out = dir.path().join("out.csv");
    let err = crate::aggregate(Input::File(&source), &out, &config, &Control::new())
        .expect_err("no temp dir");
    assert!(matches!(err, crate::Error::Temp { .. }), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["in.csv"], "no output, no partial file");
}

/// A writer that fails after `accept` bytes, as a full disk or a closed pipe does.
struct FailingWriter {
    accept: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.accept == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "disk full",
            ));
        }
        let n = buf.len().min(self.accept);
        self.accept -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A write that fails ends the run with `Error::Write` and the writer's own error, whether it
/// fails on the header or amid the rows, after a merge in memory or of spilled runs.
#[test]
fn a_failing_writer_ends_the_run_with_its_error() {
    let input = spilling_input();
    for memory_limit in [Config::default().memory_limit, 1] {
        for accept in [0, 10_000] {
            let config = Config {
                threads: 2,
                memory_limit,
                block_bytes: 4096,
                ..Config::default()
            };
            let context = format!("memory limit {memory_limit}, {accept} bytes accepted");
            let mut out = FailingWriter { accept };
            let err = aggregate_to_writer(
                Input::Reader {
                    reader: Box::new(std::io::Cursor::new(input.clone())),
                    len: None,
                },
                &mut out,
                &config,
                &Control::new(),
            )
            .expect_err(&context);
            match &err {
                crate::Error::Write { source, .. } => {
                    assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{context}");
                    assert_eq!(source.to_string(), "disk full", "{context}");
                }
                other => panic!("{context}: not a write error: {other}"),
            }
        }
    }
}

/// Pieces of `data` that remove `dir` once the first piece is handed over.
struct RemovingPieces {
    data: bytes::Bytes,
    dir: Option<tempfile::TempDir>,
}

impl crate::Pieces for RemovingPieces {
    fn next_piece(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let piece = self.data.split_to(self.data.len().min(4096));
        if let Some(dir) = self.dir.take() {
            dir.close().expect("remove the temp dir");
        }
        Ok(Some(piece))
    }
}

/// A temporary directory removed during the run (a clean-up job, an unmounted disk): the first
/// spill fails with the directory's name, and the run ends with that error, not a panic or a
/// partial result.
#[test]
fn a_temp_dir_removed_during_the_run_fails_the_spill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let config = spilling_config(Some(path.clone()));
    let input = Input::Pieces {
        pieces: Box::new(RemovingPieces {
            data: bytes::Bytes::from(spilling_input()),
            dir: Some(dir),
        }),
        len: None,
    };
    let mut out = Vec::new();
    let err = aggregate_to_writer(input, &mut out, &config, &Control::new())
        .expect_err("no temp dir to spill into");
    match &err {
        crate::Error::Temp {
            path: named,
            source,
        } => {
            assert_eq!(named, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{err}");
        }
        other => panic!("not a temp-file error: {other}"),
    }
    assert!(out.is_empty(), "wrote {} bytes", out.len());
}
