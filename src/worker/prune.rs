//! Pruning: history older than ai_agents.history_retention goes, one small batch at a time,
//! so that a big backlog never holds a long transaction.
use super::scope::{Scope, SCOPES};
use crate::settings::HISTORY_RETENTION_DAYS;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;
use std::time::{Duration, Instant};

/// How often the worker prunes history: one batch each time, the next one at once while
/// batches come back full.
const EVERY: Duration = Duration::from_secs(60);
const BATCH: i32 = 1000;

/// Deletes one batch of history older than ai_agents.history_retention per scope (under Citus,
/// per shard of this node); returns when to prune next.
pub fn run_once() -> Instant {
    let days = HISTORY_RETENTION_DAYS.get();
    if days <= 0 {
        return Instant::now() + EVERY;
    }
    let scopes = super::step("listing the shards to prune", || {
        Spi::connect(|client| {
            client
                .select(SCOPES, None, &[false.into()])?
                .map(|row| Scope::decode(&row))
                .collect::<SpiResult<Vec<Scope>>>()
        })
    });
    let mut full = false;
    let scopes = scopes.and_then(Result::ok).unwrap_or_default();
    for scope in scopes.into_iter().filter(Scope::has_work) {
        let deleted = super::step("pruning history", || {
            Spi::connect(|client| {
                client
                    .select(
                        "SELECT ai_agents.prune_history(make_interval(days => $1), $2, $3::uuid[])",
                        Some(1),
                        &[days.into(), BATCH.into(), scope.organizations.into()],
                    )?
                    .first()
                    .get_one::<i64>()
            })
        });
        full |= matches!(deleted, Some(Ok(Some(n))) if n >= i64::from(BATCH));
    }
    if full {
        Instant::now()
    } else {
        Instant::now() + EVERY
    }
}
