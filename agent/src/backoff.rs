//! Reconnect delays: exponential growth with full jitter.
//!
//! Full jitter (a uniform pick below an exponentially growing ceiling)
//! spreads a whole cluster of agents that lost supd at the same instant, so
//! a restarted supd is not hit by every agent in the same millisecond. The
//! pick never goes below `min`, so a supd that refuses instantly cannot make
//! an agent spin.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Failures since the last reset.
    attempt: u32,
}

impl Backoff {
    /// `min` is raised to at least 1ms and `max` to at least `min`, so the
    /// bounds are always a valid range.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay: `min * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 * 1ms is already ~25 days: past any sensible max.
        let factor = 1u32 << self.attempt.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait before the next attempt; each call widens the range
    /// for the one after.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if ceiling <= self.min {
            return self.min;
        }
        rng.random_range(self.min..=ceiling)
    }

    /// Called after a successful registration: the next outage starts again
    /// from short delays.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn ceiling_doubles_then_caps() {
        let mut b = Backoff::new(MIN, MAX);
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay_with(&mut rng);
        }
        assert_eq!(
            ceilings,
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn delays_stay_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let d = b.next_delay_with(&mut rng);
            assert!(
                d >= MIN && d <= ceiling && d <= MAX,
                "{d:?} not in [{MIN:?}, {ceiling:?}]"
            );
        }
        // Many failures later the ceiling is still the cap, not an overflow.
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), MAX);
        assert!(b.next_delay_with(&mut rng) <= MAX);
    }

    #[test]
    fn delays_are_jittered_across_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut b = Backoff::new(MIN, MAX);
        b.attempt = 20; // at the cap
        let samples: Vec<Duration> = (0..500)
            .map(|_| {
                b.attempt = 20;
                b.next_delay_with(&mut rng)
            })
            .collect();
        let lo = samples.iter().min().copied().expect("samples");
        let hi = samples.iter().max().copied().expect("samples");
        // Full jitter: picks land near both ends, not clustered at the cap.
        assert!(lo < Duration::from_secs(1), "lowest pick {lo:?}");
        assert!(hi > Duration::from_secs(9), "highest pick {hi:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), MAX);
        b.reset();
        assert_eq!(b.ceiling(), MIN);
        assert_eq!(b.next_delay(), MIN);
    }

    #[test]
    fn degenerate_bounds_are_repaired() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(), Duration::from_millis(1));
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(5));
    }
}
