//! The `processor aggregate` command line: outputs, exit codes (0, 2 usage, 65 invalid input,
//! 74 I/O, 130 interrupted), messages on stderr, the summary file, and that a failed run leaves
//! no output and no temporary file behind.

use fixtures::golden as golden_cases;
#[cfg(unix)]
use test_support::fifo;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fixtures::{Length, Skew, Spec};
use golden_cases::entries;

const HEADER: &str = "Song,Date,Number of Plays\n";
const EXIT_INVALID_INPUT: i32 = 65;
const EXIT_USAGE: i32 = 2;
const EXIT_IO: i32 = 74;
const EXIT_INTERRUPTED: i32 = 130;

/// Runs `processor aggregate ARGS`, feeding `stdin` when given.
fn aggregate<S: AsRef<OsStr>>(args: &[S], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_processor"));
    command
        .arg("aggregate")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the processor binary starts");
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            // The process may stop reading early (an error); a broken pipe is expected then.
            let _ = pipe.write_all(&data);
        })
    });
    let output = child.wait_with_output().expect("the processor binary runs");
    if let Some(feeder) = feeder {
        feeder.join().expect("the stdin feeder finishes");
    }
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// Runs `processor aggregate INPUT -o OUT`.
fn aggregate_file(input: &Path, out: &Path) -> Output {
    aggregate(&[input.as_os_str(), "-o".as_ref(), out.as_os_str()], None)
}

/// Asserts that the run succeeded (`context` says which run).
fn assert_success(output: &Output, context: &str) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{context}: {}",
        stderr(output)
    );
}

/// Runs `processor aggregate INPUT -o OUT --threads THREADS`.
fn aggregate_with_threads(input: &Path, out: &Path, threads: &str) -> Output {
    aggregate(
        &[
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--threads".as_ref(),
            threads.as_ref(),
        ],
        None,
    )
}

/// Asserts that `written` is `expected`, showing the first difference (after `context`).
fn assert_output(written: &[u8], expected: &[u8], context: &str) {
    assert!(
        written == expected,
        "{context}: {}",
        golden_cases::first_difference(written, expected)
    );
}

/// Runs `processor aggregate - -o - ARGS` on `data` piped in; asserts success and `expected`
/// on stdout.
fn assert_piped_output(args: &[&str], data: &[u8], expected: &[u8]) {
    let piped = aggregate(&[&["-", "-o", "-"], args].concat(), Some(data));
    assert_success(&piped, "stdin");
    assert_output(&piped.stdout, expected, "stdin");
}

/// Asserts that the run exited with `code` and printed `message` on stderr.
fn assert_error(output: &Output, code: i32, message: &str, context: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{context}: {}",
        stderr(output)
    );
    assert!(
        stderr(output).contains(message),
        "{context}: {}",
        stderr(output)
    );
}

/// Generated rows with tricky names, written to `dir/input.csv`.
fn generated_input(dir: &Path, rows: u64, tricky_names: bool) -> (PathBuf, Vec<u8>) {
    let data = fixtures::generate(Spec {
        length: Length::Rows(rows),
        songs: 5_000,
        days: 10,
        skew: Skew::Zipf,
        tricky_names,
        ..Spec::default()
    })
    .expect("a valid spec");
    let path = dir.join("input.csv");
    std::fs::write(&path, &data).expect("write the input");
    (path, data)
}

#[test]
fn valid_golden_cases_file_to_file() {
    for case in golden_cases::valid() {
        let golden_cases::Expected::Output(expected) = &case.expected else {
            unreachable!()
        };
        let dir = temp_dir();
        let out = dir.path().join("out.csv");
        let output = aggregate_file(&case.input, &out);
        assert_success(&output, &case.name);
        let written = std::fs::read(&out).expect("the output file");
        assert_output(&written, expected, &case.name);
        assert_eq!(entries(dir.path()), ["out.csv"], "{}", case.name);
        assert!(output.stdout.is_empty(), "{}", case.name);
        // No progress bar or chatter when stderr is not a terminal.
        assert_eq!(stderr(&output), "", "{}", case.name);
    }
}

