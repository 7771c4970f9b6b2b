//! The worker's client in bench/run: inserts tasks and waits for them through
//! LISTEN ai_agents_task_events, so that waiting costs no CPU the worker could use.
//! Usage: bench_worker <conninfo> <agent id[,agent id...]> latency|drain <tasks>
//!   latency  tasks inserted one at a time into an idle system (for the agents in turn), each
//!            waited for; prints "result <p50 ms> <p99 ms>" of insert-to-start
//!            (execution_started_at - created_at)
//!   drain    tasks inserted in one statement; prints "result <tasks/s>" until the last finished
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, conninfo, agent, mode, tasks] = &args[..] else {
        eprintln!("usage: bench_worker <conninfo> <agent id[,agent id...]> latency|drain <tasks>");
        std::process::exit(2);
    };
    let tasks: usize = tasks.parse().expect("tasks: a number");
    let mut listener = Client::connect(conninfo, NoTls).expect("connect");
    listener
        .batch_execute("LISTEN ai_agents_task_events")
        .expect("LISTEN");
    let mut c = Client::connect(conninfo, NoTls).expect("connect");
    match mode.as_str() {
        "latency" => latency(&mut c, &mut listener, agent, tasks),
        "drain" => drain(&mut c, &mut listener, agent, tasks),
        _ => {
            eprintln!("mode: latency or drain, not {mode}");
            std::process::exit(2);
        }
    }
}

fn latency(c: &mut Client, listener: &mut Client, agents: &str, tasks: usize) {
    let agents: Vec<&str> = agents.split(',').collect();
    let enqueue = c
        .prepare("SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, $2)")
        .expect("prepare");
    for i in 0..tasks {
        let agent = agents[i % agents.len()];
        let id: String = c
            .query_one(&enqueue, &[&agent, &format!("latency {i}")])
            .expect("enqueue")
            .get(0);
        // Other tasks may finish meanwhile (a backlog beside): wait for this one.
        let mut events = listener.notifications();
        let mut waiting = events.timeout_iter(Duration::from_secs(10));
        loop {
            let event = waiting
                .next()
                .expect("notification")
                .expect("a task finished within 10 s");
            if event.payload().contains(&id) {
                break;
            }
        }
    }
    let row = c
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), \
                    max(ms), count(*) \
               FROM (SELECT extract(epoch FROM execution_started_at - created_at)::float8 * 1000 AS ms \
                       FROM ai_agents.ai_agent_tasks WHERE title LIKE 'latency %') l",
            &[],
        )
        .expect("latency figures");
    let (p50, p99, max, n): (f64, f64, f64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    eprintln!("insert-to-start: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms over {n} tasks");
    println!("result {p50:.3} {p99:.3}");
}

fn drain(c: &mut Client, listener: &mut Client, agent: &str, tasks: usize) {
    let started = Instant::now();
    c.execute(
        "INSERT INTO ai_agents.ai_agent_tasks (agent_id, organization_id, title) \
         SELECT id, organization_id, 'drain ' || g FROM ai_agents.ai_agents, generate_series(1, $1::int) g \
          WHERE id = $2::text::uuid",
        &[&(tasks as i32), &agent],
    )
    .expect("insert the drain tasks");
    let mut finished = 0;
    let mut events = listener.notifications();
    let mut waiting = events.timeout_iter(Duration::from_secs(60));
    while finished < tasks {
        waiting
            .next()
            .expect("notification")
            .expect("tasks kept finishing");
        finished += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("end-to-end: {tasks} tasks in {seconds:.1} s");
    println!("result {:.2}", tasks as f64 / seconds);
}
