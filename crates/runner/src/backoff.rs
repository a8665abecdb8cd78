//! Exponential backoff: the delays between retries (the worker's callbacks and its RabbitMQ
//! reconnections, the task manager's RabbitMQ reconnections, the embedded runners' database
//! writes), from `backon`.

use std::time::Duration;

pub use backon::ExponentialBackoff;
use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays doubling from `first` up to `max`, without end. Build a new one to start again
/// from `first` (after a success).
pub fn exponential(first: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_again_when_built_again() {
        let first = Duration::from_millis(200);
        let max = Duration::from_secs(1);
        let delays: Vec<_> = exponential(first, max)
            .take(6)
            .map(|delay| delay.as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(exponential(first, max).next(), Some(first));
    }
}
