//! When to try a call again and how long to wait first: capped exponential backoff with
//! full jitter (AWS's recommendation), a bounded number of attempts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Retry settings of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included; 1 disables retries.
    pub max_attempts: u32,
    /// The backoff before retry n is uniformly random in `[0, min(max_delay, base_delay * 2^n))`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Eight attempts spread over up to about a minute: EC2's throttling buckets refill
    /// within seconds, and a build that gives up early wastes the instance it already runs.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The pause before attempt `next_attempt` (2 = the first retry).
    pub(crate) fn backoff(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(random_u64() % nanos)
    }
}

/// Jitter only needs to de-synchronise clients, not be unpredictable: std's per-process
/// random hasher keys plus a counter are enough, without a rand dependency.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..200 {
            assert!(p.backoff(2) < Duration::from_millis(100));
            assert!(p.backoff(4) < Duration::from_millis(400));
            assert!(p.backoff(40) < Duration::from_secs(1));
        }
        // Full jitter: over many draws the larger ceiling yields larger pauses.
        let sum = |n| (0..500).map(|_| p.backoff(n).as_micros()).sum::<u128>();
        assert!(sum(5) > sum(2));
        let zero = RetryPolicy {
            base_delay: Duration::ZERO,
            ..p
        };
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }
}
