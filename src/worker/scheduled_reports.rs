//! Scheduled reports: the worker asks build_due_reports (sql/idempotent/reports.sql) to build
//! what is due, and learns when the next build falls due.
use super::statements;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Longest wait between looks at the report schedules: a new or changed schedule is seen
/// within it (a look that finds nothing due is one read-only query).
const EVERY: Duration = Duration::from_secs(60);

/// Builds the scheduled reports whose time has come; returns when to look again.
pub fn run_once() -> Instant {
    let seconds = BackgroundWorker::transaction(|| {
        statements::value::<f64>(
            "SELECT extract(epoch FROM ai_agents.build_due_reports() - clock_timestamp())::float8",
        )
    })
    .unwrap_or_else(|e| error!("ai_agents worker: building scheduled reports failed: {e}"));
    let wait = seconds.map_or(EVERY, |s| {
        Duration::from_secs_f64(s.clamp(0.0, EVERY.as_secs_f64()))
    });
    Instant::now() + wait
}
