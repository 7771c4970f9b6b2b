//! 32 LLM calls in flight at once, none inside a transaction: 320 tasks whose stub replies each
//! take 500 ms finish in about 5 s, and the worker is never seen holding a transaction open
//! across a call.
use ai_agents_tests::{create_agent, WorkerEnv};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn thirty_two_calls_run_at_once_outside_any_transaction() {
    const TASKS: usize = 320;
    const CONCURRENCY: f64 = 32.0;
    const DELAY: f64 = 0.5;
    let env = WorkerEnv::start("throughput", &["ai_agents.max_concurrent_calls = 32"]);
    let mut c = env.connect();
    let (org, agent) = create_agent(&mut c, "busy");
    let marker = format!("slow-{agent}");
    env.stub.script(serde_json::Value::Array(
        (0..TASKS)
            .map(|_| json!({"match": marker, "delay_ms": 500}))
            .collect(),
    ));

    // Sample the worker's transaction state all along.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let mut s = env.connect();
        std::thread::spawn(move || {
            let mut samples = vec![];
            while sampling.load(Ordering::Relaxed) {
                let row = s
                    .query_one(
                        "SELECT count(*), max(extract(epoch FROM clock_timestamp() - xact_start))::float8 \
                         FROM pg_stat_activity WHERE backend_type = 'ai_agents worker'",
                        &[],
                    )
                    .unwrap();
                samples.push((row.get::<_, i64>(0), row.get::<_, Option<f64>>(1)));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };

    let started = Instant::now();
    c.execute(
        &format!(
            "INSERT INTO ai_agent_tasks (agent_id, organization_id, title, task_type, status, next_run_at) \
             SELECT '{agent}', '{org}', '{marker} ' || g, 'adhoc', 'pending', NOW() FROM generate_series(1, {TASKS}) g"
        ),
        &[],
    )
    .unwrap();
    loop {
        let done: i64 = c
            .query_one(
                "SELECT count(*) FROM ai_agent_tasks WHERE status = 'completed'",
                &[],
            )
            .unwrap()
            .get(0);
        if done as usize == TASKS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {done} of {TASKS} done"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();

    let rate = TASKS as f64 / elapsed;
    let floor = 0.8 * CONCURRENCY / DELAY;
    let in_transaction: Vec<f64> = samples.iter().filter_map(|s| s.1).collect();
    let longest = in_transaction.iter().copied().fold(0.0, f64::max);
    println!(
        "throughput: {TASKS} tasks in {elapsed:.2} s = {rate:.1} tasks/s (floor {floor:.1}); \
         {} samples, {} inside a short transaction, longest {:.0} ms",
        samples.len(),
        in_transaction.len(),
        longest * 1000.0
    );
    assert!(
        rate >= floor,
        "{rate:.1} tasks/s is below 0.8 x concurrency / delay"
    );
    assert!(
        samples.iter().all(|s| s.0 == 1),
        "exactly one worker, seen in every sample"
    );
    // A call takes 500 ms: a transaction held across one would be seen this old.
    assert!(
        longest < DELAY / 2.0,
        "the worker held a transaction for {longest:.3} s"
    );
    let requests = env.stub.requests().len();
    assert_eq!(requests, TASKS, "one call per task");
}
