//! One-line error messages with their causes (reqwest's and lapin's Display alone hide them).

/// `err` and its sources joined by `: `, skipping a source already quoted by the text before it.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_appended_once() {
        let io = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(io).context("IO error: connection refused");
        let err = err.context("cannot connect");
        assert_eq!(
            error_chain(err.as_ref()),
            "cannot connect: IO error: connection refused"
        );
    }
}
