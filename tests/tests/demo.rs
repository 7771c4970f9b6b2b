//! The README's worked example, scripts/demo.sql and scripts/demo-tools.sql, run with psql as
//! `scripts/run` runs them,
//! against a cluster whose worker calls the LLM stub: it must keep working as written.
use ai_agents_tests::WorkerEnv;
use std::sync::OnceLock;

#[test]
fn the_worked_example_runs_and_its_worker_finishes_every_task_and_report() {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    let env = WorkerEnv::kept(&ENV, "demo", &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo.sql");
    let output = env
        .cluster
        .client_program("psql", "postgres", &["-X", "-q", "-f", script]);
    let printed = String::from_utf8_lossy(&output.stdout);
    println!("{printed}");
    for expected in [
        "-- 7. The two seeded reports",
        "# Customer Care Weekly Summary",
        "# Finance Monthly Forecast",
    ] {
        assert!(
            printed.contains(expected),
            "the demo printed no {expected:?}"
        );
    }
    let mut c = env.connect();
    let tasks: Vec<(String, String)> = c
        .query(
            "SELECT title, status FROM ai_agent_tasks WHERE task_type <> 'report' ORDER BY title",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        tasks,
        [
            // Enqueued twice with one idempotency key.
            ("Reply to member #4711".to_string(), "completed".to_string()),
            // Recurring: its run recorded on the row, next_run_at on its next slot.
            ("Test Scheduled Task".to_string(), "completed".to_string()),
        ]
    );
    let unfinished: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agent_tasks WHERE completed_at IS NULL OR output IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unfinished, 0, "every task ran and has its output");
    let narratives: Vec<String> = c
        .query(
            "SELECT narrative_status FROM ai_agent_reports ORDER BY report_type",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(narratives, ["written", "written"]);

    // Then the tools demo, against the replies scripts/run queues in the stub.
    let stub_script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo-stub.json");
    let replies = std::fs::read_to_string(stub_script).expect("scripts/demo-stub.json");
    env.stub
        .script(serde_json::from_str(&replies).expect("scripts/demo-stub.json is JSON"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo-tools.sql");
    let output = env
        .cluster
        .client_program("psql", "postgres", &["-X", "-q", "-f", script]);
    let printed = String::from_utf8_lossy(&output.stdout);
    println!("{printed}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "scripts/demo-tools.sql failed");
    let steps: Vec<(String, Option<String>)> = c
        .query(
            "SELECT s.kind, s.tool_name FROM ai_agent_task_steps s JOIN ai_agent_tasks t ON t.id = s.task_id
              WHERE t.title = 'Can I freeze my membership for a month?' ORDER BY s.step_number",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tool = |name: &str| ("tool".to_string(), Some(name.to_string()));
    let llm = ("llm".to_string(), None);
    assert_eq!(
        steps,
        [
            llm.clone(),
            tool("member_lookup"),
            llm.clone(),
            tool("freeze_membership"),
            llm
        ]
    );
    let frozen: Vec<(String, bool)> = c
        .query(
            "SELECT name, frozen_until IS NOT NULL FROM gym.members ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        frozen,
        [
            ("Ana".to_string(), true),
            ("Ana (another gym)".to_string(), false)
        ]
    );
    let forecast: String = c
        .query_one(
            "SELECT result ->> 'revenue_usd' FROM ai_agent_tasks WHERE title = 'Forecast next month''s revenue' AND status = 'completed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(forecast, "59");
}
