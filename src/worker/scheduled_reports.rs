//! Scheduled reports: the worker asks build_due_reports (sql/idempotent/reports.sql) to build
//! what is due, a batch per turn, and learns when the next build falls due.
use super::statements;
use std::time::{Duration, Instant};

/// Longest wait between looks at the report schedules: a new or changed schedule is seen
/// within it (a look that finds nothing due is one read-only query).
const EVERY: Duration = Duration::from_secs(60);
/// Reports built in one turn at most: thousands due at once (a Monday morning) delay the
/// turn's claims by one batch, and the rest follow in the next turns.
const PER_TURN: i32 = 50;
/// How soon a failed look is tried again.
const AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Builds a batch of the scheduled reports whose time has come; returns when to look again.
pub fn run_once() -> Instant {
    let seconds = super::step("building scheduled reports", || {
        statements::value::<f64>(&format!(
            "SELECT extract(epoch FROM ai_agents.build_due_reports(now(), {PER_TURN}) - clock_timestamp())::float8"
        ))
    });
    let wait = match seconds {
        Some(Ok(seconds)) => seconds.map_or(EVERY, |s| {
            Duration::from_secs_f64(s.clamp(0.0, EVERY.as_secs_f64()))
        }),
        _ => AFTER_FAILURE,
    };
    Instant::now() + wait
}