#[test]
fn valid_golden_cases_stdin_to_stdout() {
    for case in golden_cases::valid() {
        let golden_cases::Expected::Output(expected) = &case.expected else {
            unreachable!()
        };
        let input = std::fs::read(&case.input).expect("golden input");
        let output = aggregate(&["-", "-o", "-"], Some(&input));
        assert_success(&output, &case.name);
        assert_output(&output.stdout, expected, &case.name);
    }
}

#[test]
fn invalid_golden_cases_exit_65_with_the_message_and_no_output() {
    for case in golden_cases::invalid() {
        let message = case.error().expect("a message");
        let dir = temp_dir();
        let out = dir.path().join("out.csv");
        let output = aggregate_file(&case.input, &out);
        assert_eq!(
            output.status.code(),
            Some(EXIT_INVALID_INPUT),
            "{}",
            case.name
        );
        let expected_line = format!("error: {message}");
        assert!(
            stderr(&output).lines().any(|line| line == expected_line),
            "{}: stderr {:?}, expected the line {expected_line:?}",
            case.name,
            stderr(&output)
        );
        assert_eq!(entries(dir.path()), Vec::<String>::new(), "{}", case.name);

        if golden_cases::skippable_line(message).is_some() {
            let skipped = aggregate(
                &[
                    case.input.as_os_str(),
                    "-o".as_ref(),
                    out.as_os_str(),
                    "--skip-invalid".as_ref(),
                ],
                None,
            );
            let reason = message.trim_start_matches("invalid input: ");
            assert_success(&skipped, &format!("{} (skip)", case.name));
            assert!(
                stderr(&skipped).contains(reason),
                "{} (skip): {}",
                case.name,
                stderr(&skipped)
            );
            assert_eq!(entries(dir.path()), ["out.csv"], "{} (skip)", case.name);
            std::fs::remove_file(&out).expect("remove the output");
        }

        let input = std::fs::read(&case.input).expect("golden input");
        let piped = aggregate(&["-", "-o", "-"], Some(&input));
        assert_eq!(
            piped.status.code(),
            Some(EXIT_INVALID_INPUT),
            "{} (stdin)",
            case.name
        );
        assert!(
            stderr(&piped).contains(&expected_line),
            "{} (stdin)",
            case.name
        );
        assert!(
            piped.stdout.is_empty(),
            "{}: partial output on stdout",
            case.name
        );
    }
}

#[test]
fn a_failed_run_keeps_an_existing_output_file() {
    let dir = temp_dir();
    let out = dir.path().join("out.csv");
    std::fs::write(&out, "previous result\n").expect("write");
    let input = fixtures::golden_dir().join("invalid/plays_negative.csv");
    let output = aggregate_file(&input, &out);
    assert_eq!(output.status.code(), Some(EXIT_INVALID_INPUT));
    assert_eq!(
        std::fs::read_to_string(&out).expect("read"),
        "previous result\n"
    );
    assert_eq!(entries(dir.path()), ["out.csv"]);
}

/// A temporary directory holding a FIFO named `pipe`.
#[cfg(unix)]
fn dir_with_fifo() -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir();
    let fifo = dir.path().join("pipe");
    fifo::make_fifo(&fifo);
    (dir, fifo)
}

/// `-o /dev/null` and other outputs that are not regular files (here a FIFO, which needs no
/// privileges to make) are written in place: renaming the finished file onto such a path would
/// replace the device or pipe with a regular file (as root, `/dev/null` for the whole machine).
#[cfg(unix)]
#[test]
fn an_output_that_is_a_fifo_is_written_into_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let (dir, fifo) = dir_with_fifo();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).expect("read the FIFO"))
    };
    let seed = fixtures::golden_dir().join("seed");
    let output = aggregate_file(&seed.join("input.csv"), &fifo);
    assert_success(&output, "FIFO output");
    // Checked before joining the reader, which would wait forever on a replaced FIFO.
    let kind = fifo.symlink_metadata().expect("stat").file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced: {kind:?}");
    let expected = std::fs::read(seed.join("expected.csv")).expect("read");
    assert_output(&reader.join().expect("reader"), &expected, "FIFO output");
    assert_eq!(entries(dir.path()), ["pipe"]);
}

