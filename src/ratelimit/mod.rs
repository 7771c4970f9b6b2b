//! Rate limits in shared memory: three tiers per LLM call (global, organization, agent) checked
//! as one decision, general keys for an app's own limits, pauses for a provider's Retry-After.
//! `window` is the counting algorithm and `table` the key table, both plain Rust; `shmem`
//! places the table in shared memory; this file is the SQL boundary.
// pgrx reads each function's SQL row type from its signature, so the row types cannot be
// type aliases.
#![allow(clippy::type_complexity)]

mod shmem;
mod table;
mod verdict;
mod window;

use crate::error::{Error, OrReport};
use crate::settings::{
    RATE_LIMIT_AGENT_PER_MINUTE, RATE_LIMIT_AGENT_TOKENS_PER_MINUTE, RATE_LIMIT_GLOBAL_PER_MINUTE,
    RATE_LIMIT_GLOBAL_TOKENS_PER_MINUTE, RATE_LIMIT_ORGANIZATION_PER_MINUTE,
    RATE_LIMIT_ORGANIZATION_TOKENS_PER_MINUTE,
};
use pgrx::datum::{Interval, Uuid};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use table::{Key, Limit, Outcome};

pub use shmem::SEGMENT;

pub const MINUTE_US: u64 = 60_000_000;
const TIERS: [&str; 3] = ["global", "organization", "agent"];
const TOKEN_TIERS: [&str; 3] = ["global_tokens", "organization_tokens", "agent_tokens"];

/// An override row's limits; None: the setting applies.
#[derive(Clone, Copy, Default)]
struct Override {
    calls: Option<u64>,
    tokens: Option<u64>,
}

/// This backend's copy of the override table, reloaded when another transaction changed it.
struct Overrides {
    generation: u64,
    organization: HashMap<[u8; 16], Override>,
    agent: HashMap<[u8; 16], Override>,
}

thread_local! {
    static OVERRIDES: RefCell<Option<Overrides>> = const { RefCell::new(None) };
}

fn load_overrides(generation: u64) -> Overrides {
    let mut overrides = Overrides {
        generation,
        organization: HashMap::new(),
        agent: HashMap::new(),
    };
    Spi::connect(|client| {
        let rows = client.select(
            // Read through to_jsonb: until ALTER EXTENSION ... UPDATE, 0.1.0's table has no
            // token column, and this library serves it all the same.
            "SELECT organization_id, agent_id, max_per_minute,
                    (to_jsonb(r) ->> 'max_tokens_per_minute')::int4
               FROM ai_agents.ai_agent_rate_limits r",
            None,
            &[],
        )?;
        for row in rows {
            let organization: Option<Uuid> = row.get(1)?;
            let agent: Option<Uuid> = row.get(2)?;
            let limit = |value: Option<i32>| value.map(|v| v.max(1) as u64);
            let set = Override {
                calls: limit(row.get::<i32>(3)?),
                tokens: limit(row.get::<i32>(4)?),
            };
            match (organization, agent) {
                (_, Some(agent)) => overrides.agent.insert(*agent.as_bytes(), set),
                (Some(organization), None) => {
                    overrides.organization.insert(*organization.as_bytes(), set)
                }
                (None, None) => None,
            };
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| error!("cannot read ai_agents.ai_agent_rate_limits: {e}"));
    overrides
}

fn setting(value: i32) -> u64 {
    u64::try_from(value).unwrap_or(1).max(1)
}

/// A token setting: 0 (or less) is no limit.
fn token_setting(value: i32) -> Option<u64> {
    u64::try_from(value).ok().filter(|&v| v > 0)
}

/// The per-minute limits of an organization's agent at the three tiers, with overrides: calls,
/// and tokens where a token tier is on.
struct TierLimits {
    calls: [u64; 3],
    tokens: [Option<u64>; 3],
}

fn tier_limits(organization: &Uuid, agent: &Uuid) -> Result<TierLimits, Error> {
    let generation = shmem::overrides_generation()?;
    OVERRIDES.with_borrow_mut(|cache| {
        if cache.as_ref().is_none_or(|c| c.generation != generation) {
            *cache = Some(load_overrides(generation));
        }
        let overrides = cache.as_ref().expect("loaded above");
        let of_organization = overrides
            .organization
            .get(organization.as_bytes())
            .copied()
            .unwrap_or_default();
        let of_agent = overrides
            .agent
            .get(agent.as_bytes())
            .copied()
            .unwrap_or_default();
        Ok(TierLimits {
            calls: [
                setting(RATE_LIMIT_GLOBAL_PER_MINUTE.get()),
                of_organization
                    .calls
                    .unwrap_or_else(|| setting(RATE_LIMIT_ORGANIZATION_PER_MINUTE.get())),
                of_agent
                    .calls
                    .unwrap_or_else(|| setting(RATE_LIMIT_AGENT_PER_MINUTE.get())),
            ],
            tokens: [
                token_setting(RATE_LIMIT_GLOBAL_TOKENS_PER_MINUTE.get()),
                of_organization
                    .tokens
                    .or_else(|| token_setting(RATE_LIMIT_ORGANIZATION_TOKENS_PER_MINUTE.get())),
                of_agent
                    .tokens
                    .or_else(|| token_setting(RATE_LIMIT_AGENT_TOKENS_PER_MINUTE.get())),
            ],
        })
    })
}

/// `prefix` followed by the uuid in its usual hyphenated form. Written out by hand: the
/// formatting machinery was a visible share of a check's cost.
fn uuid_key(prefix: &str, id: &Uuid) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(prefix.len() + 36);
    key.push_str(prefix);
    for (i, byte) in id.as_bytes().iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            key.push('-');
        }
        key.push(HEX[usize::from(byte >> 4)] as char);
        key.push(HEX[usize::from(byte & 0xf)] as char);
    }
    key
}

