//! bench/run's scenario 9: an LLM-bound drain on Citus, a cluster with one worker node against
//! one with two, in the same run. Each node's worker makes at most 16 calls at a time to a stub
//! that answers in 200 ms, so a node drains at most 80 tasks a second; two nodes should come
//! close to twice that. Both clusters (a coordinator and their workers each, the tables
//! distributed over 8 shards, 100 organizations) stay up, and their drains alternate.
//! Usage: bench_distributed <tasks> <runs>; prints "result <1-node tasks/s> <2-node tasks/s>"
//! once per run.
use ai_agents_tests::citus::{CitusCluster, DATABASE};
use ai_agents_tests::stub::Stub;
use postgres::Client;
use std::time::{Duration, Instant};

const CALLS_PER_NODE: u32 = 16;
const STUB_MS: u64 = 200;

fn cluster(name: &str, workers: usize, stub: &Stub) -> CitusCluster {
    let settings = [
        format!("ai_agents.database = '{DATABASE}'"),
        "ai_agents.worker_enabled = on".to_string(),
        format!("ai_agents.max_concurrent_calls = {CALLS_PER_NODE}"),
        format!("ai_agents.openai_base_url = '{}'", stub.base_url),
        format!("ai_agents.allowed_base_urls = '{}'", stub.base_url),
        "ai_agents.openai_api_key = 'sk-bench'".to_string(),
        "ai_agents.rate_limit_global_per_minute = 1000000".to_string(),
        "ai_agents.rate_limit_organization_per_minute = 1000000".to_string(),
        "ai_agents.rate_limit_agent_per_minute = 1000000".to_string(),
        "ai_agents.history_retention = 0".to_string(),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let cluster = CitusCluster::start(name, workers, &settings);
    cluster
        .connect()
        .batch_execute(
            "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, model)
             SELECT gen_random_uuid(), 'front desk ' || g, 'customer_care', 'gpt-4o-mini'
               FROM generate_series(1, 100) g;
             SELECT count(*) FROM ai_agents.distribute(8);",
        )
        .expect("agents, then distributing");
    cluster
}

/// Inserts `tasks` tasks spread over the organizations and returns tasks/s until the last one
/// completed.
fn drain(c: &mut Client, tasks: i64) -> f64 {
    c.batch_execute("TRUNCATE ai_agents.ai_agent_tasks, ai_agents.ai_agent_task_steps, ai_agents.ai_agent_activity_log")
        .expect("emptying the queue");
    let started = Instant::now();
    c.execute(
        "INSERT INTO ai_agents.ai_agent_tasks (organization_id, agent_id, title)
         SELECT a.organization_id, a.id, 'renewal ' || g
           FROM ai_agents.ai_agents a, generate_series(1, ceil($1::int8 / 100.0)::int8) g",
        &[&tasks],
    )
    .expect("inserting the tasks");
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE status <> 'completed'",
                &[],
            )
            .expect("counting")
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{left} tasks left after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let done: i64 = c
        .query_one("SELECT count(*) FROM ai_agents.ai_agent_tasks", &[])
        .expect("counting")
        .get(0);
    done as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, tasks, runs] = &args[..] else {
        eprintln!("usage: bench_distributed <tasks> <runs>");
        std::process::exit(2);
    };
    let tasks: i64 = tasks.parse().expect("tasks: a number");
    let runs: usize = runs.parse().expect("runs: a number");
    let stub = Stub::start();
    stub.set_default_delay_ms(STUB_MS);
    let one = cluster("bench-one-node", 1, &stub);
    let two = cluster("bench-two-nodes", 2, &stub);
    let (mut c1, mut c2) = (one.connect(), two.connect());
    for _ in 0..runs {
        let a = drain(&mut c1, tasks);
        let b = drain(&mut c2, tasks);
        println!("result {a:.1} {b:.1}");
    }
}
