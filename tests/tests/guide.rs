//! The deployment guide's SQL, verbatim (tests/guide/*.sql), against the extension with
//! search_path = ai_agents, public: on one server, and with AI_AGENTS_TEST_TARGET=citus against
//! a Citus coordinator with the tables distributed (scripts/test runs both).
use ai_agents_tests::postgres::{Client, SimpleQueryMessage};
use ai_agents_tests::{create_agent, error_of, fresh_database, on_citus};

/// Runs a script and returns, per statement, its rows as text columns.
fn run_script(client: &mut Client, sql: &str) -> Vec<Vec<Vec<Option<String>>>> {
    let mut statements = vec![];
    let mut rows = vec![];
    for message in client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{e}\n{sql}"))
    {
        match message {
            SimpleQueryMessage::Row(row) => rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(_) => statements.push(std::mem::take(&mut rows)),
            _ => {}
        }
    }
    statements
}

fn guide(name: &str, agent: &str, org: &str, task: &str) -> String {
    let path = format!("{}/guide/{name}.sql", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("YOUR_AGENT_UUID", agent)
        .replace("YOUR_ORG_UUID", org)
        .replace("YOUR_TASK_UUID", task)
}

/// Claims as a worker would, and returns the claims' fencing tokens. Names the organization:
/// on Citus a claim says whose shards it works on (docs/distributed.md#claiming).
fn claim(c: &mut Client, worker: &str, max_tasks: i32, org: &str) -> Vec<i64> {
    c.query(
        "SELECT fencing_token FROM ai_agents.claim_due_tasks($1, $2, organizations => ARRAY[$3::text::uuid])",
        &[&worker, &max_tasks, &org],
    )
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

fn text(v: &[&str]) -> Vec<Option<String>> {
    v.iter().map(|s| Some(s.to_string())).collect()
}

#[test]
fn step1_verification_queries_return_what_the_guide_says() {
    let (mut c, _) = fresh_database();
    let none = "";
    let columns = run_script(
        &mut c,
        &guide("step1_1_verify_idempotency", none, none, none),
    );
    let mut columns = columns[0].clone();
    columns.sort();
    assert_eq!(
        columns,
        vec![
            text(&["execution_started_at", "timestamp with time zone"]),
            text(&["idempotency_key", "text"])
        ]
    );

    let versioning = run_script(
        &mut c,
        &guide("step1_2_verify_versioning", none, none, none),
    );
    assert_eq!(versioning.len(), 2);
    assert_eq!(versioning[0], vec![text(&["ai_agent_versions"])]);
    assert_eq!(
        versioning[1],
        vec![text(&["create_agent_version_from_current"])]
    );

    let reports = run_script(&mut c, &guide("step1_3_verify_reports", none, none, none));
    let mut tables = reports[0].clone();
    tables.sort();
    assert_eq!(
        tables,
        vec![
            text(&["ai_agent_report_templates"]),
            text(&["ai_agent_reports"])
        ]
    );
    let mut templates = reports[1].clone();
    templates.sort();
    assert_eq!(
        templates,
        vec![
            text(&["Customer Care Weekly Summary", "weekly_performance"]),
            text(&["Finance Monthly Forecast", "monthly_forecast"]),
        ]
    );
}

#[test]
fn step4_statements_run_as_written() {
    let (mut c, _) = fresh_database();
    let (org, agent) = create_agent(&mut c, "Customer Care");

    run_script(&mut c, &guide("step4_1_insert_test_task", &agent, &org, ""));
    let row = c
        .query_one(
            "SELECT id::text, status, next_run_at <= now(), schedule_cron, timezone, organization_id::text \
             FROM ai_agent_tasks WHERE title = 'Test Scheduled Task'",
            &[],
        )
        .unwrap();
    let task: String = row.get(0);
    assert_eq!(row.get::<_, String>(1), "pending");
    assert!(row.get::<_, bool>(2), "the guide's task is due immediately");
    assert_eq!(row.get::<_, String>(3), "*/10 * * * *");
    assert_eq!(row.get::<_, String>(4), "UTC");
    assert_eq!(row.get::<_, String>(5), org);

    // Run it through the engine as the worker will, then read it back with the guide's queries.
    let token: i64 = claim(&mut c, "guide-test", 1, &org)[0];
    c.execute(
        "SELECT ai_agents.complete_task($1::text::uuid, $2, output => 'done', tokens_used => 42, cost_usd => 0.0001)",
        &[&task, &token],
    )
    .unwrap();

    let status = run_script(&mut c, &guide("step4_2_check_task", &agent, &org, &task));
    let row = &status[0][0];
    assert_eq!(row[1].as_deref(), Some("Test Scheduled Task"));
    assert_eq!(row[2].as_deref(), Some("completed"));
    assert!(
        row[3].is_some() && row[4].is_some(),
        "execution_started_at and completed_at are set"
    );
    assert_eq!(row[5].as_deref(), Some("42"));
    assert_eq!(row[7], None, "no error message");
    // The */10 schedule moved the next run to the next 10-minute slot.
    let slot = c
        .query_one(
            "SELECT next_run_at > completed_at AND next_run_at <= completed_at + interval '10 minutes' \
             AND extract(minute FROM next_run_at)::int % 10 = 0 AND extract(second FROM next_run_at) = 0 \
             FROM ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    assert!(slot.get::<_, bool>(0));

    let activity = run_script(&mut c, &guide("step4_3_activity_logs", &agent, &org, &task));
    assert_eq!(activity[0].len(), 1);
    assert_eq!(activity[0][0][0].as_deref(), Some("task_completed"));
    assert_eq!(activity[0][0][1].as_deref(), Some("t"));
    assert_eq!(
        activity[0][0][2].as_deref(),
        Some("42"),
        "the attempt's tokens"
    );

    run_script(&mut c, &guide("step4_4_create_60_tasks", &agent, &org, ""));
    let count: i64 = c
        .query_one("SELECT count(*) FROM ai_agent_tasks WHERE title LIKE 'Rate Limit Test%' AND status = 'pending'", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 60);
    // Nothing fails for being rate limited in this system: the guide's check finds no rows.
    let failed = run_script(
        &mut c,
        &guide("step4_4_rate_limit_failures", &agent, &org, ""),
    );
    assert_eq!(failed, vec![Vec::<Vec<Option<String>>>::new()]);
}

#[test]
fn step5_monitoring_and_troubleshooting_queries_run() {
    let (mut c, _) = fresh_database();
    let (org, agent) = create_agent(&mut c, "Finance");
    run_script(&mut c, &guide("step4_1_insert_test_task", &agent, &org, ""));
    run_script(&mut c, &guide("step4_4_create_60_tasks", &agent, &org, ""));
    claim(&mut c, "stuck-worker", 2, &org);
    c.batch_execute("UPDATE ai_agent_tasks SET execution_started_at = now() - interval '2 hours' WHERE status = 'running'")
        .unwrap();

    let summary = run_script(&mut c, &guide("step5_3_monitoring", &agent, &org, ""));
    assert_eq!(summary[0][0][0].as_deref(), Some("61"));
    assert_eq!(summary[0][0][3].as_deref(), Some("59"), "59 pending");
    let same = c
        .query_one(
            "SELECT total_tasks, pending FROM ai_agents.task_summary('24 hours')",
            &[],
        )
        .unwrap();
    assert_eq!((same.get::<_, i64>(0), same.get::<_, i64>(1)), (61, 59));

    let duplicates = run_script(
        &mut c,
        &guide("troubleshooting_find_duplicates", &agent, &org, ""),
    );
    assert_eq!(
        duplicates[0],
        vec![vec![Some(agent.clone()), Some("2".into())]]
    );
    run_script(
        &mut c,
        &guide("troubleshooting_mark_stuck_failed", &agent, &org, ""),
    );
    let stuck: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_tasks WHERE error_message = 'Stuck in running state'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stuck, 2);
    // The failed one-shot task is final: the engine will not pick it up again.
    let claimable: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_tasks WHERE error_message = 'Stuck in running state' \
             AND next_run_at IS NOT NULL AND schedule_cron IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(claimable, 0);
}

#[test]
fn rollback_updates_run_and_its_drops_are_refused() {
    let (mut c, _) = fresh_database();
    let (org, agent) = create_agent(&mut c, "Lead Follow-up");
    run_script(&mut c, &guide("step4_4_create_60_tasks", &agent, &org, ""));
    claim(&mut c, "w", 3, &org);

    let rollback = guide("rollback_full", &agent, &org, "");
    let step3 = rollback.find("-- 3.").expect("the guide's step 3");
    let step4 = rollback.find("-- 4.").expect("the guide's step 4");
    run_script(&mut c, &rollback[..step3]);
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'cancelled' AND error_message = 'System rollback'), \
                    count(*) FILTER (WHERE status = 'pending' AND next_run_at > now() + interval '360 days') \
             FROM ai_agent_tasks",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (3, 57));
    // Nothing is claimable any more.
    assert!(claim(&mut c, "w", 100, &org).is_empty());

    for statement in rollback[step3..step4]
        .split(';')
        .filter(|s| s.contains("DROP TABLE"))
    {
        let (code, message) = error_of(&mut c, statement);
        assert_eq!(code, "2BP01", "{statement}: {message}");
        assert!(message.contains("extension ai_agents"), "{message}");
    }
    let (code, message) = error_of(&mut c, &rollback[step4..]);
    assert_eq!(code, "2BP01", "{message}");
    assert!(
        message.contains("belongs to extension ai_agents"),
        "{message}"
    );
    // Everything is still there; DROP EXTENSION is the rollback that works.
    let columns: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'ai_agent_tasks' \
             AND column_name IN ('idempotency_key', 'execution_started_at', 'agent_version_id')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(columns, 3);
    c.batch_execute("DROP EXTENSION ai_agents").unwrap();
    let left: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'ai_agents'::regnamespace) \
                  + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'ai_agents'::regnamespace) \
                  + (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'ai_agents%')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "DROP EXTENSION removes every object of the extension"
    );
    if on_citus() {
        // On every worker too, shards included.
        let left: Vec<String> = c
            .query(
                "SELECT result FROM run_command_on_workers($$SELECT (SELECT count(*) FROM pg_class \
                 WHERE relnamespace = 'ai_agents'::regnamespace) + (SELECT count(*) FROM pg_proc \
                 WHERE pronamespace = 'ai_agents'::regnamespace)$$)",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(left, vec!["0", "0"], "nothing left on the workers");
        let metadata: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_dist_partition) + (SELECT count(*) FROM pg_dist_shard)",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(metadata, 0, "nor in Citus's metadata");
    }
    // And it can be installed again, and used.
    c.batch_execute("CREATE EXTENSION ai_agents").unwrap();
    if on_citus() {
        c.batch_execute("SET client_min_messages = warning; SELECT ai_agents.distribute(4)")
            .unwrap();
    }
    let (org, _) = create_agent(&mut c, "Again");
    let agents: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents WHERE organization_id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(agents, 1);
}
