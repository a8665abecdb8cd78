//! Every golden case of `fixtures/golden` through the library: a file and a stream as input,
//! a writer and a file as output, with the default memory budget and with a tiny one that
//! forces spilling. Each run must also leave its temporary directory empty.

use fixtures::golden as golden_cases;

use std::fs::File;
use std::io::Read;

use engine::{Config, Control, Error, Input, Summary};
use fixtures::growing::Revealed;
use golden_cases::{Case, Expected, entries, first_difference, skippable_line};

/// How a case is fed to the engine.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `Input::File` (memory-mapped).
    File,
    /// `Input::Reader` over the file, length known.
    Reader,
    /// `Input::Reader` whose first reads return a few bytes each (the BOM and header split
    /// across reads), length unknown.
    Trickle,
    /// `Input::Growing`: the file mapped past its end, as an upload that still arrives, and
    /// revealed 7 bytes at a time.
    Growing,
}

/// Where the result goes.
#[derive(Debug, Clone, Copy)]
enum Sink {
    /// `aggregate_to_writer` into a `Vec`.
    Writer,
    /// `aggregate` to a file (temporary file + rename).
    File,
}

#[derive(Debug, Clone, Copy)]
struct Mode {
    source: Source,
    sink: Sink,
    /// 64 KiB memory budget and 2 threads instead of the defaults.
    tiny_memory: bool,
}

fn modes() -> Vec<Mode> {
    let mut modes = Vec::new();
    for tiny_memory in [false, true] {
        for source in [
            Source::File,
            Source::Reader,
            Source::Trickle,
            Source::Growing,
        ] {
            modes.push(Mode {
                source,
                sink: Sink::Writer,
                tiny_memory,
            });
        }
        modes.push(Mode {
            source: Source::File,
            sink: Sink::File,
            tiny_memory,
        });
    }
    modes
}

/// A reader whose first `small_reads` calls hand out at most `piece` bytes each.
struct Trickle<R> {
    inner: R,
    piece: usize,
    small_reads: usize,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.small_reads == 0 {
            return self.inner.read(buf);
        }
        self.small_reads -= 1;
        let len = buf.len().min(self.piece);
        self.inner.read(&mut buf[..len])
    }
}

/// Runs `case` in `mode`; returns the output (or error) and the summary. Checks that the
/// temporary directory is empty afterwards and, for file output, that nothing but the
/// output (and only on success) is left in the output directory.
fn run(case: &Case, mode: Mode, skip_invalid: bool) -> Result<(Vec<u8>, Summary), Error> {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let spill_dir = temp.path().join("spill");
    let out_dir = temp.path().join("out");
    std::fs::create_dir_all(&spill_dir).expect("spill dir");
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let mut config = Config {
        temp_dir: Some(spill_dir.clone()),
        skip_invalid,
        ..Config::default()
    };
    if mode.tiny_memory {
        config.memory_limit = 64 << 10;
        config.threads = 2;
    }
    let open = || File::open(&case.input).expect("golden input");
    let growing = open();
    let len = growing.metadata().expect("metadata").len();
    let revealed = Revealed::new(len, 7);
    let input = match mode.source {
        Source::File => Input::File(&case.input),
        Source::Reader => Input::Reader {
            len: Some(open().metadata().expect("metadata").len()),
            reader: Box::new(open()),
        },
        Source::Trickle => Input::Reader {
            reader: Box::new(Trickle {
                inner: open(),
                piece: 5,
                small_reads: 16,
            }),
            len: None,
        },
        Source::Growing => Input::Growing {
            file: &growing,
            capacity: Some(2 * len),
            growth: &revealed,
        },
    };
    let control = Control::new();
    let result = match mode.sink {
        Sink::Writer => {
            let mut out = Vec::new();
            engine::aggregate_to_writer(input, &mut out, &config, &control)
                .map(|summary| (out, summary))
        }
        Sink::File => {
            let path = out_dir.join("result.csv");
            engine::aggregate(input, &path, &config, &control).map(|summary| {
                let out = std::fs::read(&path).expect("the output file exists after success");
                (out, summary)
            })
        }
    };
    assert_eq!(
        entries(&spill_dir),
        Vec::<String>::new(),
        "{} {mode:?}: temporary files left behind",
        case.name
    );
    let expected_entries = match (&result, mode.sink) {
        (Ok(_), Sink::File) => vec!["result.csv".to_string()],
        _ => Vec::new(),
    };
    assert_eq!(
        entries(&out_dir),
        expected_entries,
        "{} {mode:?}: unexpected files in the output directory",
        case.name
    );
    result
}

#[test]
fn seed_example_is_exact() {
    let case = golden_cases::seed();
    let Expected::Output(expected) = &case.expected else {
        panic!("the seed case has an expected output");
    };
    for mode in modes() {
        let (out, summary) = run(&case, mode, false).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(expected),
            "{mode:?}"
        );
        assert_eq!(summary.rows_read, 7, "{mode:?}");
        assert_eq!(summary.groups_written, 4, "{mode:?}");
        assert_eq!(summary.rows_skipped, 0, "{mode:?}");
        assert_eq!(summary.output_bytes, expected.len() as u64, "{mode:?}");
    }
}