/// The key of tier `i` of an agent: the call tiers global, organization, agent (0 to 2),
/// then the token tiers (3 to 5).
fn tier_key(i: usize, organization: &Uuid, agent: &Uuid) -> String {
    match i {
        0 => "global".to_string(),
        1 => uuid_key("organization:", organization),
        2 => uuid_key("agent:", agent),
        3 => "tokens:global".to_string(),
        4 => uuid_key("tokens:organization:", organization),
        _ => uuid_key("tokens:agent:", agent),
    }
}

/// An agent's six tier keys with their hashes, worked out once per backend: building and
/// hashing the names was a visible share of a check's cost.
struct TierKeys {
    names: [String; 6],
    hashes: [[u64; 2]; 6],
}

/// Agents whose keys a backend keeps; past that, the cache starts again.
const TIER_KEYS_KEPT: usize = 4096;

thread_local! {
    static TIER_KEYS: RefCell<HashMap<([u8; 16], [u8; 16]), Rc<TierKeys>>> =
        RefCell::new(HashMap::new());
}

fn tier_keys(organization: &Uuid, agent: &Uuid) -> Rc<TierKeys> {
    let id = (*organization.as_bytes(), *agent.as_bytes());
    TIER_KEYS.with_borrow_mut(|cache| {
        if let Some(keys) = cache.get(&id) {
            return keys.clone();
        }
        if cache.len() >= TIER_KEYS_KEPT {
            cache.clear();
        }
        let names: [String; 6] = std::array::from_fn(|i| tier_key(i, organization, agent));
        let hashes = std::array::from_fn(|i| key(&names[i]).hash());
        let keys = Rc::new(TierKeys { names, hashes });
        cache.insert(id, keys.clone());
        keys
    })
}

pub fn interval_us(us: u64) -> Interval {
    Interval::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
}

fn positive(name: &str, value: i32) -> Result<u64, Error> {
    u64::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::InvalidParameter(format!("{name} must be positive, got {value}")))
}

fn required<T>(name: &str, value: Option<T>) -> Result<T, Error> {
    value.ok_or_else(|| Error::NullValue(format!("{name} must not be null")))
}

