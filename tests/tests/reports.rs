//! Reports (issue [reports]): every figure against an independent computation over fixture
//! data, read-only template queries, scheduled generation exactly once per period, narratives
//! from the stub LLM, and bad input.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{error_of, fresh_database, WorkerEnv};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

const ORG: &str = "0000000a-0000-4000-8000-000000000001";
const OTHER_ORG: &str = "0000000b-0000-4000-8000-000000000001";
const CARE: &str = "a0000000-0000-4000-8000-00000000000c";
const BOOKS: &str = "a0000000-0000-4000-8000-00000000000f";
const OTHER_CARE: &str = "a0000000-0000-4000-8000-0000000000bc";

/// Agents created long ago, so that scheduled generation covers the fixture's periods.
fn agents(c: &mut Client) {
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agents (id, organization_id, name, agent_type, model, provider, created_at) VALUES
           ('{CARE}', '{ORG}', 'Front desk', 'customer_care', 'gpt-4o-mini', 'openai', '2025-01-01'),
           ('{BOOKS}', '{ORG}', 'Books', 'finance', 'claude-3-5-haiku-latest', 'anthropic', '2025-01-01'),
           ('{OTHER_CARE}', '{OTHER_ORG}', 'Other gym', 'customer_care', 'gpt-4o-mini', 'openai', '2025-01-01');"
    ))
    .expect("agents");
}

/// The fixture, with answers known by construction. Week of 2026-11-16 (UTC), Front desk:
/// 100 completed calls with latencies 10, 20, ..., 1000 ms, 100*i tokens and $0.0001*i;
/// 7 failed attempts that were retried ("upstream 503" x4, "timeout" x3) and 3 given up
/// ("bad request"); 2 rate-limit deferrals; one conversation with 3 member messages and 2
/// replies; 5 tasks created (3 completed, 1 failed, 1 pending). The week before: 40 completed
/// calls of 50 tokens and $0.002. Books (anthropic) spends $1, $2, $4, $3, $5 and $6 in the
/// months June to November 2026, one call a month of 1,000 tokens. The other organization has
/// the same shape of data, which must not leak into ours.
fn fixture(c: &mut Client) {
    agents(c);
    for (org, agent) in [(ORG, CARE), (OTHER_ORG, OTHER_CARE)] {
        c.batch_execute(&format!(
            "INSERT INTO ai_agents.ai_agent_tasks (agent_id, organization_id, title, status, created_at, completed_at)
             SELECT '{agent}', '{org}', 'fixture ' || s, s, '2026-11-17 09:00+00', CASE WHEN s <> 'pending' THEN now() END
               FROM unnest(ARRAY['completed', 'completed', 'completed', 'failed', 'pending']) s;
             INSERT INTO ai_agents.ai_agent_activity_log
                 (organization_id, agent_id, action_type, success, tokens_used, cost_usd, execution_time_ms, details, created_at)
             SELECT '{org}', '{agent}', 'task_completed', true, 100 * i, 0.0001 * i, 10 * i,
                    jsonb_build_object('agent_version_id', (SELECT current_version_id FROM ai_agents.ai_agents WHERE id = '{agent}')),
                    '2026-11-16 00:00+00'::timestamptz + i * interval '1 hour'
               FROM generate_series(1, 100) i;
             INSERT INTO ai_agents.ai_agent_activity_log
                 (organization_id, agent_id, action_type, success, error, details, created_at)
             SELECT '{org}', '{agent}', 'task_failed', false, e.error,
                    jsonb_build_object('will_retry', e.retry,
                                       'agent_version_id', (SELECT current_version_id FROM ai_agents.ai_agents WHERE id = '{agent}')),
                    '2026-11-20 12:00+00'
               FROM (VALUES ('upstream 503', true), ('upstream 503', true), ('upstream 503', true), ('upstream 503', true),
                            ('timeout', true), ('timeout', true), ('timeout', true),
                            ('bad request', false), ('bad request', false), ('bad request', false)) e(error, retry);
             INSERT INTO ai_agents.ai_agent_activity_log (organization_id, agent_id, action_type, success, created_at)
             SELECT '{org}', '{agent}', 'rate_limited', false, '2026-11-21 08:00+00' FROM generate_series(1, 2);
             INSERT INTO ai_agents.ai_agent_activity_log
                 (organization_id, agent_id, action_type, success, tokens_used, cost_usd, execution_time_ms, details, created_at)
             SELECT '{org}', '{agent}', 'task_completed', true, 50, 0.002, 300,
                    jsonb_build_object('agent_version_id', (SELECT current_version_id FROM ai_agents.ai_agents WHERE id = '{agent}')),
                    '2026-11-10 10:00+00'
               FROM generate_series(1, 40);
             WITH conv AS (INSERT INTO ai_agents.ai_agent_conversations (organization_id, agent_id, created_at)
                           VALUES ('{org}', '{agent}', '2026-11-18') RETURNING id)
             INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content, created_at)
             SELECT conv.id, '{org}', r, 'hello', '2026-11-18 10:00+00'
               FROM conv, unnest(ARRAY['user', 'assistant', 'user', 'assistant', 'user']) r;"
        ))
        .expect("fixture");
    }
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_activity_log
             (organization_id, agent_id, action_type, success, tokens_used, cost_usd, execution_time_ms, details, created_at)
         SELECT '{ORG}', '{BOOKS}', 'task_completed', true, 1000, m.usd, 500,
                jsonb_build_object('agent_version_id', (SELECT current_version_id FROM ai_agents.ai_agents WHERE id = '{BOOKS}')),
                m.at
           FROM (VALUES ('2026-06-10 12:00+00'::timestamptz, 1.0), ('2026-07-10 12:00+00', 2.0), ('2026-08-10 12:00+00', 4.0),
                        ('2026-09-10 12:00+00', 3.0), ('2026-10-10 12:00+00', 5.0), ('2026-11-10 12:00+00', 6.0)) m(at, usd);"
    ))
    .expect("finance fixture");
}

