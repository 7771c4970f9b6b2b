//! Recurring tasks through SQL: one row per schedule, the next slot after each run, missed
//! slots run once, no overlap with itself.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, fresh_database};

fn recurring(c: &mut Client, agent: &str, cron: &str, tz: &str) -> String {
    c.query_one(
        "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'recurring', task_type => 'scheduled', \
         schedule_cron => $2, timezone => $3)",
        &[&agent, &cron, &tz],
    )
    .unwrap()
    .get(0)
}

fn check(c: &mut Client, task: &str, condition: &str) -> bool {
    c.query_one(
        &format!("SELECT ({condition}) FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid"),
        &[&task],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_new_schedule_waits_for_its_first_slot() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let task = recurring(&mut c, &agent, "*/10 * * * *", "UTC");
    assert!(check(
        &mut c,
        &task,
        "next_run_at > now() AND next_run_at <= now() + interval '10 minutes' \
         AND extract(minute FROM next_run_at)::int % 10 = 0 AND status = 'pending'"
    ));
    let local = recurring(&mut c, &agent, "0 9 * * *", "America/New_York");
    assert!(check(
        &mut c,
        &local,
        "to_char(next_run_at AT TIME ZONE 'America/New_York', 'HH24:MI') = '09:00'"
    ));
    // Changing the schedule moves the next run.
    c.execute(
        "UPDATE ai_agents.ai_agent_tasks SET schedule_cron = '30 6 * * *', timezone = 'Asia/Tokyo' WHERE id = $1::text::uuid",
        &[&local],
    )
    .unwrap();
    assert!(check(
        &mut c,
        &local,
        "to_char(next_run_at AT TIME ZONE 'Asia/Tokyo', 'HH24:MI') = '06:30'"
    ));
}

#[test]
fn missed_slots_run_once_and_a_run_records_its_outcome_on_the_row() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let task = recurring(&mut c, &agent, "*/10 * * * *", "UTC");
    // The server was down for an hour: six slots were missed.
    c.execute(
        "UPDATE ai_agents.ai_agent_tasks SET next_run_at = now() - interval '1 hour' WHERE id = $1::text::uuid",
        &[&task],
    )
    .unwrap();
    let claimed = c
        .query(
            "SELECT fencing_token FROM ai_agents.claim_due_tasks('w', 10)",
            &[],
        )
        .unwrap();
    assert_eq!(claimed.len(), 1, "one row, one run");
    let token: i64 = claimed[0].get(0);
    // While it runs, it cannot be claimed again, even once its next slot has passed.
    c.execute(
        "UPDATE ai_agents.ai_agent_tasks SET next_run_at = now() - interval '1 minute' WHERE id = $1::text::uuid",
        &[&task],
    )
    .unwrap();
    assert!(c
        .query("SELECT * FROM ai_agents.claim_due_tasks('w2', 10)", &[])
        .unwrap()
        .is_empty());
    c.execute(
        "SELECT ai_agents.complete_task($1::text::uuid, $2, 'ok')",
        &[&task, &token],
    )
    .unwrap();
    assert!(check(
        &mut c,
        &task,
        "status = 'completed' AND completed_at IS NOT NULL AND output = 'ok' \
         AND next_run_at > now() AND next_run_at <= now() + interval '10 minutes'"
    ));
    assert!(c
        .query("SELECT * FROM ai_agents.claim_due_tasks('w', 10)", &[])
        .unwrap()
        .is_empty());

    // The next run: a permanent failure is recorded, and the schedule goes on.
    c.execute(
        "UPDATE ai_agents.ai_agent_tasks SET next_run_at = now() WHERE id = $1::text::uuid",
        &[&task],
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT fencing_token, attempts FROM ai_agents.claim_due_tasks('w', 1)",
            &[],
        )
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(1),
        1,
        "a new run starts its attempts afresh"
    );
    c.execute(
        "SELECT ai_agents.fail_task($1::text::uuid, $2, 'bad request', http_status => 400)",
        &[&task, &row.get::<_, i64>(0)],
    )
    .unwrap();
    assert!(check(
        &mut c,
        &task,
        "status = 'failed' AND error_message = 'bad request' AND next_run_at > now()"
    ));
    // Cancelling stops the schedule.
    c.execute("SELECT ai_agents.cancel_task($1::text::uuid)", &[&task])
        .unwrap();
    assert!(check(
        &mut c,
        &task,
        "status = 'cancelled' AND next_run_at IS NULL"
    ));
}
