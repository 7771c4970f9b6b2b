//! Tenant isolation (issue [isolation]): what one organization writes never stops the worker
//! for the others. Each test plays a hostile or careless organization while a healthy one
//! keeps enqueueing, and checks that the healthy tasks run promptly, that the worker process
//! never restarts (its backend_start is unchanged), and that every hostile task ends with one
//! recorded outcome and a clear error.
use ai_agents_tests::postgres::{Client, NoTls};
use ai_agents_tests::{
    as_role, claims, create_agent, enqueue, error_of, fresh_database, shared_cluster,
    start_conversation, supabase_roles, wait_for, Cluster, WorkerEnv,
};
use std::sync::OnceLock;
use std::time::Duration;

fn env() -> &'static WorkerEnv {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    WorkerEnv::kept(
        &ENV,
        "isolation",
        &[
            "ai_agents.history_max_bytes = '100kB'",
            "ai_agents.report_query_timeout = '300ms'",
            "ai_agents.worker_lock_timeout = '200ms'",
        ],
    )
}

/// When the worker process started: unchanged means it never exited.
fn worker_started(c: &mut Client) -> String {
    c.query_one(
        "SELECT backend_start::text FROM pg_stat_activity WHERE backend_type = 'ai_agents worker'",
        &[],
    )
    .expect("the worker is running")
    .get(0)
}

/// Enqueues `n` tasks for a healthy agent and waits for them: all complete, and the slowest
/// starts within 2 s of its insert.
fn healthy_tasks_run_promptly(c: &mut Client, agent: &str, n: usize) {
    let tasks: Vec<String> = (0..n)
        .map(|i| enqueue(c, agent, &format!("healthy {i}")))
        .collect();
    for task in &tasks {
        wait_for(c, task, "status = 'completed'", Duration::from_secs(30));
    }
    let slowest: f64 = c
        .query_one(
            "SELECT max(extract(epoch FROM execution_started_at - created_at))::float8
               FROM ai_agents.ai_agent_tasks WHERE id = ANY ($1::text[]::uuid[])",
            &[&tasks],
        )
        .unwrap()
        .get(0);
    println!("isolation: {n} healthy tasks, slowest insert-to-start {slowest:.3} s");
    assert!(slowest < 2.0, "a healthy task waited {slowest} s to start");
}

/// Waits for a hostile task to fail, and returns its error; it has exactly one activity row
/// for its one attempt.
fn fails_alone(c: &mut Client, task: &str) -> String {
    wait_for(c, task, "status = 'failed'", Duration::from_secs(30));
    let row = c
        .query_one(
            "SELECT t.error_message, t.attempts,
                    (SELECT count(*) FROM ai_agents.ai_agent_activity_log l
                      WHERE l.task_id = t.id AND l.action_type = 'task_failed')
               FROM ai_agents.ai_agent_tasks t WHERE t.id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    let (error, attempts, logged): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((attempts, logged), (1, 1), "{task}: {error}");
    error
}

#[test]
fn input_the_worker_cannot_read_fails_its_task_alone() {
    let env = env();
    let mut c = env.connect();
    let (_, hostile) = create_agent(&mut c, "Hostile input");
    let (_, healthy) = create_agent(&mut c, "Healthy");
    let started = worker_started(&mut c);
    // Valid jsonb for PostgreSQL, unreadable for the worker's JSON reader: nesting beyond its
    // 128 levels, numbers beyond f64. The door refuses them now (see the test below); these
    // are rows written before it, or by a superuser around it.
    let deep_array = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let deep_object = format!("{}1{}", "{\"a\": ".repeat(150), "}".repeat(150));
    c.batch_execute(
        "BEGIN;
         ALTER TABLE ai_agents.ai_agent_tasks DISABLE TRIGGER ai_agent_tasks_check_input;
         ALTER TABLE ai_agents.ai_agent_tasks DISABLE TRIGGER ai_agent_tasks_validate;",
    )
    .unwrap();
    let mut hostile_tasks = vec![];
    for (title, input) in [
        ("deep array", deep_array.as_str()),
        ("deep object", deep_object.as_str()),
        ("huge number", "{\"n\": 1e400}"),
        ("huge negative number", "[-1e999]"),
    ] {
        let task: String = c
            .query_one(
                "INSERT INTO ai_agents.ai_agent_tasks (agent_id, organization_id, title, input, next_run_at)
                 SELECT a.id, a.organization_id, $2, $3::text::jsonb, now()
                   FROM ai_agents.ai_agents a WHERE a.id = $1::text::uuid
                 RETURNING id::text",
                &[&hostile, &title, &input],
            )
            .unwrap()
            .get(0);
        hostile_tasks.push(task);
    }
    c.batch_execute(
        "ALTER TABLE ai_agents.ai_agent_tasks ENABLE TRIGGER ai_agent_tasks_check_input;
         ALTER TABLE ai_agents.ai_agent_tasks ENABLE TRIGGER ai_agent_tasks_validate;
         COMMIT;",
    )
    .unwrap();
    healthy_tasks_run_promptly(&mut c, &healthy, 20);
    for task in &hostile_tasks {
        let error = fails_alone(&mut c, task);
        assert!(
            error.contains("the task's input cannot be sent: the worker cannot read it as JSON"),
            "{error}"
        );
    }
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}

#[test]
fn a_version_cannot_be_deleted_and_a_missing_one_fails_its_task_alone() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "Versioned");
    let (_, healthy) = create_agent(&mut c, "Healthy too");
    let started = worker_started(&mut c);
    let (code, message) = error_of(
        &mut c,
        &format!("DELETE FROM ai_agents.ai_agent_versions WHERE agent_id = '{agent}'"),
    );
    assert_eq!(code, "0A000", "{message}");
    assert!(
        message.contains("agent versions cannot be deleted"),
        "{message}"
    );
    // Deleting the agent takes its versions along.
    let (_, doomed) = create_agent(&mut c, "Doomed");
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agents SET system_prompt = 'v2' WHERE id = '{doomed}';
         DELETE FROM ai_agents.ai_agents WHERE id = '{doomed}';"
    ))
    .unwrap();
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_versions WHERE agent_id = $1::text::uuid",
            &[&doomed],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // A superuser with triggers off removes a version anyway: the claim pins nothing, and
    // the task fails without a call instead of the pin raising in every claim.
    c.batch_execute(&format!(
        "SET session_replication_role = replica;
         DELETE FROM ai_agents.ai_agent_versions WHERE agent_id = '{agent}';
         SET session_replication_role = origin;"
    ))
    .unwrap();
    let orphan = enqueue(&mut c, &agent, "no version to run");
    healthy_tasks_run_promptly(&mut c, &healthy, 10);
    let error = fails_alone(&mut c, &orphan);
    assert!(
        error.contains("the task's agent version no longer exists"),
        "{error}"
    );
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}

