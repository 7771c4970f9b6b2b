// bench/run's report: medians (min-max) of the runs, each target as a ratio of medians measured
// in the same run with PASS/MISS, and the machine, versions and command. Markdown on stdout.
// Fails when a figure the report needs is missing or zero, so that the smoke run proves the
// whole pipeline.
// Usage: node bench/report.mjs <results.tsv> <versions.tsv> <how many runs, in words> <sizes>
import { readFileSync, existsSync } from "node:fs";

const [resultsFile, versionsFile, runs, sizes] = process.argv.slice(2);
const cells = new Map();
for (const line of readFileSync(resultsFile, "utf8").split("\n").filter(Boolean)) {
  const [scenario, system, variant, unit, value] = line.split("\t");
  const key = `${scenario}/${system}/${variant}`;
  if (!cells.has(key)) cells.set(key, { unit, values: [] });
  cells.get(key).values.push(Number(value));
}
const versions = Object.fromEntries(
  readFileSync(versionsFile, "utf8").split("\n").filter(Boolean).map((l) => l.split("\t")),
);

const problems = [];
// A cell's median; a figure that may legitimately be zero says so.
function median(key, { zeroOk = false } = {}) {
  const cell = cells.get(key);
  if (!cell || cell.values.some((v) => !Number.isFinite(v))) {
    problems.push(`no figure for ${key}`);
    return NaN;
  }
  const v = [...cell.values].sort((a, b) => a - b);
  const m = v[Math.floor((v.length - 1) / 2)];
  if (!zeroOk && !(m > 0)) problems.push(`zero figure for ${key}`);
  return m;
}
const fmt = (v) =>
  !Number.isFinite(v) ? "-" : Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : v < 10 ? v.toFixed(2) : v.toFixed(1);
function range(key) {
  const cell = cells.get(key);
  if (!cell) return "-";
  const v = [...cell.values].sort((a, b) => a - b);
  return v.length > 1 ? `${fmt(v[0])}-${fmt(v[v.length - 1])}` : "";
}

const m = (k, o) => median(k, o);
const targets = [
  ["SQL API claim 50 + complete 50, 8 clients vs raw SQL batched", m("throughput/ai_agents_sql/batched-8c") / m("throughput/raw_sql/batched-8c"), ">=", 0.8],
  ["SQL API claim 50 + complete 50, 8 clients vs graphile-worker batched (2 x 24)", m("throughput/ai_agents_sql/batched-8c") / m("throughput/graphile_worker/batched-2x24"), ">=", 1.0],
  ["worker drain (0 ms stub) vs graphile-worker defaults", m("worker_drain/ai_agents/stub-0ms") / m("throughput/graphile_worker/default"), ">=", 2.0],
  ["worker drain (0 ms stub) vs graphile-worker batched (stretch)", m("worker_drain/ai_agents/stub-0ms") / m("throughput/graphile_worker/batched-2x24"), ">=", 1.0],
  ["insert-to-start p50 (ms)", m("latency/ai_agents/p50"), "<=", 2.0],
  ["insert-to-start p99 (ms)", m("latency/ai_agents/p99"), "<=", 7.0],
  ["insert-to-start p50 vs graphile-worker", m("latency/ai_agents/p50") / m("latency/graphile_worker/p50"), "<=", 1.0],
  ["insert-to-start p99 vs graphile-worker", m("latency/ai_agents/p99") / m("latency/graphile_worker/p99"), "<=", 1.0],
  ["`SELECT check_rate_limit(…)`, 8 clients vs SELECT 1", m("ratelimit/ratelimit/8c") / m("ratelimit/select1/8c"), ">=", 0.8],
  ["`SELECT check_rate_limit(…)`, 8 clients vs table counter", m("ratelimit/ratelimit/8c") / m("ratelimit/table_counter/8c"), ">=", 10],
  ["`SELECT check_rate_limit(…)`, 8 clients vs Redis EVAL", m("ratelimit/ratelimit/8c") / m("ratelimit/redis_eval/8c"), ">=", 1.0],
  ["`SELECT check_rate_limit(…)` with token tiers, 8 clients vs SELECT 1", m("ratelimit/ratelimit_tokens/8c") / m("ratelimit/select1/8c"), ">=", 0.8],
  ["`SELECT check_rate_limit(…)` with token tiers, 8 clients vs Redis EVAL", m("ratelimit/ratelimit_tokens/8c") / m("ratelimit/redis_eval/8c"), ">=", 1.0],
];
const scaleKeys = [...cells.keys()].filter((k) => k.startsWith("scale/")).sort((a, b) => Number(a.split("/")[2]) - Number(b.split("/")[2]));
if (scaleKeys.length !== 2) problems.push("scale: want two sizes");
else targets.push([`claim latency at ${Number(scaleKeys[1].split("/")[2]).toLocaleString("en-US")} pending vs ${Number(scaleKeys[0].split("/")[2]).toLocaleString("en-US")}`, m(scaleKeys[1]) / m(scaleKeys[0]), "<=", 1.5]);
// 8: the backlog sizes, from the cells (0 is the quiet system).
const noisySizes = [...new Set([...cells.keys()].filter((k) => k.startsWith("noisy_claim/")).map((k) => Number(k.split("/")[2])))].sort((a, b) => a - b);
if (noisySizes.length !== 3 || noisySizes[0] !== 0) problems.push("noisy: want backlogs of 0 and two sizes");
const big = (n) => n.toLocaleString("en-US");
for (const n of noisySizes.slice(1)) {
  targets.push([`quiet organizations' insert-to-start p99 beside a backlog of ${big(n)} vs none`, m(`noisy/ai_agents/p99-${n}`) / m("noisy/ai_agents/p99-0"), "<=", 2.0]);
}
if (noisySizes.length === 3) {
  targets.push([`claim latency beside a held-back backlog of ${big(noisySizes[2])} vs none`, m(`noisy_claim/ai_agents/${noisySizes[2]}`) / m("noisy_claim/ai_agents/0"), "<=", 1.5]);
}
targets.push(
  ["Citus: LLM-bound drain, two worker nodes vs one", m("distributed/ai_agents/2-nodes") / m("distributed/ai_agents/1-node"), ">=", 1.7],
  ["idle: WAL bytes written", m("idle/ai_agents/wal_bytes", { zeroOk: true }), "<=", 0],
  ["idle: CPU, % of one core", m("idle/ai_agents/cpu_pct_of_core", { zeroOk: true }), "<", 1],
);
// Zero is a finding for idle figures and for throughput at the end of a long-held transaction.
const zeroOk = (k) => k.startsWith("idle/") || (k.startsWith("held_xact/") && k.endsWith("/during"));
for (const k of ["held_xact/raw_sql/before", "held_xact/raw_sql/during", "held_xact/ai_agents_sql/before", "held_xact/ai_agents_sql/during"]) m(k, { zeroOk: zeroOk(k) });
for (const k of cells.keys()) m(k, { zeroOk: zeroOk(k) });