/// An input path that is a pipe (`<(command)`, a FIFO, `/dev/stdin`) has no size to map: it
/// is read as a stream, not reported as an empty input.
#[cfg(unix)]
#[test]
fn an_input_that_is_a_fifo_is_read_as_a_stream() {
    let (dir, fifo) = dir_with_fifo();
    let seed = fixtures::golden_dir().join("seed");
    let input = std::fs::read(seed.join("input.csv")).expect("read");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, input).expect("write the FIFO"))
    };
    let out = dir.path().join("out.csv");
    let output = aggregate_file(&fifo, &out);
    writer.join().expect("writer");
    assert_success(&output, "FIFO input");
    let expected = std::fs::read(seed.join("expected.csv")).expect("read");
    assert_output(&std::fs::read(&out).expect("read"), &expected, "FIFO input");
}

/// Runs the seed input with `FLAG PATH` and asserts that it fails with exit 74 and `message`
/// before the run: no output appears.
fn assert_fails_before_the_run(flag: &str, path: &Path, message: &str) {
    let dir = path
        .ancestors()
        .find(|dir| dir.is_dir())
        .expect("an existing directory");
    let out = dir.join("out.csv");
    let input = fixtures::golden_dir().join("seed/input.csv");
    let args = [
        input.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        flag.as_ref(),
        path.as_os_str(),
    ];
    let output = aggregate(&args, None);
    assert_error(&output, EXIT_IO, message, flag);
    assert_eq!(entries(dir), Vec::<String>::new(), "{flag}");
}

/// A temporary directory that cannot take spilled runs is an error at once, also for an input
/// that would not have spilled, and no output appears.
#[test]
fn a_missing_temp_dir_fails_before_the_run() {
    let dir = temp_dir();
    let missing = dir.path().join("no-such-dir");
    let message = format!("error: temporary file in {}", missing.display());
    assert_fails_before_the_run("--temp-dir", &missing, &message);
}

/// A `--summary` whose directory is missing fails before the run, with no output.
#[test]
fn a_summary_in_a_missing_directory_fails_before_the_run() {
    let dir = temp_dir();
    let summary = dir.path().join("no-such-dir").join("summary.json");
    let message = format!("error: cannot write {}", summary.display());
    assert_fails_before_the_run("--summary", &summary, &message);
}

#[test]
fn usage_errors_exit_2() {
    let dir = temp_dir();
    let out = dir.path().join("out.csv");
    let out = out.to_str().expect("UTF-8 path");
    let seed = fixtures::golden_dir().join("seed/input.csv");
    let seed = seed.to_str().expect("UTF-8 path");
    let cases: [&[&str]; 6] = [
        &[],
        &[seed],
        &[seed, "-o", out, "--no-such-flag"],
        &[seed, "-o", out, "--memory-limit", "12Q"],
        &[seed, "-o", out, "--memory-limit", "0"],
        &[seed, "-o", out, "--threads", "many"],
    ];
    for args in cases {
        let output = aggregate(args, None);
        assert_error(&output, EXIT_USAGE, "error:", &format!("{args:?}"));
        assert_eq!(entries(dir.path()), Vec::<String>::new(), "{args:?}");
    }
}

