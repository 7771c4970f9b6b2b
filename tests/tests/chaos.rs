//! Faults while tasks flow: an immediate restart of the server in the middle of 1,000 tasks
//! with random provider delays and errors, and a poison task among healthy ones. Every task
//! must end completed or failed with every attempt recorded, none may complete twice, and no
//! task may be called more often than it was claimed.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, enqueue, WorkerEnv};
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
    // A longer soak by hand: AI_AGENTS_CHAOS_TASKS=20000 cargo test -p ai_agents_tests --test chaos
    let tasks: usize = std::env::var("AI_AGENTS_CHAOS_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
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
    let weather: Vec<serde_json::Value> = (0..tasks)
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
             SELECT '{agent}', '{org}', '{marker} ' || g, 'adhoc', 'pending', NOW() FROM generate_series(1, {tasks}) g"
        ),
        &[],
    )
    .unwrap();
    // Crash the server once a third has finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        &mut c,
        "SELECT count(*) FROM ai_agent_tasks WHERE status IN ('completed', 'failed')",
    ) < tasks as i64 / 3
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
              GROUP BY t.organization_id, t.id",
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
        "chaos: {tasks} tasks in, {completed} completed, {failed} failed, {in_flight} in flight at the crash, \
         {rescued} rescued, {called_twice} called more than once (each after a recorded failure or rescue), \
         0 duplicates, 0 lost"
    );
    assert_eq!(rows.len(), tasks, "no task lost");
    assert_eq!(completed + failed, tasks);
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
        .map(|i| enqueue(&mut c, &agent, &format!("healthy {i}")))
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

