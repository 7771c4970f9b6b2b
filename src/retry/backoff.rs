//! Retry backoff: a plain function, no Postgres.
use std::time::Duration;

/// Delay before the next attempt after `attempt` attempts failed transiently.
///
/// Exponential with "equal jitter": the n-th delay lies in [d/2, d] with d = base * 2^(n-1),
/// and the cap applies after the jitter, so delays never shrink from one attempt to the next
/// while concurrent retries still spread out. `jitter` is a uniform draw from [0, 1]. A provider's Retry-After
/// is a floor: retrying earlier would only be refused again.
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exponent);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let delay = (full / 2 + (full / 2).mul_f64(jitter)).min(cap);
    retry_after.map_or(delay, |floor| delay.max(floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(10);
    const CAP: Duration = Duration::from_secs(3600);

    #[test]
    fn delays_double_within_their_jitter_band() {
        assert_eq!(retry_delay(1, BASE, CAP, None, 0.0), Duration::from_secs(5));
        assert_eq!(
            retry_delay(1, BASE, CAP, None, 1.0),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_delay(2, BASE, CAP, None, 0.0),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_delay(3, BASE, CAP, None, 0.5),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn delays_never_shrink_whatever_the_jitter() {
        let draws = [0.0, 0.13, 0.5, 0.77, 1.0];
        for attempt in 1..40 {
            let worst_now = draws
                .iter()
                .map(|&j| retry_delay(attempt, BASE, CAP, None, j))
                .max()
                .unwrap();
            let best_next = draws
                .iter()
                .map(|&j| retry_delay(attempt + 1, BASE, CAP, None, j))
                .min()
                .unwrap();
            assert!(
                worst_now <= best_next,
                "attempt {attempt}: {worst_now:?} > {best_next:?}"
            );
        }
    }

    #[test]
    fn the_cap_holds_and_huge_attempts_do_not_overflow() {
        assert_eq!(retry_delay(1000, BASE, CAP, None, 1.0), CAP);
        assert_eq!(retry_delay(u32::MAX, BASE, CAP, None, 0.0), CAP);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let long = Duration::from_secs(7200);
        assert_eq!(retry_delay(1, BASE, CAP, Some(long), 0.3), long);
        assert_eq!(
            retry_delay(3, BASE, CAP, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(40)
        );
    }

    #[test]
    fn bad_jitter_draws_are_clamped() {
        assert_eq!(
            retry_delay(1, BASE, CAP, None, f64::NAN),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_delay(1, BASE, CAP, None, 7.0),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_delay(1, BASE, CAP, None, -1.0),
            Duration::from_secs(5)
        );
    }
}