#[test]
fn unreadable_input_exits_74() {
    let dir = temp_dir();
    let out = dir.path().join("out.csv");
    let missing = dir.path().join("missing.csv");
    for input in [missing.as_path(), dir.path()] {
        let output = aggregate_file(input, &out);
        assert_eq!(output.status.code(), Some(EXIT_IO), "{}", stderr(&output));
        let text = stderr(&output);
        assert!(
            text.starts_with("error: cannot read") && text.contains(&*input.to_string_lossy()),
            "{text}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn unwritable_output_exits_74() {
    let dir = temp_dir();
    let out = dir.path().join("no-such-dir").join("out.csv");
    let input = fixtures::golden_dir().join("seed/input.csv");
    let output = aggregate_file(&input, &out);
    assert_eq!(output.status.code(), Some(EXIT_IO), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("error: cannot write"),
        "{}",
        stderr(&output)
    );
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

/// A write that fails during the run (a full disk: `/dev/full`) exits 74 with a message that
/// names what could not be written: the output file, or `<stdout>`.
#[test]
fn a_full_output_device_exits_74_naming_the_output() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let input = fixtures::golden_dir().join("seed/input.csv");
    let output = aggregate(&[input.as_os_str(), "-o".as_ref(), full.as_os_str()], None);
    assert_error(
        &output,
        EXIT_IO,
        "error: cannot write /dev/full: No space left on device",
        "-o /dev/full",
    );

    let output = Command::new(env!("CARGO_BIN_EXE_processor"))
        .args([
            OsStr::new("aggregate"),
            input.as_os_str(),
            OsStr::new("-o"),
            OsStr::new("-"),
        ])
        .stdout(std::fs::File::create(full).expect("open /dev/full"))
        .output()
        .expect("run processor");
    assert_error(
        &output,
        EXIT_IO,
        "error: cannot write <stdout>: No space left on device",
        "-o - > /dev/full",
    );
}

#[test]
fn header_only_input_gives_header_only_output() {
    let dir = temp_dir();
    let input = dir.path().join("in.csv");
    let out = dir.path().join("out.csv");
    std::fs::write(&input, HEADER).expect("write");
    let output = aggregate_file(&input, &out);
    assert_success(&output, "file");
    assert_eq!(std::fs::read_to_string(&out).expect("read"), HEADER);
}

#[test]
fn summary_of_a_clean_run() {
    let dir = temp_dir();
    let input = fixtures::golden_dir().join("seed/input.csv");
    let out = dir.path().join("out.csv");
    let summary = dir.path().join("summary.json");
    let output = aggregate(
        &[
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--summary".as_ref(),
            summary.as_os_str(),
        ],
        None,
    );
    assert_success(&output, "file");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("the summary file")).expect("JSON");
    let input_len = std::fs::metadata(&input).expect("metadata").len();
    let output_len = std::fs::metadata(&out).expect("metadata").len();
    assert_eq!(json["rows_read"], 7, "{json}");
    assert_eq!(json["rows_skipped"], 0, "{json}");
    assert_eq!(json["groups_written"], 4, "{json}");
    assert_eq!(json["input_bytes"], input_len, "{json}");
    assert_eq!(json["output_bytes"], output_len, "{json}");
    assert_eq!(json["invalid_samples"], serde_json::json!([]), "{json}");
    assert!(
        json["elapsed_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{json}"
    );
}

#[test]
fn skip_invalid_counts_reports_and_summarizes() {
    let dir = temp_dir();
    let input = dir.path().join("in.csv");
    let out = dir.path().join("out.csv");
    let summary = dir.path().join("summary.json");
    std::fs::write(
        &input,
        "Song,Date,Number of Plays\nB,2020-01-01,5\nA,2020-01-01,x\nB,2020-01-01,1\nA,2021-02-29,3\nA,2020-01-02,2\n",
    )
    .expect("write");
    let output = aggregate(
        &[
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--skip-invalid".as_ref(),
            "--summary".as_ref(),
            summary.as_os_str(),
        ],
        None,
    );
    assert_success(&output, "file");
    assert_eq!(
        std::fs::read_to_string(&out).expect("read"),
        "Song,Date,Number of Plays\nA,2020-01-02,2\nB,2020-01-01,6\n"
    );
    let first = r#"line 3, field "Number of Plays": "x" is not a non-negative integer"#;
    let second = r#"line 5, field "Date": "2021-02-29" is not a real calendar date"#;
    let text = stderr(&output);
    assert!(text.contains("skipped 2 invalid rows"), "{text}");
    assert!(text.contains(first) && text.contains(second), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).expect("the summary file")).expect("JSON");
    assert_eq!(json["rows_read"], 5, "{json}");
    assert_eq!(json["rows_skipped"], 2, "{json}");
    assert_eq!(json["groups_written"], 2, "{json}");
    assert_eq!(
        json["invalid_samples"],
        serde_json::json!([first, second]),
        "{json}"
    );
}

#[test]
fn generated_data_gives_the_reference_result_in_every_mode() {
    let dir = temp_dir();
    let spill = dir.path().join("spill");
    std::fs::create_dir(&spill).expect("mkdir");
    // About 10 MB: more than one block of the stream reader, so records (some with quoted
    // line breaks) straddle block boundaries.
    let rows = 300_000;
    let (input, data) = generated_input(dir.path(), rows, true);
    let expected = fixtures::reference::aggregate(&data);
    let modes: [&[&str]; 3] = [
        &[],
        &["--memory-limit", "256K", "--threads", "1"],
        &["--memory-limit", "1M", "--threads", "2"],
    ];
    for mode in modes {
        let out = dir.path().join("out.csv");
        let summary = dir.path().join("summary.json");
        let mut args = vec![
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--temp-dir".as_ref(),
            spill.as_os_str(),
            "--summary".as_ref(),
            summary.as_os_str(),
        ];
        args.extend(mode.iter().map(OsStr::new));
        let output = aggregate(&args, None);
        assert_success(&output, &format!("{mode:?}"));
        let written = std::fs::read(&out).expect("the output");
        assert_output(&written, &expected, &format!("{mode:?}"));
        assert_eq!(
            entries(&spill),
            Vec::<String>::new(),
            "{mode:?}: spill files left"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("JSON");
        assert_eq!(json["rows_read"], rows, "{mode:?}");
        if !mode.is_empty() {
            assert!(
                json["spilled_runs"].as_u64().is_some_and(|runs| runs > 0),
                "{mode:?}: a {} byte input in a small memory budget must spill: {json}",
                data.len()
            );
            assert!(
                json["spilled_bytes"]
                    .as_u64()
                    .is_some_and(|bytes| bytes > 0),
                "{mode:?}: {json}"
            );
        }
    }
    assert_piped_output(&["--memory-limit", "64K"], &data, &expected);
}

#[test]
fn quoted_line_breaks_that_look_like_records_are_not_record_starts() {
    let dir = temp_dir();
    let input = dir.path().join("input.csv");
    // Quoted songs whose lines look like records (and like quoted fields), repeated over
    // ~12 MB so that any block or chunk boundary lands inside such a field.
    let mut data = HEADER.as_bytes().to_vec();
    for i in 0..300_000u64 {
        let row = match i % 3 {
            0 => format!("\"Evil {i}\nFake {i},2020-01-01,5\nTail\",2020-01-02,{i}\n"),
            1 => format!(
                "\"Start\n\"\"Quoted,\"\" {}\n\"\",2020-01-01,7\nX\",2020-01-03,1\n",
                i % 50
            ),
            _ => format!("Plain {},2020-01-0{},2\n", i % 100, i % 9 + 1),
        };
        data.extend_from_slice(row.as_bytes());
    }
    std::fs::write(&input, &data).expect("write");
    let expected = fixtures::reference::aggregate(&data);
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("out-{threads}.csv"));
        let output = aggregate_with_threads(&input, &out, threads);
        assert_success(&output, &format!("--threads {threads}"));
        let written = std::fs::read(&out).expect("the output");
        assert_output(&written, &expected, &format!("--threads {threads}"));
    }
    assert_piped_output(&[], &data, &expected);
}

