//! Rate limits through SQL on real servers: exact tiers under 16 hammering sessions, atomic
//! refusals, the guide's 60-task scenario through claim_due_tasks, overrides and settings
//! applied at run time, pauses, resets, the usage view, and bad input. Tests that need the
//! default global limit of 400 per minute run on clusters of their own.
use ai_agents_tests::postgres::{Client, NoTls};
use ai_agents_tests::{create_agent, error_of, fresh_database, Cluster};
use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const LIMITS: [(&str, usize); 3] = [("global", 400), ("organization", 100), ("agent", 50)];

/// One check: when (server clock, microseconds), for whom, and the answer.
struct Call {
    at_us: i64,
    organization: usize,
    agent: usize,
    refused_tier: Option<String>,
}

fn most_in_any_window(sorted: &[i64], window_us: i64) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= window_us {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

fn admitted_within(sorted: &[i64], from_us: i64, to_us: i64) -> usize {
    sorted.partition_point(|&t| t <= to_us) - sorted.partition_point(|&t| t <= from_us)
}

/// 16 sessions call check_rate_limit as fast as they can for 65 seconds, over 6 organizations
/// of 3 agents each, skewed so that every tier binds at some point. Afterwards, from the
/// server's timestamps: no 60-second window admitted more than a tier's limit, and every
/// refusal was justified (the refusing key really was at its limit, to the documented 0.5 s
/// granularity).
#[test]
fn sixteen_sessions_never_exceed_any_tier_and_are_never_refused_under_it() {
    const SESSIONS: usize = 16;
    const ORGANIZATIONS: usize = 6;
    const AGENTS: usize = 3;
    let cluster = Cluster::start("hammer", &[]);
    let (mut c, db) = cluster.fresh_database();
    let ids: Vec<(String, Vec<String>)> = (0..ORGANIZATIONS)
        .map(|_| {
            let org: String = c
                .query_one("SELECT gen_random_uuid()::text", &[])
                .unwrap()
                .get(0);
            let agents = (0..AGENTS)
                .map(|_| {
                    c.query_one("SELECT gen_random_uuid()::text", &[])
                        .unwrap()
                        .get(0)
                })
                .collect();
            (org, agents)
        })
        .collect();
    let ids = Arc::new(ids);
    let start = Arc::new(Barrier::new(SESSIONS));
    let run_for = Duration::from_secs(65);
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let (ids, start, conninfo) =
                (Arc::clone(&ids), Arc::clone(&start), cluster.conninfo(&db));
            thread::spawn(move || {
                let mut client = Client::connect(&conninfo, NoTls).unwrap();
                let check = client
                    .prepare(
                        "SELECT refused_tier, (extract(epoch FROM clock_timestamp()) * 1e6)::int8 \
                         FROM ai_agents.check_rate_limit($1::text::uuid, $2::text::uuid)",
                    )
                    .unwrap();
                let mut calls = vec![];
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (s as u64 + 1);
                start.wait();
                let began = Instant::now();
                while began.elapsed() < run_for {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Half the calls go to one agent, a fifth to its organization's other
                    // agents, the rest anywhere: each tier gets to be the one that binds.
                    let (organization, agent) = match seed % 10 {
                        0..=4 => (0, 0),
                        5 | 6 => (0, 1 + (seed >> 8) as usize % (AGENTS - 1)),
                        _ => (
                            1 + (seed >> 8) as usize % (ORGANIZATIONS - 1),
                            (seed >> 16) as usize % AGENTS,
                        ),
                    };
                    let (org_id, agent_ids) = &ids[organization];
                    let row = client
                        .query_one(&check, &[org_id, &agent_ids[agent]])
                        .unwrap();
                    calls.push(Call {
                        at_us: row.get(1),
                        organization,
                        agent,
                        refused_tier: row.get(0),
                    });
                    // A short pause now and then lets windows drain unevenly.
                    if seed.is_multiple_of(97) {
                        thread::sleep(Duration::from_millis(seed % 300));
                    }
                }
                calls
            })
        })
        .collect();
    let calls: Vec<Call> = sessions
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();

    // Admissions per key, sorted by time.
    let mut admitted: HashMap<(usize, Option<usize>, Option<usize>), Vec<i64>> = HashMap::new();
    for call in calls.iter().filter(|c| c.refused_tier.is_none()) {
        for key in [
            (0, None, None),
            (1, Some(call.organization), None),
            (2, Some(call.organization), Some(call.agent)),
        ] {
            admitted.entry(key).or_default().push(call.at_us);
        }
    }
    admitted.values_mut().for_each(|v| v.sort_unstable());
    // Timestamps are read just after each check, so sessions may see them out of order by a
    // scheduling delay: allow 200 ms for that on both sides.
    const SKEW_US: i64 = 200_000;
    const WINDOW_US: i64 = 60_000_000;
    const GRANULARITY_US: i64 = 500_000;
    for (&(tier, _, _), times) in &admitted {
        let (name, limit) = LIMITS[tier];
        let most = most_in_any_window(times, WINDOW_US - SKEW_US);
        assert!(
            most <= limit,
            "{name}: {most} admitted within one window (limit {limit})"
        );
    }
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for call in calls.iter().filter(|c| c.refused_tier.is_some()) {
        let tier = call.refused_tier.as_deref().unwrap();
        *refusals.entry(tier.to_string()).or_default() += 1;
        let (index, key) = match tier {
            "global" => (0, (0, None, None)),
            "organization" => (1, (1, Some(call.organization), None)),
            "agent" => (2, (2, Some(call.organization), Some(call.agent))),
            other => panic!("unexpected refusing tier {other}"),
        };
        let times = admitted.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let lookback = WINDOW_US + GRANULARITY_US + SKEW_US;
        let counted = admitted_within(times, call.at_us - lookback, call.at_us + SKEW_US);
        assert!(
            counted >= LIMITS[index].1,
            "refused at the {tier} tier with only {counted} admitted in the window"
        );
    }
    let global_most = most_in_any_window(&admitted[&(0, None, None)], WINDOW_US - SKEW_US);
    println!(
        "hammer: {} calls, {} admitted, refusals by tier {refusals:?}, busiest global window {global_most}",
        calls.len(),
        admitted[&(0, None, None)].len()
    );
    // The test means something only if the limits were reached.
    assert_eq!(global_most, 400, "the global tier was saturated");
    for tier in ["global", "organization", "agent"] {
        assert!(
            refusals.contains_key(tier),
            "no refusal at the {tier} tier: {refusals:?}"
        );
    }
}

