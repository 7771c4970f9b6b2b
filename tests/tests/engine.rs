//! The task engine through SQL on a real server: enqueue, idempotency, claim, fencing,
//! retries, rescue, control functions, pruning, and the errors bad input gets.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, enqueue, error_of, fresh_database};
use std::str::FromStr;

/// Claims one task and returns (task id, fencing token, attempts).
fn claim_one(c: &mut Client, worker: &str) -> (String, i64, i32) {
    let row = c
        .query_one(
            "SELECT id::text, fencing_token, attempts FROM ai_agents.claim_due_tasks($1, 1, '1 minute')",
            &[&worker],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

fn task_field(c: &mut Client, task: &str, expr: &str) -> Option<String> {
    c.query_one(
        &format!("SELECT ({expr})::text FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid"),
        &[&task],
    )
    .unwrap()
    .get(0)
}

fn activity(c: &mut Client, task: &str) -> Vec<(String, bool, Option<i32>)> {
    c.query(
        "SELECT action_type, success, attempt FROM ai_agents.ai_agent_activity_log \
         WHERE task_id = $1::text::uuid ORDER BY id",
        &[&task],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn enqueue_fills_organization_and_due_time_and_claim_pins_the_version() {
    let (mut c, _) = fresh_database();
    let (org, agent) = create_agent(&mut c, "a");
    let task = enqueue(&mut c, &agent, "Call back");
    assert_eq!(
        task_field(&mut c, &task, "organization_id").as_deref(),
        Some(org.as_str())
    );
    assert_eq!(
        task_field(&mut c, &task, "next_run_at <= now()").as_deref(),
        Some("true")
    );

    let version: String = c
        .query_one(
            "SELECT current_version_id::text FROM ai_agents.ai_agents WHERE id = $1::text::uuid",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let (claimed, token, attempts) = claim_one(&mut c, "w1");
    assert_eq!((claimed.as_str(), attempts), (task.as_str(), 1));
    assert!(token > 0);
    assert_eq!(
        task_field(&mut c, &task, "status").as_deref(),
        Some("running")
    );
    assert_eq!(
        task_field(&mut c, &task, "locked_by").as_deref(),
        Some("w1")
    );
    assert_eq!(
        task_field(&mut c, &task, "agent_version_id").as_deref(),
        Some(version.as_str())
    );
    assert_eq!(
        task_field(
            &mut c,
            &task,
            "lease_expires_at > now() + interval '50 seconds'"
        )
        .as_deref(),
        Some("true")
    );
    // Nothing else is due.
    assert!(c
        .query("SELECT * FROM ai_agents.claim_due_tasks('w2', 10)", &[])
        .unwrap()
        .is_empty());
}

#[test]
fn claims_follow_priority_then_due_time_and_skip_future_and_paused_tasks() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let (_, held_agent) = create_agent(&mut c, "held");
    c.batch_execute(&format!(
        "SELECT ai_agents.enqueue_task('{agent}', 'low-old', priority => 0, run_at => now() - interval '2 hours');
         SELECT ai_agents.enqueue_task('{agent}', 'high-new', priority => 5, run_at => now() - interval '1 minute');
         SELECT ai_agents.enqueue_task('{agent}', 'high-old', priority => 5, run_at => now() - interval '1 hour');
         SELECT ai_agents.enqueue_task('{agent}', 'future', priority => 9, run_at => now() + interval '1 hour');
         SELECT ai_agents.enqueue_task('{held_agent}', 'held', priority => 9);
         SELECT ai_agents.pause_agent_tasks('{held_agent}');"
    ))
    .unwrap();
    let titles: Vec<String> = c
        .query("SELECT title FROM ai_agents.claim_due_tasks('w', 10)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sorted = titles.clone();
    sorted.sort();
    assert_eq!(sorted, ["high-new", "high-old", "low-old"]);
    // With room for one at a time, the order is priority, then due time.
    let (mut c2, _) = fresh_database();
    let (_, agent2) = create_agent(&mut c2, "b");
    c2.batch_execute(&format!(
        "SELECT ai_agents.enqueue_task('{agent2}', 'low-old', priority => 0, run_at => now() - interval '2 hours');
         SELECT ai_agents.enqueue_task('{agent2}', 'high-new', priority => 5, run_at => now() - interval '1 minute');
         SELECT ai_agents.enqueue_task('{agent2}', 'high-old', priority => 5, run_at => now() - interval '1 hour');"
    ))
    .unwrap();
    let order: Vec<String> = (0..3)
        .map(|_| {
            c2.query_one("SELECT title FROM ai_agents.claim_due_tasks('w', 1)", &[])
                .unwrap()
                .get(0)
        })
        .collect();
    assert_eq!(order, ["high-old", "high-new", "low-old"]);

    // Resuming releases the held task.
    let held: i32 = c
        .query_one(
            "SELECT ai_agents.resume_agent_tasks($1::text::uuid)",
            &[&held_agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
    let title: String = c
        .query_one("SELECT title FROM ai_agents.claim_due_tasks('w', 10)", &[])
        .unwrap()
        .get(0);
    assert_eq!(title, "held");
}

#[test]
fn the_claim_uses_the_partial_index() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_tasks (agent_id, title, status, next_run_at, completed_at)
         SELECT '{agent}', 'old ' || g, 'completed', NULL, now() FROM generate_series(1, 20000) g;
         SELECT ai_agents.enqueue_task('{agent}', 'due');
         ANALYZE ai_agents.ai_agent_tasks;"
    ))
    .unwrap();
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT t.id FROM ai_agents.ai_agent_tasks t
              WHERE t.organization_id = (SELECT organization_id FROM ai_agents.ai_agents WHERE id = $1::text::uuid)
                AND t.agent_id = $1::text::uuid
                AND t.status IN ('pending', 'completed', 'failed') AND t.next_run_at IS NOT NULL
                AND t.next_run_at <= now() AND NOT t.paused
              ORDER BY t.priority DESC, t.next_run_at LIMIT 10 FOR UPDATE SKIP LOCKED",
            &[&agent],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("ai_agent_tasks_fair_claim_idx")),
        "{plan:#?}"
    );
}

#[test]
fn a_stale_fencing_token_is_refused_and_changes_nothing() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let task = enqueue(&mut c, &agent, "zombie");
    let (_, old_token, _) = claim_one(&mut c, "w1");
    // The lease expires; the task is rescued and claimed again by another worker.
    c.execute("UPDATE ai_agents.ai_agent_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1::text::uuid", &[&task])
        .unwrap();
    let rescued: i32 = c
        .query_one("SELECT ai_agents.rescue_expired_leases()", &[])
        .unwrap()
        .get(0);
    assert_eq!(rescued, 1);
    let (_, new_token, attempts) = claim_one(&mut c, "w2");
    assert!(new_token > old_token);
    assert_eq!(attempts, 2);

    let row_text = |c: &mut Client| -> String {
        c.query_one(
            "SELECT t::text FROM ai_agents.ai_agent_tasks t WHERE t.id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0)
    };
    let before = row_text(&mut c);
    for call in [
        format!("SELECT ai_agents.complete_task('{task}', {old_token}, 'zombie output')"),
        format!("SELECT ai_agents.fail_task('{task}', {old_token}, 'zombie error')"),
        format!("SELECT ai_agents.heartbeat_task('{task}', {old_token})"),
    ] {
        let (code, message) = error_of(&mut c, &call);
        assert_eq!(code, "55000", "{call}: {message}");
        assert!(message.contains("stale fencing token"), "{message}");
    }
    let after = row_text(&mut c);
    assert_eq!(before, after);

    // The current holder's result stands.
    c.execute(
        "SELECT ai_agents.heartbeat_task($1::text::uuid, $2)",
        &[&task, &new_token],
    )
    .unwrap();
    c.execute(
        "SELECT ai_agents.complete_task($1::text::uuid, $2, 'real output')",
        &[&task, &new_token],
    )
    .unwrap();
    assert_eq!(
        task_field(&mut c, &task, "output").as_deref(),
        Some("real output")
    );
    let (code, _) = error_of(
        &mut c,
        &format!("SELECT ai_agents.complete_task('{task}', {new_token}, 'twice')"),
    );
    assert_eq!(code, "55000", "a completed run cannot be completed again");
    let (code, _) = error_of(
        &mut c,
        "SELECT ai_agents.complete_task(gen_random_uuid(), 1)",
    );
    assert_eq!(code, "P0002");
}

#[test]
fn transient_failures_back_off_then_fail_with_the_last_error() {
    let (mut c, _) = fresh_database();
    c.batch_execute("SET ai_agents.retry_base_delay = '10s'")
        .unwrap();
    let (_, agent) = create_agent(&mut c, "a");
    let task: String = c
        .query_one("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'flaky', max_attempts => 4)", &[&agent])
        .unwrap()
        .get(0);
    let mut delays = vec![];
    for attempt in 1..=4 {
        // Make the retry due now, then claim it.
        c.execute(
            "UPDATE ai_agents.ai_agent_tasks SET next_run_at = now() WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
        let (_, token, attempts) = claim_one(&mut c, "w");
        assert_eq!(attempts, attempt);
        let row = c
            .query_one(
                "SELECT status, extract(epoch FROM next_run_at - now())::float8 \
                 FROM ai_agents.fail_task($1::text::uuid, $2, $3, http_status => 503)",
                &[&task, &token, &format!("upstream 503 #{attempt}")],
            )
            .unwrap();
        let status: String = row.get(0);
        if attempt < 4 {
            assert_eq!(status, "pending");
            delays.push(row.get::<_, f64>(1));
        } else {
            assert_eq!(status, "failed");
        }
    }
    // Equal jitter: attempt n waits between 5*2^(n-1) and 10*2^(n-1) seconds.
    for (i, delay) in delays.iter().enumerate() {
        let full = 10.0 * 2f64.powi(i as i32);
        assert!(
            *delay >= full / 2.0 - 1.0 && *delay <= full + 1.0,
            "attempt {}: {delay}",
            i + 1
        );
    }
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert_eq!(
        task_field(&mut c, &task, "error_message").as_deref(),
        Some("upstream 503 #4")
    );
    assert_eq!(task_field(&mut c, &task, "next_run_at"), None);
    let log = activity(&mut c, &task);
    assert_eq!(log.len(), 4, "one activity row per attempt: {log:?}");
    for (i, (action, success, attempt)) in log.iter().enumerate() {
        assert_eq!(
            (action.as_str(), *success, *attempt),
            ("task_failed", false, Some(i as i32 + 1))
        );
    }
}

#[test]
fn retry_after_is_honoured() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let task = enqueue(&mut c, &agent, "rate limited upstream");
    let (_, token, _) = claim_one(&mut c, "w");
    let wait: f64 = c
        .query_one(
            "SELECT extract(epoch FROM next_run_at - now())::float8 FROM ai_agents.fail_task($1::text::uuid, $2, '429', \
             http_status => 429, retry_after => interval '120 seconds')",
            &[&task, &token],
        )
        .unwrap()
        .get(0);
    assert!((119.0..=121.0).contains(&wait), "{wait}");
}

#[test]
fn permanent_failures_fail_at_once() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    for (status, permanent) in [(Some(401), None), (Some(400), None), (None, Some(true))] {
        let task = enqueue(&mut c, &agent, "bad key");
        let (_, token, _) = claim_one(&mut c, "w");
        let row = c
            .query_one(
                "SELECT status, attempts FROM ai_agents.fail_task($1::text::uuid, $2, 'nope', http_status => $3, permanent => $4)",
                &[&task, &token, &status, &permanent],
            )
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, i32>(1)),
            ("failed".into(), 1)
        );
        assert_eq!(
            activity(&mut c, &task),
            vec![("task_failed".into(), false, Some(1))]
        );
    }
}