/// `rows` plain rows `Song <i % 1000>,2020-01-01,<i % 7>`.
fn plain_rows(rows: u64) -> String {
    (0..rows)
        .map(|i| format!("Song {},2020-01-01,{}\n", i % 1000, i % 7))
        .collect()
}

#[test]
fn an_unclosed_quote_deep_in_a_large_file_is_reported_at_its_line() {
    let dir = temp_dir();
    let input = dir.path().join("input.csv");
    let rows = plain_rows(200_000);
    let data = format!("{HEADER}{rows}\"Unclosed,2020-01-01,5\n{rows}");
    std::fs::write(&input, &data).expect("write");
    let out = dir.path().join("out.csv");
    let message = "error: invalid input: line 200002, field \"Song\": \"\\\"Unclosed,2020-01-01,5\" has an opening double quote that is never closed";
    for threads in ["1", "2"] {
        let output = aggregate_with_threads(&input, &out, threads);
        assert_error(
            &output,
            EXIT_INVALID_INPUT,
            message,
            &format!("--threads {threads}"),
        );
        assert!(!out.exists());
    }
    let piped = aggregate(&["-", "-o", "-"], Some(data.as_bytes()));
    assert_error(&piped, EXIT_INVALID_INPUT, message, "stdin");
    assert!(piped.stdout.is_empty());
}

