//! Named pipes, for the tests of inputs and outputs that are not regular files.

use std::path::Path;
use std::process::Command;

/// Makes a FIFO at `path` (with `mkfifo`, which needs no privileges).
pub fn make_fifo(path: &Path) {
    let made = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}
