//! ai_agents on Citus (docs/distributed.md): `ai_agents.distribute()` on a coordinator and two
//! workers on loopback, Citus built from ../shared/vendor when the machine does not have it.
use ai_agents_tests::citus::CitusCluster;
use ai_agents_tests::stub::Stub;
use ai_agents_tests::{error_of, fresh_database, strings};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

/// Rows per table of the schema, in name order.
fn row_counts(c: &mut Client) -> Vec<(String, i64)> {
    strings(
        c,
        "SELECT relname::text FROM pg_class
          WHERE relnamespace = 'ai_agents'::regnamespace AND relkind = 'r' ORDER BY 1",
    )
    .into_iter()
    .map(|t| {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM ai_agents.{t}"), &[])
            .unwrap()
            .get(0);
        (t, n)
    })
    .collect()
}

#[test]
fn distributing_without_citus_is_refused() {
    let (mut c, _) = fresh_database();
    let (code, message) = error_of(&mut c, "SELECT * FROM ai_agents.distribute()");
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("needs Citus"), "{message}");
    // And it is the superuser's alone.
    c.batch_execute("CREATE ROLE distribute_probe; SET ROLE distribute_probe")
        .unwrap();
    let (code, message) = error_of(&mut c, "SELECT * FROM ai_agents.distribute(4)");
    assert_eq!(code, "42501", "{message}");
}