#[test]
fn an_expired_lease_is_rescued_or_failed_when_no_attempts_are_left() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let retry: String = c
        .query_one("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'retry', max_attempts => 2)", &[&agent])
        .unwrap()
        .get(0);
    let last: String = c
        .query_one("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'last', max_attempts => 1)", &[&agent])
        .unwrap()
        .get(0);
    let claimed = c
        .query(
            "SELECT id FROM ai_agents.claim_due_tasks('crashed-worker', 10, '50 milliseconds')",
            &[],
        )
        .unwrap();
    assert_eq!(claimed.len(), 2);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let rescued: i32 = c
        .query_one("SELECT ai_agents.rescue_expired_leases()", &[])
        .unwrap()
        .get(0);
    assert_eq!(rescued, 2);
    assert_eq!(
        task_field(&mut c, &retry, "status").as_deref(),
        Some("pending")
    );
    assert_eq!(
        task_field(&mut c, &retry, "next_run_at <= now()").as_deref(),
        Some("true")
    );
    assert_eq!(
        task_field(&mut c, &last, "status").as_deref(),
        Some("failed")
    );
    let message = task_field(&mut c, &last, "error_message").unwrap();
    assert!(
        message.contains("crashed-worker") && message.contains("no attempts left"),
        "{message}"
    );
    assert_eq!(
        activity(&mut c, &retry),
        vec![("lease_expired".into(), false, Some(1))]
    );
    assert_eq!(
        activity(&mut c, &last),
        vec![("lease_expired".into(), false, Some(1))]
    );
    // Nothing more to rescue.
    let again: i32 = c
        .query_one("SELECT ai_agents.rescue_expired_leases()", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, 0);
}