#[test]
fn limits_at_the_door_refuse_what_the_worker_could_not_send() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "Doorkeeper");
    let enqueue_with =
        |input: &str| format!("SELECT ai_agents.enqueue_task('{agent}', 'x', input => '{input}')");
    let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(1024 * 1024));
    let task = enqueue(&mut c, &agent, "kept small");
    let conversation = start_conversation(&mut c, &agent);
    for (sql, code, says) in [
        (enqueue_with(&deep), "54000", "nested 33 levels deep; at most 32 are allowed (ai_agents.max_input_depth)"),
        (enqueue_with(&big), "54000", "bytes of JSON; at most 1048576 are allowed (ai_agents.max_input_bytes)"),
        (enqueue_with("{\"n\": 1e400}"), "22023", "the task's input cannot be read by the worker"),
        (
            format!("INSERT INTO ai_agents.ai_agent_tasks (agent_id, title, input) VALUES ('{agent}', 'x', '[-1e999]')"),
            "22023",
            "numbers must lie within",
        ),
        (
            format!("UPDATE ai_agents.ai_agent_tasks SET input = '{deep}' WHERE id = '{task}'"),
            "54000",
            "nested 33 levels deep",
        ),
        (
            format!(
                "SELECT ai_agents.send_message('{conversation}', repeat('m', 70000))"
            ),
            "54000",
            "the message is 70000 bytes long; at most 65536 are allowed (ai_agents.max_message_bytes)",
        ),
    ] {
        let (got, message) = error_of(&mut c, &sql);
        assert_eq!(got, code, "{message}");
        assert!(message.contains(says), "{message}");
    }
    // An operator may move a limit; the assistant's replies are never cut off by it.
    c.batch_execute(&format!(
        "SET ai_agents.max_input_depth = 40; {}; RESET ai_agents.max_input_depth",
        enqueue_with(&deep)
    ))
    .expect("within the raised limit");
    let stored = c
        .execute(
            "INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content)
             SELECT id, organization_id, 'assistant', repeat('r', 70000)
               FROM ai_agents.ai_agent_conversations WHERE id = $1::text::uuid",
            &[&conversation],
        )
        .expect("a long reply");
    assert_eq!(stored, 1);
}

#[test]
fn a_reply_the_tables_refuse_fails_its_task_alone_and_the_batch_is_kept() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "Poisoned replies");
    let started = worker_started(&mut c);
    // An operator's trigger (or anything else about one row) that refuses one completion.
    c.batch_execute(
        "CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.title = 'poison reply' AND NEW.status = 'completed' THEN
                 RAISE EXCEPTION 'this reply is refused by the table';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER zz_refuse_poison BEFORE UPDATE ON ai_agents.ai_agent_tasks
             FOR EACH ROW EXECUTE FUNCTION public.refuse_poison();",
    )
    .unwrap();
    // One transaction: claimed together, their replies recorded together.
    let tasks: Vec<String> = c
        .query(
            "SELECT (ai_agents.enqueue_task($1::text::uuid, t)).id::text
               FROM unnest(ARRAY['poison reply', 'good 1', 'good 2', 'good 3', 'good 4']) t",
            &[&agent],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for task in &tasks[1..] {
        wait_for(
            &mut c,
            task,
            "status = 'completed'",
            Duration::from_secs(30),
        );
    }
    let error = fails_alone(&mut c, &tasks[0]);
    c.batch_execute("ALTER TABLE ai_agents.ai_agent_tasks DISABLE TRIGGER zz_refuse_poison")
        .unwrap();
    assert!(
        error.contains("the reply could not be recorded: this reply is refused by the table"),
        "{error}"
    );
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}

