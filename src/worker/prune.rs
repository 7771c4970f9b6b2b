//! Pruning: history older than ai_agents.history_retention goes, one small batch at a time,
//! so that a big backlog never holds a long transaction.
use super::statements;
use crate::settings::HISTORY_RETENTION_DAYS;
use std::time::{Duration, Instant};

/// How often the worker prunes history: one batch each time, the next one at once while
/// batches come back full.
const EVERY: Duration = Duration::from_secs(60);
const BATCH: i64 = 1000;

/// Deletes one batch of history older than ai_agents.history_retention; returns when to prune
/// next.
pub fn run_once() -> Instant {
    let days = HISTORY_RETENTION_DAYS.get();
    if days <= 0 {
        return Instant::now() + EVERY;
    }
    let deleted = super::step("pruning history", || {
        statements::value::<i64>(&format!(
            "SELECT ai_agents.prune_history(make_interval(days => {days}), {BATCH})"
        ))
    });
    match deleted {
        Some(Ok(Some(n))) if n >= BATCH => Instant::now(),
        _ => Instant::now() + EVERY,
    }
}
