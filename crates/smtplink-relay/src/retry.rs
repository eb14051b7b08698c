//! When to try a deferred recipient again, and when to give up.
//!
//! Exponential backoff from `first_retry`, doubling per attempt, capped at
//! `max_interval`; after `give_up` since arrival the recipient fails and
//! its sender gets a bounce. RFC 5321 4.5.4.1 suggests at least 30 minutes
//! between tries and 4-5 days before giving up; on an intermittent link a
//! shorter first retry serves better, so every figure is a setting.

use std::time::Duration;

/// The retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub first_retry: Duration,
    /// Longest delay between attempts.
    pub max_interval: Duration,
    /// Age after which a deferred recipient fails for good.
    pub give_up: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(5 * 60),
            max_interval: Duration::from_secs(4 * 60 * 60),
            give_up: Duration::from_secs(5 * 24 * 60 * 60),
        }
    }
}

impl RetryPolicy {
    /// The next attempt (unix seconds) after `attempts` failed tries, or
    /// `None` when the message, arrived at `arrived`, should be given up.
    pub fn next_attempt(&self, attempts: u32, arrived: u64, now: u64) -> Option<u64> {
        let deadline = arrived.saturating_add(self.give_up.as_secs());
        if now >= deadline {
            return None;
        }
        let doublings = attempts.saturating_sub(1).min(32);
        let delay = self
            .first_retry
            .as_secs()
            .saturating_mul(1u64 << doublings)
            .min(self.max_interval.as_secs())
            .max(1);
        // One last try at the deadline rather than none after it.
        Some(now.saturating_add(delay).min(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps_then_gives_up() {
        let p = RetryPolicy {
            first_retry: Duration::from_secs(60),
            max_interval: Duration::from_secs(300),
            give_up: Duration::from_secs(3600),
        };
        assert_eq!(p.next_attempt(1, 0, 0), Some(60));
        assert_eq!(p.next_attempt(2, 0, 100), Some(220));
        assert_eq!(p.next_attempt(3, 0, 100), Some(340));
        assert_eq!(p.next_attempt(4, 0, 100), Some(400));
        assert_eq!(p.next_attempt(40, 0, 100), Some(400));
        assert_eq!(p.next_attempt(5, 0, 3500), Some(3600));
        assert_eq!(p.next_attempt(5, 0, 3600), None);
    }
}
