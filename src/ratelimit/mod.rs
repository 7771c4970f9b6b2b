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
    RATE_LIMIT_AGENT_PER_MINUTE, RATE_LIMIT_GLOBAL_PER_MINUTE, RATE_LIMIT_ORGANIZATION_PER_MINUTE,
};
use pgrx::datum::{Interval, Uuid};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use table::{Key, Limit, Outcome};

pub use shmem::SEGMENT;

pub const MINUTE_US: u64 = 60_000_000;
const TIERS: [&str; 3] = ["global", "organization", "agent"];

/// This backend's copy of the override table, reloaded when another transaction changed it.
struct Overrides {
    generation: u64,
    organization: HashMap<[u8; 16], u64>,
    agent: HashMap<[u8; 16], u64>,
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
            "SELECT organization_id, agent_id, max_per_minute FROM ai_agents.ai_agent_rate_limits",
            None,
            &[],
        )?;
        for row in rows {
            let organization: Option<Uuid> = row.get(1)?;
            let agent: Option<Uuid> = row.get(2)?;
            let max = row.get::<i32>(3)?.unwrap_or(1).max(1) as u64;
            match (organization, agent) {
                (_, Some(agent)) => overrides.agent.insert(*agent.as_bytes(), max),
                (Some(organization), None) => {
                    overrides.organization.insert(*organization.as_bytes(), max)
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

/// The per-minute limits of the three tiers for an organization and agent, with overrides.
fn tier_limits(organization: &Uuid, agent: &Uuid) -> Result<[u64; 3], Error> {
    let generation = shmem::overrides_generation()?;
    OVERRIDES.with_borrow_mut(|cache| {
        if cache.as_ref().is_none_or(|c| c.generation != generation) {
            *cache = Some(load_overrides(generation));
        }
        let overrides = cache.as_ref().expect("loaded above");
        Ok([
            setting(RATE_LIMIT_GLOBAL_PER_MINUTE.get()),
            overrides
                .organization
                .get(organization.as_bytes())
                .copied()
                .unwrap_or_else(|| setting(RATE_LIMIT_ORGANIZATION_PER_MINUTE.get())),
            overrides
                .agent
                .get(agent.as_bytes())
                .copied()
                .unwrap_or_else(|| setting(RATE_LIMIT_AGENT_PER_MINUTE.get())),
        ])
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

/// allowed, refused_tier, retry_after, and what remains at the global, organization and agent
/// tiers: the row of check_rate_limit and peek_rate_limit (see `verdict`).
type TierRow = (bool, Option<String>, Option<Interval>, i64, i64, i64);

/// Checks `cost` calls against the three tiers of an organization's agent and, when `take` is
/// set and all have room, takes them. Returns the outcome with the three tiers' limits.
fn decide(
    organization: &Uuid,
    agent: &Uuid,
    cost: u64,
    take: bool,
) -> Result<(Outcome, [u64; 3]), Error> {
    let maxima = tier_limits(organization, agent)?;
    if let Some(tier) = (0..3).find(|&i| cost > maxima[i]) {
        return Err(Error::InvalidParameter(format!(
            "cost {cost} exceeds the {} limit of {} per minute",
            TIERS[tier], maxima[tier]
        )));
    }
    let (organization_key, agent_key) = (
        uuid_key("organization:", organization),
        uuid_key("agent:", agent),
    );
    let names = ["global", organization_key.as_str(), agent_key.as_str()];
    let limits: Vec<Limit> = names
        .iter()
        .zip(maxima)
        .map(|(name, max)| {
            Limit::new(
                Key {
                    name,
                    window_us: MINUTE_US,
                },
                max,
            )
        })
        .collect();
    let outcome = shmem::with_table(|table, now| table.check(now, &limits, cost, take))?;
    Ok((outcome, maxima))
}

/// A tier that refused and how long until it would admit, in microseconds.
pub type Refusal = (&'static str, u64);

/// What one more call of an organization's agent would meet at each tier (global,
/// organization, agent): the limit and the room left, and the tier that would refuse it with
/// how long until it would not.
pub struct Room {
    pub limits: [u64; 3],
    pub left: [u64; 3],
    pub refused: Option<Refusal>,
}

/// The room at the three tiers, without taking anything.
pub fn room(organization: &Uuid, agent: &Uuid) -> Result<Room, Error> {
    let (outcome, limits) = decide(organization, agent, 1, false)?;
    let left = |remaining: &[u64], after: u64| -> [u64; 3] {
        std::array::from_fn(|i| remaining.get(i).map_or(0, |&r| r + after))
    };
    Ok(match outcome {
        Outcome::Admitted { remaining } => Room {
            limits,
            left: left(&remaining, 1),
            refused: None,
        },
        Outcome::Refused {
            index,
            retry_after_us,
            remaining,
        } => Room {
            limits,
            left: left(&remaining, 0),
            refused: Some((TIERS[index], retry_after_us)),
        },
        Outcome::Full { retry_after_us } => Room {
            limits,
            left: [0; 3],
            refused: Some(("capacity", retry_after_us)),
        },
    })
}

/// Takes `cost` calls of an organization's agent at all three tiers, or nothing; on refusal,
/// the tier and how long until the calls would fit.
pub fn take(organization: &Uuid, agent: &Uuid, cost: u64) -> Result<Result<(), Refusal>, Error> {
    Ok(match decide(organization, agent, cost, true)?.0 {
        Outcome::Admitted { .. } => Ok(()),
        Outcome::Refused {
            index,
            retry_after_us,
            ..
        } => Err((TIERS[index], retry_after_us)),
        Outcome::Full { retry_after_us } => Err(("capacity", retry_after_us)),
    })
}

/// Takes one unit of `name` per `window_us` if it has none in the window: whether this is the
/// first time in the window.
pub fn first_in_window(name: &str, window_us: u64) -> Result<bool, Error> {
    let limit = Limit::new(Key { name, window_us }, 1);
    Ok(matches!(
        shmem::with_table(|table, now| table.check(now, &[limit], 1, true))?,
        Outcome::Admitted { .. }
    ))
}

/// check_rate_limit's and peek_rate_limit's row for `cost` calls of an organization's agent.
fn check_tiers(
    organization_id: Option<Uuid>,
    agent_id: Option<Uuid>,
    cost: Option<i32>,
    take: bool,
) -> Result<TierRow, Error> {
    let organization = required("organization_id", organization_id)?;
    let agent = required("agent_id", agent_id)?;
    let cost = positive("cost", required("cost", cost)?)?;
    let (outcome, _) = decide(&organization, &agent, cost, take)?;
    let row = |allowed, tier: Option<&str>, wait: Option<u64>, left: &[u64]| {
        let left = |i: usize| left.get(i).map_or(0, |&v| v as i64);
        (
            allowed,
            tier.map(str::to_string),
            wait.map(interval_us),
            left(0),
            left(1),
            left(2),
        )
    };
    Ok(match outcome {
        Outcome::Admitted { remaining } => row(true, None, None, &remaining),
        Outcome::Refused {
            index,
            retry_after_us,
            remaining,
        } => row(false, Some(TIERS[index]), Some(retry_after_us), &remaining),
        Outcome::Full { retry_after_us } => row(false, Some("capacity"), Some(retry_after_us), &[]),
    })
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
        );
        Ok(
            match shmem::with_table(|table, now| table.check(now, &[limit], cost, true))? {
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