#[test]
fn cancel_and_run_now() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let later: String = c
        .query_one("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'later', run_at => now() + interval '1 day')", &[&agent])
        .unwrap()
        .get(0);
    c.execute("SELECT ai_agents.run_task_now($1::text::uuid)", &[&later])
        .unwrap();
    let (claimed, token, _) = claim_one(&mut c, "w");
    assert_eq!(claimed, later);
    let (code, _) = error_of(&mut c, &format!("SELECT ai_agents.run_task_now('{later}')"));
    assert_eq!(code, "55000", "a running task cannot be started again");

    // Cancelling a running task makes its worker's result stale.
    c.execute(
        "SELECT ai_agents.cancel_task($1::text::uuid, 'owner changed their mind')",
        &[&later],
    )
    .unwrap();
    assert_eq!(
        task_field(&mut c, &later, "status").as_deref(),
        Some("cancelled")
    );
    let (code, _) = error_of(
        &mut c,
        &format!("SELECT ai_agents.complete_task('{later}', {token}, 'late')"),
    );
    assert_eq!(code, "55000");
    assert_eq!(
        activity(&mut c, &later)
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>(),
        ["task_run_now", "task_cancelled"]
    );
    let (code, _) = error_of(&mut c, &format!("SELECT ai_agents.run_task_now('{later}')"));
    assert_eq!(code, "55000", "a cancelled task stays cancelled");

    // A failed one-shot task can be run again with fresh attempts.
    let failing = enqueue(&mut c, &agent, "failing");
    let (_, token, _) = claim_one(&mut c, "w");
    c.execute(
        "SELECT ai_agents.fail_task($1::text::uuid, $2, 'bad request', http_status => 400)",
        &[&failing, &token],
    )
    .unwrap();
    let row = c
        .query_one("SELECT status, attempts, next_run_at <= now() FROM ai_agents.run_task_now($1::text::uuid)", &[&failing])
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, bool>(2)
        ),
        ("pending".into(), 0, true)
    );
    let (code, _) = error_of(&mut c, "SELECT ai_agents.cancel_task(gen_random_uuid())");
    assert_eq!(code, "P0002");
}

