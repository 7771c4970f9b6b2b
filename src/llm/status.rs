//! The one rule for "is this failure worth a retry", used by the worker (classify.rs) and by
//! `fail_task` through the SQL function `failure_is_transient` (src/retry).

/// Whether a failed LLM call is worth retrying. An explicit verdict from the caller wins; a
/// call that got no HTTP status (timeout, connection refused or reset) is transient; so are
/// 408 Request Timeout, 409 Conflict, 425 Too Early, 429 Too Many Requests and every 5xx
/// (including Anthropic's 529 Overloaded). Any other status fails the same way every time:
/// the other 4xx (bad request, bad key, forbidden, unknown model), and 1xx and 3xx, which a
/// retry does not change (redirects are not followed).
pub fn is_transient(http_status: Option<i32>, permanent: Option<bool>) -> bool {
    if let Some(permanent) = permanent {
        return !permanent;
    }
    match http_status {
        None => true,
        Some(408 | 409 | 425 | 429) => true,
        Some(500..) => true,
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Some(599),
        ] {
            assert!(is_transient(status, None), "{status:?} should be transient");
        }
        for status in [100, 101, 200, 301, 304, 400, 401, 403, 404, 422, 499] {
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
}