const met = (v, op, t) => (op === ">=" ? v >= t : op === "<=" ? v <= t : v < t);
const out = [];
const p = (s = "") => out.push(s);
p("# Benchmarks");
p();
p(`Measured by \`${versions.command}\` on ${versions.date}, commit ${versions.commit}. Every scenario ran ${runs} in one`);
p("run on one private PostgreSQL cluster on loopback, with the scenarios' cells interleaved round by round;");
p("figures are medians with min-max, targets are ratios of medians from this same run. These machines are");
p("noisy: compare the ratios, not the absolute numbers, with other runs.");
p();
p("| machine | |");
p("|---|---|");
for (const k of ["cpu", "memory", "kernel", "postgres", "node", "graphile_worker", "pg_boss", "redis"]) p(`| ${k.replace("_", "-")} | ${versions[k]} |`);
p();
p("## Targets");
p();
p("| target | measured | wanted | |");
p("|---|---|---|---|");
for (const [name, v, op, t] of targets) {
  const isRatio = name.includes(" vs ");
  p(`| ${name} | ${isRatio ? `${fmt(v)}x` : fmt(v)} | ${op} ${isRatio ? `${t}x` : t} | ${Number.isFinite(v) && met(v, op, t) ? "PASS" : "**MISS**"} |`);
}
const before = (s) => m(`held_xact/${s}/before`);
const during = (s) => m(`held_xact/${s}/during`, { zeroOk: true });
for (const [tiers, key] of [["", "ratelimit_row"], [" with token tiers", "ratelimit_tokens_row"]]) {
  p(`| \`SELECT * FROM check_rate_limit(…)\`${tiers}, 8 clients vs SELECT 1 (no target: the row form, bench/findings.md) | ${fmt(m(`ratelimit/${key}/8c`) / m("ratelimit/select1/8c"))}x | | |`);
}
p(`| throughput with a transaction held open vs before (no target) | ai_agents ${fmt(during("ai_agents_sql") / before("ai_agents_sql"))}x, raw SQL ${fmt(during("raw_sql") / before("raw_sql"))}x | | |`);
p();