fn build(c: &mut Client, template: &str, start: &str, end: &str, agent: Option<&str>) -> Value {
    c.query_one(
        "SELECT to_jsonb(r)::text FROM ai_agents.build_report($1, $2::text::uuid, $3::text::timestamptz, $4::text::timestamptz, $5::text::uuid) r",
        &[&template, &ORG, &start, &end, &agent],
    )
    .expect("build_report")
    .get::<_, String>(0)
    .parse()
    .expect("JSON")
}

/// One number from an independent query.
fn number(c: &mut Client, sql: &str) -> f64 {
    let v: Value = c
        .query_one(&format!("SELECT to_jsonb(({sql}))::text"), &[])
        .expect(sql)
        .get::<_, String>(0)
        .parse()
        .expect("JSON");
    v.as_f64().unwrap_or_else(|| panic!("{sql} gave {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

const WEEK: (&str, &str) = ("2026-11-16 00:00+00", "2026-11-23 00:00+00");

#[test]
fn the_weekly_summary_equals_independent_computations() {
    let (mut c, _db) = fresh_database();
    fixture(&mut c);
    let report = build(
        &mut c,
        "Customer Care Weekly Summary",
        WEEK.0,
        WEEK.1,
        Some(CARE),
    );
    let data = &report["data"];
    let s = &data["summary"];
    let scope = format!(
        "FROM ai_agents.ai_agent_activity_log WHERE organization_id = '{ORG}' AND agent_id = '{CARE}' \
         AND created_at >= '{}' AND created_at < '{}'",
        WEEK.0, WEEK.1
    );
    // Known by construction, and recomputed from the raw rows.
    assert_eq!(f(&s["attempts"]), 110.0);
    assert_eq!(
        f(&s["attempts"]),
        number(
            &mut c,
            &format!(
                "SELECT count(*) {scope} AND action_type IN ('task_completed', 'task_failed')"
            )
        )
    );
    assert_eq!(
        f(&s["succeeded"]),
        number(
            &mut c,
            &format!("SELECT count(*) {scope} AND action_type = 'task_completed'")
        )
    );
    assert_eq!((f(&s["retried"]), f(&s["given_up"])), (7.0, 3.0));
    assert_eq!(
        f(&s["success_rate"]),
        number(&mut c, "SELECT round(100 / 103.0, 4)")
    );
    assert_eq!(f(&s["latency_p50_ms"]), 505.0, "median of 10..1000 step 10");
    assert_eq!(
        f(&s["latency_p95_ms"]),
        950.5,
        "linear interpolation at rank 94.05"
    );
    assert_eq!(f(&s["rate_limited"]), 2.0);
    let usage = &data["usage"];
    assert_eq!(
        f(&usage["tokens"]),
        number(&mut c, &format!("SELECT sum(tokens_used) {scope}"))
    );
    assert_eq!(f(&usage["tokens"]), 505_000.0);
    assert_eq!(
        f(&usage["cost_usd"]),
        number(&mut c, &format!("SELECT sum(cost_usd)::float8 {scope}"))
    );
    assert_eq!(f(&usage["cost_usd"]), 0.505);
    assert_eq!(
        data["tasks_by_status"],
        json!({"pending": 1, "queued": 0, "running": 0, "completed": 3, "failed": 1, "cancelled": 0})
    );
    assert_eq!(
        data["conversations"],
        json!({"conversations": 1, "user_messages": 3, "assistant_messages": 2})
    );
    assert_eq!(
        data["failures"],
        json!([{"error": "upstream 503", "count": 4}, {"error": "bad request", "count": 3}, {"error": "timeout", "count": 3}])
    );
    let previous = &data["previous_period"];
    assert_eq!(previous["start"], json!("2026-11-09T00:00:00+00:00"));
    assert_eq!(f(&previous["summary"]["succeeded"]), 40.0);
    assert_eq!(f(&previous["summary"]["success_rate"]), 1.0);
    assert_eq!(f(&previous["usage"]["cost_usd"]), 0.08);
    assert_eq!(
        report["title"],
        "Customer Care Weekly Summary - week of 2026-11-16"
    );
    let md = report["markdown"].as_str().expect("markdown");
    for expected in [
        "# Customer Care Weekly Summary - week of 2026-11-16",
        "97.1% of the 103 runs that ended succeeded (100 succeeded, 3 failed after their last attempt)",
        "under 505 ms, 95% under 951 ms (100 calls)",
        "| upstream 503 | 4 |",
        "505,000 tokens in 110 LLM calls, costing $0.5050.",
        "| Runs ended | 103 | 40 | +157.5% |",
        "1 conversation: 3 messages from members, 2 replies from the agent.",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in\n{md}");
    }
}

#[test]
fn the_monthly_forecast_equals_independent_computations_even_after_pruning() {
    let (mut c, _db) = fresh_database();
    fixture(&mut c);
    let month = ("2026-11-01 00:00+00", "2026-12-01 00:00+00");
    let before = build(&mut c, "Finance Monthly Forecast", month.0, month.1, None);
    let data = &before["data"];
    let trend: Vec<f64> = data["trend"]
        .as_array()
        .expect("trend")
        .iter()
        .map(|p| f(&p["cost_usd"]))
        .collect();
    // Books' $1..$6 a month, and in November Front desk's $0.585 too (organization scope).
    assert_eq!(trend, vec![1.0, 2.0, 4.0, 3.0, 5.0, 6.585]);
    let forecast = number(
        &mut c,
        "SELECT round((regr_intercept(y, x) + regr_slope(y, x) * 6)::numeric, 6)::float8
           FROM (VALUES (0, 1.0), (1, 2.0), (2, 4.0), (3, 3.0), (4, 5.0), (5, 6.585)) v(x, y)",
    );
    assert_eq!(f(&data["forecast"]["next_period_usd"]), forecast);
    assert_eq!(forecast, 7.19);
    assert!(data["forecast"]["method"]
        .as_str()
        .unwrap()
        .contains("least squares"));
    // November, organization-wide: Front desk's 150 calls ($0.505 + $0.08) and Books' one ($6).
    assert_eq!(f(&data["usage"]["cost_usd"]), number(&mut c, &format!(
        "SELECT sum(cost_usd)::float8 FROM ai_agents.ai_agent_activity_log WHERE organization_id = '{ORG}'
            AND created_at >= '{}' AND created_at < '{}'", month.0, month.1)));
    let per_agent: Vec<(String, f64)> = data["per_agent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), f(&a["cost_usd"])))
        .collect();
    assert_eq!(
        per_agent,
        vec![("Books".into(), 6.0), ("Front desk".into(), 0.585)]
    );
    let per_model: Vec<String> = data["per_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {} {}",
                m["provider"].as_str().unwrap(),
                m["model"].as_str().unwrap(),
                m["attempts"]
            )
        })
        .collect();
    assert_eq!(
        per_model,
        vec![
            "anthropic claude-3-5-haiku-latest 1",
            "openai gpt-4o-mini 150"
        ]
    );

    // Pruning moves old activity into the hourly roll-up; the figures stay the same.
    c.batch_execute(
        "DO $$ BEGIN WHILE ai_agents.prune_history(interval '40 days', 50) > 0 LOOP END LOOP; END $$",
    )
    .expect("prune");
    assert!(
        number(
            &mut c,
            "SELECT count(*) FROM ai_agents.ai_agent_activity_log WHERE created_at < '2026-10-01'"
        ) == 0.0
    );
    assert!(
        number(
            &mut c,
            "SELECT count(*) FROM ai_agents.ai_agent_usage_hourly"
        ) > 0.0
    );
    let after = build(&mut c, "Finance Monthly Forecast", month.0, month.1, None);
    for key in ["trend", "forecast", "usage", "per_agent", "per_model"] {
        assert_eq!(
            after["data"][key], before["data"][key],
            "{key} changed by pruning"
        );
    }
    assert_eq!(after["id"], before["id"], "a rebuild replaces the report");
    assert_eq!(
        number(&mut c, "SELECT count(*) FROM ai_agents.ai_agent_reports"),
        1.0
    );
    let md = after["markdown"].as_str().unwrap();
    assert!(md.contains("| Books | 1 | 1 | 1,000 | $6.00 |"), "{md}");
    assert!(md.contains("Next month: about $7.19. How: a straight-line trend (least squares) through the spend of the last 6 months."), "{md}");
}

#[test]
fn the_monthly_forecast_weighs_spend_and_forecast_against_the_budgets() {
    let (mut c, _db) = fresh_database();
    fixture(&mut c);
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_budgets (organization_id, agent_id, period, limit_usd) VALUES
           ('{ORG}', NULL, 'month', 50), ('{ORG}', '{BOOKS}', 'day', 0.25), ('{OTHER_ORG}', NULL, 'month', 1)"
    ))
    .unwrap();
    let month = ("2026-11-01 00:00+00", "2026-12-01 00:00+00");
    // The built-in forecast: November's spend against the organization's budget, and the
    // forecast ($7.19) against December's.
    let report = build(&mut c, "Finance Monthly Forecast", month.0, month.1, None);
    assert_eq!(f(&report["data"]["forecast"]["budget_usd"]), 50.0);
    let md = report["markdown"].as_str().unwrap();
    assert!(
        md.contains("This month: $6.58 of the budget's $50.00 (13.2%). The budget allows $50.00 next month: the forecast is within it."),
        "{md}"
    );
    // An organization's template with the budget section: every budget of the organization.
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_report_templates (organization_id, name, report_type, scope, period, sections)
         VALUES ('{ORG}', 'Spend and budgets', 'custom', 'organization', 'month', '{{budget}}')"
    ))
    .unwrap();
    let report = build(&mut c, "Spend and budgets", month.0, month.1, None);
    let budgets: Vec<(Value, f64, f64, f64)> = report["data"]["budget"]
        .as_array()
        .expect("a budget section")
        .iter()
        .map(|b| {
            (
                b["name"].clone(),
                f(&b["allowance_usd"]),
                f(&b["spent_usd"]),
                f(&b["share"]),
            )
        })
        .collect();
    // The organization's month: its limit, against everything it spent ($6.585). Books' day:
    // 30 days of $0.25, against its own $6. Not the other organization's budget.
    assert_eq!(
        budgets,
        vec![
            (Value::Null, 50.0, 6.585, 0.1317),
            (json!("Books"), 7.5, 6.0, 0.8)
        ]
    );
    let md = report["markdown"].as_str().unwrap();
    for expected in [
        "| Organization | $50.00 a month | $50.00 | $6.58 | 13.2% |",
        "| Books | $0.2500 a day | $7.50 | $6.00 | 80.0% |",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in\n{md}");
    }
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agent_budgets SET limit_usd = 5 WHERE organization_id = '{ORG}' AND agent_id IS NULL"
    ))
    .unwrap();
    let report = build(&mut c, "Finance Monthly Forecast", month.0, month.1, None);
    let md = report["markdown"].as_str().unwrap();
    assert!(
        md.contains("The budget allows $5.00 next month: the forecast is over it by $2.19."),
        "{md}"
    );
}

