//! The README's worked example, scripts/demo.sql, run with psql as `scripts/run` runs it,
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
}
