//! Bearer tokens (`API_TOKEN`, `WORKER_TOKEN`): kept as SHA-256 digests only and compared in
//! constant time, so that neither a log nor the timing of an answer gives a token away.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// A set of accepted tokens; empty when none is configured.
#[derive(Clone, Default)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    /// The tokens of a comma-separated list; blanks around them and empty items are ignored.
    pub fn parse(list: &str) -> Tokens {
        let digests = list
            .split(',')
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .map(|token| digest(token.as_bytes()))
            .collect();
        Tokens { digests }
    }

    /// No token configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Takes the same time whichever token matches,
    /// and whatever the length of `presented`: digests of equal length are compared, every
    /// one of them, without stopping early.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let matched = self.digests.iter().fold(Choice::from(0), |matched, known| {
            matched | known.ct_eq(&presented)
        });
        matched.into()
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_token_and_nothing_else_is_accepted() {
        let tokens = Tokens::parse(" first , second,,");
        assert!(tokens.accepts(b"first"));
        assert!(tokens.accepts(b"second"));
        for wrong in [
            &b""[..],
            b"firs",
            b"first ",
            b"First",
            b"first,second",
            b",",
        ] {
            assert!(!tokens.accepts(wrong), "{wrong:?}");
        }
        assert!(!Tokens::parse("").accepts(b""));
        assert!(Tokens::parse(" , ").is_empty());
    }

    #[test]
    fn debug_output_shows_no_token() {
        let shown = format!("{:?}", Tokens::parse("s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
