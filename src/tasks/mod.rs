//! The task engine: enqueue, claim, complete, fail, heartbeat, cancel, run-now, pause/resume,
//! lease rescue and pruning. The statements are in sql/tasks.sql; the decisions that are not
//! data access (failure classification, backoff) are plain Rust in `retry`.
mod retry;

use crate::error::{Error, OrReport};
use crate::settings::{RETRY_BASE_DELAY_S, RETRY_MAX_DELAY_S};
use pgrx::prelude::*;
use std::time::Duration;

pgrx::extension_sql_file!(
    "../../sql/tasks.sql",
    name = "tasks",
    requires = [
        "schema",
        "agents",
        schedule::next_run_time,
        schedule::validate_schedule,
        failure_is_transient,
        retry_delay
    ]
);

/// Whether a failure with this HTTP status (NULL: no response at all) should be retried;
/// `permanent` overrides the verdict when the caller knows better.
#[pg_extern(immutable, parallel_safe)]
fn failure_is_transient(http_status: Option<i32>, permanent: Option<bool>) -> bool {
    retry::is_transient(http_status, permanent)
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
    let delay = retry::retry_delay(
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