fn worker_pid(c: &mut Client) -> i32 {
    c.query_one(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'ai_agents worker'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn kill_9(pid: i32) {
    // SAFETY: sending a signal to a process of our own test cluster.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
}

#[test]
fn sigkill_of_the_worker_during_a_call_is_rescued_and_the_task_finishes() {
    let env = WorkerEnv::start("killed", &["synchronous_commit = on"]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    let marker = format!("killed-{agent}");
    env.stub.script(json!({"match": marker, "delay_ms": 3000}));
    let task: String = enqueue(&mut c, &agent, &marker);
    ai_agents_tests::wait_for(&mut c, &task, "status = 'running'", Duration::from_secs(5));
    kill_9(worker_pid(&mut c));
    drop(c);
    sleep(Duration::from_millis(500));
    let mut c = env.reconnect(Duration::from_secs(30));
    ai_agents_tests::wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(30),
    );
    let log: Vec<String> = c
        .query("SELECT action_type FROM ai_agent_activity_log WHERE task_id = $1::text::uuid ORDER BY id", &[&task])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let attempts: i32 = c
        .query_one(
            "SELECT attempts FROM ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    println!("worker SIGKILL: 1 task in, attempts {attempts}, activity {log:?}, 0 lost");
    assert_eq!(log, ["lease_expired", "task_completed"]);
    assert_eq!(attempts, 2);
}

#[test]
fn sigkill_of_a_client_in_the_middle_of_a_claim_loses_nothing() {
    let env = WorkerEnv::start(
        "client_killed",
        &["synchronous_commit = on", "ai_agents.worker_enabled = off"],
    );
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    for i in 0..10 {
        c.execute(
            "SELECT enqueue_task($1::text::uuid, $2)",
            &[&agent, &format!("claimed by a doomed client {i}")],
        )
        .unwrap();
    }
    let mut doomed = env.connect();
    let pid: i32 = doomed
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    doomed.batch_execute("BEGIN").unwrap();
    let claimed = doomed
        .query("SELECT id FROM ai_agents.claim_due_tasks('doomed', 5)", &[])
        .unwrap();
    assert_eq!(claimed.len(), 5);
    kill_9(pid);
    drop(doomed);
    drop(c);
    sleep(Duration::from_millis(500));
    let mut c = env.reconnect(Duration::from_secs(30));
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'pending' AND attempts = 0), count(*) FROM ai_agent_tasks",
            &[],
        )
        .unwrap();
    let (pending, total): (i64, i64) = (row.get(0), row.get(1));
    println!("client SIGKILL in a claim: 10 tasks in, {pending} pending untouched, 0 lost");
    assert_eq!(
        (pending, total),
        (10, 10),
        "the uncommitted claim left no trace"
    );
    // And they run once asked: passes of at most the pool's size (8) until all ten ran.
    let mut executed = 0;
    while executed < 10 {
        let answer: String = c
            .query_one("SELECT ai_agents.run_scheduler_once()::text", &[])
            .unwrap()
            .get(0);
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let ran = answer["executedCount"].as_u64().unwrap();
        assert!(ran > 0, "a pass ran nothing with tasks due: {answer}");
        executed += ran;
    }
    assert_eq!(executed, 10);
}

#[test]
fn a_late_result_of_a_cancelled_run_is_discarded_and_recorded() {
    let env = WorkerEnv::start("zombie", &[]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    let marker = format!("zombie-{agent}");
    env.stub.script(json!({"match": marker, "delay_ms": 1000}));
    let task: String = enqueue(&mut c, &agent, &marker);
    ai_agents_tests::wait_for(&mut c, &task, "status = 'running'", Duration::from_secs(5));
    c.execute(
        "SELECT cancel_task($1::text::uuid, 'changed my mind')",
        &[&task],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let discarded = count(
            &mut c,
            &format!("SELECT count(*) FROM ai_agent_activity_log WHERE task_id = '{task}' AND action_type = 'result_discarded'"),
        );
        if discarded == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late result was not recorded as discarded"
        );
        sleep(Duration::from_millis(50));
    }
    let (status, output): (String, Option<String>) = {
        let r = c
            .query_one(
                "SELECT status, output FROM ai_agent_tasks WHERE id = $1::text::uuid",
                &[&task],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (status.as_str(), output),
        ("cancelled", None),
        "the cancellation stands"
    );
}

#[test]
fn a_reply_dripping_one_byte_a_second_ends_at_the_http_timeout() {
    let env = WorkerEnv::start("drip", &["ai_agents.http_timeout = 2"]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    let marker = format!("drip-{agent}");
    env.stub.script(json!({"match": marker, "drip_ms": 1000}));
    let task: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, $2, max_attempts => 1)",
            &[&agent, &marker],
        )
        .unwrap()
        .get(0);
    let took =
        ai_agents_tests::wait_for(&mut c, &task, "status = 'failed'", Duration::from_secs(10));
    let error: String = c
        .query_one(
            "SELECT error_message FROM ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    println!("drip: failed after {took:?}: {error}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
}

#[test]
fn a_standby_claims_nothing_and_runs_due_tasks_once_promoted() {
    let env = WorkerEnv::start("primary", &["ai_agents.worker_enabled = off"]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    let task: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, 'waits for the standby')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let standby = ai_agents_tests::Cluster::standby_of(
        &env.cluster,
        "standby",
        &["ai_agents.worker_enabled = on"],
    );
    let mut s = standby.connect("postgres");
    s.batch_execute("SET search_path = ai_agents, public")
        .unwrap();
    sleep(Duration::from_secs(2));
    let status: String = s
        .query_one(
            "SELECT status FROM ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "pending", "a standby claims nothing");
    env.cluster.pg_ctl(&["stop", "-m", "fast", "-w"]);
    standby.pg_ctl(&["promote", "-w"]);
    let mut s = standby.connect("postgres");
    s.batch_execute("SET search_path = ai_agents, public")
        .unwrap();
    let took = ai_agents_tests::wait_for(
        &mut s,
        &task,
        "status = 'completed'",
        Duration::from_secs(20),
    );
    let log = std::fs::read_to_string(standby.log_path()).unwrap_or_default();
    let errors: Vec<&str> = log
        .lines()
        // The walreceiver's complaints about the stopped primary are expected; no others.
        .filter(|l| (l.contains("ERROR") || l.contains("FATAL")) && !l.contains("primary"))
        .collect();
    println!(
        "standby: claimed nothing while in recovery; after promotion the task ran in {took:?}"
    );
    assert!(errors.is_empty(), "the standby logged errors: {errors:?}");
    standby.stop();
    env.cluster.pg_ctl(&["start", "-w"]);
}

#[test]
fn drop_extension_and_drop_database_while_calls_are_in_flight_complete_promptly() {
    let env = WorkerEnv::start("busy_drop", &[]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "a");
    let marker = format!("busy-{agent}");
    env.stub.script(serde_json::Value::Array(
        (0..5)
            .map(|_| json!({"match": marker, "delay_ms": 3000}))
            .collect(),
    ));
    for i in 0..5 {
        c.execute(
            "SELECT enqueue_task($1::text::uuid, $2)",
            &[&agent, &format!("{marker} {i}")],
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(
        &mut c,
        "SELECT count(*) FROM ai_agent_tasks WHERE status = 'running'",
    ) < 5
    {
        assert!(Instant::now() < deadline, "the calls did not start");
        sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    c.batch_execute("CREATE DATABASE other_tenant").unwrap();
    c.batch_execute("DROP DATABASE other_tenant").unwrap();
    let databases = started.elapsed();
    let started = Instant::now();
    c.batch_execute("DROP EXTENSION ai_agents").unwrap();
    let extension = started.elapsed();
    println!("busy drops: 5 calls in flight; CREATE+DROP DATABASE {databases:?}, DROP EXTENSION {extension:?}");
    assert!(databases < Duration::from_secs(2), "{databases:?}");
    assert!(
        extension < Duration::from_secs(2),
        "the worker held something DROP EXTENSION waited for: {extension:?}"
    );
    // Installed again, the worker serves it (it may have restarted on the way).
    c.batch_execute("CREATE EXTENSION ai_agents").unwrap();
    let (_, agent) = create_agent(&mut c, "b");
    let task: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, 'after the drop')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    ai_agents_tests::wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(20),
    );
}
