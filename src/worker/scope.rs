//! What one claim or prune is for: on one server every organization; under Citus the
//! organizations of one shard placed on this node (sql: _local_scopes), as Citus locks rows
//! within one shard only.
use crate::ratelimit;
use pgrx::datum::Uuid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData, SpiResult};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// How long a shard that arrived on this node waits before its tasks are claimed here (not
/// on one server): a claim the node it left had under way when it moved (the move blocked it,
/// then it finished on the new placement) commits meanwhile, so that counting the shard's
/// recent calls sees it.
const ARRIVAL_GRACE: Duration = Duration::from_secs(2);

thread_local! {
    /// The shards on this node: when each arrived, or None once the limiter has counted its
    /// recent calls and its tasks are claimed here.
    static ARRIVED: RefCell<HashMap<Option<i64>, Option<Instant>>> = RefCell::new(HashMap::new());
}

/// The scopes whose tasks this node claims now. A shard new on this node (every one when the
/// worker starts) waits ARRIVAL_GRACE first; then the limiter counts the calls of its last
/// minute, which another node's limiter admitted (or this one's, before a restart), so that an
/// organization's windows hold across a shard move. Counted once per arrival.
pub fn settled(client: &SpiClient, scopes: Vec<Scope>) -> SpiResult<Vec<Scope>> {
    let now = Instant::now();
    let to_count: Vec<Option<i64>> = ARRIVED.with_borrow_mut(|arrived| {
        arrived.retain(|shard, _| scopes.iter().any(|scope| scope.shard == *shard));
        for scope in &scopes {
            arrived.entry(scope.shard).or_insert(Some(now));
        }
        arrived
            .iter()
            .filter(|(shard, at)| at.is_some_and(|at| shard.is_none() || now >= at + ARRIVAL_GRACE))
            .map(|(shard, _)| *shard)
            .collect()
    });
    for shard in to_count {
        count_recent_calls(client, shard)?;
        ARRIVED.with_borrow_mut(|arrived| arrived.insert(shard, None));
    }
    Ok(ARRIVED.with_borrow(|arrived| {
        scopes
            .into_iter()
            .filter(|scope| arrived.get(&scope.shard) == Some(&None))
            .collect()
    }))
}

/// How soon a shard that arrived will be claimed from, if one waits.
pub fn next_settled() -> Option<Duration> {
    let now = Instant::now();
    ARRIVED.with_borrow(|arrived| {
        arrived
            .values()
            .flatten()
            .map(|at| (*at + ARRIVAL_GRACE).saturating_duration_since(now))
            .min()
    })
}

fn count_recent_calls(client: &SpiClient, shard: Option<i64>) -> SpiResult<()> {
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
    Ok(())
}
