//! Fair claiming (docs/fairness.md): which due tasks a claim takes, so that no organization's
//! backlog delays another's tasks. claim_due_tasks (sql/idempotent/tasks.sql) asks
//! `_choose_due_tasks` which tasks to run; `share` decides how many each agent gets.
//!
//! A claim reads one row per agent with due tasks (a skip scan over the fair-claim index, so
//! its cost follows the number of agents with claimable tasks, not their backlogs), asks the
//! limiter how much room each has, shares the slots, and locks that many of each agent's most
//! urgent due tasks. An agent or organization the limits refuse is held back as a whole: its
//! tasks stay due, unwritten, and are taken as the window frees room. One `rate_limited`
//! activity row per agent (or organization) and window says how many were held back.
mod budget;
mod share;

use crate::error::{Error, OrReport};
use crate::llm;
use crate::ratelimit::{self, Refusal, Reservation, MINUTE_US};
use crate::settings::HISTORY_LIMIT;
use pgrx::datum::Uuid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Held-back tasks counted for the activity row, at most.
const COUNT_AT_MOST: i64 = 100_000;

/// A claimable task of the fair-claim index: the index's predicate, written once.
macro_rules! claimable {
    () => {
        "t.status IN ('pending', 'completed', 'failed') AND t.next_run_at IS NOT NULL AND NOT t.paused"
    };
}

/// One row per agent with due tasks: the skip scan finds each (organization, agent) with
/// claimable tasks in one index probe, the lateral its most urgent due task in another.
/// Each `@of(x)` marks where `organizations` narrows it to the organizations in $1: Citus
/// routes a query to one shard only when every distributed table in it is filtered so.
const DUE_AGENTS: &str = concat!(
    "WITH RECURSIVE pair AS (
        (SELECT t.organization_id, t.agent_id FROM ai_agents.ai_agent_tasks t
          WHERE ",
    claimable!(),
    "@of(t)
          ORDER BY t.organization_id, t.agent_id, t.priority DESC, t.next_run_at LIMIT 1)
        UNION ALL
        SELECT n.organization_id, n.agent_id FROM pair p CROSS JOIN LATERAL
            (SELECT t.organization_id, t.agent_id FROM ai_agents.ai_agent_tasks t
              WHERE ",
    claimable!(),
    "@of(t)
                AND (t.organization_id, t.agent_id) > (p.organization_id, p.agent_id)
              ORDER BY t.organization_id, t.agent_id, t.priority DESC, t.next_run_at LIMIT 1) n
    )
    SELECT p.organization_id, p.agent_id, h.priority,
           (extract(epoch FROM h.next_run_at) * 1000000)::int8 AS due_us,
           v.id AS version_id,
           (extract(epoch FROM CASE WHEN v.id IS NOT NULL THEN
               ai_agents.rate_limit_paused_for('provider:' || v.provider) END) * 1000000)::int8,
           (extract(epoch FROM CASE WHEN v.id IS NOT NULL THEN
               ai_agents._credential_paused_for(v.provider, p.agent_id::text, p.organization_id::text,
                                                v.config ->> 'base_url') END) * 1000000)::int8,
           coalesce(l.weight, 1)::float8,
           octet_length(v.system_prompt)::int8, v.max_tokens::int8,
           EXISTS (SELECT FROM ai_agents.ai_agent_budgets b WHERE b.organization_id = p.organization_id@of(b)
                      AND (b.agent_id IS NULL OR b.agent_id = p.agent_id)),
           (pr.input * 1000000)::int8, (pr.output * 1000000)::int8,
           CASE WHEN cardinality(ag.tools) > 0 OR ag.output_schema IS NOT NULL THEN ag.tools END,
           coalesce(octet_length(ag.output_schema::text), 0)::int8
      FROM pair p
     CROSS JOIN LATERAL
           (SELECT t.priority, t.next_run_at FROM ai_agents.ai_agent_tasks t
             WHERE t.organization_id = p.organization_id AND t.agent_id = p.agent_id AND ",
    claimable!(),
    " AND t.next_run_at <= now()@of(t)
             ORDER BY t.priority DESC, t.next_run_at LIMIT 1) h
      JOIN ai_agents.ai_agents ag ON ag.organization_id = p.organization_id AND ag.id = p.agent_id@of(ag)
      LEFT JOIN ai_agents.ai_agent_versions v
             ON v.organization_id = ag.organization_id AND v.id = ag.current_version_id@of(v)
      LEFT JOIN ai_agents.ai_agent_organization_limits l ON l.organization_id = p.organization_id@of(l)
      LEFT JOIN LATERAL
           (SELECT greatest(x.input_usd_per_mtok, coalesce(x.cached_input_usd_per_mtok, 0),
                            coalesce(x.cache_write_usd_per_mtok, 0)) AS input,
                   x.output_usd_per_mtok AS output
              FROM ai_agents.ai_agent_model_prices x
             WHERE x.provider = v.provider AND x.model = v.model AND x.effective_from <= now()
             ORDER BY x.effective_from DESC LIMIT 1) pr ON true"
);