const table = (title, header, rows) => {
  p(`## ${title}`);
  p();
  p(`| ${header.join(" | ")} |`);
  p(`|${header.map(() => "---").join("|")}|`);
  for (const r of rows) p(`| ${r.join(" | ")} |`);
  p();
};
const row = (label, key, base) => {
  const v = m(key, { zeroOk: zeroOk(key) });
  return [label, fmt(v), range(key), base ? `${fmt(v / m(base))}x` : ""];
};
table("1. Claim + complete throughput (jobs/s)", ["system, variant", "median", "min-max", "vs raw SQL same variant"], [
  ...["single-1c", "batched-1c", "single-8c", "batched-8c"].flatMap((v) => [
    row(`raw SQL SKIP LOCKED, ${v}`, `throughput/raw_sql/${v}`),
    row(`ai_agents SQL API, ${v}`, `throughput/ai_agents_sql/${v}`, `throughput/raw_sql/${v}`),
  ]),
  row("graphile-worker 0.17.3, defaults (1 process, concurrency 1)", "throughput/graphile_worker/default", "throughput/raw_sql/single-1c"),
  row("graphile-worker 0.17.3, batched (2 processes x 24, localQueue 500, batch delays 0)", "throughput/graphile_worker/batched-2x24", "throughput/raw_sql/batched-8c"),
  row("pg-boss 10.4.0, defaults (work(), 1 job per fetch, 2 s polling)", "throughput/pg_boss/default", "throughput/raw_sql/single-1c"),
  row("pg-boss 10.4.0, batched (8 loops of fetch 50 + complete ids)", "throughput/pg_boss/batched-8x50", "throughput/raw_sql/batched-8c"),
]);
table("2. End-to-end through the worker, 0 ms stub LLM (tasks/s)", ["system", "median", "min-max", "vs graphile-worker defaults"], [
  row("ai_agents worker (HTTP call to the stub included)", "worker_drain/ai_agents/stub-0ms", "throughput/graphile_worker/default"),
  row("graphile-worker defaults (no-op job, from 1.)", "throughput/graphile_worker/default", "throughput/graphile_worker/default"),
  row("graphile-worker batched (no-op job, from 1.)", "throughput/graphile_worker/batched-2x24", "throughput/graphile_worker/default"),
]);
table("2b. The agent loop through the worker, one tool step per task, 0 ms stub", ["drain", "median", "min-max", "vs the plain drain"], [
  row("plain: one LLM call per task (tasks/s)", "worker_drain/ai_agents/stub-0ms"),
  row("one tool step: LLM call, tool call, LLM call (tasks/s)", "worker_drain/ai_agents/tool-step", "worker_drain/ai_agents/stub-0ms"),
  row("the same, in steps/s (3 per task)", "worker_drain/ai_agents/tool-step-steps", "worker_drain/ai_agents/stub-0ms"),
]);
table("3. Insert-to-start latency into an idle system (ms)", ["system", "median", "min-max", "vs graphile-worker"], [
  row("ai_agents p50", "latency/ai_agents/p50", "latency/graphile_worker/p50"),
  row("ai_agents p99", "latency/ai_agents/p99", "latency/graphile_worker/p99"),
  row("graphile-worker defaults p50", "latency/graphile_worker/p50"),
  row("graphile-worker defaults p99", "latency/graphile_worker/p99"),
]);
table("4. Rate-limit checks/s", ["check", "median", "min-max", "SELECT check_rate_limit(…) vs it: call tiers / with token tiers"], ["1c", "8c"].flatMap((c) => [
  row(`SELECT ai_agents.check_rate_limit(…), ${c}`, `ratelimit/ratelimit/${c}`),
  row(`SELECT * FROM ai_agents.check_rate_limit(…), ${c}`, `ratelimit/ratelimit_row/${c}`),
  row(`SELECT ai_agents.check_rate_limit(…) with token tiers (6 keys), ${c}`, `ratelimit/ratelimit_tokens/${c}`),
  row(`SELECT * FROM ai_agents.check_rate_limit(…) with token tiers, ${c}`, `ratelimit/ratelimit_tokens_row/${c}`),
  ...[["SELECT 1", "select1"], ["table counter, 3 tiers", "table_counter"], ["Redis EVAL, INCR + EXPIRE x 3", "redis_eval"]].map(([l, s]) => {
    const r = row(`${l}, ${c}`, `ratelimit/${s}/${c}`);
    const vs = (check) => `${fmt(m(`ratelimit/${check}/${c}`) / m(`ratelimit/${s}/${c}`))}x`;
    r[3] = `${vs("ratelimit")} / ${vs("ratelimit_tokens")}`;
    return r;
  }),
]));
table("5. Claim latency, 1 client, claim_due_tasks(…, 1) (ms)", ["pending tasks", "median", "min-max", "vs the smaller"], scaleKeys.map((k) =>
  row(Number(k.split("/")[2]).toLocaleString("en-US"), k, scaleKeys[0])));