/// allowed, refused_tier, retry_after, what remains of calls at the global, organization and
/// agent tiers, and of tokens at the three token tiers (NULL where off): the row of
/// check_rate_limit and peek_rate_limit (see `verdict`).
type TierRow = (
    bool,
    Option<String>,
    Option<Interval>,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// What a token count above a tier's limit means.
#[derive(Clone, Copy, PartialEq)]
enum OverLimit {
    /// Bad input (check_rate_limit's caller asked for more than a minute allows).
    Error,
    /// One call's upper bound: it reserves the whole limit, and runs alone in its window.
    WholeLimit,
    /// Several calls' bounds together: refused at once, taking nothing.
    Refused,
}

/// A decision of the limiter: its outcome, the tiers each limit checked stands for (the
/// call tiers, then the token tiers that are on), what each took, and when.
struct Decision {
    outcome: Outcome,
    tiers: Vec<&'static str>,
    costs: Vec<u64>,
    limits: TierLimits,
    at_us: u64,
}

impl Decision {
    fn refusal(&self) -> Option<Refusal> {
        match self.outcome {
            Outcome::Admitted { .. } => None,
            Outcome::Refused {
                index,
                retry_after_us,
                ..
            } => Some((self.tiers[index], retry_after_us)),
            Outcome::Full { retry_after_us } => Some(("capacity", retry_after_us)),
        }
    }

    /// What remains at `tier` after the decision (before it, when refused); None: not checked.
    fn left(&self, tier: &str) -> Option<u64> {
        let i = self.tiers.iter().position(|&t| t == tier)?;
        match &self.outcome {
            Outcome::Admitted { remaining } | Outcome::Refused { remaining, .. } => {
                remaining.get(i).copied()
            }
            Outcome::Full { .. } => Some(0),
        }
    }
}

/// Checks `calls` calls and `tokens` tokens of an organization's agent against every tier
/// and, when `take` is set and all have room, takes them.
fn decide(
    organization: &Uuid,
    agent: &Uuid,
    calls: u64,
    tokens: u64,
    over: OverLimit,
    take: bool,
) -> Result<Decision, Error> {
    let limits = tier_limits(organization, agent)?;
    if let Some(tier) = (0..3).find(|&i| calls > limits.calls[i]) {
        return Err(Error::InvalidParameter(format!(
            "cost {calls} exceeds the {} limit of {} per minute",
            TIERS[tier], limits.calls[tier]
        )));
    }
    let keys = tier_keys(organization, agent);
    let limit = |i: usize, max: u64, cost: u64| {
        Limit::hashed(key(&keys.names[i]), keys.hashes[i], max, cost)
    };
    // Room for the token tiers from the start: growing the vectors was a visible share of a
    // check's cost.
    let all = TIERS.len() + TOKEN_TIERS.len();
    let mut tiers: Vec<&'static str> = Vec::with_capacity(all);
    tiers.extend_from_slice(&TIERS);
    let mut costs = Vec::with_capacity(all);
    costs.extend_from_slice(&[calls; 3]);
    let mut checked: Vec<Limit> = Vec::with_capacity(all);
    checked.extend((0..3).map(|i| limit(i, limits.calls[i], calls)));
    // Only the token tiers that are on are checked: one that is off costs nothing.
    for (i, &tier) in TOKEN_TIERS.iter().enumerate() {
        let Some(max) = limits.tokens[i] else {
            continue;
        };
        tiers.push(tier);
        if tokens > max {
            match over {
                OverLimit::Error => {
                    return Err(Error::InvalidParameter(format!(
                        "tokens {tokens} exceed the {tier} limit of {max} per minute"
                    )))
                }
                OverLimit::Refused => {
                    return Ok(Decision {
                        outcome: Outcome::Refused {
                            index: tiers.len() - 1,
                            retry_after_us: 0,
                            remaining: vec![],
                        },
                        tiers,
                        costs,
                        limits,
                        at_us: 0,
                    })
                }
                OverLimit::WholeLimit => {}
            }
        }
        let cost = tokens.min(max);
        costs.push(cost);
        checked.push(limit(3 + i, max, cost));
    }
    let (outcome, at_us) = shmem::with_table(|table, now| (table.check(now, &checked, take), now))?;
    Ok(Decision {
        outcome,
        tiers,
        costs,
        limits,
        at_us,
    })
}

fn key(name: &str) -> Key<'_> {
    Key {
        name,
        window_us: MINUTE_US,
    }
}

