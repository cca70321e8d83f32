//! Exponential backoff with full jitter, never shorter than a server's `Retry-After`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling for attempt `n` (1-based): `initial * 2^(n-1)`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Full jitter (uniform in 0..=ceiling) spreads retries of many batches so
    /// they do not hit the API together; `Retry-After` is a floor.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jitter = Duration::from_nanos(rng.random_range(0..=ceiling.as_nanos() as u64));
        match retry_after {
            Some(floor) => floor + jitter.min(self.initial),
            None => jitter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn b() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        assert_eq!(b().ceiling(1), Duration::from_millis(100));
        assert_eq!(b().ceiling(2), Duration::from_millis(200));
        assert_eq!(b().ceiling(4), Duration::from_millis(800));
        assert_eq!(b().ceiling(10), Duration::from_secs(5));
        assert_eq!(b().ceiling(1000), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_ceiling_and_spreads() {
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| b().delay(3, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(
            *max - *min > Duration::from_millis(200),
            "full jitter spreads: {min:?}..{max:?}"
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 1..20 {
            let d = b().delay(attempt, Some(Duration::from_secs(2)), &mut rng);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2100),
                "{d:?}"
            );
        }
    }
}