#[test]
fn pausing_holds_new_and_existing_tasks_and_deactivation_holds_too() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    enqueue(&mut c, &agent, "before");
    let held: i32 = c
        .query_one(
            "SELECT ai_agents.pause_agent_tasks($1::text::uuid)",
            &[&agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 1);
    enqueue(&mut c, &agent, "during");
    assert!(c
        .query("SELECT * FROM ai_agents.claim_due_tasks('w', 10)", &[])
        .unwrap()
        .is_empty());
    let held: i32 = c
        .query_one(
            "SELECT ai_agents.resume_agent_tasks($1::text::uuid)",
            &[&agent],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
    c.execute(
        "UPDATE ai_agents.ai_agents SET is_active = false WHERE id = $1::text::uuid",
        &[&agent],
    )
    .unwrap();
    // An inactive agent gets no new task through enqueue_task; a row inserted directly (as
    // the guide writes them, or a restore) is kept, held.
    let (code, _) = error_of(
        &mut c,
        &format!("SELECT ai_agents.enqueue_task('{agent}', 'refused')"),
    );
    assert_eq!(code, "55000");
    c.execute(
        "INSERT INTO ai_agents.ai_agent_tasks (agent_id, title) VALUES ($1::text::uuid, 'inserted')",
        &[&agent],
    )
    .unwrap();
    assert!(c
        .query("SELECT * FROM ai_agents.claim_due_tasks('w', 10)", &[])
        .unwrap()
        .is_empty());
    c.execute(
        "UPDATE ai_agents.ai_agents SET is_active = true WHERE id = $1::text::uuid",
        &[&agent],
    )
    .unwrap();
    assert_eq!(
        c.query("SELECT * FROM ai_agents.claim_due_tasks('w', 10)", &[])
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn idempotency_key_returns_the_existing_task() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let (_, other_org_agent) = create_agent(&mut c, "b");
    let first: String = c
        .query_one("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'once', idempotency_key => 'req-1')", &[&agent])
        .unwrap()
        .get(0);
    let second: String = c
        .query_one("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'once again', idempotency_key => 'req-1')", &[&agent])
        .unwrap()
        .get(0);
    assert_eq!(first, second);
    // Keys are per organization.
    let other: String = c
        .query_one("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'once', idempotency_key => 'req-1')", &[&other_org_agent])
        .unwrap()
        .get(0);
    assert_ne!(first, other);
    let n: i64 = c
        .query_one("SELECT count(*) FROM ai_agents.ai_agent_tasks", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn prune_history_deletes_old_finished_rows_in_batches() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_tasks (agent_id, title, status, next_run_at, completed_at)
         SELECT '{agent}', 'old ' || g, 'completed', NULL, now() FROM generate_series(1, 25) g;
         UPDATE ai_agents.ai_agent_tasks SET updated_at = now() - interval '40 days';
         SELECT ai_agents.enqueue_task('{agent}', 'recent pending');
         SELECT ai_agents.enqueue_task('{agent}', 'old recurring', schedule_cron => '0 * * * *');
         UPDATE ai_agents.ai_agent_tasks SET updated_at = now() - interval '40 days' WHERE title = 'old recurring';
         INSERT INTO ai_agents.ai_agent_activity_log (organization_id, action_type, success, created_at)
         SELECT gen_random_uuid(), 'x', true, now() - interval '40 days' FROM generate_series(1, 7);"
    ))
    .unwrap();
    let first: i64 = c
        .query_one("SELECT ai_agents.prune_history('30 days', 10)", &[])
        .unwrap()
        .get(0);
    assert_eq!(first, 17, "10 tasks and 7 activity rows");
    let mut total = first;
    loop {
        let n: i64 = c
            .query_one("SELECT ai_agents.prune_history('30 days', 10)", &[])
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 32);
    let left: Vec<String> = c
        .query(
            "SELECT title FROM ai_agents.ai_agent_tasks ORDER BY title",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["old recurring", "recent pending"]);
    let (code, _) = error_of(&mut c, "SELECT ai_agents.prune_history('-1 day')");
    assert_eq!(code, "22023");
}

#[test]
fn the_next_claim_rescues_an_expired_lease_without_manual_sql() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let task = enqueue(&mut c, &agent, "worker dies");
    let first = c
        .query_one("SELECT fencing_token FROM ai_agents.claim_due_tasks('doomed-worker', 1, '50 milliseconds')", &[])
        .unwrap()
        .get::<_, i64>(0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Another worker's ordinary claim picks the task up again as attempt 2.
    let (claimed, token, attempts) = claim_one(&mut c, "healthy-worker");
    assert_eq!((claimed.as_str(), attempts), (task.as_str(), 2));
    assert!(token > first);
    assert_eq!(
        activity(&mut c, &task),
        vec![("lease_expired".into(), false, Some(1))],
        "the rescue is on record"
    );
}

/// Each kind of bad input gets its own clear error and SQLSTATE: one test per case.
macro_rules! bad_input {
    ($($name:ident: $sql:expr => $code:expr, $needle:expr;)*) => {$(
        #[test]
        fn $name() {
            let (mut c, _) = fresh_database();
            let (org, agent) = create_agent(&mut c, "a");
            let (_, inactive) = create_agent(&mut c, "sleeping");
            c.execute("UPDATE ai_agents.ai_agents SET is_active = false WHERE id = $1::text::uuid", &[&inactive])
                .unwrap();
            enqueue(&mut c, &agent, "valid");
            let sql = $sql.replace("{agent}", &agent).replace("{org}", &org).replace("{inactive}", &inactive);
            let (code, message) = error_of(&mut c, &sql);
            assert_eq!(code, $code, "{message}");
            assert!(message.contains($needle), "{message}");
        }
    )*};
}

const INSERT: &str = "INSERT INTO ai_agent_tasks (agent_id, organization_id, title";

bad_input! {
    invalid_cron_on_insert:
        format!("{INSERT}, schedule_cron) VALUES ('{{agent}}', '{{org}}', 'T', '*/0 * * * *')")
        => "22023", "invalid cron expression";
    cron_with_four_fields:
        "SELECT enqueue_task('{agent}', 'x', schedule_cron => '* * * *')" => "22023", "expected 5 or 6 fields";
    cron_that_never_fires:
        "SELECT enqueue_task('{agent}', 'x', schedule_cron => '0 0 30 2 *')" => "22023", "never fires";
    unknown_time_zone:
        format!("{INSERT}, timezone) VALUES ('{{agent}}', '{{org}}', 'T', 'Europe/Atlantis')")
        => "22023", "unknown time zone \"Europe/Atlantis\"";
    unknown_agent_on_insert:
        format!("{INSERT}) VALUES (gen_random_uuid(), '{{org}}', 'T')") => "23503", "does not exist";
    unknown_agent_on_enqueue:
        "SELECT enqueue_task(gen_random_uuid(), 'x')" => "23503", "does not exist";
    inactive_agent:
        "SELECT enqueue_task('{inactive}', 'x')" => "55000", "is not active";
    organization_mismatch:
        format!("{INSERT}) VALUES ('{{agent}}', gen_random_uuid(), 'T')") => "23503", "does not exist in organization";
    unknown_status:
        format!("{INSERT}, status) VALUES ('{{agent}}', '{{org}}', 'T', 'done')") => "23514", "unknown task status \"done\"";
    unknown_status_on_update:
        "UPDATE ai_agent_tasks SET status = 'finished' WHERE agent_id = '{agent}'" => "23514", "unknown task status";
    unknown_task_type:
        format!("{INSERT}, task_type) VALUES ('{{agent}}', '{{org}}', 'T', 'cron')") => "23514", "unknown task type \"cron\"";
    max_attempts_below_one:
        "SELECT enqueue_task('{agent}', 'x', max_attempts => 0)" => "23514", "max_attempts must be at least 1";
    empty_title:
        "SELECT enqueue_task('{agent}', '   ')" => "23514", "title must not be empty";
    oversized_idempotency_key:
        "SELECT enqueue_task('{agent}', 'x', idempotency_key => repeat('k', 256))" => "22001", "at most 255";
    claim_without_a_worker_name:
        "SELECT claim_due_tasks('', 1)" => "22023", "worker name";
    claim_of_zero_tasks:
        "SELECT claim_due_tasks('w', 0)" => "22023", "max_tasks";
    claim_with_a_negative_lease:
        "SELECT claim_due_tasks('w', 1, '-1 minute')" => "22023", "lease";
    version_changed_in_place:
        "UPDATE ai_agent_versions SET model = 'x' WHERE agent_id = '{agent}'" => "0A000", "immutable";
}

#[test]
fn complete_tasks_completes_a_batch_or_nothing() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    for i in 0..5 {
        enqueue(&mut c, &agent, &format!("batch {i}"));
    }
    let claimed = |c: &mut Client, n: i32| -> (Vec<String>, Vec<i64>) {
        let rows = c
            .query(
                "SELECT id::text, fencing_token FROM ai_agents.claim_due_tasks('w', $1, '1 minute')",
                &[&n],
            )
            .unwrap();
        (
            rows.iter().map(|r| r.get(0)).collect(),
            rows.iter().map(|r| r.get(1)).collect(),
        )
    };
    let (ids, tokens) = claimed(&mut c, 3);
    assert_eq!(ids.len(), 3);
    let statuses = |c: &mut Client| -> Vec<String> {
        c.query(
            "SELECT status FROM ai_agents.ai_agent_tasks ORDER BY title",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // One stale token in the batch: refused as a whole, nothing changes.
    let mut bad = tokens.clone();
    bad[1] -= 1_000_000;
    let before = statuses(&mut c);
    let (code, message) = error_of(
        &mut c,
        &format!(
            "SELECT ai_agents.complete_tasks(ARRAY{ids:?}::text[]::uuid[], ARRAY{bad:?}::bigint[], ARRAY['a', 'b', 'c'])"
        )
        .replace('"', "'"),
    );
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains(&format!(
            "stale fencing token {} for task {}",
            bad[1], ids[1]
        )),
        "{message}"
    );
    assert_eq!(statuses(&mut c), before);
    // Mismatched arrays and repeated ids.
    let (code, _) = error_of(
        &mut c,
        &format!("SELECT ai_agents.complete_tasks(ARRAY{ids:?}::text[]::uuid[], ARRAY{tokens:?}::bigint[], ARRAY['only one'])").replace('"', "'"),
    );
    assert_eq!(code, "22023");
    let (code, message) = error_of(
        &mut c,
        &format!(
            "SELECT ai_agents.complete_tasks(ARRAY['{0}', '{0}']::uuid[], ARRAY[{1}, {1}]::bigint[])",
            ids[0], tokens[0]
        ),
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("22023", "task ids repeat in one complete_tasks call")
    );
    // The batch: each task gets its own output, tokens and an activity row; order is kept.
    let done: Vec<(String, String, i32)> = c
        .query(
            &format!(
                "SELECT id::text, output, tokens_used FROM ai_agents.complete_tasks(ARRAY{ids:?}::text[]::uuid[], ARRAY{tokens:?}::bigint[], ARRAY['a', 'b', 'c'], tokens_used => ARRAY[1, 2, 3])"
            )
            .replace('"', "'"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        done,
        vec![
            (ids[0].clone(), "a".into(), 1),
            (ids[1].clone(), "b".into(), 2),
            (ids[2].clone(), "c".into(), 3)
        ]
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            activity(&mut c, id),
            vec![("task_completed".to_string(), true, Some(1))]
        );
        assert_eq!(
            task_field(&mut c, id, "tokens_used").as_deref(),
            Some(&*(i + 1).to_string())
        );
    }
}

#[test]
fn completing_one_task_finds_it_by_id_not_by_the_lease_index() {
    let (mut c, _) = fresh_database();
    // The generic plan, as PL/pgSQL uses after a few calls, of the statement that ends a run.
    c.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE finish(uuid, bigint) AS
           UPDATE ai_agents.ai_agent_tasks SET status = 'completed', lease_expires_at = NULL
            WHERE id = $1 AND fencing_token = $2 AND status = 'running'",
    )
    .unwrap();
    let plan: String = c
        .query("EXPLAIN EXECUTE finish(gen_random_uuid(), 1)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    // The unique index on id alone (the primary key is (organization_id, id)) finds the one
    // row by its id.
    assert!(plan.contains("Index Cond: (id = $1)"), "{plan}");
    assert!(!plan.contains("ai_agent_tasks_lease_idx"), "{plan}");
}

/// A session in a fresh database whose notices are kept: the plans auto_explain reports once
/// `explain_from_now_on` has been called.
fn explaining_session() -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let (_, database) = fresh_database();
    let plans = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = plans.clone();
    let c = ai_agents_tests::postgres::Config::from_str(
        &ai_agents_tests::shared_cluster().conninfo(&database),
    )
    .unwrap()
    .notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_string()))
    .connect(ai_agents_tests::postgres::NoTls)
    .unwrap();
    (c, plans)
}

