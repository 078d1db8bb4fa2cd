//! When the next round comes: the interval with jitter, exponential backoff after
//! failures, and the registry's `Retry-After`.

use std::time::Duration;

/// Longest wait between rounds while errors repeat (unless the interval is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The wait before the next round: the interval ±10% after a good round; after `failures`
/// failed rounds in a row, the interval doubled per failure (capped at
/// max(interval, 10 min)) with the same jitter, and never shorter than `Retry-After`.
pub fn next_delay(
    interval: Duration,
    failures: u32,
    retry_after: Option<Duration>,
    rng: &mut impl rand::Rng,
) -> Duration {
    let base = if failures == 0 {
        interval
    } else {
        let factor = 2u32.saturating_pow(failures.min(16));
        interval
            .saturating_mul(factor)
            .min(MAX_BACKOFF.max(interval))
    };
    let jitter = rng.gen_range(0.9..=1.1);
    let delay = base.mul_f64(jitter);
    match retry_after {
        Some(wait) if wait > delay => wait,
        _ => delay,
    }
}

/// The wait after the first round. When the replicas share the checks (`period` longer
/// than `interval`), a random phase within the period, so replicas started together
/// spread over it; else as after any good round.
pub fn first_delay(interval: Duration, period: Duration, rng: &mut impl rand::Rng) -> Duration {
    if period > interval {
        period.mul_f64(rng.gen_range(0.0..1.0))
    } else {
        next_delay(period, 0, None, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_sharing_the_checks_start_at_a_random_phase_of_the_period() {
        let mut rng = rand::thread_rng();
        let interval = Duration::from_secs(60);
        let period = interval * 50;
        let delays: Vec<Duration> = (0..2000)
            .map(|_| first_delay(interval, period, &mut rng))
            .collect();
        assert!(delays.iter().all(|d| *d < period));
        // Spread over the whole period: some in each tenth of it.
        for tenth in 0..10 {
            let (low, high) = (period * tenth / 10, period * (tenth + 1) / 10);
            assert!(
                delays.iter().any(|d| *d >= low && *d < high),
                "nothing in tenth {tenth}"
            );
        }
        // A single replica: as today, the jittered interval.
        let single = first_delay(interval, interval, &mut rng);
        assert!(single >= Duration::from_secs(54) && single <= Duration::from_secs(66));
    }

    #[test]
    fn delay_is_the_jittered_interval_when_healthy() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let d = next_delay(Duration::from_secs(60), 0, None, &mut rng);
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let mut rng = rand::thread_rng();
        let second =
            |f| next_delay(Duration::from_secs(1), f, None, &mut rand::thread_rng()).as_secs_f64();
        assert!((1.8..=2.2).contains(&second(1)));
        assert!((7.2..=8.8).contains(&second(3)));
        let capped = next_delay(Duration::from_secs(1), 30, None, &mut rng);
        assert!(capped <= Duration::from_secs(660), "{capped:?}");
        let long_interval = next_delay(Duration::from_secs(3600), 5, None, &mut rng);
        assert!(
            long_interval >= Duration::from_secs(3240),
            "never faster than the interval: {long_interval:?}"
        );
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut rng = rand::thread_rng();
        assert_eq!(
            next_delay(
                Duration::from_secs(1),
                1,
                Some(Duration::from_secs(30)),
                &mut rng
            ),
            Duration::from_secs(30)
        );
        let d = next_delay(
            Duration::from_secs(60),
            0,
            Some(Duration::from_secs(1)),
            &mut rng,
        );
        assert!(
            d >= Duration::from_secs(54),
            "a short Retry-After does not shorten the interval"
        );
    }
}