#[test]
fn token_counts_and_costs_beyond_the_columns_are_clamped() {
    // No worker serves this database: the test records the reply itself, as the worker would.
    let (mut c, _db) = fresh_database();
    let (_, agent) = create_agent(&mut c, "Absurd usage");
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok)
         VALUES ('openai', 'absurd', 999999, 999999);
         SELECT ai_agents.enqueue_task('{agent}', 'a reply that reports 2^63 tokens');"
    ))
    .unwrap();
    let (task, token): (String, i64) = {
        let row = c
            .query_one(
                "SELECT id::text, fencing_token FROM ai_agents.claim_due_tasks('w', 1)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let status: String = c
        .query_one(
            "SELECT status FROM ai_agents._record_llm_replies(
                 ARRAY[$1::text::uuid], ARRAY[$2::bigint], ARRAY['ok'],
                 ARRAY[9223372036854775807]::bigint[], ARRAY[9223372036854775807]::bigint[],
                 ARRAY[9223372036854775807]::bigint[], ARRAY[0]::bigint[], ARRAY['absurd'], ARRAY[NULL::text], ARRAY[7])",
            &[&task, &token],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "completed");
    let row = c
        .query_one(
            "SELECT t.tokens_used, t.cost_usd::text, l.tokens_used, l.cost_usd::text
               FROM ai_agents.ai_agent_tasks t
               JOIN ai_agents.ai_agent_activity_log l ON l.task_id = t.id AND l.action_type = 'task_completed'
              WHERE t.id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    let clamped: (i32, String, i32, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        clamped,
        (
            i32::MAX,
            "99999999.999999999999".to_string(),
            i32::MAX,
            "99999999.999999999999".to_string()
        )
    );
}

#[test]
fn send_message_is_idempotent_per_conversation_even_under_concurrent_retries() {
    let (mut c, db) = fresh_database();
    let (_, agent) = create_agent(&mut c, "Front desk");
    let (first, second) = (
        start_conversation(&mut c, &agent),
        start_conversation(&mut c, &agent),
    );
    // Eight sessions retry one message at once: one message, one task.
    let tasks: Vec<String> = std::thread::scope(|scope| {
        let sessions: Vec<_> = (0..8)
            .map(|_| {
                let (db, first) = (&db, &first);
                scope.spawn(move || {
                    let mut s = shared_cluster().connect(db);
                    s.query_one(
                        "SELECT (ai_agents.send_message($1::text::uuid, 'Can I freeze my plan?', 'retry-1')).id::text",
                        &[first],
                    )
                    .unwrap()
                    .get::<_, String>(0)
                })
            })
            .collect();
        sessions.into_iter().map(|s| s.join().unwrap()).collect()
    });
    assert!(tasks.iter().all(|t| t == &tasks[0]), "{tasks:?}");
    let count = |c: &mut Client, sql: &str| -> i64 { c.query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM ai_agents.ai_agent_messages WHERE conversation_id = '{first}'")
        ),
        1
    );
    // The same key in another conversation, or for enqueue_task, is another task.
    let elsewhere: String = c
        .query_one(
            "SELECT (ai_agents.send_message($1::text::uuid, 'Hello', 'retry-1')).id::text",
            &[&second],
        )
        .unwrap()
        .get(0);
    let enqueued = c
        .query_one(
            "SELECT (ai_agents.enqueue_task($1::text::uuid, 'x', idempotency_key => 'retry-1')).id::text",
            &[&agent],
        )
        .unwrap()
        .get::<_, String>(0);
    assert!(elsewhere != tasks[0] && enqueued != tasks[0] && enqueued != elsewhere);
    let (code, message) = error_of(
        &mut c,
        &format!("SELECT ai_agents.send_message('{first}', 'x', repeat('k', 201))"),
    );
    assert_eq!(code, "22001", "{message}");
}

