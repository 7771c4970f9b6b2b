// The peers' side of bench/run: graphile-worker and pg-boss doing the same work as ai_agents
// (no-op jobs), each with its defaults and with its documented performance settings.
// Connects to $DATABASE_URL. Prints one line "result <number> [<number> ...]" for bench/run.
//   peer.mjs setup                            create both peers' schemas
//   peer.mjs gw-throughput <default|batched> <jobs>      jobs/s draining a backlog of <jobs>
//                                             (from its first job finished to its last)
//   peer.mjs gw-latency <jobs>                p50 and p99 ms from add_job to handler start
//   peer.mjs pgboss-throughput <default|batched> <jobs> <seconds>
//                                             jobs/s draining a backlog of <jobs>, at most <seconds>
import { fork } from "node:child_process";
import { performance } from "node:perf_hooks";
import { Logger, run, runMigrations } from "graphile-worker";
import PgBoss from "pg-boss";
import pg from "pg";

const connectionString = process.env.DATABASE_URL;
const [command, ...args] = process.argv.slice(2);
// Errors only: graphile-worker logs every job at info level by default, which would make the
// benchmark measure the terminal.
const gwLogger = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

// Graphile-worker's documented performance settings (its docs' "Performance" page and
// perfTest): 24 concurrent jobs per process, a pool one larger, a local queue of 500 jobs,
// completions and failures batched with no delay. Run in 2 processes.
const GW_BATCHED = {
  concurrentJobs: 24,
  maxPoolSize: 25,
  localQueue: { size: 500 },
  completeJobBatchDelay: 0,
  failJobBatchDelay: 0,
};
const GW_PROCESSES = { default: 1, batched: 2 };

async function withClient(fn) {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function gwAddBacklog(jobs) {
  // add_jobs in batches, as graphile-worker's perfTest queues its jobs.
  await withClient(async (client) => {
    for (let done = 0; done < jobs; done += 10000) {
      await client.query(
        `SELECT graphile_worker.add_jobs(array(
           SELECT json_populate_record(null::graphile_worker.job_spec,
                  json_build_object('identifier', 'noop', 'payload', json_build_object('i', g)))
             FROM generate_series(1, $1::int) g))`,
        [Math.min(10000, jobs - done)],
      );
    }
  });
}

// The wall clock in ms with sub-ms precision, comparable between processes.
const now = () => performance.timeOrigin + performance.now();

// One worker process: runs no-op jobs and reports to its parent how many it has finished and
// when it finished its first and its latest.
async function gwChild(mode) {
  let finished = 0;
  let reported = 0;
  let first;
  let last;
  const runner = await run({
    connectionString,
    noHandleSignals: true,
    logger: gwLogger,
    taskList: {
      noop: async () => {
        last = now();
        first ??= last;
        finished++;
      },
    },
    preset: { worker: mode === "batched" ? GW_BATCHED : {} },
  });
  const report = setInterval(() => {
    if (finished !== reported) {
      reported = finished;
      process.send({ finished, first, last });
    }
  }, 10);
  process.on("message", async () => {
    clearInterval(report);
    await runner.stop();
    process.exit(0);
  });
}

async function gwThroughput(mode, jobs) {
  await gwAddBacklog(jobs);
  const children = Array.from({ length: GW_PROCESSES[mode] }, () =>
    fork(new URL(import.meta.url), ["gw-child", mode]),
  );
  // Timed from the first job finished to the last, in whichever process: its start-up (which
  // already runs jobs) is left out, so that it cannot inflate or deflate the rate.
  const reports = children.map(() => ({ finished: 0 }));
  const seconds = await new Promise((resolve) => {
    children.forEach((child, i) =>
      child.on("message", (m) => {
        reports[i] = m;
        if (reports.reduce((a, r) => a + r.finished, 0) >= jobs) {
          const active = reports.filter((r) => r.finished > 0);
          resolve((Math.max(...active.map((r) => r.last)) - Math.min(...active.map((r) => r.first))) / 1000);
        }
      }),
    );
  });
  await Promise.all(children.map((child) => new Promise((r) => { child.on("exit", r); child.send("stop"); })));
  return [jobs / seconds];
}

// Jobs added one at a time into an idle worker with its defaults (LISTEN/NOTIFY wake-up), each
// waited for: from just before add_job is sent to the start of the handler, in one process.
async function gwLatency(jobs) {
  let startedJob;
  const runner = await run({
    connectionString,
    noHandleSignals: true,
    logger: gwLogger,
    taskList: { lat: async () => startedJob(performance.now()) },
  });
  await new Promise((r) => setTimeout(r, 500));
  const ms = [];
  await withClient(async (client) => {
    for (let i = 0; i < jobs; i++) {
      const started = new Promise((r) => { startedJob = r; });
      const t0 = performance.now();
      await client.query("SELECT graphile_worker.add_job('lat', json_build_object('i', $1::int))", [i]);
      ms.push((await started) - t0);
    }
  });
  await runner.stop();
  ms.sort((a, b) => a - b);
  return [percentile(ms, 50), percentile(ms, 99)];
}

async function pgBoss(work) {
  const boss = new PgBoss({ connectionString, max: 10 });
  boss.on("error", (e) => console.error(e));
  await boss.start();
  try {
    return await work(boss);
  } finally {
    await boss.stop({ graceful: false, wait: true });
  }
}

async function pgbossThroughput(mode, jobs, seconds) {
  return pgBoss(async (boss) => {
    // A queue of its own per run (pg-boss 10 gives each its own table), so no run inherits
    // another's jobs or dead tuples.
    const QUEUE = `bench_${mode}_${Date.now()}`;
    await boss.createQueue(QUEUE);
    for (let done = 0; done < jobs; done += 1000) {
      const n = Math.min(1000, jobs - done);
      await boss.insert(Array.from({ length: n }, (_, i) => ({ name: QUEUE, data: { i: done + i } })));
    }
    let finished = 0;
    const started = performance.now();
    const deadline = started + seconds * 1000;
    if (mode === "default") {
      // work() with its defaults: one job per fetch, a fetch every 2 s while busy.
      await boss.work(QUEUE, async ([_job]) => { finished++; });
      while (finished < jobs && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      await boss.offWork(QUEUE);
    } else {
      // Its documented batching: fetch with batchSize 50 and complete the ids in one call,
      // 8 such loops (the SQL baselines' 8 clients).
      await Promise.all(Array.from({ length: 8 }, async () => {
        while (performance.now() < deadline) {
          const batch = await boss.fetch(QUEUE, { batchSize: 50 });
          if (batch.length === 0) break;
          await boss.complete(QUEUE, batch.map((j) => j.id));
          finished += batch.length;
        }
      }));
    }
    return [finished / ((performance.now() - started) / 1000)];
  });
}

let result;
switch (command) {
  case "setup":
    await runMigrations({ connectionString, logger: gwLogger });
    await pgBoss(async () => {});
    result = [1];
    break;
  case "gw-child":
    await gwChild(args[0]);
    break;
  case "gw-throughput":
    result = await gwThroughput(args[0], Number(args[1]));
    break;
  case "gw-latency":
    result = await gwLatency(Number(args[0]));
    break;
  case "pgboss-throughput":
    result = await pgbossThroughput(args[0], Number(args[1]), Number(args[2]));
    break;
  default:
    console.error(`unknown command ${command}`);
    process.exit(2);
}
if (result) {
  console.log(`result ${result.map((v) => v.toFixed(2)).join(" ")}`);
  process.exit(0);
}
