//! The generated hostile inputs of `fixtures::hostile` (binary garbage, 100 MiB lines, records
//! over the limit, multibyte characters at the block boundary, ...) through `processor
//! aggregate`: file to file, stdin to stdout, and file to file with `--skip-invalid`. Each run
//! must end (a deadline guards against hangs) with the stated output, or with exit code 65, a
//! message naming the line (and field) and no output file. The small hostile cases are golden
//! files, run by `golden.rs` and `cli.rs`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fixtures::hostile::{Hostile, Outcome, generated};

const EXIT_INVALID_INPUT: i32 = 65;
/// Longest a run may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(300);

/// What a finished run gave.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Waits for `child`, killing it and failing the test when it passes the deadline.
fn wait(mut child: Child, context: &str) -> Run {
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let (out, err) = (read_all(Box::new(out)), read_all(Box::new(err)));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the processor") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{context}: still running after {DEADLINE:?}: hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned(),
    }
}

/// Runs `processor aggregate ARGS`, feeding `stdin` when given.
fn aggregate<S: AsRef<OsStr>>(args: &[S], stdin: Option<&[u8]>, context: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_processor"))
        .arg("aggregate")
        .args(args)
        .arg("--quiet")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the processor binary starts");
    std::thread::scope(|scope| {
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // The process stops reading at the first error: a broken pipe is expected then.
            scope.spawn(move || pipe.write_all(data));
        }
        wait(child, context)
    })
}

/// Checks a run against the stated outcome; `output` is what the run wrote, if anything.
fn check(run: &Run, output: Option<Vec<u8>>, expected: &Outcome, context: &str) {
    match expected {
        Outcome::Output(expected) => {
            assert_eq!(run.code, Some(0), "{context}: {}", run.stderr);
            let output = output.unwrap_or_else(|| panic!("{context}: no output"));
            assert!(
                &output == expected,
                "{context}: output differs ({} bytes, expected {})",
                output.len(),
                expected.len()
            );
        }
        Outcome::Error(parts) => {
            assert_eq!(
                run.code,
                Some(EXIT_INVALID_INPUT),
                "{context}: {}",
                run.stderr
            );
            assert!(
                run.stderr.starts_with("error: "),
                "{context}: {}",
                run.stderr
            );
            for part in parts {
                assert!(
                    run.stderr.contains(part.as_str()),
                    "{context}: {:?} lacks {part:?}",
                    run.stderr
                );
            }
            assert!(
                run.stderr.len() < 1000,
                "{context}: a message of {} bytes",
                run.stderr.len()
            );
            assert_eq!(output, None, "{context}: output written on error");
        }
    }
}

/// The output file when it exists; fails when anything else was left in `dir`.
fn output_in(dir: &Path) -> Option<Vec<u8>> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .expect("output directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        names.iter().all(|name| name == "out.csv"),
        "files left behind: {names:?}"
    );
    std::fs::read(dir.join("out.csv")).ok()
}

fn run_case(case: &Hostile) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let input = dir.path().join("input.csv");
    std::fs::write(&input, &case.input).expect("write the input");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("output directory");
    let out = out_dir.join("out.csv");
    let file_args = [input.as_os_str(), "-o".as_ref(), out.as_os_str()];

    let context = format!("{} (file)", case.name);
    let run = aggregate(&file_args, None, &context);
    check(&run, output_in(&out_dir), &case.strict, &context);
    let _ = std::fs::remove_file(&out);

    let context = format!("{} (stdin to stdout)", case.name);
    let run = aggregate(&["-", "-o", "-"], Some(&case.input), &context);
    let written = (run.code == Some(0)).then(|| run.stdout.clone());
    if run.code != Some(0) {
        assert!(run.stdout.is_empty(), "{context}: output on error");
    }
    check(&run, written, &case.strict, &context);

    let context = format!("{} (file, --skip-invalid)", case.name);
    let mut args = file_args.to_vec();
    args.push("--skip-invalid".as_ref());
    let run = aggregate(&args, None, &context);
    check(&run, output_in(&out_dir), &case.skipping, &context);
}

#[test]
fn generated_hostile_inputs_through_the_cli() {
    let mut count = 0;
    for case in generated() {
        run_case(&case);
        count += 1;
    }
    assert!(count >= 13, "only {count} generated cases");
}