#[test]
fn template_queries_read_only_their_organizations_rows_and_never_run_as_a_superuser() {
    let env = env();
    // A superuser's session, as the worker's is when it builds scheduled reports.
    let mut c = env.connect();
    let (org, agent) = create_agent(&mut c, "Reported");
    let (other_org, other_agent) = create_agent(&mut c, "Someone else");
    for a in [&agent, &other_agent] {
        enqueue(&mut c, a, "counted");
    }
    let template = |c: &mut Client, name: &str, query: &str| {
        c.execute(
            "INSERT INTO ai_agents.ai_agent_report_templates (organization_id, name, report_type, period, queries)
             VALUES ($1::text::uuid, $2, 'custom', 'week', jsonb_build_object('q', $3::text))",
            &[&org, &name, &query],
        )
    };
    let build = |c: &mut Client, name: &str| {
        error_of(
            c,
            &format!("SELECT ai_agents.build_report('{name}', '{org}', now() - interval '1 week', now())"),
        )
    };
    // Only the report organization's rows, whoever builds it.
    template(
        &mut c,
        "tasks seen",
        "SELECT count(*) AS n, count(DISTINCT organization_id) AS orgs FROM ai_agents.ai_agent_tasks",
    )
    .unwrap();
    let seen: String = c
        .query_one(
            &format!(
                "SELECT ((ai_agents.build_report('tasks seen', '{org}', now() - interval '1 week', now())).data -> 'queries' -> 'q')::text"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen, r#"[{"n": 1, "orgs": 1}]"#, "{other_org} leaked");
    // A superuser-only setting (the API key) and the catalog's secrets are out of reach, so
    // the report fails and stores nothing of them.
    for (name, query) in [
        (
            "key",
            "SELECT current_setting('ai_agents.openai_api_key') AS k",
        ),
        (
            "passwords",
            "SELECT rolname, rolpassword FROM pg_catalog.pg_authid",
        ),
    ] {
        template(&mut c, name, query).unwrap();
        let (code, message) = build(&mut c, name);
        assert_eq!(code, "42501", "{name}: {message}");
    }
    let leaked: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_reports WHERE data::text LIKE '%' || $1 || '%'",
            &[&ai_agents_tests::PLANTED_KEY],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
    // A text that closes the sub-select it runs in and adds statements is refused when the
    // template is written, and, written before the check, when the report is built.
    let escape =
        "SELECT 1) q; COPY (SELECT 1) TO PROGRAM 'touch /tmp/ai_agents_escaped'; SELECT (1";
    let marker = std::path::Path::new("/tmp/ai_agents_escaped");
    let _ = std::fs::remove_file(marker);
    let refused = template(&mut c, "escape", escape).unwrap_err();
    let refused = refused.as_db_error().expect("a database error");
    assert_eq!(refused.code().code(), "22023", "{}", refused.message());
    assert!(
        refused
            .message()
            .contains("report query \"q\" is not valid SQL"),
        "{}",
        refused.message()
    );
    for (name, query) in [("escape", escape), ("two statements", "SELECT 1; SELECT 2")] {
        c.batch_execute(
            "ALTER TABLE ai_agents.ai_agent_report_templates DISABLE TRIGGER ai_agent_report_templates_validate",
        )
        .unwrap();
        let written = template(&mut c, name, query);
        c.batch_execute(
            "ALTER TABLE ai_agents.ai_agent_report_templates ENABLE TRIGGER ai_agent_report_templates_validate",
        )
        .unwrap();
        written.unwrap();
        let (code, message) = build(&mut c, name);
        assert_eq!(code, "22023", "{name}: {message}");
    }
    assert!(!marker.exists(), "a template query ran a program");
}

#[test]
fn a_conversation_sends_only_the_newest_history_that_fits() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "Chatty");
    let conversation = start_conversation(&mut c, &agent);
    // Three earlier messages of 40 kB each; this cluster sends at most 100 kB of history.
    c.execute(
        "INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content, created_at)
         SELECT cv.id, cv.organization_id, 'user', 'marker-' || i || ' ' || repeat('x', 40000),
                now() - (4 - i) * interval '1 minute'
           FROM ai_agents.ai_agent_conversations cv, generate_series(1, 3) i
          WHERE cv.id = $1::text::uuid",
        &[&conversation],
    )
    .unwrap();
    let question = format!("newest question of {agent}");
    let task: String = c
        .query_one(
            "SELECT (ai_agents.send_message($1::text::uuid, $2)).id::text",
            &[&conversation, &question],
        )
        .unwrap()
        .get(0);
    wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(30),
    );
    let sent: Vec<String> = env
        .stub
        .requests()
        .into_iter()
        .map(|r| r["body"].to_string())
        .filter(|body| body.contains(&question))
        .collect();
    assert_eq!(sent.len(), 1);
    let has = |marker: &str| sent[0].contains(&format!("{marker} xxx"));
    assert_eq!(
        (has("marker-1"), has("marker-2"), has("marker-3")),
        (false, true, true),
        "the newest messages within 100 kB, the oldest left out"
    );
}

