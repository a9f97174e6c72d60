//! Per-object exponential backoff: pure arithmetic, no timers.

use std::time::Duration;

/// Exponential backoff from `initial` doubling up to `max`.
///
/// ```
/// use std::time::Duration;
/// use provisioner_core::backoff::Backoff;
/// let b = Backoff::default();
/// assert_eq!(b.delay(1), Duration::from_secs(1));
/// assert_eq!(b.delay(2), Duration::from_secs(2));
/// assert_eq!(b.delay(50), Duration::from_secs(300));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s to 5 min, the defaults production users of the Go library settle on.
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// The delay before the next attempt after `failures` consecutive
    /// failures (0 means no failure yet: no delay).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(63);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        let nanos = (self.initial.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max).max(self.initial.min(self.max))
    }

    /// [`delay`](Backoff::delay) spread by up to ±`spread` (0.0–1.0) using
    /// `unit` (a number in 0.0..1.0), so objects that failed together do not
    /// retry together. Never above `max` or below zero.
    pub fn delay_jittered(&self, failures: u32, spread: f64, unit: f64) -> Duration {
        let base = self.delay(failures).as_secs_f64();
        let factor = 1.0 + spread.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_failure_waits_the_initial_delay_and_doubling_stops_at_max() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1) };
        let delays: Vec<_> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    proptest! {
        #[test]
        fn delay_stays_within_bounds(initial_ms in 1u64..10_000, max_ms in 1u64..1_000_000, failures in 1u32..u32::MAX) {
            let b = Backoff { initial: Duration::from_millis(initial_ms), max: Duration::from_millis(max_ms) };
            let d = b.delay(failures);
            prop_assert!(d <= b.max);
            prop_assert!(d >= b.initial.min(b.max));
        }

        #[test]
        fn delay_never_shrinks_as_failures_grow(failures in 1u32..200) {
            let b = Backoff::default();
            prop_assert!(b.delay(failures + 1) >= b.delay(failures));
        }

        #[test]
        fn jitter_stays_within_the_spread_and_max(failures in 1u32..100, spread in 0.0f64..1.0, unit in 0.0f64..1.0) {
            let b = Backoff::default();
            let d = b.delay_jittered(failures, spread, unit).as_secs_f64();
            let base = b.delay(failures).as_secs_f64();
            prop_assert!(d <= b.max.as_secs_f64() + 1e-9);
            prop_assert!(d >= base * (1.0 - spread) - 1e-9);
        }
    }
}