#[test]
fn a_template_query_runs_read_only_and_one_that_writes_fails_the_report() {
    let (mut c, _db) = fresh_database();
    fixture(&mut c);
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_report_templates (organization_id, name, report_type, period, queries) VALUES
           ('{ORG}', 'members', 'custom', 'week',
            '{{\"messages\": \"SELECT role, count(*) AS n FROM ai_agents.ai_agent_messages WHERE organization_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY role ORDER BY role;\"}}'),
           ('{ORG}', 'cancels', 'custom', 'week',
            '{{\"oops\": \"SELECT ai_agents.cancel_task(id) FROM ai_agents.ai_agent_tasks WHERE status = ''pending''\"}}'),
           ('{ORG}', 'deletes', 'custom', 'week',
            '{{\"oops\": \"WITH d AS (DELETE FROM ai_agents.ai_agent_tasks RETURNING 1) SELECT count(*) FROM d\"}}'),
           ('{ORG}', 'sequence', 'custom', 'week', '{{\"oops\": \"SELECT nextval(''ai_agents.fencing_token_seq'')\"}}');"
    ))
    .expect("templates");
    let report = build(&mut c, "members", WEEK.0, WEEK.1, None);
    assert_eq!(
        report["data"]["queries"]["messages"],
        json!([{"role": "assistant", "n": 2}, {"role": "user", "n": 3}])
    );
    assert!(report["markdown"]
        .as_str()
        .unwrap()
        .contains("## messages\n\n| n | role |\n|---|---|\n| 2 | assistant |"));
    let snapshot =
        "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM ai_agents.ai_agent_tasks t";
    let tasks_before: String = c.query_one(snapshot, &[]).unwrap().get(0);
    let seq_before = number(&mut c, "SELECT last_value FROM ai_agents.fencing_token_seq");
    // The queries run as ai_agents_report_reader, which may call no function of the extension
    // and use no sequence; a data-modifying WITH is refused as a sub-select.
    for (template, sqlstate) in [
        ("cancels", "42501"),
        ("deletes", "0A000"),
        ("sequence", "42501"),
    ] {
        let (code, message) = error_of(
            &mut c,
            &format!(
                "SELECT ai_agents.build_report('{template}', '{ORG}', '{}', '{}')",
                WEEK.0, WEEK.1
            ),
        );
        assert_eq!(code, sqlstate, "{template}: {message}");
        assert!(
            message.starts_with(&format!(
                "report template \"{template}\": query \"oops\" failed: "
            )),
            "{message}"
        );
    }
    let tasks_after: String = c.query_one(snapshot, &[]).unwrap().get(0);
    assert_eq!(tasks_before, tasks_after, "a refused query changed tasks");
    assert_eq!(
        seq_before,
        number(&mut c, "SELECT last_value FROM ai_agents.fencing_token_seq")
    );
    assert_eq!(
        number(
            &mut c,
            "SELECT count(*) FROM ai_agents.ai_agent_reports WHERE title NOT LIKE 'members%'"
        ),
        0.0
    );
    // The same transaction can still write once the queries are done.
    c.batch_execute(&format!(
        "BEGIN; SELECT ai_agents.build_report('members', '{ORG}', '2026-11-09', '2026-11-16');
         INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, max_per_minute) VALUES ('{ORG}', 7); COMMIT;"
    ))
    .expect("read-write after the queries");
}

