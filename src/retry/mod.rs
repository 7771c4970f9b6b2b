//! Retries, as SQL functions for `fail_task` and callers of their own (sql/idempotent/tasks.sql):
//! whether a failure is worth a retry (the rule of `llm::is_transient`, shared with the worker)
//! and how long to wait (`backoff`, with the settings in force).
mod backoff;

use crate::error::{Error, OrReport};
use crate::settings::{RETRY_BASE_DELAY_S, RETRY_MAX_DELAY_S};
use pgrx::prelude::*;
use std::time::Duration;

/// Whether a failure with this HTTP status (NULL: no response at all) should be retried;
/// `permanent` overrides the verdict when the caller knows better.
#[pg_extern(immutable, parallel_safe)]
fn failure_is_transient(http_status: Option<i32>, permanent: Option<bool>) -> bool {
    crate::llm::is_transient(http_status, permanent)
}

/// The delay before the next attempt of a task that has failed `attempt` times, with the
/// backoff settings in force; `retry_after` (a provider's Retry-After) is a floor.
#[pg_extern(volatile, parallel_safe)]
fn retry_delay(
    attempt: i32,
    retry_after: default!(Option<Interval>, "NULL"),
    jitter: default!(f64, "random()"),
) -> Interval {
    let attempt = u32::try_from(attempt)
        .map_err(|_| {
            Error::InvalidParameter(format!("attempt must not be negative, got {attempt}"))
        })
        .or_report();
    let retry_after = retry_after
        .map(|interval| {
            Duration::try_from(interval).map_err(|_| {
                Error::InvalidParameter(format!("retry_after must not be negative, got {interval}"))
            })
        })
        .transpose()
        .or_report();
    let seconds = |setting: i32| Duration::from_secs(u64::try_from(setting).unwrap_or(1));
    let delay = backoff::retry_delay(
        attempt,
        seconds(RETRY_BASE_DELAY_S.get()),
        seconds(RETRY_MAX_DELAY_S.get()),
        retry_after,
        jitter,
    );
    Interval::try_from(delay)
        .map_err(|_| Error::InvalidParameter(format!("retry delay {delay:?} is out of range")))
        .or_report()
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
