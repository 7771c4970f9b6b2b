//! The background worker end to end: a cluster whose worker serves the `postgres` database,
//! pointed at the LLM stub (tests/src/bin/llm_stub.rs) for both providers.
use ai_agents_tests::postgres::fallible_iterator::FallibleIterator;
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{clear_of_slot, create_agent, enqueue, wait_for, WorkerEnv, PLANTED_KEY};
use serde_json::json;
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

fn env() -> &'static WorkerEnv {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    WorkerEnv::kept(&ENV, "worker", &[])
}

fn connect() -> Client {
    env().connect()
}

fn requests_containing(needle: &str) -> Vec<serde_json::Value> {
    env()
        .stub
        .requests()
        .into_iter()
        .filter(|r| r["body"].to_string().contains(needle))
        .collect()
}

#[test]
fn the_guides_scheduled_task_runs_within_two_seconds() {
    let mut c = connect();
    clear_of_slot(10, Duration::from_secs(10));
    let (org, agent) = create_agent(&mut c, "Customer Care");
    let insert = std::fs::read_to_string(format!(
        "{}/guide/step4_1_insert_test_task.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("YOUR_AGENT_UUID", &agent)
    .replace("YOUR_ORG_UUID", &org)
    .replace(
        "'Test Scheduled Task'",
        &format!("'Test Scheduled Task {agent}'"),
    );
    c.batch_execute(&insert).unwrap();
    let task: String = c
        .query_one(
            "SELECT id::text FROM ai_agent_tasks WHERE agent_id = $1::text::uuid",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let took = wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(2),
    );
    println!("guide task completed {took:?} after its insert");
    let row = c
        .query_one(
            "SELECT execution_started_at IS NOT NULL, completed_at IS NOT NULL, tokens_used > 0, cost_usd > 0, \
                    next_run_at > completed_at AND next_run_at <= completed_at + interval '10 minutes' \
                    AND extract(minute FROM next_run_at)::int % 10 = 0, output \
             FROM ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    for i in 0..5 {
        assert!(
            row.get::<_, bool>(i),
            "column {i} of the guide's expectations"
        );
    }
    assert!(row
        .get::<_, String>(5)
        .starts_with("stub reply to: Task: Test Scheduled Task"));
    let activity: Vec<(String, bool, Option<i32>)> = c
        .query(
            "SELECT action_type, success, tokens_used FROM ai_agent_activity_log WHERE task_id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(activity.len(), 1);
    assert_eq!(
        (activity[0].0.as_str(), activity[0].1),
        ("task_completed", true)
    );
    assert!(activity[0].2.unwrap_or(0) > 0);
    let request_id: Option<String> = c
        .query_one(
            "SELECT details ->> 'request_id' FROM ai_agent_activity_log WHERE task_id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    assert!(
        request_id.unwrap_or_default().starts_with("req-stub-"),
        "the provider's request id is kept"
    );
}

#[test]
fn an_insert_wakes_the_idle_worker_at_commit() {
    let mut c = connect();
    let (_, agent) = create_agent(&mut c, "wake");
    // Let the worker fall asleep with nothing due.
    sleep(Duration::from_millis(300));
    let mut latencies = vec![];
    for i in 0..5 {
        let row = c
            .query_one(
                "SELECT id::text, clock_timestamp() FROM enqueue_task($1::text::uuid, $2)",
                &[&agent, &format!("wake-up {i}")],
            )
            .unwrap();
        let task: String = row.get(0);
        wait_for(
            &mut c,
            &task,
            "execution_started_at IS NOT NULL",
            Duration::from_secs(2),
        );
        let ms: f64 = c
            .query_one(
                "SELECT extract(epoch FROM execution_started_at - created_at)::float8 * 1000 \
                 FROM ai_agent_tasks WHERE id = $1::text::uuid",
                &[&task],
            )
            .unwrap()
            .get(0);
        latencies.push(ms);
        sleep(Duration::from_millis(200));
    }
    println!("insert-to-start latencies (ms): {latencies:?}");
    latencies.sort_by(f64::total_cmp);
    assert!(
        latencies[2] < 200.0,
        "median wake-up {} ms: the worker is polling, not woken",
        latencies[2]
    );
}

#[test]
fn transient_errors_retry_permanent_ones_fail_and_the_worker_goes_on() {
    let mut c = connect();
    let (_, agent) = create_agent(&mut c, "flaky");
    let marker = format!("flaky-{agent}");
    let stub = &env().stub;
    stub.script(json!([
        {"match": marker, "status": 503, "error_type": "server_error"},
        {"match": marker, "status": 200, "body": "{\"choices\": [trunc"},
    ]));
    let flaky: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, $2, max_attempts => 3)",
            &[&agent, &marker],
        )
        .unwrap()
        .get(0);
    let permanent_marker = format!("bad-request-{agent}");
    stub.script(
        json!({"match": permanent_marker, "status": 400, "error_type": "invalid_request_error"}),
    );
    let doomed: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, $2, max_attempts => 3)",
            &[&agent, &permanent_marker],
        )
        .unwrap()
        .get(0);
    wait_for(&mut c, &doomed, "status = 'failed'", Duration::from_secs(5));
    let (attempts, error): (i32, String) = {
        let r = c
            .query_one(
                "SELECT attempts, error_message FROM ai_agent_tasks WHERE id = $1::text::uuid",
                &[&doomed],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(attempts, 1, "a 400 is not retried");
    assert!(error.contains("400"), "{error}");
    // 503, then a malformed body, then success: three attempts with growing delays.
    wait_for(
        &mut c,
        &flaky,
        "status = 'completed'",
        Duration::from_secs(15),
    );
    let log: Vec<(String, Option<String>)> = c
        .query(
            "SELECT action_type, error FROM ai_agent_activity_log WHERE task_id = $1::text::uuid ORDER BY id",
            &[&flaky],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let actions: Vec<&str> = log.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["task_failed", "task_failed", "task_completed"],
        "{log:?}"
    );
    assert!(
        log[1].1.as_deref().unwrap_or("").contains("malformed"),
        "{log:?}"
    );
    assert_eq!(requests_containing(&marker).len(), 3);
}

#[test]
fn a_conversation_sends_the_newest_hundred_messages_in_order() {
    let mut c = connect();
    let (org, agent) = create_agent(&mut c, "conversation");
    let conversation: String = c
        .query_one(
            "INSERT INTO ai_agent_conversations (organization_id, agent_id) VALUES ($1::text::uuid, $2::text::uuid) \
             RETURNING id::text",
            &[&org, &agent],
        )
        .unwrap()
        .get(0);
    c.execute(
        "INSERT INTO ai_agent_messages (conversation_id, organization_id, role, content, created_at) \
         SELECT $1::text::uuid, $2::text::uuid, CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, \
                'message ' || g, now() - interval '1 hour' + g * interval '1 second' \
           FROM generate_series(1, 150) g",
        &[&conversation, &org],
    )
    .unwrap();
    let task: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, 'reply', task_type => 'conversation', \
             conversation_id => $2::text::uuid)",
            &[&agent, &conversation],
        )
        .unwrap()
        .get(0);
    wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(5),
    );
    let sent = requests_containing("message 150");
    assert_eq!(sent.len(), 1);
    let messages = sent[0]["body"]["messages"].as_array().unwrap().clone();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[0]["content"], "You help gym members.");
    let contents: Vec<String> = messages[1..]
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (51..=150).map(|i| format!("message {i}")).collect();
    assert_eq!(contents, expected);
    let reply: (String, String) = {
        let r = c
            .query_one(
                "SELECT role, content FROM ai_agent_messages WHERE conversation_id = $1::text::uuid \
                 ORDER BY created_at DESC, id DESC LIMIT 1",
                &[&conversation],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(reply.0, "assistant");
    assert!(
        reply.1.starts_with("stub reply to: message 149"),
        "{}",
        reply.1
    );
}

#[test]
fn finished_tasks_are_announced_and_the_api_key_appears_nowhere() {
    let mut listener = connect();
    listener
        .batch_execute("LISTEN ai_agents_task_events")
        .unwrap();
    let mut c = connect();
    let (_, agent) = create_agent(&mut c, "announced");
    let task: String = c
        .query_one(
            "SELECT id::text FROM enqueue_task($1::text::uuid, 'announce me')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(5),
    );
    let mut notifications = listener.notifications();
    let mut seen = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !seen && Instant::now() < deadline {
        if let Some(n) = notifications
            .timeout_iter(Duration::from_millis(200))
            .next()
            .unwrap()
        {
            let payload: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
            seen = payload["task_id"] == task.as_str() && payload["status"] == "completed";
        }
    }
    assert!(seen, "no ai_agents_task_events notification for {task}");

    // The key went to the provider (the stub saw an Authorization header of its length) ...
    let sent = requests_containing("announce me");
    let auth = sent[0]["headers"]["authorization"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        auth,
        format!("<redacted:len={}>", "Bearer ".len() + PLANTED_KEY.len())
    );
    // ... and nowhere else: no table, no log line.
    let in_tables: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM ai_agent_tasks t WHERE t::text LIKE '%' || $1 || '%') \
                  + (SELECT count(*) FROM ai_agent_activity_log l WHERE l::text LIKE '%' || $1 || '%')",
            &[&PLANTED_KEY],
        )
        .unwrap()
        .get(0);
    assert_eq!(in_tables, 0);
    let log = std::fs::read_to_string(env().cluster.log_path()).unwrap_or_default();
    assert!(
        !log.contains(PLANTED_KEY),
        "the API key is in the server log"
    );
    assert!(
        log.contains("ai_agents worker: serving database"),
        "the worker logs with its prefix"
    );
}

#[test]
fn an_anthropic_agent_is_served_through_the_messages_api() {
    let mut c = connect();
    let agent: String = c
        .query_one(
            "INSERT INTO ai_agents (organization_id, name, agent_type, system_prompt, provider, model) \
             VALUES (gen_random_uuid(), 'Finance', 'finance', 'You watch the money.', 'anthropic', \
                     'claude-3-5-haiku-latest') RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    let marker = format!("forecast-{agent}");
    let task: String = enqueue(&mut c, &agent, &marker);
    wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(5),
    );
    let sent = requests_containing(&marker);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["path"], "/v1/messages");
    assert_eq!(sent[0]["body"]["system"], "You watch the money.");
    assert_eq!(sent[0]["body"]["model"], "claude-3-5-haiku-latest");
    assert_eq!(sent[0]["headers"]["anthropic-version"], "2023-06-01");
    let row = c
        .query_one(
            "SELECT tokens_used, cost_usd > 0, output FROM ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    assert!(row.get::<_, i32>(0) > 0);
    assert!(
        row.get::<_, bool>(1),
        "priced from the anthropic row of the price table"
    );
    assert!(row
        .get::<_, String>(2)
        .starts_with("stub reply to: Task: forecast-"));
}