fn explain_from_now_on(c: &mut Client) {
    c.batch_execute(
        "LOAD 'auto_explain';
         SET auto_explain.log_min_duration = 0;
         SET auto_explain.log_nested_statements = on;
         SET auto_explain.log_level = notice",
    )
    .unwrap();
}

/// Claims up to `n` due tasks and records a reply for each, as the worker does.
fn claim_and_reply(c: &mut Client, n: i32) -> Vec<String> {
    let claimed = c
        .query(
            "SELECT id::text, fencing_token FROM ai_agents.claim_due_tasks('w', $1)",
            &[&n],
        )
        .unwrap();
    let ids: Vec<String> = claimed.iter().map(|r| r.get(0)).collect();
    let tokens: Vec<i64> = claimed.iter().map(|r| r.get(1)).collect();
    c.query(
        "SELECT status FROM ai_agents._record_llm_replies(
             $1::text[]::uuid[], $2, array_fill('done'::text, ARRAY[$3::int]),
             array_fill(1::bigint, ARRAY[$3::int]), array_fill(1::bigint, ARRAY[$3::int]),
             array_fill(0::bigint, ARRAY[$3::int]), array_fill(0::bigint, ARRAY[$3::int]),
             array_fill('gpt-4o-mini'::text, ARRAY[$3::int]), array_fill('r'::text, ARRAY[$3::int]),
             array_fill(1, ARRAY[$3::int]))",
        &[&ids, &tokens, &(ids.len() as i32)],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn a_batch_of_replies_finds_its_tasks_by_id_with_a_plan_made_on_an_empty_table() {
    // The worker's session keeps generic plans. One made while the table was nearly empty
    // found a batch's tasks by reading every task of their organization through the primary
    // key: bench/run's drain, after its latency runs had made the plans, ran at 900 tasks a
    // second instead of 2,300.
    let (mut c, plans) = explaining_session();
    let (_, agent) = create_agent(&mut c, "a");
    enqueue(&mut c, &agent, "first");
    enqueue(&mut c, &agent, "second");
    assert_eq!(claim_and_reply(&mut c, 2), ["completed", "completed"]);
    c.execute(
        "INSERT INTO ai_agents.ai_agent_tasks (agent_id, title, next_run_at)
         SELECT $1::text::uuid, 'later ' || g, now() + interval '1 day' FROM generate_series(1, 20000) g",
        &[&agent],
    )
    .unwrap();
    enqueue(&mut c, &agent, "third");
    enqueue(&mut c, &agent, "fourth");
    explain_from_now_on(&mut c);
    assert_eq!(claim_and_reply(&mut c, 2), ["completed", "completed"]);
    let plans = plans.lock().unwrap();
    // The claim's update, the completion's and the replies' lookup each search the tasks'
    // index for the batch's ids (by the id or the primary key).
    for statement in [
        "SET status = 'running'",
        "SET status = 'completed'",
        "array_agg(g.id ORDER BY g.i)",
    ] {
        let found: Vec<&String> = plans.iter().filter(|p| p.contains(statement)).collect();
        assert_eq!(found.len(), 1, "{statement}: {plans:#?}");
        assert!(
            found[0]
                .lines()
                .any(|l| l.contains("Index Cond:") && l.contains("(id = ")),
            "{}",
            found[0]
        );
    }
}

#[test]
fn a_claim_among_many_future_tasks_reads_the_fair_claim_index_in_order() {
    // The plans that claim_due_tasks keeps are generic: they do not know how many tasks a
    // call claims. One that expected many read every due task and sorted them, so a claim
    // became ten times slower with a large backlog (bench/run, scenario 5).
    let (mut c, plans) = explaining_session();
    let (_, agent) = create_agent(&mut c, "a");
    c.execute(
        "INSERT INTO ai_agents.ai_agent_tasks (agent_id, title, next_run_at)
         SELECT $1::text::uuid, 'task ' || g,
                CASE WHEN g <= 50 THEN now() ELSE now() + g * interval '1 second' END
           FROM generate_series(1, 60000) g",
        &[&agent],
    )
    .unwrap();
    c.batch_execute("ANALYZE ai_agents.ai_agent_tasks").unwrap();
    explain_from_now_on(&mut c);
    for _ in 0..3 {
        let claimed = c
            .query("SELECT id FROM ai_agents.claim_due_tasks('w', 1)", &[])
            .unwrap();
        assert_eq!(claimed.len(), 1);
    }
    let plans = plans.lock().unwrap();
    // The agents with due tasks (a skip scan) and the lock of each one's most urgent tasks.
    for statement in ["WITH RECURSIVE pair", "FOR UPDATE OF t SKIP LOCKED"] {
        let candidates: Vec<&String> = plans.iter().filter(|p| p.contains(statement)).collect();
        assert_eq!(candidates.len(), 3, "{statement}: {plans:#?}");
        for plan in candidates {
            assert!(plan.contains("ai_agent_tasks_fair_claim_idx"), "{plan}");
            assert!(!plan.contains("Sort"), "{plan}");
            assert!(!plan.contains("Seq Scan"), "{plan}");
        }
    }
}

#[test]
fn the_workers_batch_of_replies_completes_the_current_runs_and_discards_only_the_stale() {
    let (mut c, _) = fresh_database();
    let (_, agent) = create_agent(&mut c, "a");
    let conversation: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.start_conversation($1::text::uuid)",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let talk: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.send_message($1::text::uuid, 'hello')",
            &[&conversation],
        )
        .unwrap()
        .get(0);
    let plain = enqueue(&mut c, &agent, "plain");
    let cancelled = enqueue(&mut c, &agent, "cancelled");
    let deleted = enqueue(&mut c, &agent, "deleted");
    let tasks = [
        talk.clone(),
        plain.clone(),
        cancelled.clone(),
        deleted.clone(),
    ];
    let claimed = c
        .query("SELECT id FROM ai_agents.claim_due_tasks('w', 10)", &[])
        .unwrap();
    assert_eq!(claimed.len(), 4);
    let tokens: Vec<i64> = tasks
        .iter()
        .map(|task| {
            task_field(&mut c, task, "fencing_token")
                .and_then(|t| t.parse().ok())
                .expect("a claimed task holds a token")
        })
        .collect();
    c.execute(
        "SELECT ai_agents.cancel_task($1::text::uuid)",
        &[&cancelled],
    )
    .unwrap();
    c.execute(
        "DELETE FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
        &[&deleted],
    )
    .unwrap();
    let recorded: Vec<(String, String)> = c
        .query(
            "SELECT task_id::text, status FROM ai_agents._record_llm_replies(
                 $1::text[]::uuid[], $2, ARRAY['to talk', 'to plain', 'to cancelled', 'to deleted'],
                 ARRAY[100, 200, 300, 400]::bigint[], ARRAY[50, 60, 70, 80]::bigint[],
                 ARRAY[0, 0, 0, 0]::bigint[], ARRAY[0, 0, 0, 0]::bigint[],
                 ARRAY['gpt-4o-mini', 'gpt-4o-mini', 'gpt-4o-mini', 'gpt-4o-mini'],
                 ARRAY['r-talk', 'r-plain', 'r-cancelled', 'r-deleted'], ARRAY[11, 12, 13, 14])
             ORDER BY 2, 1",
            &[&tasks.to_vec(), &tokens],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected = vec![
        (talk.clone(), "completed".to_string()),
        (plain.clone(), "completed".to_string()),
        (cancelled.clone(), "discarded".to_string()),
        (deleted.clone(), "discarded".to_string()),
    ];
    expected.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    assert_eq!(recorded, expected);
    // Each current run has its own reply, tokens, cost (gpt-4o-mini: $0.15 / $0.60 per
    // million tokens) and time, and an activity row naming the request.
    for (task, output, tokens, cost, ms, request) in [
        (&talk, "to talk", "150", "0.000045000000", "11", "r-talk"),
        (&plain, "to plain", "260", "0.000066000000", "12", "r-plain"),
    ] {
        assert_eq!(
            task_field(
                &mut c,
                task,
                "concat_ws(' ', status, output, tokens_used, cost_usd, execution_time_ms)"
            ),
            Some(format!("completed {output} {tokens} {cost} {ms}"))
        );
        let logged: String = c
            .query_one(
                "SELECT details ->> 'request_id' FROM ai_agents.ai_agent_activity_log \
                 WHERE task_id = $1::text::uuid AND action_type = 'task_completed'",
                &[task],
            )
            .unwrap()
            .get(0);
        assert_eq!(logged, request);
    }
    let said: Vec<(String, String, i32)> = c
        .query(
            "SELECT role, content, tokens FROM ai_agents.ai_agent_messages \
             WHERE conversation_id = $1::text::uuid ORDER BY created_at, id",
            &[&conversation],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<_, Option<i32>>(2).unwrap_or(-1)))
        .collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(said[1], ("assistant".into(), "to talk".into(), 50));
    // The cancelled run's reply is kept out of the task and recorded as discarded.
    assert_eq!(
        task_field(&mut c, &cancelled, "status || coalesce(output, '-')").as_deref(),
        Some("cancelled-")
    );
    let discarded: (String, String) = c
        .query_one(
            "SELECT error, details ->> 'request_id' FROM ai_agents.ai_agent_activity_log \
             WHERE task_id = $1::text::uuid AND action_type = 'result_discarded'",
            &[&cancelled],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        discarded.0.contains("stale fencing token") && discarded.1 == "r-cancelled",
        "{discarded:?}"
    );
}