#[test]
fn a_members_queue_is_bounded_in_priority_due_time_and_length() {
    supabase_roles();
    let (mut c, db) = fresh_database();
    c.batch_execute("SELECT ai_agents.apply_role_grants()")
        .unwrap();
    let (org, agent) = create_agent(&mut c, "Flooded");
    let mut member = as_role(&db, "authenticated", Some(&claims(&org)));
    let enqueue_as = |s: &mut Client, extra: &str| -> Result<(i32, f64), String> {
        s.query_one(
            &format!(
                "SELECT t.priority, extract(epoch FROM t.next_run_at - now())::float8
                   FROM ai_agents.enqueue_task('{agent}', 'x'{extra}) t"
            ),
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .map_err(|e| {
            e.as_db_error()
                .map(|d| format!("{} {}", d.code().code(), d.message()))
                .unwrap_or_default()
        })
    };
    // A member's priority stays in [-10, 10], the due time between now and a year ahead.
    let day = 86_400.0;
    for (extra, priority, due_in_days) in [
        (
            ", priority => 1000, run_at => now() - interval '1 year'",
            10,
            0.0,
        ),
        (
            ", priority => -1000, run_at => now() + interval '5 years'",
            -10,
            365.0,
        ),
        (
            ", priority => 3, run_at => now() + interval '2 days'",
            3,
            2.0,
        ),
    ] {
        let (got, due) = enqueue_as(&mut member, extra).unwrap();
        assert_eq!(got, priority, "{extra}");
        assert!(
            (due / day - due_in_days).abs() < 0.01,
            "{extra}: due in {due} s"
        );
    }
    // The service role is not bounded.
    assert_eq!(enqueue_as(&mut c, ", priority => 1000").unwrap().0, 1000);
    // At most this many waiting tasks for the organization's members (its override row).
    c.execute(
        "INSERT INTO ai_agents.ai_agent_organization_limits (organization_id, max_waiting_tasks)
         VALUES ($1::text::uuid, 6)",
        &[&org],
    )
    .unwrap();
    enqueue_as(&mut member, "").unwrap();
    enqueue_as(&mut member, "").unwrap();
    let refused = enqueue_as(&mut member, "").unwrap_err();
    assert!(
        refused.starts_with(&format!(
            "54000 organization {org} has 6 tasks waiting; at most 6 may wait"
        )),
        "{refused}"
    );
    // A task that runs makes room.
    c.batch_execute("SELECT count(*) FROM ai_agents.claim_due_tasks('w', 1)")
        .unwrap();
    enqueue_as(&mut member, "").expect("room again");
}

#[test]
fn a_task_row_locked_for_a_minute_delays_only_that_task() {
    // A cluster of its own: its stub answers each call after a second, so that a person's
    // session can take the task row while the call is in flight.
    static LOCKED: OnceLock<WorkerEnv> = OnceLock::new();
    let env = WorkerEnv::kept(&LOCKED, "isolation-lock", &[]);
    env.stub.set_default_delay_ms(1000);
    let mut c = env.connect();
    let (_, held_agent) = create_agent(&mut c, "Held");
    let (_, healthy) = create_agent(&mut c, "Healthy");
    let started = worker_started(&mut c);
    let task = enqueue(&mut c, &held_agent, "held by a person");
    wait_for(&mut c, &task, "status = 'running'", Duration::from_secs(10));
    let mut person = env.connect();
    person
        .batch_execute(&format!(
            "BEGIN; SELECT FROM ai_agents.ai_agent_tasks WHERE id = '{task}' FOR UPDATE"
        ))
        .unwrap();
    let held = std::time::Instant::now();
    while held.elapsed() < Duration::from_secs(60) {
        healthy_tasks_run_promptly(&mut c, &healthy, 5);
        std::thread::sleep(Duration::from_secs(5));
    }
    let status: String = c
        .query_one(
            "SELECT status FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "running", "its reply waits for the row");
    person.batch_execute("COMMIT").unwrap();
    wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(10),
    );
    let logged: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_activity_log WHERE task_id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    let called = env
        .stub
        .requests()
        .iter()
        .filter(|r| r["body"].to_string().contains("held by a person"))
        .count();
    assert_eq!((logged, called), (1, 1), "one call, one recorded outcome");
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}

#[test]
fn the_membership_hook_runs_as_the_member_inside_the_entry_points() {
    supabase_roles();
    let (mut c, db) = fresh_database();
    c.batch_execute("SELECT ai_agents.apply_role_grants()")
        .unwrap();
    let (org_a, agent_a) = create_agent(&mut c, "Member's gym");
    let (_, agent_b) = create_agent(&mut c, "Another gym");
    // A membership table whose own row-level security shows each role its rows: the hook
    // answers for whoever runs it.
    c.batch_execute(&format!(
        "CREATE TABLE public.memberships (member name, organization_id uuid);
         ALTER TABLE public.memberships ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_rows ON public.memberships USING (member = current_user);
         GRANT SELECT ON public.memberships TO authenticated;
         INSERT INTO public.memberships SELECT 'authenticated', '{org_a}';
         INSERT INTO public.memberships SELECT 'someone_else', organization_id
           FROM ai_agents.ai_agents WHERE id = '{agent_b}';
         CREATE FUNCTION public.my_organizations() RETURNS uuid[] LANGUAGE sql STABLE
           AS $$ SELECT coalesce(array_agg(organization_id), '{{}}') FROM public.memberships $$;
         GRANT EXECUTE ON FUNCTION public.my_organizations() TO authenticated;"
    ))
    .unwrap();
    // The superuser chooses the hook for the session; the request then runs as the member.
    let mut member = shared_cluster().connect(&db);
    member
        .batch_execute(
            "SET ai_agents.organization_hook = 'public.my_organizations'; SET ROLE authenticated",
        )
        .unwrap();
    let visible: i64 = member
        .query_one("SELECT count(*) FROM ai_agents.ai_agents", &[])
        .unwrap()
        .get(0);
    assert_eq!(visible, 1, "through RLS the member sees its gym only");
    // Inside the SECURITY DEFINER entry points the hook answers the same.
    member
        .query_one(
            "SELECT ai_agents.enqueue_task($1::text::uuid, 'own gym')",
            &[&agent_a],
        )
        .expect("the member's own agent");
    let (code, message) = error_of(
        &mut member,
        &format!("SELECT ai_agents.enqueue_task('{agent_b}', 'crossing over')"),
    );
    assert_eq!(code, "42501", "{message}");
    let (code, message) = error_of(
        &mut member,
        &format!("SELECT ai_agents.start_conversation('{agent_b}')"),
    );
    assert_eq!(code, "42501", "{message}");
    let crossed: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE agent_id = $1::text::uuid",
            &[&agent_b],
        )
        .unwrap()
        .get(0);
    assert_eq!(crossed, 0);
}

