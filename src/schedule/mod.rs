//! Schedules: cron expressions read as crontab(5) and pg_cron read them, in IANA time zones.
//! The math is in `cron` (plain Rust); this file is the SQL boundary.
mod cron;

use crate::error::{Error, OrReport};
use chrono::{DateTime, Utc};
use pgrx::prelude::*;

pub use cron::{parse_timezone, Schedule};

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

fn to_chrono(ts: TimestampWithTimeZone) -> Result<DateTime<Utc>, Error> {
    if !ts.is_finite() {
        return Err(Error::DatetimeOutOfRange(
            "an infinite timestamp has no next run time".into(),
        ));
    }
    let micros = pg_sys::TimestampTz::from(ts).saturating_add(PG_EPOCH_OFFSET_MICROS);
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| Error::DatetimeOutOfRange("timestamp out of range".into()))
}

fn to_postgres(ts: DateTime<Utc>) -> Result<TimestampWithTimeZone, Error> {
    TimestampWithTimeZone::try_from(ts.timestamp_micros() - PG_EPOCH_OFFSET_MICROS)
        .map_err(|_| Error::DatetimeOutOfRange(format!("next run time {ts} is out of range")))
}

/// Parses a schedule and its time zone, refusing expressions that can never fire.
pub fn checked_schedule(cron: &str, timezone: &str) -> Result<(Schedule, chrono_tz::Tz), Error> {
    let tz = parse_timezone(timezone).map_err(|e| Error::InvalidSchedule(e.to_string()))?;
    let schedule = Schedule::parse(cron).map_err(|e| Error::InvalidSchedule(e.to_string()))?;
    if schedule.next_after(Utc::now(), tz).is_none() {
        return Err(Error::InvalidSchedule(format!(
            "cron expression \"{cron}\" never fires"
        )));
    }
    Ok((schedule, tz))
}

/// The first fire time of `cron` strictly after `after`, read in `timezone`. Immutable: cron
/// math and the time zone rules compiled into the library.
#[pg_extern(immutable, parallel_safe)]
fn next_run_time(
    cron: &str,
    timezone: default!(&str, "'UTC'"),
    after: default!(TimestampWithTimeZone, "now()"),
) -> TimestampWithTimeZone {
    let (schedule, tz) = checked_schedule(cron, timezone).or_report();
    let after = to_chrono(after).or_report();
    let next = schedule
        .next_after(after, tz)
        .ok_or_else(|| {
            Error::InvalidSchedule(format!(
                "cron expression \"{cron}\" never fires after {after}"
            ))
        })
        .or_report();
    to_postgres(next).or_report()
}

/// Raises a clear error unless the (optional) cron expression and the time zone are valid.
#[pg_extern(stable, parallel_safe)]
fn validate_schedule(cron: Option<&str>, timezone: Option<&str>) {
    let timezone = timezone.unwrap_or("UTC");
    match cron {
        Some(cron) => {
            checked_schedule(cron, timezone).or_report();
        }
        None => {
            parse_timezone(timezone)
                .map_err(|e| Error::InvalidSchedule(e.to_string()))
                .or_report();
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
