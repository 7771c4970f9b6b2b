//! Claims and idempotency under real concurrency: many sessions, committed data.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, fresh_database, shared_cluster};
use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;

const SESSIONS: usize = 16;
const TASKS: i64 = 10_000;

#[test]
fn sixteen_sessions_claim_ten_thousand_tasks_exactly_once() {
    let (mut c, db) = fresh_database();
    let (org, agent) = create_agent(&mut c, "busy");
    // This test is about claiming, not rate limits: lift the agent's and organization's.
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_per_minute)
         VALUES ('{org}', NULL, 1000000), ('{org}', '{agent}', 1000000)"
    ))
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_tasks (agent_id, title, task_type, status, next_run_at)
         SELECT '{agent}', 'load ' || g, 'adhoc', 'pending', now() FROM generate_series(1, {TASKS}) g"
    ))
    .unwrap();

    let start = Arc::new(Barrier::new(SESSIONS));
    let workers: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let start = Arc::clone(&start);
            let conninfo = shared_cluster().conninfo(&db);
            thread::spawn(move || {
                let mut s = Client::connect(&conninfo, ai_agents_tests::postgres::NoTls).unwrap();
                let worker = format!("worker-{i}");
                let mut claimed: Vec<(String, i64, i32)> = vec![];
                start.wait();
                loop {
                    let batch = s
                        .query(
                            "SELECT id::text, fencing_token, attempts FROM ai_agents.claim_due_tasks($1, 7)",
                            &[&worker],
                        )
                        .unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for row in batch {
                        let (id, token, attempts): (String, i64, i32) = (row.get(0), row.get(1), row.get(2));
                        s.execute(
                            "SELECT ai_agents.complete_task($1::text::uuid, $2, output => $3)",
                            &[&id, &token, &worker],
                        )
                        .unwrap();
                        claimed.push((id, token, attempts));
                    }
                }
                claimed
            })
        })
        .collect();

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut tokens = std::collections::HashSet::new();
    let mut per_session = vec![];
    for worker in workers {
        let claimed = worker.join().expect("a claiming session panicked");
        per_session.push(claimed.len());
        for (id, token, attempts) in claimed {
            assert_eq!(
                attempts, 1,
                "task {id} was claimed with attempts {attempts}"
            );
            assert!(
                tokens.insert(token),
                "fencing token {token} handed out twice"
            );
            *seen.entry(id).or_default() += 1;
        }
    }
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    println!(
        "claims: {} tasks in, {} claimed, {} duplicates, per session {:?}",
        TASKS,
        seen.len(),
        duplicates,
        per_session
    );
    assert_eq!(duplicates, 0);
    assert_eq!(seen.len() as i64, TASKS, "every task claimed");
    assert!(
        per_session.iter().filter(|&&n| n > 0).count() > 1,
        "the sessions shared the work"
    );
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'completed' AND attempts = 1),
                    count(*) FILTER (WHERE status <> 'completed'),
                    (SELECT count(*) FROM ai_agents.ai_agent_activity_log WHERE action_type = 'task_completed')
             FROM ai_agents.ai_agent_tasks",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (TASKS, 0, TASKS)
    );
}

#[test]
fn the_same_idempotency_key_from_racing_sessions_yields_one_task() {
    let (mut c, db) = fresh_database();
    let (_, agent) = create_agent(&mut c, "deduplicated");
    const RACERS: usize = 8;
    const ROUNDS: usize = 40;
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let start = Arc::clone(&start);
            let conninfo = shared_cluster().conninfo(&db);
            let agent = agent.clone();
            thread::spawn(move || {
                let mut s = Client::connect(&conninfo, ai_agents_tests::postgres::NoTls).unwrap();
                (0..ROUNDS)
                    .map(|round| {
                        start.wait();
                        s.query_one(
                            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'payment reminder', \
                             idempotency_key => $2)",
                            &[&agent, &format!("request-{round}")],
                        )
                        .unwrap()
                        .get::<_, String>(0)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<String>> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    for round in 0..ROUNDS {
        let first = &results[0][round];
        assert!(
            results.iter().all(|r| &r[round] == first),
            "round {round}: {results:?}"
        );
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM ai_agents.ai_agent_tasks", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, ROUNDS as i64);
}

/// The exact interleaving that a plain SELECT-then-INSERT gets wrong: the second session
/// enqueues while the first session's insert is not yet committed.
#[test]
fn an_enqueue_waiting_on_an_uncommitted_twin_returns_the_twin() {
    let (mut a, db) = fresh_database();
    let (_, agent) = create_agent(&mut a, "twin");
    let mut b = shared_cluster().connect(&db);
    let mut tx = a.transaction().unwrap();
    let first: String = tx
        .query_one(
            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'once', idempotency_key => 'k')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let agent_b = agent.clone();
    let waiter = thread::spawn(move || -> String {
        b.query_one(
            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'once', idempotency_key => 'k')",
            &[&agent_b],
        )
        .unwrap()
        .get(0)
    });
    thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "the second enqueue waits for the first to commit"
    );
    tx.commit().unwrap();
    assert_eq!(waiter.join().unwrap(), first);
}