/// A tier that refused and how long until it would admit, in microseconds.
pub type Refusal = (&'static str, u64);

/// What one more call of an organization's agent would meet at each call tier (global,
/// organization, agent): the limit and the room left, and the tier (call or token) that would
/// refuse it with how long until it would not.
pub struct Room {
    pub limits: [u64; 3],
    pub left: [u64; 3],
    pub refused: Option<Refusal>,
    /// Whether a token tier applies: then every call reserves its tokens.
    pub tokens_on: bool,
}

/// The room at the call tiers, without taking anything; a token tier with nothing left
/// refuses too.
pub fn room(organization: &Uuid, agent: &Uuid) -> Result<Room, Error> {
    let decision = decide(organization, agent, 1, 1, OverLimit::WholeLimit, false)?;
    let refused = decision.refusal();
    // Admitted: the room after this one call, so one more than what is left.
    let after = u64::from(refused.is_none());
    Ok(Room {
        limits: decision.limits.calls,
        left: std::array::from_fn(|i| decision.left(TIERS[i]).map_or(0, |left| left + after)),
        refused,
        tokens_on: decision.limits.tokens.iter().any(Option::is_some),
    })
}

/// Tokens reserved for calls: what each token tier took, and when, to be settled once the
/// provider has said what was used.
#[derive(Clone, Copy, Debug)]
pub struct Reservation {
    pub organization: Uuid,
    pub agent: Uuid,
    pub tokens: [u64; 3],
    pub at_us: u64,
}

impl Reservation {
    /// The reservation of one of `n` calls that were taken together, each its own `tokens`.
    pub fn of_one(&self, tokens: u64) -> Reservation {
        Reservation {
            tokens: self.tokens.map(|t| t.min(tokens)),
            ..*self
        }
    }
}

/// Takes `calls` calls and `tokens` tokens (their upper bound) of an organization's agent at
/// every tier, or nothing; on refusal, the tier and how long until they would fit. One call
/// whose bound is above a token tier's limit reserves the whole limit; several calls above it
/// are refused (take them one by one).
pub fn take(
    organization: &Uuid,
    agent: &Uuid,
    calls: u64,
    tokens: u64,
) -> Result<Result<Reservation, Refusal>, Error> {
    let over = if calls == 1 {
        OverLimit::WholeLimit
    } else {
        OverLimit::Refused
    };
    let decision = decide(organization, agent, calls, tokens, over, true)?;
    Ok(match decision.refusal() {
        Some(refusal) => Err(refusal),
        None => Ok(reserved(organization, agent, &decision)),
    })
}

fn reserved(organization: &Uuid, agent: &Uuid, decision: &Decision) -> Reservation {
    Reservation {
        organization: *organization,
        agent: *agent,
        tokens: std::array::from_fn(|i| {
            decision
                .tiers
                .iter()
                .position(|&t| t == TOKEN_TIERS[i])
                .map_or(0, |at| decision.costs[at])
        }),
        at_us: decision.at_us,
    }
}

/// Settles a reservation to the tokens the provider reported: each token tier counts `used`
/// instead of what it reserved, in the window the reservation was taken in.
pub fn settle(reservation: &Reservation, used: u64) {
    let keys = tier_keys(&reservation.organization, &reservation.agent);
    let settled = shmem::with_table(|table, now| {
        for (i, &reserved) in reservation.tokens.iter().enumerate() {
            if reserved == 0 {
                continue;
            }
            let delta = i64::try_from(used)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(reserved).unwrap_or(i64::MAX));
            table.adjust(key(&keys.names[3 + i]), reservation.at_us, delta, now);
        }
    });
    if let Err(e) = settled {
        warning!("ai_agents: a token reservation could not be settled: {e}");
    }
}

