//! Spend under control (issue [cost]): what a call costs is recorded exactly, cached input
//! at its own rates, and the token tiers hold a minute's tokens to their limit.
use ai_agents_tests::postgres::fallible_iterator::FallibleIterator;
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, enqueue, error_of, fresh_database, wait_for, WorkerEnv};
use serde_json::json;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Records a reply for the one claimed task of `agent`, as the worker would; returns the
/// task's and its activity row's recorded cost.
fn record(c: &mut Client, agent: &str, model: &str, input: i64, output: i64) -> (String, String) {
    c.execute(
        "SELECT ai_agents.enqueue_task($1::text::uuid, 'a small call')",
        &[&agent],
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT id::text, fencing_token FROM ai_agents.claim_due_tasks('w', 1)",
            &[],
        )
        .unwrap();
    let (task, token): (String, i64) = (row.get(0), row.get(1));
    let status: String = c
        .query_one(
            "SELECT status FROM ai_agents._record_llm_replies(
                 ARRAY[$1::text::uuid], ARRAY[$2::bigint], ARRAY['ok'], ARRAY[$3::bigint],
                 ARRAY[$4::bigint], ARRAY[0::bigint], ARRAY[0::bigint], ARRAY[$5::text],
                 ARRAY[NULL::text], ARRAY[3])",
            &[&task, &token, &input, &output, &model],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "completed");
    let row = c
        .query_one(
            "SELECT t.cost_usd::text, l.cost_usd::text
               FROM ai_agents.ai_agent_tasks t
               JOIN ai_agents.ai_agent_activity_log l ON l.task_id = t.id AND l.action_type = 'task_completed'
              WHERE t.id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn a_small_calls_cost_is_recorded_to_the_last_digit() {
    let (mut c, _db) = fresh_database();
    let (_, agent) = create_agent(&mut c, "Front desk");
    // gpt-4o-mini: $0.15 and $0.60 per million tokens. 10 in, 20 out: $0.0000135, which
    // 0.1.0 recorded as $0.000014.
    let (task, activity) = record(&mut c, &agent, "gpt-4o-mini", 10, 20);
    assert_eq!(
        (task.as_str(), activity.as_str()),
        ("0.000013500000", "0.000013500000")
    );
    // One token of the cheapest model: $0.0000001.
    let (task, _) = record(&mut c, &agent, "gpt-4.1-nano", 1, 0);
    assert_eq!(task, "0.000000100000");
}

/// `n` pico-dollars (10^-12 USD) as PostgreSQL prints a numeric with 12 decimals.
fn dollars(n: u128) -> String {
    format!("{}.{:012}", n / 1_000_000_000_000, n % 1_000_000_000_000)
}

#[test]
fn ten_thousand_small_calls_sum_to_the_sum_of_their_exact_costs() {
    let (mut c, _db) = fresh_database();
    // Prices per million tokens, in micro-dollars: a token costs that many pico-dollars.
    for (provider, model, input_price, output_price) in [
        ("openai", "gpt-4o-mini", 150_000u128, 600_000u128),
        ("anthropic", "claude-3-5-haiku-latest", 800_000, 4_000_000),
    ] {
        let exact: u128 = (1..=10_000u128)
            .map(|g| (g % 97) * input_price + (g % 89) * output_price)
            .sum();
        let summed: String = c
            .query_one(
                "SELECT sum(ai_agents._llm_cost_usd($1, $2, g % 97, g % 89, 0, 0))::text
                   FROM generate_series(1::bigint, 10000) g",
                &[&provider, &model],
            )
            .unwrap()
            .get(0);
        println!("cost: 10,000 calls of {model}: ${summed}");
        assert_eq!(summed, dollars(exact), "{model}");
    }
}

/// A recorded task's cost, tokens and activity details.
fn recorded(c: &mut Client, task: &str) -> (String, i32, serde_json::Value) {
    let row = c
        .query_one(
            "SELECT t.cost_usd::text, t.tokens_used, l.details::text
               FROM ai_agents.ai_agent_tasks t
               JOIN ai_agents.ai_agent_activity_log l ON l.task_id = t.id AND l.action_type = 'task_completed'
              WHERE t.id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    let details: String = row.get(2);
    (
        row.get(0),
        row.get(1),
        serde_json::from_str(&details).unwrap(),
    )
}

#[test]
fn cached_and_cache_write_tokens_are_priced_at_their_own_rates() {
    let env = WorkerEnv::start("cost-cache", &[]);
    let mut c = env.connect();
    // Prices in micro-dollars per million tokens, that is pico-dollars per token: input,
    // cached input, cache write, output (the built-in list prices).
    let cases = [
        (
            "openai",
            "gpt-4o-mini",
            json!({"prompt_tokens": 2007, "completion_tokens": 301,
                   "prompt_tokens_details": {"cached_tokens": 1921}}),
            // uncached input, cached, written, output
            [2007 - 1921, 1921, 0, 301],
            [150_000u128, 75_000, 150_000, 600_000],
        ),
        (
            "anthropic",
            "claude-3-5-haiku-latest",
            json!({"input_tokens": 51, "output_tokens": 7,
                   "cache_creation_input_tokens": 1203, "cache_read_input_tokens": 3001}),
            [51, 3001, 1203, 7],
            [800_000, 80_000, 1_000_000, 4_000_000],
        ),
    ];
    for (provider, model, usage, counts, prices) in cases {
        let agent: String = c
            .query_one(
                "INSERT INTO ai_agents (organization_id, name, agent_type, system_prompt, provider, model)
                 VALUES (gen_random_uuid(), 'Cached', 'finance', 'You watch the money.', $1, $2)
                 RETURNING id::text",
                &[&provider, &model],
            )
            .unwrap()
            .get(0);
        let marker = format!("cached-{agent}");
        env.stub.script(json!({"match": marker, "usage": usage}));
        let task = enqueue(&mut c, &agent, &marker);
        wait_for(
            &mut c,
            &task,
            "status = 'completed'",
            Duration::from_secs(10),
        );
        let by_hand: u128 = counts.iter().zip(prices).map(|(&n, p)| n * p).sum();
        let (cost, tokens, details) = recorded(&mut c, &task);
        println!("cost: {model} with cached input: ${cost}");
        assert_eq!(cost, dollars(by_hand), "{model}");
        let input = counts[0] + counts[1] + counts[2];
        assert_eq!(tokens as u128, input + counts[3], "{model}");
        assert_eq!(details["input_tokens"], json!(input as u64), "{model}");
        assert_eq!(
            details["cached_input_tokens"],
            json!(counts[1] as u64),
            "{model}"
        );
        assert_eq!(
            details["cache_write_tokens"],
            json!(counts[2] as u64),
            "{model}"
        );
    }
    // A price without cached rates bills cached input as input.
    c.batch_execute(
        "INSERT INTO ai_agent_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok)
         VALUES ('openai', 'no-cache-rate', 1.000001, 2)",
    )
    .unwrap();
    let cost: String = c
        .query_one(
            "SELECT ai_agents._llm_cost_usd('openai', 'no-cache-rate', 1000, 10, 900, 0)::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cost, dollars(1000 * 1_000_001 + 10 * 2_000_000));
}

#[test]
fn token_tiers_take_what_a_call_asks_and_refuse_past_the_limit() {
    let (mut c, _db) = fresh_database();
    let (org, agent) = create_agent(&mut c, "Front desk");
    c.execute(
        "INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, max_tokens_per_minute)
         VALUES ($1::text::uuid, 1000)",
        &[&org],
    )
    .unwrap();
    let check = |c: &mut Client, function: &str, tokens: i64| {
        let row = c
            .query_one(
                &format!(
                    "SELECT allowed, refused_tier, extract(epoch FROM retry_after)::float8,
                            remaining_organization, remaining_global_tokens,
                            remaining_organization_tokens, remaining_agent_tokens
                       FROM ai_agents.{function}($1::text::uuid, $2::text::uuid, 1, $3)"
                ),
                &[&org, &agent, &tokens],
            )
            .unwrap();
        (
            row.get::<_, bool>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<f64>>(2),
            row.get::<_, i64>(3),
            row.get::<_, Option<i64>>(4),
            row.get::<_, Option<i64>>(5),
            row.get::<_, Option<i64>>(6),
        )
    };
    // Only the organization's token tier is on: the others report NULL.
    assert_eq!(
        check(&mut c, "check_rate_limit", 600),
        (true, None, None, 99, None, Some(400), None)
    );
    assert_eq!(
        check(&mut c, "peek_rate_limit", 400),
        (true, None, None, 98, None, Some(0), None)
    );
    let (allowed, tier, retry, ..) = check(&mut c, "check_rate_limit", 401);
    assert_eq!(
        (allowed, tier.as_deref()),
        (false, Some("organization_tokens"))
    );
    let retry = retry.unwrap();
    assert!(retry > 59.0 && retry <= 60.5, "{retry}");
    // The refusal took nothing: 400 still fit, and then the tier is full.
    assert_eq!(
        check(&mut c, "check_rate_limit", 400),
        (true, None, None, 98, None, Some(0), None)
    );
    assert!(!check(&mut c, "check_rate_limit", 1).0);
    // An agent's own token limit, beside its organization's.
    c.execute(
        "INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_tokens_per_minute)
         SELECT organization_id, id, 50 FROM ai_agents.ai_agents WHERE id = $1::text::uuid",
        &[&agent],
    )
    .unwrap();
    let (.., agent_left) = check(&mut c, "peek_rate_limit", 0);
    assert_eq!(agent_left, Some(50));
    // Bad input names the problem.
    let sql = |tokens: &str| {
        format!("SELECT * FROM ai_agents.check_rate_limit('{org}', '{agent}', 1, {tokens})")
    };
    assert_eq!(
        error_of(&mut c, &sql("51")),
        (
            "22023".to_string(),
            "tokens 51 exceed the agent_tokens limit of 50 per minute".to_string()
        )
    );
    assert_eq!(
        error_of(&mut c, &sql("-1")),
        (
            "22023".to_string(),
            "tokens must not be negative, got -1".to_string()
        )
    );
    assert_eq!(
        error_of(&mut c, &sql("NULL")),
        ("22004".to_string(), "tokens must not be null".to_string())
    );
    let (code, message) = error_of(
        &mut c,
        &format!("INSERT INTO ai_agents.ai_agent_rate_limits (organization_id) VALUES ('{org}')"),
    );
    assert_eq!(code, "23514", "{message}");
    assert!(
        message.contains("ai_agent_rate_limits_some_limit_check"),
        "{message}"
    );
    let (code, message) = error_of(
        &mut c,
        &format!(
            "UPDATE ai_agents.ai_agent_rate_limits SET max_tokens_per_minute = 0
              WHERE organization_id = '{org}'"
        ),
    );
    assert_eq!(code, "23514", "{message}");
}

/// 32 calls at once at most, of random sizes and random scripted usage, against a global
/// limit of 10,000 tokens a minute, for five minutes: no window of a minute (by the calls'
/// start times) settles more than 10,000 tokens, and the calls settle at least 80% of what
/// five minutes allow.
#[test]
fn a_token_limit_holds_every_minute_and_is_used() {
    const LIMIT: i64 = 10_000;
    let env = WorkerEnv::start(
        "cost-tpm",
        &[
            "ai_agents.rate_limit_global_tokens_per_minute = 10000",
            "ai_agents.max_concurrent_calls = 32",
        ],
    );
    let mut c = env.connect();
    let mut seed = 0x70c3_u64;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    // Four organizations, 150 tasks each, of 20 to 600 bytes of input; each version answers
    // in at most 200 tokens.
    let mut agents = vec![];
    for i in 0..4 {
        let (_, agent) = create_agent(&mut c, &format!("Front desk {i}"));
        c.execute(
            "UPDATE ai_agents SET max_tokens = 200 WHERE id = $1::text::uuid",
            &[&agent],
        )
        .unwrap();
        agents.push(agent);
    }
    // What each call reports, within what it may use (its prompt's bytes and max_tokens), and
    // how long it takes: 0 to 400 ms.
    let usage: Vec<serde_json::Value> = (0..700)
        .map(|_| {
            let (input, output) = (10 + next(51), 10 + next(191));
            json!({"delay_ms": next(401),
                   "usage": {"prompt_tokens": input, "completion_tokens": output}})
        })
        .collect();
    env.stub.script(serde_json::Value::Array(usage));
    let mut values = vec![];
    for n in 0..600 {
        let bytes = 20 + next(581) as usize;
        values.push(format!(
            "('{}', 'question {n}', jsonb_build_object('note', repeat('x', {bytes})))",
            agents[n % 4]
        ));
    }
    c.batch_execute(&format!(
        "INSERT INTO ai_agent_tasks (agent_id, title, input) VALUES {}",
        values.join(", ")
    ))
    .unwrap();
    let started = Instant::now();
    let run = Duration::from_secs(300);
    sleep(run + Duration::from_secs(2));
    let calls: Vec<(f64, i64)> = c
        .query(
            "SELECT extract(epoch FROM execution_started_at)::float8, tokens_used::int8
               FROM ai_agent_tasks WHERE status = 'completed' ORDER BY execution_started_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!calls.is_empty(), "no call completed");
    let first = calls[0].0;
    // A claim's start time is its transaction's, a moment before its limiter check: windows
    // of 59.9 s leave that moment out.
    let mut busiest = 0;
    for (i, &(at, _)) in calls.iter().enumerate() {
        let settled: i64 = calls[i..]
            .iter()
            .take_while(|(t, _)| t - at < 59.9)
            .map(|(_, tokens)| tokens)
            .sum();
        busiest = busiest.max(settled);
    }
    let in_five_minutes: i64 = calls
        .iter()
        .filter(|(t, _)| t - first < run.as_secs_f64())
        .map(|(_, tokens)| tokens)
        .sum();
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_activity_log
              WHERE action_type = 'rate_limited' AND details ->> 'tier' = 'global_tokens'",
            &[],
        )
        .unwrap()
        .get(0);
    println!(
        "cost: TPM limit {LIMIT}: {} calls in {:?}, busiest 59.9 s window settled {busiest} tokens, \
         {in_five_minutes} tokens in 300 s ({:.1}% of {}), {rows} holds logged",
        calls.len(),
        started.elapsed(),
        100.0 * in_five_minutes as f64 / (5 * LIMIT) as f64,
        5 * LIMIT
    );
    assert!(busiest <= LIMIT, "a minute settled {busiest} tokens");
    assert!(
        in_five_minutes * 10 >= 5 * LIMIT * 8,
        "only {in_five_minutes} tokens settled in five minutes"
    );
    assert!(rows >= 1, "the held-back organizations were not recorded");
    // Nothing failed and nothing was lost: every task completed or is still due.
    let lost: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_tasks WHERE status NOT IN ('completed', 'pending', 'running')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(lost, 0);
}

/// A POSIX time zone (PostgreSQL reads offsets to the second) whose day ends `seconds` from
/// now: a budget's next period, without waiting for midnight.
fn zone_whose_day_ends_in(c: &mut Client, seconds: i64) -> String {
    let now: f64 = c
        .query_one("SELECT extract(epoch FROM now())::float8", &[])
        .unwrap()
        .get(0);
    // Local time = UTC - offset (POSIX counts west as positive).
    let mut offset = (now as i64 % 86_400 + seconds).rem_euclid(86_400);
    if offset > 43_200 {
        offset -= 86_400;
    }
    let sign = if offset < 0 { '-' } else { '+' };
    let o = offset.abs();
    format!("<BT>{sign}{:02}:{:02}:{:02}", o / 3600, o / 60 % 60, o % 60)
}

/// Polls `sql` (a boolean) until it holds; panics after `limit`.
fn wait_until(c: &mut Client, sql: &str, limit: Duration) {
    let started = Instant::now();
    while !c.query_one(sql, &[]).unwrap().get::<_, bool>(0) {
        assert!(started.elapsed() < limit, "not within {limit:?}: {sql}");
        sleep(Duration::from_millis(50));
    }
}

/// The current period of the organization's budget: (period_start, spent, reserved, held).
fn budget_now(c: &mut Client, org: &str) -> (f64, String, String, bool) {
    let row = c
        .query_one(
            "SELECT extract(epoch FROM period_start)::float8, spent_usd::text, reserved_usd::text,
                    held_since IS NOT NULL
               FROM budget_usage WHERE organization_id = $1::text::uuid AND agent_id IS NULL",
            &[&org],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[test]
fn a_budget_is_never_overspent_alerts_once_per_threshold_and_holds_tasks_until_it_allows() {
    let env = WorkerEnv::start("cost-budget", &[]);
    let mut c = env.connect();
    let mut listener = env.connect();
    listener.batch_execute("LISTEN ai_agents_budget").unwrap();
    // A model at $10 and $40 per million tokens: a call may cost up to about $0.013.
    c.batch_execute(
        "INSERT INTO ai_agent_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok)
         VALUES ('openai', 'budget-model', 10, 40)",
    )
    .unwrap();
    let org: String = c
        .query_one(
            "INSERT INTO ai_agents (organization_id, name, agent_type, system_prompt, model, max_tokens)
             VALUES (gen_random_uuid(), 'Spender', 'finance', 'You watch the money.', 'budget-model', 300)
             RETURNING organization_id::text",
            &[],
        )
        .unwrap()
        .get(0);
    let agent: String = c
        .query_one(
            "SELECT id::text FROM ai_agents WHERE organization_id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0);
    // Calls of random cost, within their bounds: 10 to 60 tokens in, 10 to 300 out.
    let mut seed = 0xb0d6e7_u64;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let usage: Vec<serde_json::Value> = (0..1000)
        .map(|_| {
            json!({"usage": {"prompt_tokens": 10 + next(51), "completion_tokens": 10 + next(291)}})
        })
        .collect();
    env.stub.script(serde_json::Value::Array(usage));
    // $1.00 a day, in a zone whose day ends in 60 s.
    let zone = zone_whose_day_ends_in(&mut c, 60);
    let created = Instant::now();
    c.execute(
        "INSERT INTO ai_agent_budgets (organization_id, period, timezone, limit_usd)
         VALUES ($1::text::uuid, 'day', $2, 1.00)",
        &[&org, &zone],
    )
    .unwrap();
    c.execute(
        "INSERT INTO ai_agent_tasks (agent_id, title) SELECT $1::text::uuid, 'spend ' || g FROM generate_series(1, 600) g",
        &[&agent],
    )
    .unwrap();

    // The budget runs out: nothing running, the agent held back.
    let settled = "SELECT NOT EXISTS (SELECT FROM ai_agent_tasks WHERE status = 'running')
                      AND EXISTS (SELECT FROM agent_budget_state WHERE held)";
    wait_until(&mut c, settled, Duration::from_secs(30));
    let (first_period, spent, reserved, held) = budget_now(&mut c, &org);
    let first_spend: f64 = spent.parse().unwrap();
    println!(
        "cost: budget $1.00: spent ${spent} after {:?}, reserved ${reserved}",
        created.elapsed()
    );
    assert!(
        created.elapsed() < Duration::from_secs(50),
        "too slow to test within one period"
    );
    assert!((0.95..=1.0).contains(&first_spend), "spent {spent}");
    assert_eq!(reserved, "0.000000000000");
    assert!(held);
    // The spend is the exact sum of the calls' recorded costs.
    let recorded: String = c
        .query_one(
            "SELECT sum(cost_usd)::numeric(22, 12)::text FROM ai_agent_tasks WHERE status = 'completed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, spent);
    // Later tasks wait: none failed, and those not run have used no attempt.
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'failed'),
                    count(*) FILTER (WHERE status = 'pending' AND attempts = 0),
                    count(*) FILTER (WHERE status = 'completed')
               FROM ai_agent_tasks",
            &[],
        )
        .unwrap();
    let (failed, waiting, completed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(failed, 0);
    assert_eq!(waiting + completed, 600);
    // One alert per threshold, as an activity row and a notification.
    let alerts = |c: &mut Client| -> Vec<String> {
        c.query(
            "SELECT details ->> 'threshold' FROM ai_agent_activity_log
              WHERE action_type = 'budget_threshold' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(alerts(&mut c), ["0.8", "0.95"]);
    let heard: Vec<serde_json::Value> = listener
        .notifications()
        .timeout_iter(Duration::from_millis(500))
        .map(|n| Ok(serde_json::from_str(n.payload()).unwrap()))
        .collect()
        .unwrap();
    let thresholds: Vec<String> = heard.iter().map(|n| n["threshold"].to_string()).collect();
    assert_eq!(thresholds, ["0.8", "0.95"]);
    assert_eq!(heard[0]["organization_id"], org.as_str());
    let holds: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_activity_log
              WHERE action_type = 'rate_limited' AND details ->> 'tier' = 'budget' AND agent_id IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(holds, 1, "the organization's hold is recorded once");

    // A raised budget releases the tasks at once; the thresholds already alerted stay quiet.
    let raised = Instant::now();
    c.execute(
        "UPDATE ai_agent_budgets SET limit_usd = 1.50 WHERE organization_id = $1::text::uuid",
        &[&org],
    )
    .unwrap();
    wait_until(
        &mut c,
        &format!("SELECT count(*) > {completed} FROM ai_agent_tasks WHERE status = 'completed'"),
        Duration::from_secs(2),
    );
    println!(
        "cost: a raised budget ran the next task after {:?}",
        raised.elapsed()
    );
    wait_until(&mut c, settled, Duration::from_secs(30));
    let (period, spent, _, _) = budget_now(&mut c, &org);
    assert_eq!(period, first_period, "still the first period");
    let raised_spend: f64 = spent.parse().unwrap();
    assert!((1.45..=1.5).contains(&raised_spend), "spent {spent}");
    assert_eq!(alerts(&mut c).len(), 2);

    // The next period runs the rest, and alerts afresh.
    sleep((created + Duration::from_secs(61)).saturating_duration_since(Instant::now()));
    wait_until(
        &mut c,
        &format!(
            "SELECT spent_usd > 0 AND extract(epoch FROM period_start) > {first_period}
               FROM budget_usage WHERE organization_id = '{org}'"
        ),
        Duration::from_secs(10),
    );
    wait_until(&mut c, settled, Duration::from_secs(30));
    let (_, spent, _, _) = budget_now(&mut c, &org);
    let second_spend: f64 = spent.parse().unwrap();
    println!("cost: the next period spent ${spent}");
    assert!((1.45..=1.5).contains(&second_spend), "spent {spent}");
    assert_eq!(alerts(&mut c), ["0.8", "0.95", "0.8", "0.95"]);
    let failed: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_tasks WHERE status = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(failed, 0);
}

#[test]
fn an_agents_budget_holds_that_agent_only_and_every_run_end_settles_its_reservation() {
    let (mut c, _db) = fresh_database();
    let (org, capped) = create_agent(&mut c, "Capped");
    let free: String = c
        .query_one(
            "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
             VALUES ($1::text::uuid, 'Free', 'customer_care', 'gpt-4o-mini') RETURNING id::text",
            &[&org],
        )
        .unwrap()
        .get(0);
    // A call of gpt-4o-mini with max_tokens 1024 may cost up to about $0.00063: $0.001 a day
    // pays for one at a time.
    c.execute(
        "INSERT INTO ai_agents.ai_agent_budgets (organization_id, agent_id, period, limit_usd)
         VALUES ($1::text::uuid, $2::text::uuid, 'day', 0.001)",
        &[&org, &capped],
    )
    .unwrap();
    for agent in [&capped, &free] {
        for i in 0..3 {
            enqueue(&mut c, agent, &format!("task {i}"));
        }
    }
    let claimed: Vec<(String, String, i64, Option<String>)> = c
        .query(
            "SELECT id::text, agent_id::text, fencing_token, budget_reserved_usd::text
               FROM ai_agents.claim_due_tasks('w', 10) ORDER BY agent_id = $1::text::uuid",
            &[&free],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let of = |agent: &str| claimed.iter().filter(|t| t.1 == agent).count();
    assert_eq!((of(&capped), of(&free)), (1, 3), "{claimed:?}");
    // The capped task carries its reservation; the free agent's tasks none.
    let (task, _, token, reserved) = claimed[0].clone();
    let reserved = reserved.expect("a reservation");
    assert!(claimed[1..].iter().all(|t| t.3.is_none()));
    let usage = |c: &mut Client| -> (String, String, bool) {
        let row = c
            .query_one(
                "SELECT spent_usd::text, reserved_usd::text, held_since IS NOT NULL
                   FROM ai_agents.budget_usage WHERE agent_id = $1::text::uuid",
                &[&capped],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        usage(&mut c),
        ("0.000000000000".to_string(), reserved.clone(), true)
    );
    let held: Vec<(bool, bool)> = c
        .query(
            "SELECT organization_budget, held FROM ai_agents.agent_budget_state WHERE agent_id = $1::text::uuid",
            &[&capped],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(held, [(false, true)]);
    let hold: String = c
        .query_one(
            "SELECT agent_id::text FROM ai_agents.ai_agent_activity_log
              WHERE action_type = 'rate_limited' AND details ->> 'tier' = 'budget'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(hold, capped, "the agent is held back, not its organization");
    // Completion settles at the recorded cost, and the next task fits again.
    c.execute(
        "SELECT ai_agents.complete_task($1::text::uuid, $2, 'ok', cost_usd => 0.0001)",
        &[&task, &token],
    )
    .unwrap();
    assert_eq!(
        usage(&mut c),
        (
            "0.000100000000".to_string(),
            "0.000000000000".to_string(),
            true
        )
    );
    let row = c
        .query_one(
            "SELECT id::text, fencing_token FROM ai_agents.claim_due_tasks('w', 10)",
            &[],
        )
        .unwrap();
    let (second, token): (String, i64) = (row.get(0), row.get(1));
    assert_eq!(usage(&mut c).1, reserved);
    // A failure settles at nothing, as do a cancellation and a deletion.
    c.execute(
        "SELECT ai_agents.fail_task($1::text::uuid, $2, 'upstream 503', 503)",
        &[&second, &token],
    )
    .unwrap();
    assert_eq!(usage(&mut c).0, "0.000100000000");
    assert_eq!(usage(&mut c).1, "0.000000000000");
    c.execute(
        "UPDATE ai_agents.ai_agent_tasks SET next_run_at = now() WHERE id = $1::text::uuid",
        &[&second],
    )
    .unwrap();
    let third: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.claim_due_tasks('w', 10)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(usage(&mut c).1, reserved);
    c.execute("SELECT ai_agents.cancel_task($1::text::uuid)", &[&third])
        .unwrap();
    assert_eq!(usage(&mut c).1, "0.000000000000");
    let fourth: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.claim_due_tasks('w', 10)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(usage(&mut c).1, reserved);
    c.execute(
        "DELETE FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
        &[&fourth],
    )
    .unwrap();
    assert_eq!(
        usage(&mut c),
        (
            "0.000100000000".to_string(),
            "0.000000000000".to_string(),
            false
        )
    );
    // Bad budgets name the problem.
    for (sql, code, words) in [
        (
            "timezone => 'Mars/Olympus'",
            "22023",
            "unknown time zone 'Mars/Olympus'",
        ),
        ("limit_usd => 0", "23514", "ai_agent_budgets_limit_check"),
        (
            "thresholds => '{0.5, 1.5}'",
            "23514",
            "ai_agent_budgets_thresholds_check",
        ),
        ("period => 'week'", "23514", "ai_agent_budgets_period_check"),
        (
            "agent_id => gen_random_uuid()",
            "23503",
            "ai_agent_budgets_agent_fkey",
        ),
    ] {
        let (column, value) = sql.split_once(" => ").unwrap();
        let mut fields = vec![
            ("organization_id", format!("'{org}'")),
            ("period", "'month'".to_string()),
            ("limit_usd", "1".to_string()),
        ];
        fields.retain(|(c, _)| *c != column);
        fields.push((column, value.to_string()));
        let (names, values): (Vec<&str>, Vec<String>) = fields.into_iter().unzip();
        let (got, message) = error_of(
            &mut c,
            &format!(
                "INSERT INTO ai_agents.ai_agent_budgets ({}) VALUES ({})",
                names.join(", "),
                values.join(", ")
            ),
        );
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(words), "{sql}: {message}");
    }
    // Another organization's agent cannot carry this organization's budget.
    let (_, stranger) = create_agent(&mut c, "Stranger");
    let (got, _) = error_of(
        &mut c,
        &format!(
            "INSERT INTO ai_agents.ai_agent_budgets (organization_id, agent_id, period, limit_usd)
             VALUES ('{org}', '{stranger}', 'month', 1)"
        ),
    );
    assert_eq!(got, "23503");
}