#[test]
fn a_member_cannot_choose_the_membership_settings_before_the_library_loads() {
    // Without preloading, a session has not loaded the library until it calls one of its
    // functions; until then Postgres takes any value for an ai_agents.* name.
    let cluster = Cluster::start("isolation-no-preload", &["shared_preload_libraries = ''"]);
    let (mut c, db) = cluster.fresh_database();
    c.batch_execute(
        "CREATE ROLE authenticated NOLOGIN; CREATE ROLE member LOGIN; GRANT authenticated TO member;
         SELECT ai_agents.apply_role_grants();
         CREATE FUNCTION public.every_organization() RETURNS uuid[] LANGUAGE sql STABLE SECURITY DEFINER
           AS $$ SELECT array_agg(organization_id) FROM ai_agents.ai_agents $$;
         GRANT EXECUTE ON FUNCTION public.every_organization() TO authenticated;",
    )
    .unwrap();
    let (org_a, _) = create_agent(&mut c, "Member's gym");
    let (_, agent_b) = create_agent(&mut c, "Another gym");
    let mut member = Client::connect(
        &cluster
            .conninfo(&db)
            .replace("user=postgres", "user=member"),
        NoTls,
    )
    .unwrap();
    member
        .batch_execute(&format!(
            "SET ROLE authenticated; SELECT set_config('request.jwt.claims', '{}', false)",
            claims(&org_a)
        ))
        .unwrap();
    // Accepted or refused, neither choice may count.
    for setting in [
        "SET ai_agents.organization_hook = 'public.every_organization'",
        "SET ai_agents.jwt_organization_claim = 'sub'",
    ] {
        let _ = member.batch_execute(setting);
    }
    let visible: i64 = member
        .query_one("SELECT count(*) FROM ai_agents.ai_agents", &[])
        .unwrap()
        .get(0);
    assert_eq!(visible, 1);
    let (code, message) = error_of(
        &mut member,
        &format!("SELECT ai_agents.enqueue_task('{agent_b}', 'crossing over')"),
    );
    assert_eq!(code, "42501", "{message}");
    let hook: String = member
        .query_one("SELECT current_setting('ai_agents.organization_hook')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        hook, "",
        "the member's value was discarded when the library loaded"
    );
}