/// Takes one unit of `name` per `window_us` if it has none in the window: whether this is the
/// first time in the window.
pub fn first_in_window(name: &str, window_us: u64) -> Result<bool, Error> {
    let limit = Limit::new(Key { name, window_us }, 1, 1);
    Ok(matches!(
        shmem::with_table(|table, now| table.check(now, &[limit], true))?,
        Outcome::Admitted { .. }
    ))
}

/// check_rate_limit's and peek_rate_limit's row for `cost` calls and `tokens` tokens of an
/// organization's agent.
fn check_tiers(
    organization_id: Option<Uuid>,
    agent_id: Option<Uuid>,
    cost: Option<i32>,
    tokens: Option<i64>,
    take: bool,
) -> Result<TierRow, Error> {
    let organization = required("organization_id", organization_id)?;
    let agent = required("agent_id", agent_id)?;
    let cost = positive("cost", required("cost", cost)?)?;
    let tokens = required("tokens", tokens)?;
    let tokens = u64::try_from(tokens).map_err(|_| {
        Error::InvalidParameter(format!("tokens must not be negative, got {tokens}"))
    })?;
    let decision = decide(&organization, &agent, cost, tokens, OverLimit::Error, take)?;
    let refusal = decision.refusal();
    let left = |tier: &str| decision.left(tier).map(|v| v as i64);
    Ok((
        refusal.is_none(),
        refusal.map(|(tier, _)| tier.to_string()),
        refusal.map(|(_, wait)| interval_us(wait)),
        left(TIERS[0]).unwrap_or(0),
        left(TIERS[1]).unwrap_or(0),
        left(TIERS[2]).unwrap_or(0),
        left(TOKEN_TIERS[0]),
        left(TOKEN_TIERS[1]),
        left(TOKEN_TIERS[2]),
    ))
}

fn window_us(window: Option<Interval>) -> Result<u64, Error> {
    let window = required("window", window)?;
    u64::try_from(window.as_micros())
        .ok()
        .filter(|&us| us > 0)
        .ok_or_else(|| {
            Error::InvalidParameter(format!("window must be a positive interval, got {window}"))
        })
}

/// An app's own limit: at most `max` per `window` on `key` (kept apart from the tier keys).
#[pg_extern(volatile)]
fn rate_limit(
    key: Option<&str>,
    max: Option<i32>,
    window: Option<Interval>,
    cost: default!(i32, 1),
) -> TableIterator<
    'static,
    (
        name!(allowed, bool),
        name!(retry_after, Option<Interval>),
        name!(remaining, i64),
    ),
> {
    let result = (|| {
        let name = format!("app:{}", required("key", key)?);
        let max = positive("max", required("max", max)?)?;
        let window_us = window_us(window)?;
        let cost = positive("cost", cost)?;
        if cost > max {
            return Err(Error::InvalidParameter(format!(
                "cost {cost} exceeds max {max}"
            )));
        }
        let limit = Limit::new(
            Key {
                name: &name,
                window_us,
            },
            max,
            cost,
        );
        Ok(
            match shmem::with_table(|table, now| table.check(now, &[limit], true))? {
                Outcome::Admitted { remaining } => (true, None, remaining[0] as i64),
                Outcome::Refused { retry_after_us, .. } | Outcome::Full { retry_after_us } => {
                    (false, Some(interval_us(retry_after_us)), 0)
                }
            },
        )
    })();
    TableIterator::once(result.or_report())
}

/// Refuses every call on a key until `until` - what a provider's 429 with Retry-After asks.
/// Keys: 'global', 'organization:<uuid>', 'agent:<uuid>', 'app:<key>', or any other name.
#[pg_extern(volatile)]
fn pause_rate_limit(
    key: Option<&str>,
    until: Option<TimestampWithTimeZone>,
    window: default!(Option<Interval>, "'1 minute'"),
) {
    let result = (|| {
        let name = required("key", key)?;
        let until = required("until", until)?;
        // SAFETY: GetCurrentTimestamp only reads the clock.
        let now_wall = unsafe { pg_sys::GetCurrentTimestamp() };
        let ahead_us =
            u64::try_from(pg_sys::TimestampTz::from(until).saturating_sub(now_wall)).unwrap_or(0);
        pause(name, window_us(window)?, ahead_us)
    })();
    result.or_report()
}

