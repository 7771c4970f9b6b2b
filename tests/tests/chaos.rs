//! Faults while tasks flow: an immediate restart of the server in the middle of 1,000 tasks
//! with random provider delays and errors, and a poison task among healthy ones. Every task
//! must end completed or failed with every attempt recorded, none may complete twice, and no
//! task may be called more often than it was claimed.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, WorkerEnv};
use serde_json::json;
use std::collections::HashMap;
use std::thread::sleep;
use std::time::{Duration, Instant};

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// Calls the stub received per task, keyed by task title.
fn calls_per_title(env: &WorkerEnv, marker: &str) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for request in env.stub.requests() {
        let content = request["body"]["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        if let Some(title) = content
            .strip_prefix("Task: ")
            .and_then(|t| t.lines().next())
        {
            if title.contains(marker) {
                *calls.entry(title.to_string()).or_default() += 1;
            }
        }
    }
    calls
}

#[test]
fn an_immediate_restart_in_the_middle_of_a_thousand_tasks_loses_and_repeats_nothing() {
    const TASKS: usize = 1000;
    let env = WorkerEnv::start(
        "chaos",
        &[
            "synchronous_commit = on",
            "ai_agents.max_concurrent_calls = 16",
        ],
    );
    let mut c = env.connect();
    let (org, agent) = create_agent(&mut c, "chaos");
    let marker = format!("chaos-{}", &agent[..8]);
    // Random provider weather: delays, 503s, truncated bodies; the rest answers normally.
    let mut seed = 0x5eed_u64;
    let weather: Vec<serde_json::Value> = (0..TASKS)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 20 {
                0..=2 => json!({"match": marker, "status": 503}),
                3 => json!({"match": marker, "truncate": true}),
                _ => json!({"match": marker, "delay_ms": seed % 150}),
            }
        })
        .collect();
    env.stub.script(serde_json::Value::Array(weather));
    c.execute(
        &format!(
            "INSERT INTO ai_agent_tasks (agent_id, organization_id, title, task_type, status, next_run_at) \
             SELECT '{agent}', '{org}', '{marker} ' || g, 'adhoc', 'pending', NOW() FROM generate_series(1, {TASKS}) g"
        ),
        &[],
    )
    .unwrap();
    // Crash the server once a third has finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        &mut c,
        "SELECT count(*) FROM ai_agent_tasks WHERE status IN ('completed', 'failed')",
    ) < TASKS as i64 / 3
    {
        assert!(Instant::now() < deadline, "tasks are not flowing");
        sleep(Duration::from_millis(20));
    }
    let in_flight = count(
        &mut c,
        "SELECT count(*) FROM ai_agent_tasks WHERE status = 'running'",
    );
    env.cluster.pg_ctl(&["restart", "-m", "immediate", "-w"]);
    let mut c = env.connect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(
        &mut c,
        "SELECT count(*) FROM ai_agent_tasks WHERE status NOT IN ('completed', 'failed')",
    ) > 0
    {
        assert!(
            Instant::now() < deadline,
            "tasks never reached a final state"
        );
        sleep(Duration::from_millis(100));
    }

    let calls = calls_per_title(&env, &marker);
    let rows = c
        .query(
            "SELECT t.title, t.status, t.attempts, \
                    count(l.id) FILTER (WHERE l.action_type IN ('task_completed', 'task_failed', 'lease_expired')), \
                    count(l.id) FILTER (WHERE l.action_type = 'task_completed'), \
                    count(l.id) FILTER (WHERE l.action_type = 'lease_expired') \
               FROM ai_agent_tasks t LEFT JOIN ai_agent_activity_log l ON l.task_id = t.id \
              GROUP BY t.id",
            &[],
        )
        .unwrap();
    let (mut completed, mut failed, mut rescued, mut called_twice) = (0, 0, 0, 0);
    for row in &rows {
        let (title, status, attempts): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        let (ended, completions, lease_expired): (i64, i64, i64) =
            (row.get(3), row.get(4), row.get(5));
        let called = calls.get(&title).copied().unwrap_or(0) as i64;
        assert_eq!(
            attempts as i64, ended,
            "{title}: every claim ends in exactly one activity row"
        );
        assert!(completions <= 1, "{title} completed {completions} times");
        assert!(
            called <= ended,
            "{title}: called {called} times but claimed {ended} times"
        );
        if called > 1 {
            called_twice += 1;
        }
        match status.as_str() {
            "completed" => completed += 1,
            "failed" => failed += 1,
            other => panic!("{title} ended as {other}"),
        }
        rescued += usize::from(lease_expired > 0);
    }
    println!(
        "chaos: {TASKS} tasks in, {completed} completed, {failed} failed, {in_flight} in flight at the crash, \
         {rescued} rescued, {called_twice} called more than once (each after a recorded failure or rescue), \
         0 duplicates, 0 lost"
    );
    assert_eq!(rows.len(), TASKS, "no task lost");
    assert_eq!(completed + failed, TASKS);
}