#[test]
fn a_claim_or_rescue_naming_organizations_leaves_the_others_alone() {
    let (mut c, _) = fresh_database();
    let (mine, agent) = create_agent(&mut c, "mine");
    let (_, other) = create_agent(&mut c, "other");
    for a in [&agent, &other] {
        enqueue(&mut c, a, "renewal");
    }
    let only = |c: &mut Client, sql: &str| -> Vec<String> {
        c.query(sql, &[&mine])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let claimed = only(
        &mut c,
        "SELECT agent_id::text FROM ai_agents.claim_due_tasks('w', 10, '50 milliseconds', ARRAY[$1::text::uuid])",
    );
    assert_eq!(claimed, [agent]);
    let rest: Vec<String> = c
        .query(
            "SELECT c.agent_id::text
               FROM ai_agents.ai_agents a,
                    ai_agents.claim_due_tasks('w', 10, '50 milliseconds', ARRAY[a.organization_id]) c
              WHERE a.id = $1::text::uuid",
            &[&other],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rest, std::slice::from_ref(&other));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let rescued: i32 = c
        .query_one(
            "SELECT ai_agents.rescue_expired_leases(ARRAY[$1::text::uuid])",
            &[&mine],
        )
        .unwrap()
        .get(0);
    assert_eq!(rescued, 1);
    let running = only(
        &mut c,
        "SELECT agent_id::text FROM ai_agents.ai_agent_tasks
          WHERE status = 'running' AND organization_id <> $1::text::uuid",
    );
    assert_eq!(
        running,
        [other],
        "the other organization's lease is left to its claimer"
    );
    // On one server any organizations may be named together; an empty list claims nothing.
    let none = c
        .query(
            "SELECT * FROM ai_agents.claim_due_tasks('w', 10, organizations => ARRAY[gen_random_uuid(), gen_random_uuid()])",
            &[],
        )
        .expect("organizations of any shard on one server");
    assert!(none.is_empty());
}