/// `sql` with its `@of(x)` markers gone, or (`narrow`) each a filter of `x` by the
/// organizations in $1.
fn narrowed(sql: &str, narrow: bool) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("@of(") {
        out.push_str(&rest[..at]);
        let alias_end = at + rest[at..].find(')').unwrap_or(rest.len() - at);
        if narrow {
            out.push_str(&format!(
                " AND {}.organization_id = ANY ($1)",
                &rest[at + 4..alias_end]
            ));
        }
        rest = &rest[(alias_end + 1).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// Locks up to $3 of an agent's most urgent due tasks, other than those in $4.
const LOCK: &str = concat!(
    "SELECT t.id FROM ai_agents.ai_agent_tasks t
      WHERE t.organization_id = $1 AND t.agent_id = $2 AND ",
    claimable!(),
    " AND t.next_run_at <= now() AND t.id <> ALL ($4)
      ORDER BY t.priority DESC, t.next_run_at
      LIMIT $3
        FOR UPDATE OF t SKIP LOCKED"
);

/// What a call of each task in $2 (of organization $1) will send: the text its user message is
/// made of; for a conversation task, how many bytes of history it may send at most (the newest
/// message always, others up to ai_agents.history_max_bytes); and for an agent with tools or
/// an output schema, the bytes and the number of the run's steps (`TOOLS` adds the
/// declarations, the same for each of the agent's tasks).
const PROMPTS: &str = "
    SELECT t.id, t.title, t.description, t.input::text,
           CASE WHEN t.conversation_id IS NOT NULL THEN
               greatest(pg_size_bytes(current_setting('ai_agents.history_max_bytes')),
                        (SELECT octet_length(m.content) FROM ai_agents.ai_agent_messages m
                          WHERE m.organization_id = t.organization_id AND m.conversation_id = t.conversation_id
                            AND m.role IN ('user', 'assistant')
                          ORDER BY m.created_at DESC, m.id DESC LIMIT 1))
           END,
           s.bytes, s.items
      FROM ai_agents.ai_agent_tasks t
      LEFT JOIN LATERAL (
           SELECT sum(coalesce(octet_length(s.content), 0) + coalesce(octet_length(s.tool_calls::text), 0)
                      + coalesce(octet_length(s.tool_call_id), 0) + coalesce(octet_length(s.result::text), 0)
                      + coalesce(octet_length(s.error), 0) + 16
                      -- a refused answer's repair turn (steps.rs REPAIR, shorter than this)
                      + CASE WHEN s.kind = 'llm' AND s.error IS NOT NULL THEN 128 ELSE 0 END)::int8 AS bytes,
                  count(*) AS items
             FROM ai_agents.ai_agent_task_steps s
            WHERE s.organization_id = t.organization_id AND s.task_id = t.id
              AND s.step_number >= t.run_first_step) s ON $3
     WHERE t.organization_id = $1 AND t.id = ANY ($2)";

/// The bytes and the number of the declarations of tools $2 of organization $1, as a call
/// sends them. A statement of its own: _tools_of reads distributed tables, which Citus refuses
/// inside a query it pushes down to a shard (docs/distributed.md#statements).
const TOOLS: &str = "
    SELECT sum(octet_length(tl.name) + octet_length(tl.description) + octet_length(tl.parameters::text))::int8,
           count(*)
      FROM ai_agents._tools_of($1) tl
     WHERE tl.name = ANY ($2)";

/// Whether an agent has due tasks besides those in $3.
const STILL_DUE: &str = concat!(
    "SELECT EXISTS (SELECT FROM ai_agents.ai_agent_tasks t
      WHERE t.organization_id = $1 AND t.agent_id = $2 AND ",
    claimable!(),
    " AND t.next_run_at <= now() AND t.id <> ALL ($3))"
);

/// The activity row of a hold: $1 organization, $2 agent (NULL: the whole organization),
/// $3 tier, $4 seconds until the limit has room; it counts the due tasks, at most $5, other
/// than those this claim took ($6). (`SELECT 1`: Citus cannot plan an INSERT from a subquery
/// of no columns.)
const LOG_HOLD: &str = concat!(
    "INSERT INTO ai_agents.ai_agent_activity_log
         (organization_id, agent_id, action_type, success, error, details)
     SELECT $1, $2, 'rate_limited', false,
            format('%s limit reached; %s due tasks held back for %s s', $3, h.n, round($4::numeric, 1)),
            jsonb_build_object('tier', $3, 'held_back', h.n, 'retry_after_seconds', $4,
                               'by', ai_agents._current_actor())
       FROM (SELECT count(*) AS n FROM (SELECT 1 FROM ai_agents.ai_agent_tasks t
              WHERE t.organization_id = $1 AND t.agent_id = coalesce($2, t.agent_id) AND ",
    claimable!(),
    " AND t.next_run_at <= now() AND t.id <> ALL ($6) LIMIT $5) d) h"
);

struct Plans {
    due_agents: OwnedPreparedStatement,
    due_agents_of: OwnedPreparedStatement,
    lock: OwnedPreparedStatement,
    prompts: OwnedPreparedStatement,
    tools: OwnedPreparedStatement,
    budget_room: OwnedPreparedStatement,
    budget_reserve: OwnedPreparedStatement,
    still_due: OwnedPreparedStatement,
    log_hold: OwnedPreparedStatement,
}

thread_local! {
    /// Planned once per session: planning the skip scan cost more than running it.
    static PLANS: RefCell<Option<Rc<Plans>>> = const { RefCell::new(None) };
    /// When the last claim found tasks it could not take yet, how soon to look again.
    static NEXT_LOOK: Cell<Option<Duration>> = const { Cell::new(None) };
    /// The token reservations of the last claim's tasks, by task id, for the worker to settle.
    static RESERVATIONS: RefCell<HashMap<String, Reservation>> = RefCell::new(HashMap::new());
}

fn plans(client: &SpiClient) -> SpiResult<Rc<Plans>> {
    if let Some(plans) = PLANS.with_borrow(|p| p.clone()) {
        return Ok(plans);
    }
    let uuid = PgOid::from(pg_sys::UUIDOID);
    let uuids = PgOid::from(pg_sys::UUIDARRAYOID);
    let keep = |sql: &str, types: &[PgOid]| -> SpiResult<OwnedPreparedStatement> {
        Ok(client.prepare_mut(sql, types)?.keep())
    };
    let plans = Rc::new(Plans {
        due_agents: keep(&narrowed(DUE_AGENTS, false), &[])?,
        due_agents_of: keep(&narrowed(DUE_AGENTS, true), &[uuids])?,
        lock: keep(LOCK, &[uuid, uuid, PgOid::from(pg_sys::INT8OID), uuids])?,
        prompts: keep(PROMPTS, &[uuid, uuids, PgOid::from(pg_sys::BOOLOID)])?,
        tools: keep(TOOLS, &[uuid, PgOid::from(pg_sys::TEXTARRAYOID)])?,
        budget_room: keep(
            "SELECT room_pico, budget_agent_id, seconds_left, busy FROM ai_agents._budget_room($1, $2)",
            &[uuid, uuid],
        )?,
        budget_reserve: keep(
            "SELECT ai_agents._budget_reserve($1, $2, $3, $4)",
            &[uuid, uuid, PgOid::from(pg_sys::INT8OID), PgOid::from(pg_sys::INT8OID)],
        )?,
        still_due: keep(STILL_DUE, &[uuid, uuid, uuids])?,
        log_hold: keep(
            LOG_HOLD,
            &[
                uuid,
                uuid,
                PgOid::from(pg_sys::TEXTOID),
                PgOid::from(pg_sys::FLOAT8OID),
                PgOid::from(pg_sys::INT8OID),
                uuids,
            ],
        )?,
    });
    PLANS.set(Some(plans.clone()));
    Ok(plans)
}

/// How soon the worker should look again for the tasks the last claim could not take (held
/// back by a limit or a pause, or locked by another claimer); None: it took all it found.
pub fn next_look() -> Option<Duration> {
    NEXT_LOOK.get()
}

/// The token reservation the last claim made for a task, if the token tiers are on; taken,
/// so that it is settled once.
pub fn reservation(task_id: &str) -> Option<Reservation> {
    RESERVATIONS.with_borrow_mut(|r| r.remove(task_id))
}

fn look_within(us: u64) {
    let us = Duration::from_micros(us);
    NEXT_LOOK.set(Some(NEXT_LOOK.get().map_or(us, |d| d.min(us))));
}

/// An agent with due tasks, as the claim found it.
struct DueAgent {
    organization: Uuid,
    agent: Uuid,
    version: Option<Uuid>,
    /// A pause of its provider or credential: the tier and how much longer.
    paused: Option<Refusal>,
    /// The bytes of its version's system prompt, and its max_tokens.
    system_bytes: u64,
    max_tokens: u64,
    /// Whether a budget applies to its calls, and its model's prices.
    budgeted: bool,
    prices: Option<budget::Prices>,
    /// For an agent that runs the loop (tools or an output schema): its tools' names and the
    /// bytes of its output schema.
    loop_tools: Option<(Vec<String>, u64)>,
}

/// What an agent's budgets leave for this claim.
enum BudgetRoom {
    /// Room in pico-dollars; the binding budget holds back the agent alone (its own budget)
    /// or its organization, for so long.
    Room {
        pico: u64,
        agent_budget: bool,
        retry_after_us: u64,
    },
    /// Another claimer holds one of the budgets: look again soon.
    Busy,
}

fn budget_room(client: &SpiClient, plans: &Plans, due: &DueAgent) -> SpiResult<Option<BudgetRoom>> {
    let row = client
        .select(
            &plans.budget_room,
            Some(1),
            &[due.organization.into(), due.agent.into()],
        )?
        .first();
    if row.get::<bool>(4)? == Some(true) {
        return Ok(Some(BudgetRoom::Busy));
    }
    let Some(pico) = row.get::<i64>(1)? else {
        return Ok(None);
    };
    Ok(Some(BudgetRoom::Room {
        pico: u64::try_from(pico).unwrap_or(0),
        agent_budget: row.get::<Uuid>(2)?.is_some(),
        retry_after_us: (row.get::<f64>(3)?.unwrap_or(0.0).max(0.0) * 1e6) as u64,
    }))
}

/// What the limits refused: an agent, or (agent None) an organization.
struct Hold {
    organization: Uuid,
    agent: Option<Uuid>,
    tier: &'static str,
    retry_after_us: u64,
}

impl Hold {
    fn new(due: &DueAgent, (tier, retry_after_us): Refusal) -> Hold {
        // A refusal at the organization's tier or above holds back the organization.
        let whole = matches!(
            tier,
            "organization" | "global" | "capacity" | "organization_tokens" | "global_tokens"
        );
        Hold {
            organization: due.organization,
            agent: (!whole).then_some(due.agent),
            tier,
            retry_after_us,
        }
    }

    fn covers(&self, due: &DueAgent) -> bool {
        self.organization == due.organization && self.agent.is_none_or(|a| a == due.agent)
    }
}

/// Whether an agent has due tasks other than `mine` (the ones this claim locked).
fn has_more(client: &SpiClient, plans: &Plans, due: &DueAgent, mine: &[Uuid]) -> SpiResult<bool> {
    Ok(client
        .select(
            &plans.still_due,
            Some(1),
            &[
                due.organization.into(),
                due.agent.into(),
                mine.to_vec().into(),
            ],
        )?
        .first()
        .get_one::<bool>()?
        == Some(true))
}

fn micros(us: Option<i64>) -> Option<u64> {
    us.and_then(|us| u64::try_from(us).ok())
        .filter(|&us| us > 0)
}

/// Takes calls of an agent from the limiter for its locked tasks, each with its token bound:
/// all at once, else one by one until refused. Returns the reservation of each task taken, in
/// order, and the refusal, if any.
fn take_up_to(
    due: &DueAgent,
    bounds: &[u64],
) -> Result<(Vec<Reservation>, Option<Refusal>), Error> {
    if bounds.is_empty() {
        return Ok((vec![], None));
    }
    let total = bounds.iter().fold(0u64, |sum, &b| sum.saturating_add(b));
    if let Ok(all) = ratelimit::take(&due.organization, &due.agent, bounds.len() as u64, total)? {
        return Ok((bounds.iter().map(|&b| all.of_one(b)).collect(), None));
    }
    let mut taken = vec![];
    for &bound in bounds {
        match ratelimit::take(&due.organization, &due.agent, 1, bound)? {
            Ok(reservation) => taken.push(reservation),
            Err(refusal) => return Ok((taken, Some(refusal))),
        }
    }
    Ok((taken, None))
}

/// The tokens each of `ids` may use at most: what its call will send (see `PROMPTS`) and
/// its version's max_tokens.
fn token_bounds(
    client: &SpiClient,
    plans: &Plans,
    due: &DueAgent,
    ids: &[Uuid],
) -> SpiResult<Vec<u64>> {
    // The declarations are the same for each of the agent's tasks: asked once.
    let declared = match &due.loop_tools {
        Some((names, schema_bytes)) => {
            let row = client
                .select(
                    &plans.tools,
                    Some(1),
                    &[due.organization.into(), names.clone().into()],
                )?
                .first();
            Some((
                schema_bytes + row.get::<i64>(1)?.map_or(0, |b| b.max(0) as u64),
                1 + row.get::<i64>(2)?.map_or(0, |n| n.max(0) as u64),
            ))
        }
        None => None,
    };
    let mut by_id = HashMap::new();
    let args = [
        due.organization.into(),
        ids.to_vec().into(),
        declared.is_some().into(),
    ];
    for row in client.select(&plans.prompts, None, &args)? {
        let Some(id) = row.get::<Uuid>(1)? else {
            continue;
        };
        let title: String = row.get(2)?.unwrap_or_default();
        let description: Option<String> = row.get(3)?;
        let input: String = row.get(4)?.unwrap_or_default();
        let history: Option<i64> = row.get(5)?;
        let steps_bytes: Option<i64> = row.get(6)?;
        let steps: Option<i64> = row.get(7)?;
        let prompt = llm::PromptSize {
            system_bytes: due.system_bytes,
            message_bytes: llm::task_message_bytes(&title, description.as_deref(), &input),
            history: history.map(|bytes| (u64::try_from(bytes).unwrap_or(0), history_limit())),
            tools_and_steps: declared.map_or((0, 0), |(bytes, items)| {
                (
                    bytes + steps_bytes.map_or(0, |b| b.max(0) as u64),
                    items + steps.map_or(0, |n| n.max(0) as u64),
                )
            }),
        };
        by_id.insert(id, prompt.token_bound(due.max_tokens));
    }
    // A task gone since it was locked cannot be: the lock holds it.
    Ok(ids
        .iter()
        .map(|id| by_id.get(id).copied().unwrap_or(u64::MAX))
        .collect())
}

fn history_limit() -> u64 {
    u64::try_from(HISTORY_LIMIT.get()).unwrap_or(0)
}

/// The tasks of this claim (of `organizations` only, when given), each with its organization
/// and the agent version it is pinned to, at most `max_tasks`. Declared in
/// sql/idempotent/tasks.sql; only claim_due_tasks calls it, inside its transaction, whose row
/// locks hold the tasks until they are marked running.
#[pg_extern(sql = false)]
fn choose_due_tasks(
    max_tasks: i32,
    organizations: Option<Vec<Uuid>>,
) -> TableIterator<
    'static,
    (
        name!(task_id, Uuid),
        name!(organization_id, Uuid),
        name!(version_id, Option<Uuid>),
        name!(budget_pico, Option<i64>),
    ),
> {
    NEXT_LOOK.set(None);
    RESERVATIONS.with_borrow_mut(HashMap::clear);
    let wanted = u64::try_from(max_tasks).unwrap_or(0);
    let chosen = Spi::connect_mut(|client| choose(client, wanted, organizations))
        .unwrap_or_else(|e| error!("claiming due tasks failed: {e}"));
    TableIterator::new(chosen)
}

/// Each task with its organization, the version it runs and what its budgets reserved, in
/// pico-dollars.
type Chosen = Vec<(Uuid, Uuid, Option<Uuid>, Option<i64>)>;

fn choose(
    client: &mut SpiClient,
    wanted: u64,
    organizations: Option<Vec<Uuid>>,
) -> SpiResult<Chosen> {
    let plans = plans(client)?;
    let mut due = vec![];
    let mut weights = vec![];
    let mut heads = vec![];
    let rows = match organizations {
        None => client.select(&plans.due_agents, None, &[])?,
        Some(organizations) => {
            client.select(&plans.due_agents_of, None, &[organizations.into()])?
        }
    };
    for row in rows {
        let (Some(organization), Some(agent)) = (row.get::<Uuid>(1)?, row.get::<Uuid>(2)?) else {
            continue;
        };
        let provider = micros(row.get::<i64>(6)?).map(|us| ("provider", us));
        let credential = micros(row.get::<i64>(7)?).map(|us| ("credential", us));
        due.push(DueAgent {
            organization,
            agent,
            version: row.get::<Uuid>(5)?,
            paused: provider.into_iter().chain(credential).max_by_key(|p| p.1),
            system_bytes: row.get::<i64>(9)?.map_or(0, |b| b.max(0) as u64),
            max_tokens: row.get::<i64>(10)?.map_or(0, |b| b.max(0) as u64),
            budgeted: row.get::<bool>(11)? == Some(true),
            prices: match (row.get::<i64>(12)?, row.get::<i64>(13)?) {
                (Some(input), Some(output)) => Some(budget::Prices {
                    input: input.max(0) as u64,
                    output: output.max(0) as u64,
                }),
                _ => None,
            },
            loop_tools: row.get::<Vec<String>>(14)?.map(|names| {
                (
                    names,
                    row.get::<i64>(15)
                        .ok()
                        .flatten()
                        .map_or(0, |b| b.max(0) as u64),
                )
            }),
        });
        heads.push((
            row.get::<i32>(3)?.unwrap_or(0),
            row.get::<i64>(4)?.unwrap_or(0),
        ));
        weights.push(row.get::<f64>(8)?.unwrap_or(1.0));
    }
    let mut chosen: Chosen = vec![];
    let mut holds: Vec<Hold> = vec![];
    // What the claim has locked per agent, so that a second round asks for others.
    let mut locked: Vec<Vec<Uuid>> = vec![vec![]; due.len()];
    let lock = |client: &mut SpiClient,
                i: usize,
                n: u64,
                locked: &mut Vec<Vec<Uuid>>|
     -> SpiResult<Vec<Uuid>> {
        let d = &due[i];
        let mut ids = vec![];
        for row in client.update(
            &plans.lock,
            None,
            &[
                d.organization.into(),
                d.agent.into(),
                i64::try_from(n).unwrap_or(i64::MAX).into(),
                locked[i].clone().into(),
            ],
        )? {
            if let Some(id) = row.get::<Uuid>(1)? {
                ids.push(id);
            }
        }
        // Fewer than asked: the agent has no more, or another claimer holds them; then the
        // worker must look again soon.
        locked[i].extend(&ids);
        if (ids.len() as u64) < n && has_more(client, &plans, d, &locked[i])? {
            look_within(0);
        }
        Ok(ids)
    };

    // An agent without a version fails its tasks without a call: no limit applies to them.
    for i in (0..due.len()).filter(|&i| due[i].version.is_none()) {
        let left = wanted - chosen.len() as u64;
        if left == 0 {
            break;
        }
        chosen.extend(
            lock(client, i, left, &mut locked)?
                .into_iter()
                .map(|id| (id, due[i].organization, None, None)),
        );
    }

    // The room each tier has, as the limiter sees it now.
    let mut organizations: Vec<share::Organization> = vec![];
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut agents: Vec<share::Agent> = vec![];
    let mut of_agent: Vec<usize> = vec![];
    let mut tokens_on: Vec<bool> = vec![];
    let mut global_room = u64::MAX;
    for (i, d) in due.iter().enumerate() {
        if d.version.is_none() {
            continue;
        }
        if let Some(paused) = d.paused {
            holds.push(Hold::new(d, paused));
            continue;
        }
        let room = ratelimit::room(&d.organization, &d.agent).or_report();
        global_room = global_room.min(room.left[0]);
        if let Some(refused) = room.refused {
            holds.push(Hold::new(d, refused));
            continue;
        }
        let organization = *index.entry(d.organization).or_insert_with(|| {
            organizations.push(share::Organization {
                weight: weights[i],
                used: room.limits[1].saturating_sub(room.left[1]),
                room: room.left[1],
            });
            organizations.len() - 1
        });
        agents.push(share::Agent {
            organization,
            priority: heads[i].0,
            due_us: heads[i].1,
            used: room.limits[2].saturating_sub(room.left[2]),
            room: room.left[2],
            due: u64::MAX,
        });
        of_agent.push(i);
        tokens_on.push(room.tokens_on);
    }

    // Rounds of sharing: an agent that had fewer due tasks than it was given leaves its slots
    // to the others in the next round.
    while (chosen.len() as u64) < wanted {
        let given = share::share(
            &organizations,
            &agents,
            global_room,
            wanted - chosen.len() as u64,
        );
        let mut progress = false;
        for (a, &n) in given.iter().enumerate().filter(|(_, &n)| n > 0) {
            let i = of_agent[a];
            let ids = lock(client, i, n, &mut locked)?;
            if (ids.len() as u64) < n {
                agents[a].due = 0;
            }
            let d = &due[i];
            let bounds = if tokens_on[a] || d.budgeted {
                token_bounds(client, &plans, d, &ids)?
            } else {
                vec![0; ids.len()]
            };
            // Of the locked tasks, those whose most expensive outcome the budgets can pay.
            let costs: Vec<u64> = bounds
                .iter()
                .map(|&b| budget::cost_bound(b, d.max_tokens, d.prices))
                .collect();
            let room = if d.budgeted {
                budget_room(client, &plans, d)?
            } else {
                None
            };
            let payable = match &room {
                None => ids.len(),
                Some(BudgetRoom::Busy) => {
                    look_within(0);
                    agents[a].room = 0;
                    0
                }
                Some(BudgetRoom::Room { pico, .. }) => budget::fitting(&costs, *pico),
            };
            let (reservations, refused) = take_up_to(d, &bounds[..payable]).or_report();
            let taken = reservations.len() as u64;
            let budgeted = matches!(room, Some(BudgetRoom::Room { .. }));
            chosen.extend(
                ids.iter()
                    .zip(&costs)
                    .take(reservations.len())
                    .map(|(&id, &cost)| {
                        (
                            id,
                            d.organization,
                            d.version,
                            budgeted.then(|| i64::try_from(cost).unwrap_or(i64::MAX)),
                        )
                    }),
            );
            if tokens_on[a] {
                RESERVATIONS.with_borrow_mut(|r| {
                    r.extend(ids.iter().map(Uuid::to_string).zip(reservations))
                });
            }
            if let Some(BudgetRoom::Room {
                agent_budget,
                retry_after_us,
                ..
            }) = room
            {
                let reserved: u64 = costs[..taken as usize].iter().sum();
                let next = costs.get(payable);
                client.update(
                    &plans.budget_reserve,
                    None,
                    &[
                        d.organization.into(),
                        d.agent.into(),
                        i64::try_from(reserved).unwrap_or(i64::MAX).into(),
                        next.map(|&c| i64::try_from(c).unwrap_or(i64::MAX)).into(),
                    ],
                )?;
                if payable < ids.len() && refused.is_none() {
                    agents[a].room = 0;
                    holds.push(Hold {
                        organization: d.organization,
                        agent: agent_budget.then_some(d.agent),
                        tier: "budget",
                        retry_after_us,
                    });
                }
            }
            let org = agents[a].organization;
            agents[a].used += taken;
            agents[a].room = agents[a].room.saturating_sub(taken);
            organizations[org].used += taken;
            organizations[org].room = organizations[org].room.saturating_sub(taken);
            global_room = global_room.saturating_sub(taken);
            if let Some(refused) = refused {
                // Another session took the room meanwhile.
                agents[a].room = 0;
                holds.push(Hold::new(&due[i], refused));
            }
            progress |= taken > 0;
        }
        if !progress {
            break;
        }
    }

    // An agent whose room this claim used up, with due tasks left, is held back too.
    if (chosen.len() as u64) < wanted {
        for (a, agent) in agents.iter().enumerate() {
            let d = &due[of_agent[a]];
            let full =
                agent.room == 0 || organizations[agent.organization].room == 0 || global_room == 0;
            if !full || agent.due == 0 || holds.iter().any(|h| h.covers(d)) {
                continue;
            }
            if let Some(refused) = ratelimit::room(&d.organization, &d.agent)
                .or_report()
                .refused
            {
                if has_more(client, &plans, d, &locked[of_agent[a]])? {
                    holds.push(Hold::new(d, refused));
                }
            }
        }
    }

    let taken: Vec<Uuid> = chosen.iter().map(|(id, ..)| *id).collect();
    for hold in &holds {
        look_within(hold.retry_after_us);
        let name = match hold.agent {
            Some(agent) => format!("held:agent:{agent}"),
            None => format!("held:organization:{}", hold.organization),
        };
        if !ratelimit::first_in_window(&name, MINUTE_US).or_report() {
            continue;
        }
        client.update(
            &plans.log_hold,
            None,
            &[
                hold.organization.into(),
                hold.agent.into(),
                hold.tier.into(),
                (hold.retry_after_us as f64 / 1e6).into(),
                COUNT_AT_MOST.into(),
                taken.clone().into(),
            ],
        )?;
    }
    Ok(chosen)
}