#[test]
fn a_poison_task_fails_after_its_attempts_and_the_others_keep_flowing() {
    let env = WorkerEnv::start("poison", &[]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    let poison = format!("poison-{agent}");
    env.stub.script(serde_json::Value::Array(
        (0..3)
            .map(|_| json!({"match": poison, "status": 500}))
            .collect(),
    ));
    let task: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, $2, max_attempts => 3)",
            &[&agent, &poison],
        )
        .unwrap()
        .get(0);
    let healthy: Vec<String> = (0..20)
        .map(|i| {
            c.query_one(
                "SELECT id::text FROM enqueue_task($1::text::uuid, $2)",
                &[&agent, &format!("healthy {i}")],
            )
            .unwrap()
            .get(0)
        })
        .collect();
    for id in &healthy {
        ai_agents_tests::wait_for(&mut c, id, "status = 'completed'", Duration::from_secs(5));
    }
    ai_agents_tests::wait_for(&mut c, &task, "status = 'failed'", Duration::from_secs(20));
    let (attempts, failures): (i32, i64) = {
        let r = c
            .query_one(
                "SELECT attempts, (SELECT count(*) FROM ai_agent_activity_log WHERE task_id = t.id AND action_type = 'task_failed') \
                   FROM ai_agent_tasks t WHERE id = $1::text::uuid",
                &[&task],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((attempts, failures), (3, 3));
}

#[test]
fn hostile_provider_bodies_fail_the_attempt_and_the_worker_keeps_serving() {
    let env = WorkerEnv::start("hostile", &[]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    let cases = [
        (
            "nul",
            json!({"status": 200, "body": "{\"choices\":[{\"message\":{\"content\":\"a\\u0000b\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}"}),
        ),
        (
            "wrong-types",
            json!({"status": 200, "body": "{\"choices\":[{\"message\":{\"content\":\"ok\"}}],\"usage\":{\"prompt_tokens\":\"many\",\"completion_tokens\":-3}}"}),
        ),
        (
            "error-in-200",
            json!({"status": 200, "body": "{\"error\":{\"message\":\"nope\",\"type\":\"server_error\"}}"}),
        ),
        (
            "not-json",
            json!({"status": 200, "body": "<html>gateway</html>"}),
        ),
        ("truncated", json!({"truncate": true})),
    ];
    let mut tasks = vec![];
    for (name, behaviour) in &cases {
        let title = format!("hostile {name} {agent}");
        let mut behaviour = behaviour.clone();
        behaviour["match"] = json!(title);
        env.stub.script(behaviour);
        let id: String = c
            .query_one(
                "SELECT id::text FROM enqueue_task($1::text::uuid, $2, max_attempts => 1)",
                &[&agent, &title],
            )
            .unwrap()
            .get(0);
        tasks.push((name, id));
    }
    // A megabyte of prompt goes out and comes back fine.
    let big: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, 'big', description => repeat('x', 1048576))",
            &[&agent],
        )
        .unwrap()
        .get(0);
    for (name, id) in &tasks {
        ai_agents_tests::wait_for(&mut c, id, "status = 'failed'", Duration::from_secs(10));
        let error: String = c
            .query_one(
                "SELECT error_message FROM ai_agent_tasks WHERE id = $1::text::uuid",
                &[id],
            )
            .unwrap()
            .get(0);
        println!("hostile {name}: {error}");
        assert!(!error.is_empty());
    }
    ai_agents_tests::wait_for(
        &mut c,
        &big,
        "status = 'completed'",
        Duration::from_secs(10),
    );
    let after: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, 'still serving')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    ai_agents_tests::wait_for(
        &mut c,
        &after,
        "status = 'completed'",
        Duration::from_secs(5),
    );
}