#[test]
fn bad_input_is_refused_and_an_idle_organization_gets_a_report_of_zeros() {
    let (mut c, _db) = fresh_database();
    agents(&mut c);
    let cases = [
        (format!("SELECT ai_agents.build_report('No such template', '{ORG}', '2026-11-16', '2026-11-23')"), "42704", "report template \"No such template\" does not exist"),
        (format!("SELECT ai_agents.build_report('Customer Care Weekly Summary', '{ORG}', '2026-11-23', '2026-11-23')"), "22023", "must be after period_start"),
        (format!("SELECT ai_agents.build_report('Customer Care Weekly Summary', '{ORG}', '2026-11-23', '2026-11-16')"), "22023", "must be after period_start"),
        ("SELECT ai_agents.build_report('Customer Care Weekly Summary', NULL, '2026-11-16', '2026-11-23')".into(), "22004", "needs a template, an organization_id"),
        (format!("SELECT ai_agents.build_report('Customer Care Weekly Summary', '{ORG}', '2026-11-16', '2026-11-23', '{OTHER_CARE}')"), "22023", "does not exist in organization"),
        ("INSERT INTO ai_agents.ai_agent_report_templates (name, report_type, period, sections) VALUES ('x', 'x', 'week', '{usage,nonsense}')".to_string(), "22023", "unknown report section \"nonsense\""),
        ("INSERT INTO ai_agents.ai_agent_report_templates (name, report_type, period, schedule_cron) VALUES ('x', 'x', 'week', '61 * * * *')".to_string(), "22023", "minute"),
        ("INSERT INTO ai_agents.ai_agent_report_templates (name, report_type, period, queries) VALUES ('x', 'x', 'week', '{\"q\": 42}')".to_string(), "22023", "must be the text of a SELECT"),
        ("INSERT INTO ai_agents.ai_agent_report_templates (name, report_type, period) VALUES ('x', 'x', 'day')".to_string(), "23514", "ai_agent_report_templates_period_check"),
    ];
    for (sql, code, needle) in cases {
        let (got, message) = error_of(&mut c, &sql);
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(needle), "{sql}: {message}");
    }
    let idle = build(
        &mut c,
        "Customer Care Weekly Summary",
        WEEK.0,
        WEEK.1,
        Some(CARE),
    );
    let s = &idle["data"]["summary"];
    assert_eq!((f(&s["attempts"]), f(&s["succeeded"])), (0.0, 0.0));
    assert!(s["success_rate"].is_null() && s["latency_p50_ms"].is_null());
    assert_eq!(f(&idle["data"]["usage"]["cost_usd"]), 0.0);
    let md = idle["markdown"].as_str().unwrap();
    assert!(
        md.contains("No task run ended in this period.")
            && md.contains("0 tokens in 0 LLM calls, costing $0.00."),
        "{md}"
    );
    let finance = build(
        &mut c,
        "Finance Monthly Forecast",
        "2026-11-01",
        "2026-12-01",
        None,
    );
    assert_eq!(f(&finance["data"]["forecast"]["next_period_usd"]), 0.0);
}

