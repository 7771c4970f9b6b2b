//! Failure classification and retry backoff: plain functions, no Postgres.
use std::time::Duration;

/// Whether a failed LLM call is worth retrying. An explicit verdict from the caller wins; a
/// call that got no HTTP status (timeout, connection refused or reset) is transient; so are
/// 408 Request Timeout, 409 Conflict, 425 Too Early, 429 Too Many Requests and every 5xx
/// (including Anthropic's 529 Overloaded). Any other 4xx - bad request, bad key, forbidden,
/// unknown model - fails the same way every time.
pub fn is_transient(http_status: Option<i32>, permanent: Option<bool>) -> bool {
    if let Some(permanent) = permanent {
        return !permanent;
    }
    match http_status {
        None => true,
        Some(408 | 409 | 425 | 429) => true,
        Some(400..=499) => false,
        Some(_) => true,
    }
}

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
    fn status_classification() {
        for status in [
            None,
            Some(408),
            Some(409),
            Some(425),
            Some(429),
            Some(500),
            Some(502),
            Some(503),
            Some(529),
        ] {
            assert!(is_transient(status, None), "{status:?} should be transient");
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(
                !is_transient(Some(status), None),
                "{status} should be permanent"
            );
        }
    }

    #[test]
    fn an_explicit_verdict_wins() {
        assert!(!is_transient(Some(429), Some(true)));
        assert!(is_transient(Some(400), Some(false)));
        assert!(!is_transient(None, Some(true)));
    }

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