table("8. Noisy neighbour: 20 quiet organizations beside one organization's held-back backlog (ms)", ["backlog", "median", "min-max", "vs no backlog"], noisySizes.flatMap((n) => [
  row(`${big(n)}: insert-to-start p50`, `noisy/ai_agents/p50-${n}`, "noisy/ai_agents/p50-0"),
  row(`${big(n)}: insert-to-start p99`, `noisy/ai_agents/p99-${n}`, "noisy/ai_agents/p99-0"),
  row(`${big(n)}: claim_due_tasks(…, 1)`, `noisy_claim/ai_agents/${n}`, "noisy_claim/ai_agents/0"),
]));
table("9. Citus: LLM-bound drain, stub at 200 ms, 16 calls per node (tasks/s)", ["worker nodes", "median", "min-max", "vs one"], [
  row("one", "distributed/ai_agents/1-node"),
  row("two", "distributed/ai_agents/2-nodes", "distributed/ai_agents/1-node"),
]);
table("6. Idle, nothing due, worker on", ["figure", "median", "min-max", ""], [
  row("WAL bytes written", "idle/ai_agents/wal_bytes"),
  row("CPU of the whole cluster, % of one core", "idle/ai_agents/cpu_pct_of_core"),
]);
table("7. Batched claim + complete at 8 clients, steady backlog, a transaction held open (jobs/s)", ["system", "median", "min-max", "during vs before"], [
  row("raw SQL, before", "held_xact/raw_sql/before"),
  row("raw SQL, at the end of the hold", "held_xact/raw_sql/during", "held_xact/raw_sql/before"),
  row("ai_agents SQL API, before", "held_xact/ai_agents_sql/before"),
  row("ai_agents SQL API, at the end of the hold", "held_xact/ai_agents_sql/during", "held_xact/ai_agents_sql/before"),
]);

p("## Method");
p();
p(`Sizes and durations: \`${sizes}\`.`);
p();
p("- One cluster, PostgreSQL's defaults but `shared_buffers` 256MB (so commits wait for the WAL flush, for");
p("  every system alike), `ai_agents` preloaded, rate limits set high so every check is admitted; the ai_agents worker is switched off");
p("  (`ai_agents.worker_enabled`) while the SQL API and the peers are measured.");
p("- 1: pgbench, one transaction claims (1 or 50, `FOR UPDATE SKIP LOCKED` under a lease) and the next");
p("  completes what it got; each run starts from a freshly filled, vacuumed queue. Jobs/s counts completed");
p("  jobs only. The peers drain a backlog of no-op jobs (graphile-worker: queued with `add_jobs`, timed from");
p("  the first job finished to the last, so its start-up is left out; pg-boss: timed from the first fetch,");
p("  its defaults over a fixed window, since `work()` fetches one job per 2 s poll).");
p("- 2: the background worker claims, calls the stub over HTTP and records the reply; timed from before the");
p("  one `INSERT` of all the tasks (included) to the last task's notification; the client waits through");
p("  `LISTEN` so waiting costs no CPU.");
p("- 3: ai_agents: `execution_started_at - created_at` of tasks inserted with `enqueue_task` one at a time,");
p("  each waited for. graphile-worker: from just before `add_job` is sent to the start of the handler, in the");
p("  same Node process (so its figure includes one client round trip that ai_agents' does not).");
p("- 4: pgbench `-M prepared` and redis-benchmark, same client counts. The targets take `SELECT");
p("  ai_agents.check_rate_limit(…)`, the verdict as one value; `SELECT * FROM` the same call is measured beside it.");
p("- 5: pgbench per-statement latency of `claim_due_tasks(…, 1)` (each claimed task completed in the next");
p("  statement); the larger table holds the same number of due tasks plus pending tasks due tomorrow.");
p("- 6: utime + stime of the postmaster, its children and its reaped children over the window, and");
p("  `pg_current_wal_insert_lsn()` before and after (after a CHECKPOINT), with 1,000 tasks due tomorrow.");
p("- 7: each pgbench run claims 50, completes them and enqueues 50 new ones, so the backlog stays steady;");
p("  after the first phase a REPEATABLE READ transaction holds its snapshot. Figures are the mean of the last");
p("  three 1-second progress windows of each phase.");
p("- 8: one organization's agent, limited to 50 calls a minute, has a backlog due now at the highest priority;");
p("  once its first 50 ran, 20 quiet organizations' tasks are enqueued one at a time through the worker (as in");
p("  3), then claimed one at a time through the SQL API (as in 5) while the backlog stays held back.");
p();
const findings = new URL("./findings.md", import.meta.url);
if (existsSync(findings)) {
  p(readFileSync(findings, "utf8").trimEnd());
  p();
}

if (problems.length) {
  console.error(`bench/report.mjs: ${problems.length} problem(s):\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(out.join("\n"));