#[test]
fn distribute_shards_every_tenant_table_by_organization_and_keeps_every_row() {
    let cluster = CitusCluster::start("distribute", 2, &[]);
    let mut c = cluster.connect();
    // Twenty gyms with an agent, tasks, a conversation, an override row, a budget and a
    // template of their own, written before distributing.
    c.batch_execute(
        "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
         SELECT gen_random_uuid(), 'front desk ' || g, 'customer_care', 'gpt-4o-mini'
           FROM generate_series(1, 20) g;
         SELECT ai_agents.enqueue_task(a.id, 'renewals ' || g) FROM ai_agents.ai_agents a, generate_series(1, 5) g;
         SELECT ai_agents.send_message((ai_agents.start_conversation(a.id)).id, 'hello') FROM ai_agents.ai_agents a;
         INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_per_minute)
         SELECT organization_id, id, 30 FROM ai_agents.ai_agents;
         INSERT INTO ai_agents.ai_agent_budgets (organization_id, period, limit_usd)
         SELECT organization_id, 'month', 50 FROM ai_agents.ai_agents;
         INSERT INTO ai_agents.ai_agent_report_templates (organization_id, name, report_type, period, sections)
         SELECT organization_id, 'mine', 'weekly', 'week', ARRAY['tasks_by_status'] FROM ai_agents.ai_agents;",
    )
    .expect("filling the tables before distributing");
    let before = row_counts(&mut c);
    let triggers = |c: &mut Client| {
        strings(
            c,
            "SELECT tgrelid::regclass::text || ' ' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              WHERE c.relnamespace = 'ai_agents'::regnamespace AND NOT tgisinternal ORDER BY 1",
        )
    };
    let triggers_before = triggers(&mut c);
    assert!(triggers_before.len() >= 15, "{triggers_before:?}");
    let count = |table: &str| before.iter().find(|(t, _)| t == table).unwrap().1;
    assert_eq!(count("ai_agents"), 20, "{before:?}");
    assert!(count("ai_agent_tasks") >= 100, "{before:?}");
    assert_eq!(count("ai_agent_budgets"), 20, "{before:?}");

    let done: Vec<(String, String)> = c
        .query("SELECT * FROM ai_agents.distribute(8)", &[])
        .expect("distribute")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let reference: Vec<&str> = done
        .iter()
        .filter(|(_, d)| d == "reference")
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        reference,
        [
            "ai_agent_model_prices",
            "ai_agent_builtin_tools",
            "ai_agent_report_templates"
        ]
    );
    assert_eq!(done.len(), before.len(), "every table, once: {done:?}");
    assert_eq!(
        done[3].0, "ai_agents",
        "ai_agents first, the others co-located with it"
    );

    // Every tenant table is hash-distributed by organization_id in one co-location group, its
    // shards on both workers; the global tables are reference tables.
    let layout: Vec<(String, String, String, i32, i64)> = c
        .query(
            "SELECT c.relname::text, p.partmethod::text, coalesce(column_to_column_name(p.logicalrelid, p.partkey), ''),
                    p.colocationid,
                    (SELECT count(DISTINCT pl.groupid) FROM pg_dist_shard sh JOIN pg_dist_placement pl USING (shardid)
                      WHERE sh.logicalrelid = p.logicalrelid)
               FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
              WHERE c.relnamespace = 'ai_agents'::regnamespace ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(layout.len(), before.len(), "{layout:?}");
    let group = layout.iter().find(|l| l.0 == "ai_agents").unwrap().3;
    for (table, method, column, colocation, nodes) in &layout {
        if reference.contains(&table.as_str()) {
            assert_eq!(method, "n", "{table}");
        } else {
            assert_eq!(
                (method.as_str(), column.as_str(), *colocation, *nodes),
                ("h", "organization_id", group, 2),
                "{table}"
            );
        }
    }

    assert_eq!(row_counts(&mut c), before, "every row kept");
    // The coordinator keeps no copy of them in its own tables.
    let kept_locally = strings(
        &mut c,
        "SELECT c.relname::text FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
          WHERE c.relnamespace = 'ai_agents'::regnamespace AND pg_relation_size(c.oid) > 0",
    );
    assert!(kept_locally.is_empty(), "{kept_locally:?}");
    assert_eq!(triggers(&mut c), triggers_before, "every trigger kept");
    // What could not be kept as it was is replaced: ids found by plain indexes, policies
    // without subqueries, and the foreign key to the templates added back.
    let id_keys: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE connamespace = 'ai_agents'::regnamespace AND conname LIKE '%\\_id\\_key'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(id_keys, 0);
    let with_subquery: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_policies WHERE schemaname = 'ai_agents' AND qual ILIKE '%select%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(with_subquery, 0);
    let template_key: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'ai_agent_reports_template_id_fkey'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(template_key, 1);
    // Agents and their versions through the coordinator: the snapshot trigger runs on the
    // shard, next to the organization's versions.
    let agent: String = c
        .query_one(
            "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model, system_prompt)
             VALUES (gen_random_uuid(), 'after', 'customer_care', 'gpt-4o-mini', 'first') RETURNING id::text",
            &[],
        )
        .expect("an agent inserted after distributing")
        .get(0);
    c.execute(
        "UPDATE ai_agents.ai_agents SET system_prompt = 'second' WHERE id = $1::text::uuid",
        &[&agent],
    )
    .unwrap();
    let explicit: i32 = c
        .query_one(
            "SELECT (ai_agents.create_agent_version_from_current($1::text::uuid)).version_number",
            &[&agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(explicit, 2, "no change since version 2");
    c.execute(
        "SELECT ai_agents.activate_agent_version($1::text::uuid, 1)",
        &[&agent],
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT a.system_prompt, v.version_number
               FROM ai_agents.ai_agents a JOIN ai_agents.ai_agent_versions v
                 ON v.organization_id = a.organization_id AND v.id = a.current_version_id
              WHERE a.id = $1::text::uuid",
            &[&agent],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("first".to_string(), 1)
    );
    let versions: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_versions WHERE agent_id = $1::text::uuid",
            &[&agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(versions, 2);

    // Tasks through the coordinator: enqueued once per idempotency key, validated on the shard.
    let first: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'renewal', idempotency_key => 'k')",
            &[&agent],
        )
        .expect("enqueue_task after distributing")
        .get(0);
    let again: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'renewal', idempotency_key => 'k')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(first, again);
    let (code, message) = error_of(
        &mut c,
        &format!(
            "INSERT INTO ai_agents.ai_agent_tasks (agent_id, organization_id, title)
             VALUES ('{agent}', gen_random_uuid(), 'elsewhere')"
        ),
    );
    assert_eq!(code, "23503", "{message}");

    // The claim names the organizations of one shard (a node's worker claims its shards'):
    // every organization at once, or two shards' organizations, are refused.
    let org: String = c
        .query_one(
            "SELECT organization_id::text FROM ai_agents.ai_agents WHERE id = $1::text::uuid",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let (code, message) = error_of(&mut c, "SELECT ai_agents.claim_due_tasks('test', 5)");
    assert_eq!(code, "0A000", "{message}");
    let (code, message) = error_of(
        &mut c,
        "SELECT ai_agents.claim_due_tasks('test', 5, organizations => ARRAY(
             SELECT DISTINCT ON (get_shard_id_for_distribution_column('ai_agents.ai_agent_tasks', organization_id))
                    organization_id FROM ai_agents.ai_agents))",
    );
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("one shard"), "{message}");
    let (code, message) = error_of(&mut c, "SELECT ai_agents.rescue_expired_leases()");
    assert_eq!(code, "0A000", "{message}");
    let claim = |c: &mut Client| -> Vec<(String, i64, String)> {
        c.query(
            "SELECT id::text, fencing_token, organization_id::text
               FROM ai_agents.claim_due_tasks('test', 5, '1 minute', ARRAY[$1::text::uuid])",
            &[&org],
        )
        .expect("claim_due_tasks for one organization")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let claimed = claim(&mut c);
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let (id, token, owner) = &claimed[0];
    assert_eq!((id, owner), (&first, &org));
    c.execute(
        "SELECT ai_agents.heartbeat_task($1::text::uuid, $2)",
        &[&first, token],
    )
    .expect("heartbeat_task");
    let (code, message) = error_of(
        &mut c,
        &format!("SELECT ai_agents.heartbeat_task('{first}', {})", token - 1),
    );
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains(&format!("running with token {token}")),
        "{message}"
    );
    let status: String = c
        .query_one(
            "SELECT status FROM ai_agents.fail_task($1::text::uuid, $2, 'boom', permanent => true, tokens_used => 12)",
            &[&first, token],
        )
        .expect("fail_task")
        .get(0);
    assert_eq!(status, "failed");
    let logged: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_activity_log WHERE task_id = $1::text::uuid AND action_type = 'task_failed'",
            &[&first],
        )
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);
    let second: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'second')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let status: String = c
        .query_one(
            "SELECT status FROM ai_agents.cancel_task($1::text::uuid, 'not needed')",
            &[&second],
        )
        .expect("cancel_task")
        .get(0);
    assert_eq!(status, "cancelled");
    let (code, message) = error_of(
        &mut c,
        &format!("SELECT ai_agents.run_task_now('{second}')"),
    );
    assert_eq!(code, "55000", "{message}");
    // A run completed, and another rescued when its lease ran out.
    for title in ["third", "fourth"] {
        c.execute(
            "SELECT ai_agents.enqueue_task($1::text::uuid, $2)",
            &[&agent, &title],
        )
        .unwrap();
    }
    let claimed = claim(&mut c);
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    let status: String = c
        .query_one(
            "SELECT status FROM ai_agents.complete_task($1::text::uuid, $2, 'done', tokens_used => 30)",
            &[&claimed[0].0, &claimed[0].1],
        )
        .expect("complete_task")
        .get(0);
    assert_eq!(status, "completed");
    c.execute(
        "UPDATE ai_agents.ai_agent_tasks SET lease_expires_at = now() - interval '1 second'
          WHERE organization_id = $1::text::uuid AND id = $2::text::uuid",
        &[&org, &claimed[1].0],
    )
    .unwrap();
    let rescued: i32 = c
        .query_one(
            "SELECT ai_agents.rescue_expired_leases(ARRAY[$1::text::uuid])",
            &[&org],
        )
        .expect("rescue_expired_leases for one organization")
        .get(0);
    assert_eq!(rescued, 1);
    let retried = claim(&mut c);
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0].0, claimed[1].0);
    assert!(retried[0].1 > claimed[1].1, "a new token for the new run");
    // Called with a value: in a query over a distributed table, Citus would push the call
    // down to the shards.
    let summary: (i64, i64, i64) = c
        .query_one(
            "SELECT total_tasks, failed, coalesce(total_tokens, 0) FROM ai_agents.task_summary('1 hour', $1::text::uuid)",
            &[&org],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .expect("task_summary");
    assert_eq!(summary, (4, 1, 42));

    // Custom plans on every node: Citus distributes no generic plan with parameters.
    for node in std::iter::once(&cluster.coordinator).chain(&cluster.workers) {
        let generic: i64 = node
            .connect(ai_agents_tests::citus::DATABASE)
            .query_one(
                "SELECT count(*) FROM pg_proc WHERE pronamespace = 'ai_agents'::regnamespace
                    AND 'plan_cache_mode=force_generic_plan' = ANY (proconfig)",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(generic, 0, "node on port {}", node.port());
    }

    // The drop guard still stands, and a second call does nothing.
    let (code, message) = error_of(
        &mut c,
        "ALTER TABLE ai_agents.ai_agent_tasks DROP COLUMN description",
    );
    assert_eq!(code, "2BP01", "{message}");
    assert_eq!(
        c.query("SELECT * FROM ai_agents.distribute(8)", &[])
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn without_citus_the_functions_that_take_arrays_keep_generic_plans() {
    let (mut c, _) = fresh_database();
    let generic = strings(
        &mut c,
        "SELECT proname::text FROM pg_proc WHERE pronamespace = 'ai_agents'::regnamespace
            AND 'plan_cache_mode=force_generic_plan' = ANY (proconfig) ORDER BY 1",
    );
    assert_eq!(
        generic,
        [
            "_log_task_events",
            "_notify_task_events",
            "_record_llm_reply_batch",
            "claim_due_tasks",
            "complete_tasks"
        ]
    );
}

/// A node's own worker may hold one of the tables while asking for another: preparing the
/// node for distribution waits that out instead of failing distribute() with a deadlock.
#[test]
fn preparing_a_node_for_distribution_survives_a_deadlock_with_a_transaction_of_its_worker() {
    let (mut c, db) = fresh_database();
    let mut preparer = ai_agents_tests::shared_cluster().connect(&db);
    let preparer_pid: i32 = preparer
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    // The worker's side: a claim holds the tasks. A session looks for a deadlock once, when it
    // has waited deadlock_timeout: the preparer after 1 s, by when the worker's side below has
    // closed the circle, and the worker's side after a minute, so the preparer finds it.
    c.batch_execute(
        "SET deadlock_timeout = '1min';
         BEGIN;
         LOCK TABLE ai_agents.ai_agent_tasks IN ROW EXCLUSIVE MODE",
    )
    .unwrap();
    let preparing = std::thread::spawn(move || {
        preparer.batch_execute("SET deadlock_timeout = '1s'")?;
        preparer
            .query_one("SELECT cardinality(ai_agents._prepare_distribution())", &[])
            .map(|r| r.get::<_, i32>(0))
    });
    wait_until(
        &mut c,
        &format!(
            "SELECT wait_event_type IS NOT DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = {preparer_pid}"
        ),
        std::time::Duration::from_secs(30),
    );
    // Then it asks for a table the preparer already holds.
    let held = strings(
        &mut c,
        &format!(
            "SELECT l.relation::regclass::text FROM pg_locks l JOIN pg_class r ON r.oid = l.relation
              WHERE l.pid = {preparer_pid} AND l.granted AND l.mode = 'AccessExclusiveLock'
                AND r.relnamespace = 'ai_agents'::regnamespace AND r.relkind = 'r'
              ORDER BY 1 LIMIT 1"
        ),
    );
    assert_eq!(held.len(), 1, "the preparer waits holding no table");
    c.batch_execute(&format!("SELECT count(*) FROM {}", held[0]))
        .expect("the worker's transaction goes on");
    c.batch_execute("COMMIT").unwrap();
    let restore = preparing
        .join()
        .unwrap()
        .expect("preparing gets through the deadlock");
    assert!(restore > 0, "nothing to create again");
    let triggers = strings(
        &mut c,
        "SELECT tgname::text FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
          WHERE r.relnamespace = 'ai_agents'::regnamespace AND NOT t.tgisinternal",
    );
    assert!(triggers.is_empty(), "triggers left: {triggers:?}");
}

/// The server a worker runs on, from its name (ai_agents-worker-<system identifier>-<pid>).
fn server_of(worker: &str) -> String {
    worker.rsplit('-').nth(1).unwrap_or_default().to_string()
}

/// A coordinator and two workers whose background workers run tasks against `stub`, the rate
/// limits out of the way but for `extra` settings (later lines win).
fn cluster_with_workers(name: &str, stub: &Stub, extra: &[String]) -> CitusCluster {
    let mut settings = vec![
        format!(
            "ai_agents.database = '{}'",
            ai_agents_tests::citus::DATABASE
        ),
        "ai_agents.worker_enabled = on".to_string(),
        format!("ai_agents.openai_base_url = '{}'", stub.base_url),
        format!("ai_agents.allowed_base_urls = '{}'", stub.base_url),
        "ai_agents.openai_api_key = 'sk-distributed'".to_string(),
        "ai_agents.rate_limit_global_per_minute = 1000000".to_string(),
        "ai_agents.rate_limit_organization_per_minute = 1000000".to_string(),
        "ai_agents.rate_limit_agent_per_minute = 1000000".to_string(),
    ];
    settings.extend_from_slice(extra);
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    CitusCluster::start(name, 2, &settings)
}

#[test]
fn a_worker_on_every_node_runs_the_tasks_of_its_own_shards_exactly_once() {
    let stub = Stub::start();
    let cluster = cluster_with_workers("node-workers", &stub, &[]);
    let mut c = cluster.connect();
    // Twenty gyms; the first agent runs the loop with the built-in current_time tool.
    c.batch_execute(
        "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
         SELECT gen_random_uuid(), 'front desk ' || g, 'customer_care', 'gpt-4o-mini'
           FROM generate_series(1, 20) g;
         UPDATE ai_agents.ai_agents SET tools = ARRAY['current_time'] WHERE name = 'front desk 1';
         INSERT INTO ai_agents.ai_agent_budgets (organization_id, period, limit_usd)
         SELECT organization_id, 'month', 50 FROM ai_agents.ai_agents WHERE name = 'front desk 5';
         SELECT count(*) FROM ai_agents.distribute(8);",
    )
    .expect("agents, then distributing");
    stub.set_call_first_tool(true);
    // Tasks and conversations after distributing, each through its own call (a call per row
    // of a query over a distributed table would run on the shards).
    c.batch_execute(
        "DO $$
         DECLARE a record;
         BEGIN
             FOR a IN SELECT id, name FROM ai_agents.ai_agents ORDER BY name LOOP
                 FOR g IN 1 .. 5 LOOP
                     PERFORM ai_agents.enqueue_task(a.id, 'renewals ' || g);
                 END LOOP;
                 IF a.name IN ('front desk 2', 'front desk 3') THEN
                     PERFORM ai_agents.send_message((ai_agents.start_conversation(a.id)).id, 'hello');
                 END IF;
             END LOOP;
         END $$",
    )
    .expect("tasks enqueued through the coordinator");
    let started = std::time::Instant::now();
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE status <> 'completed'",
                &[],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(90),
            "{left} tasks not completed: {:?}",
            strings(
                &mut c,
                "SELECT status || ' ' || coalesce(error_message, '') FROM ai_agents.ai_agent_tasks
                  WHERE status <> 'completed' LIMIT 5"
            )
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!("102 tasks on 2 nodes completed in {:?}", started.elapsed());

    // Each task completed once, by the worker of the node that holds its shard.
    let completions: Vec<(String, i64, Option<String>, String)> = c
        .query(
            "SELECT t.id::text, count(l.id), min(l.details ->> 'worker'), t.organization_id::text
               FROM ai_agents.ai_agent_tasks t
               LEFT JOIN ai_agents.ai_agent_activity_log l
                 ON l.organization_id = t.organization_id AND l.task_id = t.id AND l.action_type = 'task_completed'
              GROUP BY t.organization_id, t.id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(completions.len(), 102);
    let mut port_of = std::collections::HashMap::new();
    for (_, _, _, org) in &completions {
        if !port_of.contains_key(org) {
            let port: i32 = c
                .query_one(
                    "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n ON n.groupid = p.groupid
                      WHERE p.shardid = get_shard_id_for_distribution_column('ai_agents.ai_agent_tasks', $1::text::uuid)",
                    &[org],
                )
                .unwrap()
                .get(0);
            port_of.insert(org.clone(), port);
        }
    }
    let server_at = |port: i32| -> String {
        let node = cluster
            .workers
            .iter()
            .find(|w| i32::from(w.port()) == port)
            .unwrap_or_else(|| panic!("a shard on port {port}, which is no worker"));
        node.connect(ai_agents_tests::citus::DATABASE)
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let servers: std::collections::HashMap<i32, String> = cluster
        .workers
        .iter()
        .map(|w| (i32::from(w.port()), server_at(i32::from(w.port()))))
        .collect();
    let mut by_server = std::collections::HashMap::new();
    for (task, times, worker, org) in &completions {
        let port = &port_of[org];
        assert_eq!(*times, 1, "task {task} completed {times} times");
        let worker = worker.as_deref().unwrap_or_default();
        assert_eq!(
            server_of(worker),
            servers[port],
            "task {task} on the node at {port} was run by {worker}"
        );
        *by_server.entry(server_of(worker)).or_insert(0) += 1;
    }
    assert_eq!(by_server.len(), 2, "both workers ran tasks: {by_server:?}");
    println!("tasks run per node: {by_server:?}");

    // The loop: the tool ran as a step on the shard's node, and the answer came after it.
    let steps: Vec<String> = strings(
        &mut c,
        "SELECT s.kind || ' ' || coalesce(s.tool_name, '') || ' ' || (s.error IS NULL)::text
           FROM ai_agents.ai_agent_task_steps s JOIN ai_agents.ai_agents a
             ON a.organization_id = s.organization_id AND a.id = s.agent_id
          WHERE a.name = 'front desk 1' ORDER BY s.task_id, s.step_number",
    );
    assert_eq!(steps.len(), 15, "{steps:?}");
    assert!(
        steps
            .chunks(3)
            .all(|s| s == ["llm  true", "tool current_time true", "llm  true"]),
        "{steps:?}"
    );
    // The conversations got their replies.
    let replies = strings(
        &mut c,
        "SELECT content FROM ai_agents.ai_agent_messages WHERE role = 'assistant' ORDER BY 1",
    );
    assert_eq!(replies, ["stub reply to: hello", "stub reply to: hello"]);

    // The budget reserved each call at its claim, on the shard's node, and settled it at its
    // cost: what it counts spent is what the organization's tasks cost.
    let budgeted: String = c
        .query_one(
            "SELECT organization_id::text FROM ai_agents.ai_agents WHERE name = 'front desk 5'",
            &[],
        )
        .unwrap()
        .get(0);
    let (spent, reserved, periods): (String, String, i64) = {
        let row = c
            .query_one(
                "SELECT sum(spent_usd)::text, sum(reserved_usd)::text, count(*)
                   FROM ai_agents.ai_agent_budget_periods WHERE organization_id = $1::text::uuid",
                &[&budgeted],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let cost: String = c
        .query_one(
            "SELECT sum(cost_usd)::text FROM ai_agents.ai_agent_tasks WHERE organization_id = $1::text::uuid",
            &[&budgeted],
        )
        .unwrap()
        .get(0);
    assert_eq!(periods, 1);
    assert_eq!(
        (spent.as_str(), reserved.trim_end_matches('0')),
        (cost.as_str(), "0.")
    );
    assert!(
        !spent.trim_matches(|ch| ch == '0' || ch == '.').is_empty(),
        "{spent}"
    );

    // Pruning names one shard's organizations, as a claim does.
    let (code, message) = error_of(&mut c, "SELECT ai_agents.prune_history('0 days')");
    assert_eq!(code, "0A000", "{message}");
    let org: String = c
        .query_one(
            "SELECT organization_id::text FROM ai_agents.ai_agents WHERE name = 'front desk 4'",
            &[],
        )
        .unwrap()
        .get(0);
    let pruned: i64 = c
        .query_one(
            "SELECT ai_agents.prune_history('0 days', 1000, ARRAY[$1::text::uuid])",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(pruned, 10, "5 tasks and their 5 completions");
}

/// The most of `sorted` (seconds) within any window of `window` seconds.
fn most_in_any_window(sorted: &[f64], window: f64) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (last, &at) in sorted.iter().enumerate() {
        while at - sorted[first] >= window {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

#[test]
fn a_hundred_organizations_run_twenty_thousand_tasks_on_their_own_nodes_through_a_shard_move() {
    const ORGANIZATIONS: i64 = 100;
    // Two agents each: a front desk with 140 tasks, a finance agent with 60 (at their limits,
    // about two minutes each).
    const TASKS_PER_ORGANIZATION: i64 = 200;
    const FINANCE_TASKS: i64 = 60;
    const ORGANIZATION_LIMIT: usize = 100;
    // The finance agents' override: below their share of the organization's limit.
    const FINANCE_LIMIT: usize = 30;
    let stub = Stub::start();
    stub.set_default_delay_ms(20);
    let cluster = cluster_with_workers(
        "scale",
        &stub,
        &[
            format!("ai_agents.rate_limit_organization_per_minute = {ORGANIZATION_LIMIT}"),
            "ai_agents.max_concurrent_calls = 16".to_string(),
        ],
    );
    let mut c = cluster.connect();
    c.execute(
        "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
         SELECT o.id, a.name, a.agent_type, 'gpt-4o-mini'
           FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1::int8)) o,
                (VALUES ('front desk', 'customer_care'), ('finance', 'finance')) a(name, agent_type)",
        &[&ORGANIZATIONS],
    )
    .unwrap();
    c.execute(
        "INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_per_minute)
         SELECT organization_id, id, $1::int8::int4 FROM ai_agents.ai_agents WHERE name = 'finance'",
        &[&(FINANCE_LIMIT as i64)],
    )
    .unwrap();
    c.batch_execute("SELECT count(*) FROM ai_agents.distribute(8)")
        .expect("distributing");
    let started = std::time::Instant::now();
    c.execute(
        "INSERT INTO ai_agents.ai_agent_tasks (organization_id, agent_id, title)
         SELECT a.organization_id, a.id, 'renewal ' || g
           FROM ai_agents.ai_agents a,
                generate_series(1, CASE WHEN a.name = 'finance' THEN $2::int8 ELSE $1::int8 - $2::int8 END) g",
        &[&TASKS_PER_ORGANIZATION, &FINANCE_TASKS],
    )
    .expect("20,000 tasks, inserted through the coordinator");
    let total = ORGANIZATIONS * TASKS_PER_ORGANIZATION;
    let left = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE status <> 'completed'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let wait_until = |c: &mut Client, most_left: i64| {
        while left(c) > most_left {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(900),
                "{} tasks left after {:?}",
                left(c),
                started.elapsed()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    };
    // Half way through, the first shard group moves to the other worker, with tasks of it
    // running (claimed on the node it leaves, recorded on the one it moves to).
    wait_until(&mut c, total / 2);
    let row = c
        .query_one(
            "SELECT s.shardid, n.nodeport,
                    (SELECT o.nodeport FROM pg_dist_node o WHERE o.shouldhaveshards AND o.nodeport <> n.nodeport)
               FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n ON n.groupid = p.groupid
              WHERE s.logicalrelid = 'ai_agents.ai_agent_tasks'::regclass
              ORDER BY s.shardid LIMIT 1",
            &[],
        )
        .unwrap();
    let (shard, from, to): (i64, i32, i32) = (row.get(0), row.get(1), row.get(2));
    let running_when_moved: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE status = 'running'",
            &[],
        )
        .unwrap()
        .get(0);
    let move_started: f64 = c
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .unwrap()
        .get(0);
    c.execute(
        "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3, shard_transfer_mode => 'block_writes')",
        &[&shard, &from, &to],
    )
    .expect("moving a shard group in the middle of the run");
    let move_ended: f64 = c
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .unwrap()
        .get(0);
    wait_until(&mut c, 0);
    let took = started.elapsed();

    // Every task completed exactly once: one completion each, and one attempt.
    let (tasks, completions, attempts): (i64, i64, i64) = {
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE status = 'completed'),
                        (SELECT count(*) FROM ai_agents.ai_agent_activity_log WHERE action_type = 'task_completed'),
                        (SELECT count(DISTINCT task_id) FROM ai_agents.ai_agent_activity_log WHERE action_type = 'task_completed')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!((tasks, completions, attempts), (total, total, total));

    // Where each task was claimed: the node of the worker that ran it, against the node its
    // shard was on when it was claimed (the moved group: before, during or after the move).
    let servers: std::collections::HashMap<String, i32> = cluster
        .workers
        .iter()
        .map(|w| {
            let server: String = w
                .connect(ai_agents_tests::citus::DATABASE)
                .query_one(
                    "SELECT system_identifier::text FROM pg_control_system()",
                    &[],
                )
                .unwrap()
                .get(0);
            (server, i32::from(w.port()))
        })
        .collect();
    let mut placed = std::collections::HashMap::new();
    let organizations = strings(
        &mut c,
        "SELECT organization_id::text FROM ai_agents.ai_agents",
    );
    for org in &organizations {
        let row = c
            .query_one(
                "SELECT get_shard_id_for_distribution_column('ai_agents.ai_agent_tasks', $1::text::uuid),
                        (SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n ON n.groupid = p.groupid
                          WHERE p.shardid = get_shard_id_for_distribution_column('ai_agents.ai_agent_tasks', $1::text::uuid))",
                &[org],
            )
            .unwrap();
        placed.insert(org.clone(), (row.get::<_, i64>(0), row.get::<_, i32>(1)));
    }
    let runs: Vec<(String, String, f64, String)> = c
        .query(
            "SELECT l.organization_id::text, l.details ->> 'worker', extract(epoch FROM t.execution_started_at)::float8,
                    a.name
               FROM ai_agents.ai_agent_activity_log l
               JOIN ai_agents.ai_agent_tasks t ON t.organization_id = l.organization_id AND t.id = l.task_id
               JOIN ai_agents.ai_agents a ON a.organization_id = t.organization_id AND a.id = t.agent_id
              WHERE l.action_type = 'task_completed'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut local = 0;
    let mut starts: std::collections::HashMap<&str, Vec<f64>> = std::collections::HashMap::new();
    let mut finance_starts: std::collections::HashMap<&str, Vec<f64>> =
        std::collections::HashMap::new();
    for (org, worker, claimed_at, agent) in &runs {
        let ran_on = servers[&server_of(worker)];
        let (org_shard, now_on) = placed[org];
        let was_on: &[i32] = if org_shard != shard || *claimed_at > move_ended {
            &[now_on]
        } else if *claimed_at < move_started {
            &[from]
        } else {
            &[from, to]
        };
        if was_on.contains(&ran_on) {
            local += 1;
        }
        starts.entry(org).or_default().push(*claimed_at);
        if agent == "finance" {
            finance_starts.entry(org).or_default().push(*claimed_at);
        }
    }
    let local_share = f64::from(local) / runs.len() as f64;
    // No organization's or finance agent's calls over its limit in any 60 s window (less a
    // second for the difference between a claim's transaction start, recorded, and its
    // admission); those of the moved shard apart.
    let busiest = |starts: std::collections::HashMap<&str, Vec<f64>>| -> (usize, usize) {
        let (mut busiest, mut busiest_moved) = (0, 0);
        for (org, mut times) in starts {
            times.sort_by(f64::total_cmp);
            let most = most_in_any_window(&times, 59.0);
            if placed[org].0 == shard {
                busiest_moved = busiest_moved.max(most);
            } else {
                busiest = busiest.max(most);
            }
        }
        (busiest, busiest_moved)
    };
    let (busiest_org, busiest_org_moved) = busiest(starts);
    let (busiest_agent, busiest_agent_moved) = busiest(finance_starts);
    println!(
        "{total} tasks of {ORGANIZATIONS} organizations on 2 nodes in {took:?} ({:.0} tasks/s); \
         {:.2}% claimed on the node holding their shard; shard group {shard} moved from {from} to {to} \
         in {:.2} s with {running_when_moved} tasks running; busiest 60 s window of an organization: \
         {busiest_org} (moved: {busiest_org_moved}), limit {ORGANIZATION_LIMIT}; of a finance agent: \
         {busiest_agent} (moved: {busiest_agent_moved}), limit {FINANCE_LIMIT}",
        total as f64 / took.as_secs_f64(),
        local_share * 100.0,
        move_ended - move_started
    );
    assert!(local_share >= 0.95, "{local_share}");
    assert!(busiest_org <= ORGANIZATION_LIMIT && busiest_org_moved <= ORGANIZATION_LIMIT);
    assert!(busiest_agent <= FINANCE_LIMIT && busiest_agent_moved <= FINANCE_LIMIT);
}

/// A PostgREST request: a transaction of `authenticated` with the JWT claims set for it alone,
/// then the pre-request function when `forward`, then `sql`.
fn request(
    member: &mut Client,
    claims: &str,
    forward: bool,
    sql: &str,
) -> Result<Vec<postgres::Row>, postgres::Error> {
    let mut tx = member.transaction()?;
    tx.batch_execute("SET LOCAL ROLE authenticated")?;
    tx.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&claims],
    )?;
    if forward {
        tx.execute("SELECT ai_agents.forward_request_claims()", &[])?;
    }
    let rows = tx.query(sql, &[])?;
    tx.commit()?;
    Ok(rows)
}

fn count_of(member: &mut Client, claims: &str, sql: &str) -> i64 {
    request(member, claims, true, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))[0].get(0)
}

#[test]
fn members_read_and_write_their_own_rows_on_the_workers_through_the_coordinator() {
    let cluster = CitusCluster::start("members", 2, &[]);
    let mut c = cluster.connect();
    // Supabase's roles, created after the extension (Citus creates them on the workers too).
    // A member's query reaches a worker as the member's role: it must be able to log in there
    // (docs/distributed.md#members), and only there.
    c.batch_execute(
        "CREATE ROLE authenticated NOLOGIN; CREATE ROLE service_role NOLOGIN BYPASSRLS;
         CREATE ROLE authenticator LOGIN NOINHERIT; GRANT authenticated, service_role TO authenticator;",
    )
    .unwrap();
    for worker in &cluster.workers {
        worker
            .connect(ai_agents_tests::citus::DATABASE)
            .batch_execute(
                "SET citus.enable_alter_role_propagation = off; ALTER ROLE authenticated LOGIN",
            )
            .unwrap();
    }
    let applied = strings(&mut c, "SELECT unnest(ai_agents.apply_role_grants())");
    assert_eq!(applied, ["service_role", "authenticated"]);
    c.query("SELECT * FROM ai_agents.distribute(4)", &[])
        .expect("distribute");

    // Twelve gyms; A and B the first two whose shards live on different workers.
    c.batch_execute(
        "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
         SELECT gen_random_uuid(), 'front desk ' || g, 'customer_care', 'gpt-4o-mini'
           FROM generate_series(1, 12) g",
    )
    .unwrap();
    let homes: Vec<(String, String, i32)> = c
        .query(
            "SELECT a.organization_id::text, a.id::text, n.nodeport
               FROM ai_agents.ai_agents a
               JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('ai_agents.ai_agents', a.organization_id)
               JOIN pg_dist_node n ON n.groupid = p.groupid
              ORDER BY a.name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let (org_a, agent_a, node_a) = homes[0].clone();
    let (org_b, agent_b, _) = homes
        .iter()
        .find(|(_, _, node)| *node != node_a)
        .cloned()
        .expect("twelve organizations on one worker only");
    for agent in [&agent_a, &agent_b] {
        c.batch_execute(&format!(
            "SELECT ai_agents.enqueue_task('{agent}', 'renewals');
             SELECT ai_agents.start_conversation('{agent}');"
        ))
        .unwrap();
    }
    let task_b: String = strings(
        &mut c,
        &format!("SELECT id::text FROM ai_agents.ai_agent_tasks WHERE organization_id = '{org_b}'"),
    )
    .remove(0);
    let conversation_a: String = strings(
        &mut c,
        &format!("SELECT id::text FROM ai_agents.ai_agent_conversations WHERE organization_id = '{org_a}'"),
    )
    .remove(0);

    let conninfo = cluster
        .coordinator
        .conninfo(ai_agents_tests::citus::DATABASE)
        .replace("user=postgres", "user=authenticator");
    let mut member = Client::connect(&conninfo, postgres::NoTls).unwrap();
    let claims_a = ai_agents_tests::claims(&org_a);
    let claims_b = ai_agents_tests::claims(&org_b);

    // Without the claims forwarded, the workers' policies see no organization: nothing, not
    // everything.
    for sql in [
        "SELECT count(*) FROM ai_agents.ai_agents".to_string(),
        format!("SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE organization_id = '{org_a}'"),
    ] {
        let rows = request(&mut member, &claims_a, false, &sql).unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 0, "{sql}");
    }
    // Forwarded: each member reads its own rows, over every shard or routed to one, and none
    // of the other's.
    for (claims, org, other) in [(&claims_a, &org_a, &org_b), (&claims_b, &org_b, &org_a)] {
        assert_eq!(
            count_of(
                &mut member,
                claims,
                "SELECT count(*) FROM ai_agents.ai_agents"
            ),
            1
        );
        assert_eq!(
            count_of(
                &mut member,
                claims,
                "SELECT count(*) FROM ai_agents.ai_agent_tasks"
            ),
            1
        );
        assert_eq!(
            count_of(
                &mut member,
                claims,
                &format!("SELECT count(*) FROM ai_agents.ai_agent_conversations WHERE organization_id = '{org}'")
            ),
            1
        );
        assert_eq!(
            count_of(
                &mut member,
                claims,
                &format!(
                    "SELECT count(*) FROM ai_agents.ai_agents WHERE organization_id = '{other}'"
                )
            ),
            0
        );
    }
    assert_eq!(
        count_of(
            &mut member,
            &claims_a,
            &format!("SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE id = '{task_b}'")
        ),
        0,
        "guessing an id reads nothing"
    );

    // The functions a browser calls, through the coordinator.
    let refused = request(
        &mut member,
        &claims_a,
        true,
        &format!("SELECT ai_agents.enqueue_task('{agent_b}', 'spend B''s budget')"),
    )
    .expect_err("B's agent");
    let refused = refused.as_db_error().expect("a database error");
    assert_eq!(
        (refused.code().code(), refused.message()),
        (
            "42501",
            format!("agent {agent_b} is not in your organization").as_str()
        )
    );
    let enqueue = format!(
        "SELECT id::text FROM ai_agents.enqueue_task('{agent_a}', 'mine', idempotency_key => 'k1')"
    );
    let first: String = request(&mut member, &claims_a, true, &enqueue).unwrap()[0].get(0);
    let again: String = request(&mut member, &claims_a, true, &enqueue).unwrap()[0].get(0);
    assert_eq!(first, again, "one task for one idempotency key");
    let reply: String = request(
        &mut member,
        &claims_a,
        true,
        &format!("SELECT task_type FROM ai_agents.send_message('{conversation_a}', 'hello')"),
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(reply, "conversation");
    let status: String = request(
        &mut member,
        &claims_a,
        true,
        &format!("SELECT status FROM ai_agents.cancel_task('{first}')"),
    )
    .unwrap()[0]
        .get(0);
    assert_eq!(status, "cancelled");
    let summary = request(
        &mut member,
        &claims_a,
        true,
        "SELECT total_tasks, pending FROM ai_agents.task_summary('1 day')",
    )
    .unwrap();
    assert_eq!(
        (summary[0].get::<_, i64>(0), summary[0].get::<_, i64>(1)),
        (3, 2),
        "A's renewal, its reply and its cancelled task"
    );
    let by = strings(
        &mut c,
        &format!("SELECT details ->> 'by' FROM ai_agents.ai_agent_activity_log WHERE task_id = '{first}' AND action_type = 'task_cancelled'"),
    );
    assert_eq!(
        by,
        [format!("user-of-{org_a}")],
        "the JWT's user is recorded"
    );
    // Nothing of B's changed.
    assert_eq!(
        count_of(
            &mut member,
            &claims_b,
            "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE status = 'pending'"
        ),
        1
    );
}

/// Two gyms of two agents each, with three months of history: activity (with the versions it
/// ran), pruned hourly usage, tasks of every status, a conversation, budgets and a gym's own
/// template of every section. Fixed ids, so that two databases hold the same. Run a statement
/// at a time (`load_report_fixture`): Citus writes a reference table after a parallel write
/// to distributed ones in no one transaction.
const REPORT_FIXTURE: &str = "
    INSERT INTO ai_agents.ai_agents (id, organization_id, name, agent_type, model, created_at)
    SELECT (o || '0000000-0000-4000-8000-00000000000' || a)::uuid, (o || '0000000-0000-4000-8000-0000000000aa')::uuid,
           CASE a WHEN 1 THEN 'Care ' ELSE 'Finance ' END || o, CASE a WHEN 1 THEN 'customer_care' ELSE 'finance' END,
           'gpt-4o-mini', '2026-08-01'
      FROM unnest(ARRAY['c', 'd']) o, generate_series(1, 2) a;
    INSERT INTO ai_agents.ai_agent_activity_log
        (organization_id, agent_id, action_type, success, tokens_used, cost_usd, execution_time_ms, error, details, created_at)
    SELECT a.organization_id, a.id,
           CASE WHEN d % 7 = 0 THEN 'task_failed' WHEN d % 11 = 0 THEN 'rate_limited'
                WHEN d % 13 = 0 THEN 'task_cancelled' ELSE 'task_completed' END,
           d % 7 <> 0, 100 + d, 0.000137 * d, 200 + 3 * d,
           CASE WHEN d % 7 = 0 THEN CASE WHEN d % 2 = 0 THEN 'timeout' ELSE 'HTTP 429' END END,
           jsonb_build_object('agent_version_id', a.current_version_id, 'will_retry', d % 14 = 0),
           timestamptz '2026-09-01' + d * interval '19 hours'
      FROM ai_agents.ai_agents a, generate_series(1, 110) d;
    INSERT INTO ai_agents.ai_agent_usage_hourly
        (organization_id, agent_id, provider, model, hour, attempts, succeeded, tokens, cost_usd)
    SELECT a.organization_id, a.id, 'openai', 'gpt-4o', timestamptz '2026-08-03' + h * interval '1 day', 3, 2, 900, 0.0123
      FROM ai_agents.ai_agents a, generate_series(0, 20) h;
    INSERT INTO ai_agents.ai_agent_tasks (organization_id, agent_id, title, status, created_at)
    SELECT a.organization_id, a.id, 'task ' || s || ' ' || i, s, timestamptz '2026-11-16' + i * interval '9 hours'
      FROM ai_agents.ai_agents a, unnest(ARRAY['pending', 'completed', 'failed', 'cancelled']) s,
           generate_series(1, 3) i;
    INSERT INTO ai_agents.ai_agent_conversations (id, organization_id, agent_id)
    SELECT (left(a.id::text, 35) || '9')::uuid, a.organization_id, a.id FROM ai_agents.ai_agents a WHERE a.agent_type = 'customer_care';
    INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content, created_at)
    SELECT c.id, c.organization_id, CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END, 'message ' || i,
           timestamptz '2026-11-17' + i * interval '1 hour'
      FROM ai_agents.ai_agent_conversations c, generate_series(1, 9) i;
    INSERT INTO ai_agents.ai_agent_budgets (id, organization_id, agent_id, period, timezone, limit_usd)
    SELECT (left(a.organization_id::text, 35) || 'b')::uuid, a.organization_id, NULL, 'month', 'UTC', 50
      FROM ai_agents.ai_agents a WHERE a.agent_type = 'finance'
    UNION ALL
    SELECT (left(a.id::text, 35) || 'b')::uuid, a.organization_id, a.id, 'day', 'Europe/Berlin', 1.5
      FROM ai_agents.ai_agents a WHERE a.agent_type = 'finance';
    INSERT INTO ai_agents.ai_agent_report_templates (id, organization_id, name, report_type, scope, period, sections)
    VALUES ('f0000000-0000-4000-8000-0000000000cc', 'c0000000-0000-4000-8000-0000000000aa', 'Everything', 'everything',
            'organization', 'month',
            '{tasks_by_status,conversations,success_rate,latency,failures,usage,per_agent,per_model,previous_period,trend,forecast,budget}');
    UPDATE ai_agents.ai_agent_report_templates SET schedule_starts_at = '2026-09-01' WHERE organization_id IS NULL;
";

fn load_report_fixture(c: &mut Client) {
    for statement in REPORT_FIXTURE.split(";\n") {
        c.batch_execute(statement)
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Everything the reports of REPORT_FIXTURE show, through `c`, as text to compare.
fn build_fixture_reports(c: &mut Client) -> Vec<String> {
    let mut shown = vec![];
    for (template, org, agent, from, to) in [
        (
            "Customer Care Weekly Summary",
            "c",
            Some("c0000000-0000-4000-8000-000000000001"),
            "2026-11-16",
            "2026-11-23",
        ),
        (
            "Customer Care Weekly Summary",
            "d",
            Some("d0000000-0000-4000-8000-000000000001"),
            "2026-10-12",
            "2026-10-19",
        ),
        (
            "Finance Monthly Forecast",
            "c",
            Some("c0000000-0000-4000-8000-000000000002"),
            "2026-11-01",
            "2026-12-01",
        ),
        (
            "Finance Monthly Forecast",
            "d",
            None,
            "2026-10-01",
            "2026-11-01",
        ),
        ("Everything", "c", None, "2026-11-01", "2026-12-01"),
    ] {
        let row = c
            .query_one(
                "SELECT data::text, markdown, narrative_status FROM ai_agents.build_report($1, $2::text::uuid, $3::text::timestamptz, $4::text::timestamptz, $5::text::uuid)",
                &[&template, &format!("{org}0000000-0000-4000-8000-0000000000aa"), &from, &to, &agent],
            )
            .unwrap_or_else(|e| panic!("{template} of {org}: {e}"));
        for i in 0..3 {
            shown.push(row.get::<_, String>(i));
        }
    }
    // Built again: the first build's narrative task is cancelled.
    c.query(
        "SELECT ai_agents.build_report('Customer Care Weekly Summary', 'c0000000-0000-4000-8000-0000000000aa', '2026-11-16', '2026-11-23', 'c0000000-0000-4000-8000-000000000001')",
        &[],
    )
    .unwrap();
    shown.extend(strings(
        c,
        "SELECT status || ' ' || count(*) FROM ai_agents.ai_agent_tasks WHERE task_type = 'report' GROUP BY status ORDER BY 1",
    ));
    shown.extend(strings(
        c,
        "SELECT (ai_agents.get_latest_agent_report('c0000000-0000-4000-8000-000000000001')).title",
    ));
    shown.extend(strings(
        c,
        "SELECT row(s.*)::text FROM ai_agents.task_summary('10 years', 'd0000000-0000-4000-8000-0000000000aa') s",
    ));
    shown
}

#[test]
fn reports_built_through_the_coordinator_equal_those_of_one_server() {
    let (mut single, _) = fresh_database();
    load_report_fixture(&mut single);
    let expected = build_fixture_reports(&mut single);

    let cluster = CitusCluster::start("reports", 2, &[]);
    let mut c = cluster.connect();
    c.batch_execute("SET client_min_messages = warning; SELECT ai_agents.distribute(4)")
        .unwrap();
    load_report_fixture(&mut c);
    let homes = strings(
        &mut c,
        "SELECT DISTINCT n.nodeport::text FROM unnest(ARRAY['c0000000-0000-4000-8000-0000000000aa', 'd0000000-0000-4000-8000-0000000000aa']::uuid[]) o
           JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('ai_agents.ai_agents', o)
           JOIN pg_dist_node n ON n.groupid = p.groupid",
    );
    println!("the two gyms live on the workers at ports {homes:?}");
    let got = build_fixture_reports(&mut c);

    // Not empty figures compared with empty ones: the sections have content.
    let everything: serde_json::Value = serde_json::from_str(&expected[12]).unwrap();
    assert!(
        everything["summary"]["attempts"].as_i64().unwrap() > 10,
        "{everything}"
    );
    assert_eq!(everything["per_agent"].as_array().unwrap().len(), 2);
    assert_eq!(everything["budget"].as_array().unwrap().len(), 2);
    assert!(!everything["failures"].as_array().unwrap().is_empty());
    assert_eq!(everything["trend"].as_array().unwrap().len(), 6);
    assert!(
        everything["conversations"]["user_messages"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert!(
        expected.contains(&"cancelled 1".to_string()),
        "{expected:?}"
    );
    for (i, (one, distributed)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(one, distributed, "item {i} differs through the coordinator");
    }
    assert_eq!(expected.len(), got.len());

    // Scheduled reports: the coordinator builds them, for the gyms of every node; a worker node
    // builds none (one builder: no report built twice at once).
    let due = "SELECT coalesce(ai_agents.build_due_reports('2026-12-01 12:00+00')::text, 'none')";
    let built = "SELECT count(*)::text FROM ai_agents.ai_agent_reports";
    let before = strings(&mut c, built);
    let mut on_worker = cluster.workers[0].connect(ai_agents_tests::citus::DATABASE);
    assert_eq!(strings(&mut on_worker, due), ["none"]);
    assert_eq!(strings(&mut c, built), before);
    let scheduled = "SELECT t.name || ' ' || r.organization_id || ' ' || coalesce(r.agent_id::text, '-') || ' ' || r.period_start || ' ' || r.status
                       FROM ai_agents.ai_agent_reports r JOIN ai_agents.ai_agent_report_templates t ON t.id = r.template_id
                      WHERE r.created_at > now() - interval '1 hour' ORDER BY 1";
    let next_on_one = strings(&mut single, due);
    assert_eq!(strings(&mut c, due), next_on_one);
    let on_one = strings(&mut single, scheduled);
    let through_coordinator = strings(&mut c, scheduled);
    assert!(on_one.len() > 10, "{on_one:?}");
    assert_eq!(on_one, through_coordinator);
    println!(
        "{} report items equal on one server and through the coordinator; {} scheduled reports built by the coordinator",
        got.len(),
        through_coordinator.len()
    );
}

#[test]
fn a_node_added_later_takes_shards_by_rebalance_and_its_worker_runs_their_tasks() {
    let stub = Stub::start();
    let mut cluster = cluster_with_workers("add-node", &stub, &[]);
    let mut c = cluster.connect();
    distribute_gyms(&mut c, 24, 8);

    // docs/distributed.md#adding-a-node, step by step.
    let added = cluster.add_worker();
    let added_port = i32::from(added.port());
    let added_server: String = added
        .connect(ai_agents_tests::citus::DATABASE)
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .unwrap()
        .get(0);
    let mut c = cluster.connect();
    // Two statements: the wait sees the rebalance job once its start has committed.
    c.batch_execute("SELECT citus_rebalance_start(shard_transfer_mode => 'block_writes')")
        .expect("rebalance");
    c.batch_execute("SELECT citus_rebalance_wait()")
        .expect("rebalance");
    let moved: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
               JOIN pg_dist_node n ON n.groupid = p.groupid
              WHERE s.logicalrelid = 'ai_agents.ai_agent_tasks'::regclass AND n.nodeport = $1",
            &[&added_port],
        )
        .unwrap()
        .get(0);
    assert!(moved > 0, "the rebalance gave the new node no shard");

    c.batch_execute(
        "DO $$
         DECLARE a record;
         BEGIN
             FOR a IN SELECT id FROM ai_agents.ai_agents LOOP
                 FOR g IN 1 .. 4 LOOP
                     PERFORM ai_agents.enqueue_task(a.id, 'renewals ' || g);
                 END LOOP;
             END LOOP;
         END $$",
    )
    .expect("tasks enqueued through the coordinator");
    let started = std::time::Instant::now();
    while c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE status <> 'completed'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(90),
            "tasks not completed after 90 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Each task once, and those of the new node's shards by the new node's worker.
    let runs: Vec<(i64, String, i32)> = c
        .query(
            "SELECT count(l.id), coalesce(min(l.details ->> 'worker'), ''), t.organization_id::text
               FROM ai_agents.ai_agent_tasks t
               LEFT JOIN ai_agents.ai_agent_activity_log l
                 ON l.organization_id = t.organization_id AND l.task_id = t.id AND l.action_type = 'task_completed'
              GROUP BY t.organization_id, t.id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let port = port_of_organization(&mut cluster.connect(), &r.get::<_, String>(2));
            (r.get(0), r.get(1), port)
        })
        .collect();
    assert_eq!(runs.len(), 96);
    assert!(runs.iter().all(|(times, _, _)| *times == 1), "{runs:?}");
    let on_added: Vec<&String> = runs
        .iter()
        .filter(|(_, _, port)| *port == added_port)
        .map(|(_, worker, _)| worker)
        .collect();
    assert!(!on_added.is_empty(), "no organization on the new node");
    assert!(
        on_added.iter().all(|w| server_of(w) == added_server),
        "a task of the new node's shards run elsewhere: {on_added:?}"
    );
    println!(
        "the new node holds {moved} of the tasks' shards and ran {} of 96 tasks",
        on_added.len()
    );
}

/// `gyms` organizations of one front-desk agent each, then the tables distributed in `shards`.
fn distribute_gyms(c: &mut Client, gyms: i32, shards: i32) {
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
         SELECT gen_random_uuid(), 'front desk ' || g, 'customer_care', 'gpt-4o-mini'
           FROM generate_series(1, {gyms}) g;
         SET client_min_messages = warning;
         SELECT count(*) FROM ai_agents.distribute({shards});"
    ))
    .expect("gyms, then distributing");
}

/// The port of the node holding an organization's shards.
fn port_of_organization(c: &mut Client, org: &str) -> i32 {
    c.query_one(
        "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n ON n.groupid = p.groupid
          WHERE p.shardid = get_shard_id_for_distribution_column('ai_agents.ai_agents', $1::text::uuid)",
        &[&org],
    )
    .unwrap()
    .get(0)
}

/// Polls `sql` (a boolean) until it holds; panics after `limit`.
fn wait_until(c: &mut Client, sql: &str, limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while !c.query_one(sql, &[]).unwrap().get::<_, bool>(0) {
        assert!(started.elapsed() < limit, "not within {limit:?}: {sql}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_budget_through_the_coordinator_is_never_overspent_alerts_once_per_threshold_and_holds() {
    let stub = Stub::start();
    let cluster = cluster_with_workers("budgets", &stub, &[]);
    let mut c = cluster.connect();
    // A model at $10 and $40 per million tokens: a call may cost up to about $0.013. The
    // spender's organization has a budget; the other, none.
    c.batch_execute(
        "INSERT INTO ai_agents.ai_agent_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok)
         VALUES ('openai', 'budget-model', 10, 40);
         INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, system_prompt, model, max_tokens)
         SELECT gen_random_uuid(), n, 'finance', 'You watch the money.', 'budget-model', 300
           FROM unnest(ARRAY['Spender', 'Free']) n;
         SET client_min_messages = warning;
         SELECT count(*) FROM ai_agents.distribute(4);",
    )
    .unwrap();
    let agent_of = |c: &mut Client, name: &str| -> (String, String) {
        let row = c
            .query_one(
                "SELECT organization_id::text, id::text FROM ai_agents.ai_agents WHERE name = $1",
                &[&name],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (org, agent) = agent_of(&mut c, "Spender");
    let (free_org, free_agent) = agent_of(&mut c, "Free");
    // Alerts are sent from the node holding the organization: listen there.
    let home = port_of_organization(&mut c, &org);
    let mut listener = cluster
        .workers
        .iter()
        .find(|w| i32::from(w.port()) == home)
        .expect("the organization's node")
        .connect(ai_agents_tests::citus::DATABASE);
    listener.batch_execute("LISTEN ai_agents_budget").unwrap();
    let mut seed = 0x5eed_u64;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let usage: Vec<serde_json::Value> = (0..1000)
        .map(|_| {
            serde_json::json!({"usage": {"prompt_tokens": 10 + next(51), "completion_tokens": 10 + next(291)}})
        })
        .collect();
    stub.script(serde_json::Value::Array(usage));
    c.execute(
        "INSERT INTO ai_agents.ai_agent_budgets (organization_id, period, limit_usd) VALUES ($1::text::uuid, 'month', 1.00)",
        &[&org],
    )
    .unwrap();
    for (org, agent, tasks) in [(&org, &agent, 400), (&free_org, &free_agent, 20)] {
        c.execute(
            "INSERT INTO ai_agents.ai_agent_tasks (organization_id, agent_id, title)
             SELECT $1::text::uuid, $2::text::uuid, 'spend ' || g FROM generate_series(1, $3) g",
            &[org, agent, &tasks],
        )
        .unwrap();
    }

    // Through the coordinator: the view of the agents' state, and of the budget. The free gym's
    // tasks all run.
    wait_until(
        &mut c,
        &format!(
            // SELECT 1: Citus fails on an EXISTS of a subquery over every shard that selects
            // nothing.
            "SELECT NOT EXISTS (SELECT 1 FROM ai_agents.ai_agent_tasks
                                 WHERE organization_id = '{free_org}' AND status <> 'completed')"
        ),
        std::time::Duration::from_secs(60),
    );
    // Settled: nothing of the spender's running, its agent held, less left than a call may
    // cost, and still so half a second later. A claim marks the agent held when a call does not
    // fit, and the calls it let run then settle at their cost, less than they reserved: until
    // the worker's next claim, room is left. One organization's statement, so one query on its
    // node and one snapshot (Citus has no snapshot across statements).
    let settled_now = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM ai_agents.ai_agent_tasks WHERE organization_id = '{org}' AND status = 'running')
            AND EXISTS (SELECT 1 FROM ai_agents.agent_budget_state
                         WHERE organization_id = '{org}' AND agent_id = '{agent}' AND held AND remaining_usd < 0.02)"
    );
    let settled = |c: &mut Client| {
        while {
            wait_until(c, &settled_now, std::time::Duration::from_secs(60));
            std::thread::sleep(std::time::Duration::from_millis(500));
            !c.query_one(&settled_now, &[]).unwrap().get::<_, bool>(0)
        } {}
    };
    let budget_now = |c: &mut Client| -> (String, String, String) {
        let row = c
            .query_one(
                "SELECT spent_usd::text, reserved_usd::text, remaining_usd::text
                   FROM ai_agents.budget_usage WHERE organization_id = $1::text::uuid",
                &[&org],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    settled(&mut c);
    let (spent, reserved, remaining) = budget_now(&mut c);
    println!("budget $1.00 on Citus: spent ${spent}, reserved ${reserved}, remaining ${remaining}");
    let spend: f64 = spent.parse().unwrap();
    assert!((0.95..=1.0).contains(&spend), "spent {spent}");
    assert_eq!(reserved, "0.000000000000");
    let recorded: String = c
        .query_one(
            "SELECT sum(cost_usd)::numeric(22, 12)::text FROM ai_agents.ai_agent_tasks
              WHERE organization_id = $1::text::uuid AND status = 'completed'",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, spent, "the spend is the sum of the calls' costs");
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'failed'),
                    count(*) FILTER (WHERE status = 'pending' AND attempts = 0),
                    count(*) FILTER (WHERE status = 'completed')
               FROM ai_agents.ai_agent_tasks WHERE organization_id = $1::text::uuid",
            &[&org],
        )
        .unwrap();
    let (failed, waiting, completed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (failed, waiting + completed),
        (0, 400),
        "later tasks wait, none fails: {:?}",
        strings(
            &mut c,
            &format!(
                "SELECT status || ' ' || attempts || ' ' || coalesce(error_message, '') || ' ' || count(*)
                   FROM ai_agents.ai_agent_tasks WHERE organization_id = '{org}'
                  GROUP BY status, attempts, error_message"
            )
        )
    );
    let alerts = |c: &mut Client| -> Vec<String> {
        strings(
            c,
            "SELECT details ->> 'threshold' FROM ai_agents.ai_agent_activity_log
              WHERE action_type = 'budget_threshold' ORDER BY created_at, id",
        )
    };
    assert_eq!(alerts(&mut c), ["0.8", "0.95"]);
    let heard: Vec<serde_json::Value> = listener
        .notifications()
        .timeout_iter(std::time::Duration::from_millis(500))
        .map(|n| Ok(serde_json::from_str(n.payload()).unwrap()))
        .collect()
        .unwrap();
    let thresholds: Vec<String> = heard.iter().map(|n| n["threshold"].to_string()).collect();
    assert_eq!(thresholds, ["0.8", "0.95"]);

    // A raised budget releases the tasks at once; the thresholds already alerted stay quiet.
    c.execute(
        "UPDATE ai_agents.ai_agent_budgets SET limit_usd = 1.50 WHERE organization_id = $1::text::uuid",
        &[&org],
    )
    .unwrap();
    wait_until(
        &mut c,
        &format!(
            "SELECT count(*) > {completed} FROM ai_agents.ai_agent_tasks
              WHERE organization_id = '{org}' AND status = 'completed'"
        ),
        std::time::Duration::from_secs(5),
    );
    settled(&mut c);
    let (spent, _, _) = budget_now(&mut c);
    let raised: f64 = spent.parse().unwrap();
    assert!((1.45..=1.5).contains(&raised), "spent {spent}");
    assert_eq!(alerts(&mut c).len(), 2);
    println!("raised to $1.50: spent ${spent}");
}

#[test]
fn a_task_wakes_the_worker_of_its_shards_node_at_commit_and_is_announced_from_there() {
    let stub = Stub::start();
    let cluster = cluster_with_workers("wake", &stub, &[]);
    let mut c = cluster.connect();
    distribute_gyms(&mut c, 12, 8);
    // One organization per worker node, and a listener on every node.
    let placed: Vec<(String, i32)> = c
        .query(
            "SELECT id::text, organization_id::text FROM ai_agents.ai_agents ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                port_of_organization(&mut cluster.connect(), &r.get::<_, String>(1)),
            )
        })
        .collect();
    let agents: Vec<String> = cluster
        .workers
        .iter()
        .map(|w| {
            placed
                .iter()
                .find(|(_, port)| *port == i32::from(w.port()))
                .map(|(agent, _)| agent.clone())
                .expect("an organization on every worker node")
        })
        .collect();
    let mut listeners: Vec<Client> = std::iter::once(&cluster.coordinator)
        .chain(&cluster.workers)
        .map(|node| {
            let mut l = node.connect(ai_agents_tests::citus::DATABASE);
            l.batch_execute("LISTEN ai_agents_task_events").unwrap();
            l
        })
        .collect();
    // The workers find their shards and fall asleep with nothing due (up to a minute).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut tasks_of_node: Vec<Vec<String>> = vec![vec![]; agents.len()];
    for (node, agent) in agents.iter().enumerate() {
        let mut latencies = vec![];
        for i in 0..5 {
            let task: String = c
                .query_one(
                    "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, $2)",
                    &[agent, &format!("wake-up {i}")],
                )
                .unwrap()
                .get(0);
            let started = std::time::Instant::now();
            while !c
                .query_one(
                    "SELECT execution_started_at IS NOT NULL FROM ai_agents.ai_agent_tasks
                      WHERE agent_id = $1::text::uuid AND id = $2::text::uuid",
                    &[agent, &task],
                )
                .unwrap()
                .get::<_, bool>(0)
            {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(5),
                    "task {task} not started"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let ms: f64 = c
                .query_one(
                    "SELECT extract(epoch FROM execution_started_at - created_at)::float8 * 1000
                       FROM ai_agents.ai_agent_tasks WHERE agent_id = $1::text::uuid AND id = $2::text::uuid",
                    &[agent, &task],
                )
                .unwrap()
                .get(0);
            latencies.push(ms);
            tasks_of_node[node].push(task);
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        println!("worker node {node}: insert-to-start latencies (ms): {latencies:?}");
        latencies.sort_by(f64::total_cmp);
        assert!(
            latencies[2] < 200.0,
            "median wake-up {} ms on worker node {node}: the worker is polling, not woken",
            latencies[2]
        );
    }
    // Each run's end is announced from the node holding its shard, and from nowhere else.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut heard: Vec<Vec<String>> = vec![];
    for listener in &mut listeners {
        let mut completed: Vec<String> = listener
            .notifications()
            .timeout_iter(std::time::Duration::from_millis(300))
            .map(|n| Ok(serde_json::from_str::<serde_json::Value>(n.payload()).unwrap()))
            .collect::<Vec<serde_json::Value>>()
            .unwrap()
            .into_iter()
            .filter(|e| e["status"] == "completed")
            .map(|e| e["task_id"].as_str().unwrap_or_default().to_string())
            .collect();
        completed.sort();
        heard.push(completed);
    }
    assert!(
        heard[0].is_empty(),
        "the coordinator announced {:?}",
        heard[0]
    );
    for (node, mut tasks) in tasks_of_node.into_iter().enumerate() {
        tasks.sort();
        assert_eq!(heard[node + 1], tasks, "announced on worker node {node}");
    }
}
