//! What one claim or prune is for: on one server every organization; under Citus the
//! organizations of one shard placed on this node (sql: _local_scopes), as Citus locks rows
//! within one shard only.
use crate::ratelimit;
use pgrx::datum::Uuid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData, SpiResult};
use std::cell::RefCell;
use std::collections::HashSet;

/// Selects the scopes: every shard of this node with the organizations that have due work
/// (true), or with all its organizations (false).
pub const SCOPES: &str = "SELECT shard, organizations::text[] FROM ai_agents._local_scopes($1)";

pub struct Scope {
    /// The shard of tasks; None on one server.
    pub shard: Option<i64>,
    /// None: every organization; empty: none has work.
    pub organizations: Option<Vec<String>>,
}

impl Scope {
    /// A row of SCOPES.
    pub fn decode(row: &SpiHeapTupleData) -> SpiResult<Scope> {
        Ok(Scope {
            shard: row.get(1)?,
            organizations: row.get(2)?,
        })
    }

    pub fn has_work(&self) -> bool {
        self.organizations
            .as_ref()
            .is_none_or(|orgs| !orgs.is_empty())
    }
}

thread_local! {
    /// The shards on this node whose calls of the last minute the limiter has counted.
    static COUNTED: RefCell<HashSet<Option<i64>>> = RefCell::new(HashSet::new());
}

/// Counts the calls of the last minute of the shards that are new on this node (all of them
/// when the worker starts), which another node's limiter admitted (or this one, before a
/// restart): an organization's windows hold across a shard move. Counted once per shard, and
/// again only if it leaves and comes back.
pub fn count_calls_of_new_shards(client: &SpiClient, scopes: &[Scope]) -> SpiResult<()> {
    let placed: HashSet<Option<i64>> = scopes.iter().map(|scope| scope.shard).collect();
    let new: Vec<Option<i64>> =
        COUNTED.with_borrow(|counted| placed.difference(counted).copied().collect());
    COUNTED.set(placed);
    for shard in new {
        let calls = client
            .select(
                "SELECT organization_id, agent_id, age_us FROM ai_agents._recent_claims($1)",
                None,
                &[shard.into()],
            )?
            .map(|row| {
                let age = row
                    .get::<i64>(3)?
                    .map_or(0, |age| u64::try_from(age).unwrap_or(0));
                Ok(row
                    .get::<Uuid>(1)?
                    .zip(row.get::<Uuid>(2)?)
                    .map(|(org, agent)| (org, agent, age)))
            })
            .collect::<SpiResult<Option<Vec<_>>>>()?
            .unwrap_or_default();
        if let Err(e) = ratelimit::count_past_calls(&calls) {
            warning!("ai_agents worker: the recent calls of a shard could not be counted: {e}");
        }
    }
    Ok(())
}