/// Counts calls this server's limiter did not admit, each of an organization's agent
/// `age_us` ago, at the organization and agent call tiers: the calls of the last minute of the
/// organizations of a shard that moved here, or of every organization when the server started,
/// so that their windows hold across the move or the restart (docs/distributed.md). An
/// organization the limiter knows already is left alone: it counted its calls itself (the
/// worker restarted, not the server).
pub fn count_past_calls(calls: &[(Uuid, Uuid, u64)]) -> Result<(), Error> {
    shmem::with_table(|table, now| {
        let known: std::collections::HashSet<Uuid> = calls
            .iter()
            .map(|(organization, _, _)| *organization)
            .filter(|organization| table.knows(key(&tier_key(1, organization, organization))))
            .collect();
        calls
            .iter()
            .filter(|(organization, _, _)| !known.contains(organization))
            .try_for_each(|(organization, agent, age_us)| {
                let keys = tier_keys(organization, agent);
                let at_us = now.saturating_sub(*age_us);
                table.count_taken(key(&keys.names[1]), at_us, now)?;
                table.count_taken(key(&keys.names[2]), at_us, now)
            })
    })?
    .map_err(|retry_after_us| Error::TableFull(interval_us(retry_after_us)))
}

/// Pauses `name` (over `window_us`) for `ahead_us` from now; a pause already longer stays.
pub fn pause(name: &str, window_us: u64, ahead_us: u64) -> Result<(), Error> {
    let key = Key { name, window_us };
    shmem::with_table(|table, now| table.pause(key, now.saturating_add(ahead_us), now))?
        .map_err(|retry_after_us| Error::TableFull(interval_us(retry_after_us)))
}

/// How much longer `name` (over `window_us`) is paused, in microseconds (0: not paused).
pub fn paused_us(name: &str, window_us: u64) -> Result<u64, Error> {
    shmem::with_table(|table, now| table.paused_for(Key { name, window_us }, now))
}

/// How much longer a key is paused by pause_rate_limit (NULL: not paused). Cheap enough for
/// every claim: claim_due_tasks asks it for the provider of each task.
#[pg_extern(volatile)]
fn rate_limit_paused_for(key: &str, window: default!(Interval, "'1 minute'")) -> Option<Interval> {
    let paused_us = paused_us(key, window_us(Some(window)).or_report()).or_report();
    (paused_us > 0).then(|| interval_us(paused_us))
}

/// Forgets the counts and pause of one key (by name) or, with NULL, of every key.
#[pg_extern(volatile)]
fn reset_rate_limit(key: default!(Option<&str>, "NULL")) -> i64 {
    shmem::with_table(|table, _| table.reset(key)).or_report() as i64
}

/// Every key in the table with its current usage; the view `rate_limit_usage` shows it.
#[pg_extern(volatile, name = "_rate_limit_keys")]
fn rate_limit_keys() -> TableIterator<
    'static,
    (
        name!(key, String),
        name!(window, Interval),
        name!(max, i64),
        name!(used, i64),
        name!(remaining, i64),
        name!(paused_for, Option<Interval>),
        name!(idle_for, Interval),
    ),
> {
    let rows = shmem::with_table(|table, now| {
        table
            .usage(now)
            .into_iter()
            .map(|u| {
                (
                    u.name,
                    interval_us(u.window_us),
                    u.limit as i64,
                    u.used as i64,
                    u.limit.saturating_sub(u.used) as i64,
                    (u.paused_until_us > now).then(|| interval_us(u.paused_until_us - now)),
                    interval_us(now.saturating_sub(u.last_used_us)),
                )
            })
            .collect::<Vec<_>>()
    })
    .or_report();
    TableIterator::new(rows)
}

/// Makes every backend reload the override table once this transaction has committed (a
/// reload before the commit would not see the change).
#[pg_extern(volatile, name = "_reload_rate_limit_overrides_at_commit")]
fn reload_rate_limit_overrides_at_commit() {
    shmem::overrides_generation().or_report();
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        let _ = shmem::bump_overrides_generation();
    });
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