fn usage(c: &mut Client, key: &str) -> Option<i64> {
    c.query_opt(
        "SELECT used FROM ai_agents.rate_limit_usage WHERE key = $1",
        &[&key],
    )
    .unwrap()
    .map(|r| r.get(0))
}

#[test]
fn a_refusal_at_one_tier_takes_nothing_at_the_others() {
    let cluster = Cluster::start("atomic", &[]);
    let (mut c, _) = cluster.fresh_database();
    let ids: Vec<String> = (0..4)
        .map(|_| {
            c.query_one("SELECT gen_random_uuid()::text", &[])
                .unwrap()
                .get(0)
        })
        .collect();
    let (org, a1, a2, a3) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let check = |c: &mut Client, agent: &str| -> Option<String> {
        c.query_one(
            "SELECT refused_tier FROM ai_agents.check_rate_limit($1::text::uuid, $2::text::uuid)",
            &[org, &agent],
        )
        .unwrap()
        .get(0)
    };
    for _ in 0..50 {
        assert_eq!(check(&mut c, a1), None);
    }
    assert_eq!(check(&mut c, a1).as_deref(), Some("agent"));
    assert_eq!(usage(&mut c, "global"), Some(50));
    assert_eq!(usage(&mut c, &format!("organization:{org}")), Some(50));
    for _ in 0..50 {
        assert_eq!(check(&mut c, a2), None);
    }
    assert_eq!(check(&mut c, a3).as_deref(), Some("organization"));
    assert_eq!(usage(&mut c, "global"), Some(100));
    assert_eq!(usage(&mut c, &format!("agent:{a3}")), Some(0));
    // A refusal reports when a retry would pass, and what is left at each tier.
    let row = c
        .query_one(
            "SELECT allowed, extract(epoch FROM retry_after)::float8, remaining_global, remaining_organization, \
             remaining_agent FROM ai_agents.check_rate_limit($1::text::uuid, $2::text::uuid)",
            &[org, a1],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    let retry: f64 = row.get(1);
    assert!(retry > 0.0 && retry <= 60.5, "{retry}");
    assert_eq!(
        (
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
            row.get::<_, i64>(4)
        ),
        (300, 0, 0)
    );
}

/// Claims every task it may and completes each; returns how many.
fn claim_and_complete(c: &mut Client) -> usize {
    let claimed = c
        .query("SELECT ai_agents.complete_task(id, fencing_token, 'sent') FROM ai_agents.claim_due_tasks('w', 100)", &[])
        .unwrap();
    claimed.len()
}

/// The guide's Step 4.4 through claim_due_tasks with the default limits: 50 of 60 tasks run in
/// the first minute; the other 10 are held back (not failed, not rewritten, no attempt used),
/// with one activity row for the agent, and run in the next window.
#[test]
fn the_guides_sixty_tasks_run_fifty_now_and_ten_in_the_next_window() {
    let (mut c, _) = fresh_database();
    let (org, agent) = create_agent(&mut c, "Lead Follow-up");
    let guide = std::fs::read_to_string(format!(
        "{}/guide/step4_4_create_60_tasks.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("YOUR_AGENT_UUID", &agent)
    .replace("YOUR_ORG_UUID", &org);
    c.batch_execute(&guide).unwrap();
    assert_eq!(claim_and_complete(&mut c), 50);
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE next_run_at <= now() AND updated_at = created_at), \
                    max(attempts) \
             FROM ai_agents.ai_agent_tasks WHERE status = 'pending'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (10, 10),
        "held back, due and unwritten"
    );
    assert_eq!(row.get::<_, i32>(2), 0, "holding back uses no attempt");
    let held = |c: &mut Client| -> Vec<(Option<String>, String, i64, f64)> {
        c.query(
            "SELECT agent_id::text, details ->> 'tier', (details ->> 'held_back')::int8, \
                    (details ->> 'retry_after_seconds')::float8 \
             FROM ai_agents.ai_agent_activity_log WHERE action_type = 'rate_limited'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    };
    let rows = held(&mut c);
    assert_eq!(rows.len(), 1, "one row for the agent: {rows:?}");
    let (who, tier, count, wait) = rows[0].clone();
    assert_eq!(
        (who.as_deref(), tier.as_str(), count),
        (Some(agent.as_str()), "agent", 10)
    );
    assert!(
        wait > 55.0 && wait <= 60.5,
        "the window frees room in {wait} s"
    );
    // Nothing more now, and no second row in this window; all ten once the window moved on.
    assert_eq!(claim_and_complete(&mut c), 0);
    assert_eq!(held(&mut c).len(), 1);
    thread::sleep(Duration::from_secs_f64(wait + 0.5));
    assert_eq!(claim_and_complete(&mut c), 10);
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed') \
             FROM ai_agents.ai_agent_tasks WHERE title LIKE 'Rate Limit Test%'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (60, 0));
}

#[test]
fn overrides_and_settings_apply_without_a_restart() {
    let cluster = Cluster::start("reload", &[]);
    let (mut c, _) = cluster.fresh_database();
    let (org, agent) = create_agent(&mut c, "a");
    let remaining = |c: &mut Client| -> (i64, i64, i64) {
        let row = c
            .query_one(
                "SELECT remaining_global, remaining_organization, remaining_agent \
                 FROM ai_agents.peek_rate_limit($1::text::uuid, $2::text::uuid)",
                &[&org, &agent],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(remaining(&mut c), (399, 99, 49));
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_per_minute) \
         VALUES ('{org}', NULL, 20), ('{org}', '{agent}', 5)"
    ))
    .unwrap();
    assert_eq!(remaining(&mut c), (399, 19, 4));
    // Another session sees the change too, and an update as well.
    let mut other = cluster.connect(
        &c.query_one("SELECT current_database()", &[])
            .unwrap()
            .get::<_, String>(0),
    );
    other
        .batch_execute(&format!("UPDATE ai_agents.ai_agent_rate_limits SET max_per_minute = 7 WHERE agent_id = '{agent}'"))
        .unwrap();
    assert_eq!(remaining(&mut c), (399, 19, 6));
    // An uncommitted change is not seen by others.
    other
        .batch_execute("BEGIN; DELETE FROM ai_agents.ai_agent_rate_limits;")
        .unwrap();
    assert_eq!(remaining(&mut c), (399, 19, 6));
    other.batch_execute("COMMIT").unwrap();
    assert_eq!(remaining(&mut c), (399, 99, 49));
    // Settings reload.
    for statement in [
        "ALTER SYSTEM SET ai_agents.rate_limit_global_per_minute = 1000",
        "ALTER SYSTEM SET ai_agents.rate_limit_agent_per_minute = 9",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(statement).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while remaining(&mut c) != (999, 99, 8) {
        assert!(
            Instant::now() < deadline,
            "reload not applied: {:?}",
            remaining(&mut c)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn app_keys_pause_reset_and_the_usage_view() {
    let (mut c, _) = fresh_database();
    let allowed = |c: &mut Client, key: &str, max: i32, cost: i32| -> bool {
        c.query_one(
            "SELECT allowed FROM ai_agents.rate_limit($1, $2, '2 seconds', $3)",
            &[&key, &max, &cost],
        )
        .unwrap()
        .get(0)
    };
    let key = format!("sms:{}", std::process::id());
    assert!(allowed(&mut c, &key, 5, 3));
    assert!(allowed(&mut c, &key, 5, 2));
    assert!(!allowed(&mut c, &key, 5, 1));
    let row = c
        .query_one(
            "SELECT max, used, remaining FROM ai_agents.rate_limit_usage WHERE key = $1",
            &[&format!("app:{key}")],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (5, 5, 0)
    );
    // A sliding window: after two seconds (and one 17 ms bucket) the whole window is free.
    thread::sleep(Duration::from_millis(2100));
    assert!(allowed(&mut c, &key, 5, 5));
    // Reset forgets the key.
    let reset: i64 = c
        .query_one(
            "SELECT ai_agents.reset_rate_limit($1)",
            &[&format!("app:{key}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(reset, 1);
    assert!(allowed(&mut c, &key, 5, 5));

    // A pause (a provider's Retry-After) refuses until its time, at every tier it names.
    let (org, agent) = create_agent(&mut c, "paused");
    c.execute(
        "SELECT ai_agents.pause_rate_limit('agent:' || $1, now() + interval '1.5 seconds')",
        &[&agent],
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT refused_tier, extract(epoch FROM retry_after)::float8 \
             FROM ai_agents.check_rate_limit($1::text::uuid, $2::text::uuid)",
            &[&org, &agent],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("agent"));
    let wait: f64 = row.get(1);
    assert!(wait > 1.0 && wait <= 1.5, "{wait}");
    let paused: bool = c
        .query_one("SELECT paused_for IS NOT NULL FROM ai_agents.rate_limit_usage WHERE key = 'agent:' || $1", &[&agent])
        .unwrap()
        .get(0);
    assert!(paused);
    thread::sleep(Duration::from_millis(1600));
    let refused: Option<String> = c
        .query_one(
            "SELECT refused_tier FROM ai_agents.check_rate_limit($1::text::uuid, $2::text::uuid)",
            &[&org, &agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(refused, None);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let (mut c, _) = fresh_database();
    for (sql, code, needle) in [
        (
            "SELECT * FROM rate_limit('k', 0, '1 minute')",
            "22023",
            "max must be positive",
        ),
        (
            "SELECT * FROM rate_limit('k', -5, '1 minute')",
            "22023",
            "max must be positive",
        ),
        (
            "SELECT * FROM rate_limit('k', 5, '0 seconds')",
            "22023",
            "window must be a positive interval",
        ),
        (
            "SELECT * FROM rate_limit('k', 5, '-1 minute')",
            "22023",
            "window must be a positive interval",
        ),
        (
            "SELECT * FROM rate_limit('k', 5, '1 minute', 0)",
            "22023",
            "cost must be positive",
        ),
        (
            "SELECT * FROM rate_limit('k', 5, '1 minute', 6)",
            "22023",
            "cost 6 exceeds max 5",
        ),
        (
            "SELECT * FROM rate_limit(NULL, 5, '1 minute')",
            "22004",
            "key must not be null",
        ),
        (
            "SELECT * FROM rate_limit('k', NULL, '1 minute')",
            "22004",
            "max must not be null",
        ),
        (
            "SELECT * FROM check_rate_limit(NULL, gen_random_uuid())",
            "22004",
            "organization_id must not be null",
        ),
        (
            "SELECT * FROM check_rate_limit(gen_random_uuid(), NULL)",
            "22004",
            "agent_id must not be null",
        ),
        (
            "SELECT * FROM check_rate_limit(gen_random_uuid(), gen_random_uuid(), 0)",
            "22023",
            "cost must be positive",
        ),
        (
            "SELECT * FROM peek_rate_limit(gen_random_uuid(), gen_random_uuid(), 51)",
            "22023",
            "exceeds the agent limit",
        ),
        (
            "SELECT pause_rate_limit(NULL, now())",
            "22004",
            "key must not be null",
        ),
    ] {
        let (got, message) = error_of(&mut c, sql);
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(needle), "{sql}: {message}");
    }
}

#[test]
fn without_preloading_the_functions_name_the_setting() {
    let cluster = Cluster::start("no_preload", &["shared_preload_libraries = ''"]);
    let (mut c, _) = cluster.fresh_database();
    // Tasks can be enqueued; they wait for a server that preloads the library.
    let (_, agent) = create_agent(&mut c, "a");
    c.execute(
        "SELECT ai_agents.enqueue_task($1::text::uuid, 'waits')",
        &[&agent],
    )
    .unwrap();
    for sql in [
        "SELECT * FROM ai_agents.check_rate_limit(gen_random_uuid(), gen_random_uuid())",
        "SELECT * FROM ai_agents.rate_limit('k', 1, '1 minute')",
        "SELECT * FROM ai_agents.rate_limit_usage",
        "SELECT * FROM ai_agents.claim_due_tasks('w', 1)",
    ] {
        let (code, message) = error_of(&mut c, sql);
        assert_eq!(code, "55000", "{sql}: {message}");
        assert!(
            message.contains("shared_preload_libraries"),
            "{sql}: {message}"
        );
    }
}