#[test]
fn a_song_name_of_two_mib_is_aggregated() {
    let dir = temp_dir();
    let input = dir.path().join("input.csv");
    let rows = plain_rows(200_000);
    let long_name = "x".repeat(2 << 20);
    let data =
        format!("{HEADER}{rows}{long_name},2020-01-01,1\n{rows}\"{long_name}\",2020-01-01,2\n");
    std::fs::write(&input, &data).expect("write");
    let expected = fixtures::reference::aggregate(data.as_bytes());
    let out = dir.path().join("out.csv");
    for threads in ["1", "2"] {
        let output = aggregate_with_threads(&input, &out, threads);
        assert_success(&output, &format!("--threads {threads}"));
        let written = std::fs::read(&out).expect("the output");
        assert_output(&written, &expected, &format!("--threads {threads}"));
    }
    assert_piped_output(&[], data.as_bytes(), &expected);
}

#[test]
fn an_error_after_spilling_removes_the_spilled_runs() {
    let dir = temp_dir();
    let spill = dir.path().join("spill");
    std::fs::create_dir(&spill).expect("mkdir");
    let rows = 60_000;
    let (input, mut data) = generated_input(dir.path(), rows, false);
    data.extend_from_slice(b"Late Song,2020-01-01,-3\n");
    std::fs::write(&input, &data).expect("write");
    let out = dir.path().join("out.csv");
    let output = aggregate(
        &[
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--temp-dir".as_ref(),
            spill.as_os_str(),
            "--memory-limit".as_ref(),
            "64K".as_ref(),
        ],
        None,
    );
    let line = rows + 2;
    assert_error(
        &output,
        EXIT_INVALID_INPUT,
        &format!(
            "error: invalid input: line {line}, field \"Number of Plays\": \"-3\" is not a non-negative integer"
        ),
        "file",
    );
    assert!(!out.exists());
    assert_eq!(entries(&spill), Vec::<String>::new());
    assert_eq!(entries(dir.path()), ["input.csv", "spill"]);
}

#[test]
fn ctrl_c_exits_130_without_output() {
    let dir = temp_dir();
    let spill = dir.path().join("spill");
    std::fs::create_dir(&spill).expect("mkdir");
    let out = dir.path().join("out.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_processor"))
        .args(["aggregate", "-", "--memory-limit", "64K", "--temp-dir"])
        .arg(&spill)
        .arg("-o")
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the processor binary starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let block = fixtures::generate(Spec {
        length: Length::Rows(50_000),
        ..Spec::default()
    })
    .expect("a valid spec");
    let rows = &block[HEADER.len()..];
    // More than a pipe buffer: once written, the process is reading, so its handler is set.
    stdin
        .write_all(&block)
        .expect("the process reads its input");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    // Keep feeding (bounded) until the process notices and stops reading.
    let mut stopped = false;
    for _ in 0..2_000 {
        if stdin.write_all(rows).is_err() {
            stopped = true;
            break;
        }
    }
    drop(stdin);
    let output = child.wait_with_output().expect("the process ends");
    assert!(stopped, "the process kept reading after Ctrl-C");
    assert_error(&output, EXIT_INTERRUPTED, "error: cancelled", "Ctrl-C");
    assert!(!out.exists());
    assert_eq!(entries(dir.path()), ["spill"]);
    assert_eq!(entries(&spill), Vec::<String>::new());
}
