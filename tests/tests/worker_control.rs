//! run_scheduler_once: the in-database twin of the deployment guide's `curl` of its cron
//! endpoint (Step 3.2). On a cluster of its own, because it switches the worker's own
//! claiming off.
use ai_agents_tests::{create_agent, WorkerEnv};
use serde_json::json;
use std::time::Duration;

#[test]
fn run_scheduler_once_runs_one_pass_and_answers_like_the_cron_endpoint() {
    let env = WorkerEnv::start("control", &["ai_agents.worker_enabled = off"]);
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "once");
    let marker = format!("once-{agent}");
    env.stub.script(json!({"match": format!("bad {marker}"), "status": 400, "error_type": "invalid_request_error"}));
    for title in [format!("bad {marker}"), format!("fine {marker}")] {
        c.execute("SELECT enqueue_task($1::text::uuid, $2)", &[&agent, &title])
            .unwrap();
    }
    // The worker, switched off, leaves them alone.
    std::thread::sleep(Duration::from_millis(500));
    let waiting: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_tasks WHERE status = 'pending'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(waiting, 2);

    let answer: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT ai_agents.run_scheduler_once()::text", &[])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    println!("run_scheduler_once: {answer}");
    assert_eq!(answer["success"], true);
    assert_eq!(answer["executedCount"], 2);
    assert_eq!(answer["successCount"], 1);
    assert_eq!(answer["failureCount"], 1);
    assert!(answer["executionTimeMs"].is_u64());
    let finished: Vec<(String, String)> = c
        .query(
            "SELECT title, status FROM ai_agent_tasks ORDER BY title",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(finished[0].1, "failed");
    assert_eq!(finished[1].1, "completed");

    // Nothing due: an empty pass.
    let empty: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT ai_agents.run_scheduler_once()::text", &[])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(empty["executedCount"], 0);
    assert_eq!(empty["success"], true);

    // Not for PUBLIC.
    let granted: bool = c
        .query_one(
            "SELECT has_function_privilege('public', 'ai_agents.run_scheduler_once(interval)', 'EXECUTE')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!granted);
}

#[test]
fn run_scheduler_once_without_a_worker_says_so() {
    let env = WorkerEnv::start("no_worker", &["ai_agents.database = 'elsewhere'"]);
    let mut c = env.connect();
    let error = c
        .query_one("SELECT ai_agents.run_scheduler_once('1 second')", &[])
        .unwrap_err();
    let message = error
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("worker is not running"), "{message}");
}
