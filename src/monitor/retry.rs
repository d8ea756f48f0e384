//! Backoff: a delay that doubles per attempt up to a cap, with jitter so that
//! many alerts failing together do not retry together.

use std::time::Duration;

/// How often and how patiently a failing delivery is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_secs(2),
            max: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` (≥ 1) failed.
    /// `jitter` in `[0, 1)` spreads the delay over ±20 %.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        let raw = self.base.saturating_mul(doubling).min(self.max);
        raw.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
    }

    /// Whether another attempt is allowed after `attempts` were made.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mid = |a| p.delay(a, 0.5);
        assert_eq!(mid(1), Duration::from_millis(100));
        assert_eq!(mid(2), Duration::from_millis(200));
        assert_eq!(mid(4), Duration::from_millis(800));
        assert_eq!(mid(5), Duration::from_secs(1));
        assert_eq!(mid(1000), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(1600));
        assert!(p.delay(1, 0.999) < Duration::from_millis(2400));
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy::default();
        assert!(p.may_retry(7));
        assert!(!p.may_retry(8));
    }
}
