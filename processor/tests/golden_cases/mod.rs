//! The golden cases of `fixtures/golden`: each input with its expected output or the exact
//! error message (as the CLI prints it after `error: `).

use std::path::{Path, PathBuf};

/// What a golden input must give.
pub enum Expected {
    /// The exact output bytes.
    Output(Vec<u8>),
    /// The exact error message.
    Error(String),
}

/// One golden case.
pub struct Case {
    /// `seed`, `valid/<name>` or `invalid/<name>`.
    pub name: String,
    pub input: PathBuf,
    pub expected: Expected,
}

impl Case {
    /// The expected message when the case is invalid.
    pub fn error(&self) -> Option<&str> {
        match &self.expected {
            Expected::Error(message) => Some(message),
            Expected::Output(_) => None,
        }
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The inputs `<name>.csv` of a golden directory, sorted.
fn inputs(dir: &Path) -> Vec<(String, PathBuf)> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut inputs: Vec<(String, PathBuf)> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let stem = name.strip_suffix(".csv")?;
            (!stem.ends_with(".expected")).then(|| (stem.to_owned(), path.clone()))
        })
        .collect();
    inputs.sort();
    inputs
}

/// The seed example of the issue.
pub fn seed() -> Case {
    let dir = fixtures::golden_dir().join("seed");
    Case {
        name: "seed".into(),
        input: dir.join("input.csv"),
        expected: Expected::Output(read(&dir.join("expected.csv"))),
    }
}

/// The seed example and every `valid/` case.
pub fn valid() -> Vec<Case> {
    let dir = fixtures::golden_dir().join("valid");
    let mut cases = vec![seed()];
    for (stem, input) in inputs(&dir) {
        cases.push(Case {
            name: format!("valid/{stem}"),
            expected: Expected::Output(read(&dir.join(format!("{stem}.expected.csv")))),
            input,
        });
    }
    assert!(cases.len() > 20, "only {} valid golden cases", cases.len());
    cases
}

/// Every `invalid/` case.
pub fn invalid() -> Vec<Case> {
    let dir = fixtures::golden_dir().join("invalid");
    let cases: Vec<Case> = inputs(&dir)
        .into_iter()
        .map(|(stem, input)| {
            let message = String::from_utf8(read(&dir.join(format!("{stem}.error"))))
                .expect("error files are UTF-8");
            Case {
                name: format!("invalid/{stem}"),
                expected: Expected::Error(message.trim_end_matches('\n').to_owned()),
                input,
            }
        })
        .collect();
    assert!(
        cases.len() > 25,
        "only {} invalid golden cases",
        cases.len()
    );
    cases
}

/// The line of a row-level error (`invalid input: line N...` with N > 1): an error that
/// `--skip-invalid` skips instead of failing.
pub fn skippable_line(message: &str) -> Option<u64> {
    let rest = message.strip_prefix("invalid input: line ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&line| line > 1)
}

/// Where two outputs first differ, for failure messages.
pub fn first_difference(actual: &[u8], expected: &[u8]) -> String {
    let actual_text = String::from_utf8_lossy(actual);
    let expected_text = String::from_utf8_lossy(expected);
    let mut actual_lines = actual_text.split_inclusive('\n');
    let mut expected_lines = expected_text.split_inclusive('\n');
    for number in 1.. {
        match (actual_lines.next(), expected_lines.next()) {
            (None, None) => break,
            (a, e) if a == e => continue,
            (a, e) => return format!("line {number}: got {a:?}, expected {e:?}"),
        }
    }
    "no difference".into()
}

/// Directory entries, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readable directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
