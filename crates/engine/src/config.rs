//! Engine configuration.

use std::path::PathBuf;

/// How the engine runs. `Config::default()` is strict, uses all cores and 1 GiB of memory.
#[derive(Debug, Clone)]
pub struct Config {
    /// Budget in bytes for the aggregation maps and buffers; above it sorted runs spill to disk.
    pub memory_limit: u64,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Directory for spilled runs and other temporary files; `None` is the system temp dir.
    pub temp_dir: Option<PathBuf>,
    /// Skip invalid rows (counting and reporting them) instead of failing on the first one.
    pub skip_invalid: bool,
    /// How many skipped rows [`crate::Summary::invalid_samples`] keeps.
    pub max_reported_invalid: usize,
    /// Input bytes per unit of parallel work (default 4 MiB). Tiny values only serve tests.
    pub block_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            memory_limit: 1 << 30,
            threads: 0,
            temp_dir: None,
            skip_invalid: false,
            max_reported_invalid: 10,
            block_bytes: 4 << 20,
        }
    }
}

impl Config {
    /// Threads to use: `threads`, or the number of cores when 0.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The temporary directory to use.
    pub fn effective_temp_dir(&self) -> PathBuf {
        self.temp_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// Parses a byte size such as `256M`, `2G`, `512MiB`, `1.5g` or `1048576`.
/// Suffixes are binary multiples (K = 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number such as 256M or 2G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {text:?}"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-5M").is_err());
    }
}