#[test]
fn get_latest_agent_report_returns_the_newest_as_the_guide_calls_it() {
    let (mut c, _db) = fresh_database();
    fixture(&mut c);
    build(
        &mut c,
        "Customer Care Weekly Summary",
        "2026-11-09",
        "2026-11-16",
        Some(CARE),
    );
    let newest = build(
        &mut c,
        "Customer Care Weekly Summary",
        WEEK.0,
        WEEK.1,
        Some(CARE),
    );
    build(
        &mut c,
        "Customer Care Weekly Summary",
        "2026-11-02",
        "2026-11-09",
        Some(CARE),
    );
    let finance = build(
        &mut c,
        "Finance Monthly Forecast",
        "2026-10-01",
        "2026-11-01",
        Some(BOOKS),
    );
    c.batch_execute("SET search_path = ai_agents, public")
        .unwrap();
    let latest: Value = c
        .query_one(
            &format!("SELECT to_jsonb(r)::text FROM get_latest_agent_report('{CARE}') r"),
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    assert_eq!(latest["id"], newest["id"]);
    let typed: Value = c
        .query_one(
            &format!(
                "SELECT to_jsonb(r)::text FROM get_latest_agent_report('{BOOKS}', 'monthly_forecast') r"
            ),
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    assert_eq!(typed["id"], finance["id"]);
    let none: Value = c
        .query_one(
            &format!(
                "SELECT to_jsonb(r)::text FROM get_latest_agent_report('{CARE}', 'monthly_forecast') r"
            ),
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    assert!(none["id"].is_null());
}

/// Builds due at `now`; returns the next due time as text.
fn build_due(c: &mut Client, now: &str) -> String {
    c.query_one(
        "SELECT ai_agents.build_due_reports($1::text::timestamptz)::text",
        &[&now],
    )
    .expect("build_due_reports")
    .get::<_, Option<String>>(0)
    .unwrap_or_default()
}

fn reports_of(c: &mut Client, template: &str) -> Vec<(String, String, String)> {
    c.query(
        "SELECT r.organization_id::text, r.period_start::text, r.period_end::text FROM ai_agents.ai_agent_reports r
           JOIN ai_agents.ai_agent_report_templates t ON t.id = r.template_id
          WHERE t.name = $1 ORDER BY 2, 1",
        &[&template],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn scheduled_generation_builds_each_period_once_including_missed_ones() {
    let (mut c, _db) = fresh_database();
    agents(&mut c);
    c.batch_execute(
        "SET TIME ZONE 'UTC';
         UPDATE ai_agents.ai_agent_report_templates SET schedule_cron = NULL;
         INSERT INTO ai_agents.ai_agent_report_templates
             (name, report_type, agent_type, scope, period, sections, schedule_cron, timezone, schedule_starts_at)
         VALUES ('Berlin weekly', 'weekly_performance', 'customer_care', 'agent', 'week', '{usage}',
                 '0 7 * * 1', 'Europe/Berlin', '2026-10-06');",
    )
    .unwrap();
    // Monday 2026-10-12 06:00 in Berlin: the week ended at midnight, its build time is 07:00.
    assert_eq!(
        build_due(&mut c, "2026-10-12 06:00 Europe/Berlin"),
        "2026-10-12 05:00:00+00"
    );
    assert!(reports_of(&mut c, "Berlin weekly").is_empty());
    assert_eq!(
        build_due(&mut c, "2026-10-12 07:00 Europe/Berlin"),
        "2026-10-19 05:00:00+00"
    );
    assert_eq!(
        reports_of(&mut c, "Berlin weekly"),
        vec![
            (
                ORG.into(),
                "2026-10-04 22:00:00+00".into(),
                "2026-10-11 22:00:00+00".into()
            ),
            (
                OTHER_ORG.into(),
                "2026-10-04 22:00:00+00".into(),
                "2026-10-11 22:00:00+00".into()
            ),
        ]
    );
    // Again in the same period, and a restart's worth of repeated passes: nothing new.
    build_due(&mut c, "2026-10-12 07:30 Europe/Berlin");
    build_due(&mut c, "2026-10-15 12:00 Europe/Berlin");
    assert_eq!(reports_of(&mut c, "Berlin weekly").len(), 2);
    // Two build times missed (server down): both periods are built, once; the second is the
    // week the clocks went back (169 hours).
    build_due(&mut c, "2026-10-27 09:00 Europe/Berlin");
    build_due(&mut c, "2026-10-27 09:05 Europe/Berlin");
    let ours: Vec<(String, String)> = reports_of(&mut c, "Berlin weekly")
        .into_iter()
        .filter(|r| r.0 == ORG)
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(
        ours,
        vec![
            (
                "2026-10-04 22:00:00+00".into(),
                "2026-10-11 22:00:00+00".into()
            ),
            (
                "2026-10-11 22:00:00+00".into(),
                "2026-10-18 22:00:00+00".into()
            ),
            (
                "2026-10-18 22:00:00+00".into(),
                "2026-10-25 23:00:00+00".into()
            ),
        ]
    );
    // Scope 'organization': one report per organization, owned by its finance agent.
    c.batch_execute(
        "UPDATE ai_agents.ai_agent_report_templates SET schedule_cron = '0 7 1 * *', schedule_starts_at = '2026-09-15'
          WHERE name = 'Finance Monthly Forecast'",
    )
    .unwrap();
    build_due(&mut c, "2026-11-02 00:00+00");
    build_due(&mut c, "2026-11-03 00:00+00");
    let monthly = reports_of(&mut c, "Finance Monthly Forecast");
    assert_eq!(
        monthly,
        vec![
            (
                ORG.into(),
                "2026-09-01 00:00:00+00".into(),
                "2026-10-01 00:00:00+00".into()
            ),
            (
                ORG.into(),
                "2026-10-01 00:00:00+00".into(),
                "2026-11-01 00:00:00+00".into()
            ),
        ],
        "the other organization has no finance agent"
    );
    let owner: String = c
        .query_one("SELECT DISTINCT agent_id::text FROM ai_agents.ai_agent_reports WHERE report_type = 'monthly_forecast'", &[])
        .unwrap()
        .get(0);
    assert_eq!(owner, BOOKS);
}

fn wait_for_report(c: &mut Client, report: &str, condition: &str) -> Value {
    let started = Instant::now();
    loop {
        let row: Value = c
            .query_one(
                &format!("SELECT jsonb_build_object('done', ({condition}), 'report', to_jsonb(r))::text FROM ai_agents.ai_agent_reports r WHERE id = $1::text::uuid"),
                &[&report],
            )
            .expect("polling a report")
            .get::<_, String>(0)
            .parse()
            .expect("JSON");
        if row["done"] == json!(true) {
            return row["report"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "report never satisfied {condition}: {row}"
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_narrative_is_written_by_the_agents_llm_or_reported_missing() {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    let env = WorkerEnv::kept(&ENV, "reports-narrative", &[]);
    let mut c = env.connect();
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
         VALUES ('{}', 'Desk', 'customer_care', 'gpt-4o-mini')",
        "0000000c-0000-4000-8000-000000000001"
    ))
    .unwrap();
    let org = "0000000c-0000-4000-8000-000000000001";
    env.stub.script(json!([
        {"match": "week of 2026-11-16", "content": "A calm week: nothing to worry about."},
        {"match": "week of 2026-11-09", "status": 400, "error_type": "invalid_request_error"},
    ]));
    let written: String = c
        .query_one(&format!("SELECT id::text FROM ai_agents.build_report('Customer Care Weekly Summary', '{org}', '{}', '{}')", WEEK.0, WEEK.1), &[])
        .unwrap()
        .get(0);
    let failed: String = c
        .query_one(&format!("SELECT id::text FROM ai_agents.build_report('Customer Care Weekly Summary', '{org}', '2026-11-09', '2026-11-16')"), &[])
        .unwrap()
        .get(0);
    let report = wait_for_report(&mut c, &written, "r.narrative_status = 'written'");
    assert_eq!(report["narrative"], "A calm week: nothing to worry about.");
    let md = report["markdown"].as_str().unwrap();
    assert!(
        md.contains("## Summary\n\nA calm week: nothing to worry about.\n"),
        "{md}"
    );
    let request = env
        .stub
        .requests()
        .into_iter()
        .find(|r| r["body"].to_string().contains("week of 2026-11-16"))
        .expect("the narrative was requested from the LLM");
    let prompt = request["body"].to_string();
    assert!(
        prompt.contains("You write for the owner of a gym") && prompt.contains("## Success rate"),
        "{prompt}"
    );

    let report = wait_for_report(&mut c, &failed, "r.narrative_status = 'missing'");
    assert!(
        report["narrative_error"]
            .as_str()
            .unwrap()
            .starts_with("the LLM call failed: "),
        "{report}"
    );
    assert_eq!(report["status"], "ready");
    assert!(report["data"]["summary"].is_object(), "the figures stay");
    assert!(report["markdown"]
        .as_str()
        .unwrap()
        .contains("_No written summary: the LLM call failed:"));
}

/// An agent and two weekly templates built every minute (the second with a query that fails),
/// scheduled from three days before the week running at `now` (an SQL expression) began. So
/// exactly one week, the one that ended last, is due whatever the weekday and hour of `now`.
fn every_minute_weekly(c: &mut Client, org: &str, now: &str) {
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model, created_at)
         VALUES ('{org}', 'Scheduled desk', 'weekly_reporter', 'gpt-4o-mini', {now} - interval '60 days');
         INSERT INTO ai_agents.ai_agent_report_templates
             (organization_id, name, report_type, agent_type, period, sections, schedule_cron, schedule_starts_at)
         SELECT '{org}', n, 'weekly_performance', 'weekly_reporter', 'week', '{{usage}}', '* * * * *',
                date_trunc('week', {now}, 'UTC') - interval '3 days'
           FROM unnest(ARRAY['every minute weekly', 'broken weekly']) n;
         UPDATE ai_agents.ai_agent_report_templates SET queries = '{{\"oops\": \"SELECT nextval(''ai_agents.fencing_token_seq'')\"}}'
          WHERE name = 'broken weekly';"
    ))
    .unwrap();
}

/// The reports of `org`: (ready, failed).
fn ready_and_failed(c: &mut Client, org: &str) -> (i64, i64) {
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'ready'), count(*) FILTER (WHERE status = 'failed')
               FROM ai_agents.ai_agent_reports WHERE organization_id = $1::text::uuid",
            &[&org],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// The schedule of the restart test below, run through `build_due_reports(now)` as if on each
/// day of one week, at the first minute, noon and the last minute of the day. Before 0.2.0 the
/// restart test scheduled from `now() - 10 days`, which holds two week ends on a Monday,
/// Tuesday or Wednesday, and CI failed on those days.
#[test]
fn scheduled_reports_are_due_once_whatever_the_weekday_and_hour() {
    let (mut c, _db) = fresh_database();
    let org = "0000000d-0000-4000-8000-000000000002";
    for day in 0..7 {
        for time in ["00:00:30", "12:00:00", "23:59:30"] {
            let now = format!("('2026-11-02 {time}+00'::timestamptz + {day} * interval '1 day')");
            c.batch_execute("BEGIN").unwrap();
            every_minute_weekly(&mut c, org, &now);
            let next: Option<String> = c
                .query_one(
                    &format!("SELECT ai_agents.build_due_reports({now})::text"),
                    &[],
                )
                .unwrap()
                .get(0);
            let built = ready_and_failed(&mut c, org);
            let periods: Vec<String> = c
                .query(
                    &format!(
                        "SELECT DISTINCT (period_end = date_trunc('week', {now}, 'UTC'))::text
                           FROM ai_agents.ai_agent_reports WHERE organization_id = '{org}'"
                    ),
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            c.batch_execute("ROLLBACK").unwrap();
            assert_eq!(built, (1, 1), "day {day} at {time}");
            assert_eq!(
                periods,
                ["true"],
                "day {day} at {time}: the week that ended last"
            );
            assert!(
                next.is_some(),
                "day {day} at {time}: the next build is known"
            );
        }
    }
}

#[test]
fn the_worker_builds_scheduled_reports_once_across_a_restart() {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    let env = WorkerEnv::kept(&ENV, "reports-restart", &["synchronous_commit = on"]);
    let mut c = env.connect();
    let org = "0000000d-0000-4000-8000-000000000001";
    every_minute_weekly(&mut c, org, "now()");
    c.batch_execute("SELECT ai_agents.run_scheduler_once()")
        .unwrap();
    // The week that ended last (its build time, the next minute after it ended, has passed).
    assert_eq!(ready_and_failed(&mut c, org), (1, 1));
    let error: String = c
        .query_one(&format!("SELECT error FROM ai_agents.ai_agent_reports WHERE organization_id = '{org}' AND status = 'failed'"), &[])
        .unwrap()
        .get(0);
    assert!(
        error.contains("query \"oops\" failed: permission denied for sequence fencing_token_seq"),
        "{error}"
    );
    let logged: i64 = c
        .query_one(&format!("SELECT count(*) FROM ai_agents.ai_agent_activity_log WHERE organization_id = '{org}' AND action_type = 'report_failed'"), &[])
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);
    // A crash in the middle of the period (commits are synchronous here, so what was built
    // survives it).
    env.cluster.pg_ctl(&["restart", "-m", "immediate", "-w"]);
    let mut c = env.connect();
    // Passes after the restart (the worker looks at start) build nothing more.
    for _ in 0..3 {
        let started = Instant::now();
        while c
            .batch_execute("SELECT ai_agents.run_scheduler_once()")
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the worker did not come back"
            );
            sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(ready_and_failed(&mut c, org), (1, 1));
}