#[test]
fn valid_cases_give_the_expected_output() {
    let mut failures = Vec::new();
    for case in golden_cases::valid() {
        let Expected::Output(expected) = &case.expected else {
            unreachable!("valid cases have an output");
        };
        for mode in modes() {
            match run(&case, mode, false) {
                Ok((out, summary)) if &out == expected => {
                    let groups = csv::Reader::from_reader(&expected[..])
                        .byte_records()
                        .count();
                    if summary.groups_written != groups as u64 {
                        failures.push(format!(
                            "{} {mode:?}: groups_written {} for {groups} output records",
                            case.name, summary.groups_written
                        ));
                    }
                }
                Ok((out, _)) => failures.push(format!(
                    "{} {mode:?}: {}",
                    case.name,
                    first_difference(&out, expected)
                )),
                Err(err) => failures.push(format!("{} {mode:?}: error: {err}", case.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_cases_fail_with_the_expected_message() {
    let mut failures = Vec::new();
    for case in golden_cases::invalid() {
        let message = case.error().expect("invalid cases have a message");
        for mode in modes() {
            match run(&case, mode, false) {
                Err(err) if err.to_string() == message => {}
                Err(err) => failures.push(format!(
                    "{} {mode:?}:\n  got      {err}\n  expected {message}",
                    case.name
                )),
                Ok((out, _)) => failures.push(format!(
                    "{} {mode:?}: succeeded with {:?}, expected error {message}",
                    case.name,
                    String::from_utf8_lossy(&out)
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn skip_invalid_skips_bad_rows_and_reports_the_first() {
    let mut failures = Vec::new();
    for case in golden_cases::invalid() {
        let message = case.error().expect("invalid cases have a message");
        for mode in modes() {
            let result = run(&case, mode, true);
            match (skippable_line(message), result) {
                (Some(_), Ok((out, summary))) => {
                    let reason = message.trim_start_matches("invalid input: ");
                    if summary.rows_skipped == 0
                        || summary.invalid_samples.first().map(String::as_str) != Some(reason)
                        || !out.starts_with(b"Song,Date,Number of Plays\n")
                    {
                        failures.push(format!(
                            "{} {mode:?}: skipped {}, samples {:?}, expected first {reason:?}",
                            case.name, summary.rows_skipped, summary.invalid_samples
                        ));
                    }
                }
                (Some(_), Err(err)) => {
                    failures.push(format!("{} {mode:?}: not skipped: {err}", case.name))
                }
                // Header, empty input and overflowing sums are not row problems: still errors.
                (None, Err(err)) if err.to_string() == message => {}
                (None, other) => failures.push(format!(
                    "{} {mode:?}: expected error {message}, got {:?}",
                    case.name,
                    other.map(|(out, _)| String::from_utf8_lossy(&out).into_owned())
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_rows_count_as_read() {
    let case = golden_cases::invalid()
        .into_iter()
        .find(|c| c.name == "invalid/first_error_wins")
        .expect("the first_error_wins case");
    let (out, summary) = run(&case, modes()[0], true).expect("skipping succeeds");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "Song,Date,Number of Plays\nA,2020-01-01,1\n"
    );
    assert_eq!(summary.rows_read, 3);
    assert_eq!(summary.rows_skipped, 2);
    assert_eq!(summary.groups_written, 1);
    assert_eq!(summary.invalid_samples.len(), 2);
    assert!(summary.invalid_samples[1].starts_with("line 4, field \"Date\""));
}

/// The strict reference (`fixtures::reference::check`) gives every golden output and blames
/// the line and field of every golden error: the golden files and the reference check each
/// other.
#[test]
fn the_strict_reference_agrees_with_every_golden_case() {
    use fixtures::reference::{Rejection, check};
    let mut failures = Vec::new();
    for case in golden_cases::valid()
        .into_iter()
        .chain(golden_cases::invalid())
    {
        let input = std::fs::read(&case.input).expect("golden input");
        let agrees = match (&case.expected, check(&input, false)) {
            (Expected::Output(expected), Ok(checked)) => &checked.output == expected,
            (Expected::Error(message), Err(Rejection::Invalid { line, field })) => {
                let prefix = match field {
                    Some(field) => format!("invalid input: line {line}, field \"{field}\":"),
                    None => format!("invalid input: line {line}:"),
                };
                message.starts_with(&prefix)
            }
            (Expected::Error(message), Err(Rejection::Empty)) => message.contains("empty"),
            (Expected::Error(message), Err(Rejection::Overflow)) => message.contains("overflows"),
            _ => false,
        };
        if !agrees {
            failures.push(case.name);
        }
    }
    assert!(
        failures.is_empty(),
        "the reference disagrees on {failures:?}"
    );
}