#[test]
fn a_429_on_one_organizations_own_key_pauses_that_organization_only() {
    let env = env();
    let mut c = env.connect();
    let started = worker_started(&mut c);
    let (org, agent) = create_agent(&mut c, "Own key");
    let (_, healthy) = create_agent(&mut c, "Shared key");
    // The organization's own key, in a stand-in for Supabase Vault.
    c.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS vault;
         CREATE OR REPLACE VIEW vault.decrypted_secrets AS
         SELECT * FROM (VALUES ('ai_agents.openai.organization.{org}', 'sk-own-key-of-{org}'))
                s(name, decrypted_secret)"
    ))
    .unwrap();
    let marker = format!("throttled-{org}");
    env.stub
        .script(serde_json::json!({"match": marker, "status": 429, "retry_after": "30"}));
    let throttled = enqueue(&mut c, &agent, &marker);
    wait_for(
        &mut c,
        &throttled,
        "attempts = 1 AND status = 'pending'",
        Duration::from_secs(10),
    );
    let paused: Vec<(String, f64)> = c
        .query(
            "SELECT key, extract(epoch FROM paused_for)::float8 FROM ai_agents.rate_limit_usage
              WHERE paused_for IS NOT NULL ORDER BY key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(paused.len(), 2, "{paused:?}");
    assert_eq!(paused[1].0, "credentials:openai", "{paused:?}");
    assert!(
        paused[0].0.starts_with("credential:openai:") && !paused[0].0.contains("sk-own-key"),
        "{paused:?}"
    );
    assert!(paused.iter().all(|(_, s)| *s > 20.0), "{paused:?}");
    // The organization's next task waits for its key; everyone else's run as usual.
    let waiting = enqueue(&mut c, &agent, "after the 429");
    healthy_tasks_run_promptly(&mut c, &healthy, 10);
    let row = c
        .query_one(
            "SELECT t.status, (SELECT l.details ->> 'tier' FROM ai_agents.ai_agent_activity_log l
                                WHERE l.agent_id = t.agent_id AND l.action_type = 'rate_limited' LIMIT 1)
               FROM ai_agents.ai_agent_tasks t WHERE t.id = $1::text::uuid",
            &[&waiting],
        )
        .unwrap();
    let (status, tier): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(
        (status.as_str(), tier.as_deref()),
        ("pending", Some("credential"))
    );
    // Once the pause is over, both run.
    c.batch_execute(
        "SELECT ai_agents.reset_rate_limit(key) FROM ai_agents.rate_limit_usage WHERE key LIKE 'credential%';
         DROP SCHEMA vault CASCADE",
    )
    .unwrap();
    c.execute(
        "UPDATE ai_agents.ai_agent_tasks SET next_run_at = now() WHERE id = ANY ($1::text[]::uuid[])",
        &[&vec![throttled.clone(), waiting.clone()]],
    )
    .unwrap();
    for task in [&throttled, &waiting] {
        wait_for(
            &mut c,
            task,
            "status = 'completed'",
            Duration::from_secs(10),
        );
    }
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}

