//! The one backoff of the workspace: exponential with full jitter, and the random spread before the
//! first attempt after a lost link.
//!
//! Full jitter (a uniform draw in `[0, min(cap, base × 2^(n-1))]`) is what keeps a fleet of
//! clients that lost the same gateway from coming back in lock-step; the first attempt after
//! a loss gets its own spread so the crash of one gateway does not become a synchronized
//! login storm on the survivors.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry; later ceilings double from here.
    pub base: Duration,
    /// No ceiling grows past this, so a long outage still retries at a bounded pace.
    pub cap: Duration,
}

impl Backoff {
    /// The upper bound of the delay before retry number `retry` (1-based): `base × 2^(retry-1)`,
    /// capped.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// A delay drawn uniformly from `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        uniform(self.ceiling(retry), rng)
    }
}

/// A delay drawn uniformly from `[0, max]`.
pub fn uniform(max: Duration, rng: &mut impl Rng) -> Duration {
    let ms = max.as_millis().min(u64::MAX as u128) as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const B: Backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(30),
    };

    #[test]
    fn ceiling_doubles_then_caps() {
        let got: Vec<u64> = (1..=9).map(|n| B.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(B.ceiling(0), Duration::from_millis(500));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_covers_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<Duration> = (0..2000).map(|_| B.delay(3, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(2)));
        // Both halves of [0, 2 s] are hit: the delay is not "ceiling plus a little noise".
        assert!(draws.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(1800)));
        let mean = draws.iter().map(|d| d.as_millis()).sum::<u128>() / draws.len() as u128;
        assert!((800..1200).contains(&mean), "mean {mean} ms");
    }

    #[test]
    fn zero_spread_is_zero() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(uniform(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
