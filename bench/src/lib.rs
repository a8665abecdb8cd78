//! Data sets of the criterion benchmarks (`benches/engine.rs`), generated in memory by the
//! `fixtures` generator. The side-by-side comparison with DuckDB and Polars is `compare.sh`.

use fixtures::{Length, Skew, Spec};

/// Default size of each benchmark data set; `BENCH_SIZE` (e.g. `64M`) overrides it.
pub const DEFAULT_SIZE: u64 = 24 << 20;

/// A generated benchmark input.
pub struct Dataset {
    /// Short name used in benchmark ids.
    pub name: &'static str,
    pub spec: Spec,
}

impl Dataset {
    /// The CSV bytes.
    pub fn generate(&self) -> Vec<u8> {
        fixtures::generate(self.spec.clone()).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

/// The data set size: `BENCH_SIZE` when set and valid, else [`DEFAULT_SIZE`].
pub fn dataset_size() -> Result<u64, String> {
    match std::env::var("BENCH_SIZE") {
        Ok(text) => engine::parse_size(&text).map_err(|e| format!("BENCH_SIZE: {e}")),
        Err(_) => Ok(DEFAULT_SIZE),
    }
}

/// The data sets, each about `bytes` long: `skewed` (100k songs x 30 days, Zipf: few large
/// groups, the common case) and `wide` (2M songs x 365 days, uniform: nearly every row its
/// own group, the worst case for memory).
pub fn datasets(bytes: u64) -> Vec<Dataset> {
    vec![
        Dataset {
            name: "skewed",
            spec: Spec {
                length: Length::Bytes(bytes),
                songs: 100_000,
                days: 30,
                skew: Skew::Zipf,
                ..Spec::default()
            },
        },
        Dataset {
            name: "wide",
            spec: Spec {
                length: Length::Bytes(bytes),
                songs: 2_000_000,
                days: 365,
                skew: Skew::Uniform,
                ..Spec::default()
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_have_the_requested_size() {
        for dataset in datasets(100_000) {
            let data = dataset.generate();
            assert!((100_000..100_200).contains(&data.len()), "{}", dataset.name);
        }
    }
}
