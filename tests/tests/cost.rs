//! Spend under control (issue [cost]): what a call costs is recorded exactly.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, fresh_database};

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
                 ARRAY[$4::bigint], ARRAY[$5::text], ARRAY[NULL::text], ARRAY[3])",
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
                "SELECT sum(ai_agents._llm_cost_usd($1, $2, g % 97, g % 89))::text
                   FROM generate_series(1::bigint, 10000) g",
                &[&provider, &model],
            )
            .unwrap()
            .get(0);
        println!("cost: 10,000 calls of {model}: ${summed}");
        assert_eq!(summed, dollars(exact), "{model}");
    }
}