#[test]
fn two_thousand_reports_due_at_once_and_a_slow_template_hold_back_no_task() {
    let env = env();
    let mut c = env.connect();
    let started = worker_started(&mut c);
    let (_, healthy) = create_agent(&mut c, "Healthy while reporting");
    // 2,000 gyms, each with a weekly template built every minute, all due now; one of them
    // asks a query that would run for a minute.
    c.batch_execute(
        "CREATE TEMP TABLE gyms AS SELECT gen_random_uuid() AS org, i FROM generate_series(1, 2000) i;
         INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model, created_at)
         SELECT org, 'Reporter ' || i, 'monday_reporter', 'gpt-4o-mini', now() - interval '60 days' FROM gyms;
         INSERT INTO ai_agents.ai_agent_report_templates
             (organization_id, name, report_type, agent_type, period, sections, schedule_cron, schedule_starts_at, queries)
         SELECT org, 'monday', 'weekly_performance', 'monday_reporter', 'week', '{usage}', '* * * * *',
                date_trunc('week', now(), 'UTC') - interval '3 days',
                CASE WHEN i = 1000 THEN '{\"slow\": \"SELECT pg_sleep(60)\"}'::jsonb ELSE '{}' END
           FROM gyms;",
    )
    .unwrap();
    let orgs: Vec<String> = c
        .query("SELECT org::text FROM gyms ORDER BY i", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let begun = std::time::Instant::now();
    let built = |c: &mut Client| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'ready'), count(*) FILTER (WHERE status = 'failed')
                   FROM ai_agents.ai_agent_reports WHERE organization_id = ANY ($1::text[]::uuid[])",
                &[&orgs],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // A scheduler pass looks at the schedules now; the batches after it follow turn by turn.
    c.batch_execute("SELECT ai_agents.run_scheduler_once()")
        .unwrap();
    while built(&mut c).0 + built(&mut c).1 < 2000 {
        assert!(
            begun.elapsed() < Duration::from_secs(240),
            "reports built so far: {:?}",
            built(&mut c)
        );
        healthy_tasks_run_promptly(&mut c, &healthy, 3);
    }
    println!(
        "isolation: 2,000 reports built in {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    assert_eq!(built(&mut c), (1999, 1));
    let error: String = c
        .query_one(
            "SELECT error FROM ai_agents.ai_agent_reports r JOIN gyms g ON g.org = r.organization_id
              WHERE g.i = 1000",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.contains("statement timeout"), "{error}");
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}

#[test]
fn a_table_locked_by_a_person_delays_only_the_step_that_needs_it() {
    let env = env();
    let mut c = env.connect();
    let started = worker_started(&mut c);
    let (_, healthy) = create_agent(&mut c, "Healthy beside a lock");
    let mut person = env.connect();
    person
        .batch_execute(
            "BEGIN; LOCK TABLE ai_agents.ai_agent_report_templates IN ACCESS EXCLUSIVE MODE",
        )
        .unwrap();
    // A scheduler pass looks at the report schedules: it gives up on the lock after
    // ai_agents.worker_lock_timeout, and claims meanwhile go on.
    let mut asker = env.connect();
    let pass = std::thread::spawn(move || {
        asker
            .query_one("SELECT ai_agents.run_scheduler_once()::text", &[])
            .map(|r| r.get::<_, String>(0))
    });
    healthy_tasks_run_promptly(&mut c, &healthy, 10);
    pass.join()
        .unwrap()
        .expect("the pass ends despite the lock");
    person.batch_execute("ROLLBACK").unwrap();
    healthy_tasks_run_promptly(&mut c, &healthy, 3);
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}

#[test]
fn soak_two_thousand_tasks_of_twenty_gyms_among_two_hundred_hostile_ones() {
    // A cluster of its own: its flood would delay the other tests' healthy tasks.
    static SOAK: OnceLock<WorkerEnv> = OnceLock::new();
    let env = WorkerEnv::kept(&SOAK, "isolation-soak", &[]);
    let mut c = env.connect();
    let started = worker_started(&mut c);
    // 20 gyms with 100 ordinary tasks each; two hostile gyms with 100 tasks each, one whose
    // agent points at an endpoint outside the allowlist, one whose every call the provider
    // refuses with a 400. All enqueued at once, in random order.
    c.batch_execute(
        "CREATE TABLE soak_agents (agent uuid, kind text);
         WITH kinds AS (SELECT 'normal' AS kind FROM generate_series(1, 20)
                        UNION ALL VALUES ('unreachable'), ('refused')),
         made AS (
             INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model, config)
             SELECT gen_random_uuid(), 'Soak ' || kind, 'customer_care', 'gpt-4o-mini',
                    CASE WHEN kind = 'unreachable'
                         THEN '{\"base_url\": \"http://evil.example/v1\"}'::jsonb ELSE '{}' END
               FROM kinds
             RETURNING id, name, config)
         INSERT INTO soak_agents
         SELECT id, CASE WHEN config ? 'base_url' THEN 'unreachable'
                         WHEN name = 'Soak refused' THEN 'refused' ELSE 'normal' END
           FROM made;",
    )
    .unwrap();
    let refused: Vec<serde_json::Value> = (0..100)
        .map(|_| serde_json::json!({"match": "soak refused", "status": 400, "error_type": "invalid_request_error"}))
        .collect();
    env.stub.script(serde_json::Value::Array(refused));
    let begun = std::time::Instant::now();
    c.batch_execute(
        "CREATE TABLE soak_tasks AS
         SELECT (ai_agents.enqueue_task(s.agent, 'soak ' || s.kind || ' ' || s.agent || ' ' || n)).id AS task, s.kind
           FROM (SELECT a.agent, a.kind, n FROM soak_agents a, generate_series(1, 100) n ORDER BY random()) s",
    )
    .unwrap();
    let outcomes = |c: &mut Client| -> Vec<(String, String, i64)> {
        c.query(
            "SELECT s.kind, t.status, count(*) FROM soak_tasks s JOIN ai_agents.ai_agent_tasks t ON t.id = s.task
              GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let expected = vec![
        ("normal".to_string(), "completed".to_string(), 2000),
        ("refused".to_string(), "failed".to_string(), 100),
        ("unreachable".to_string(), "failed".to_string(), 100),
    ];
    while outcomes(&mut c) != expected {
        assert!(
            begun.elapsed() < Duration::from_secs(300),
            "after 300 s: {:?}",
            outcomes(&mut c)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = begun.elapsed().as_secs_f64();
    // Exactly one recorded outcome per task and one attempt; the hostile ones name their
    // problem.
    let rows = c
        .query(
            "SELECT s.kind, t.attempts, t.error_message,
                    (SELECT count(*) FROM ai_agents.ai_agent_activity_log l
                      WHERE l.task_id = t.id AND l.action_type IN ('task_completed', 'task_failed'))
               FROM soak_tasks s JOIN ai_agents.ai_agent_tasks t ON t.id = s.task",
            &[],
        )
        .unwrap();
    for row in &rows {
        let (kind, attempts, error, outcomes): (String, i32, Option<String>, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((attempts, outcomes), (1, 1), "{kind}: {error:?}");
        let error = error.unwrap_or_default();
        match kind.as_str() {
            "normal" => assert_eq!(error, ""),
            "unreachable" => assert!(error.contains("is not allowed"), "{error}"),
            _ => assert!(error.contains("400"), "{error}"),
        }
    }
    // Every ordinary task was sent once; nothing went to the endpoint outside the allowlist.
    let requests = env.stub.requests();
    let mut sent: Vec<String> = requests
        .iter()
        .map(|r| r["body"].to_string())
        .filter(|body| body.contains("soak normal"))
        .collect();
    let calls = sent.len();
    sent.sort();
    sent.dedup();
    assert_eq!((calls, sent.len()), (2000, 2000), "calls, distinct calls");
    assert!(!requests
        .iter()
        .any(|r| r["body"].to_string().contains("soak unreachable")));
    println!(
        "isolation soak: 2,200 tasks of 22 gyms (200 hostile) done in {elapsed:.1} s, {:.0} tasks/s",
        2200.0 / elapsed
    );
    assert_eq!(worker_started(&mut c), started, "the worker restarted");
}
