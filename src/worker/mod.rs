//! The background worker: a scheduler inside Postgres that calls the LLM. Every table access
//! is its own short transaction; no transaction is open while a call is in flight (calls run
//! on `pool`'s threads); it sleeps on its latch until the next due time or a wake-up (`wake`).
mod pool;
mod statements;
mod wake;

use crate::llm;
use crate::settings::{
    self, HISTORY_LIMIT, HISTORY_RETENTION_DAYS, HTTP_TIMEOUT_S, LEASE_S, MAX_CONCURRENT_CALLS,
    WORKER_ENABLED,
};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pool::{Done, Job, Pool};
use statements::Statements;
use std::time::{Duration, Instant};
use wake::PassFigures;

pub use wake::SEGMENT;

pgrx::extension_sql_file!(
    "../../sql/worker.sql",
    name = "worker",
    requires = [
        "tasks",
        wake::wake_worker_at_commit,
        wake::run_scheduler_once
    ]
);

/// Longest sleep with nothing due: a safety net, not a tick.
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// How often the worker prunes history: one small batch each time, the next one at once while
/// batches come back full.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 1000;
/// Longest wait between looks at the report schedules: a new or changed schedule is seen
/// within it (a look that finds nothing due is one read-only query).
const REPORTS_EVERY: Duration = Duration::from_secs(60);
/// The shortest sleep when nothing more was claimable.
const MIN_WAIT: Duration = Duration::from_millis(5);
/// How often an idle worker looks again while the extension is absent or the server is a standby.
const ABSENT_WAIT: Duration = Duration::from_secs(5);

/// Registers the worker; called from `_PG_init` while the library is preloaded.
pub fn register() {
    // SAFETY: reading a flag Postgres sets before it loads preloaded libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("ai_agents worker")
        .set_type("ai_agents worker")
        .set_library("ai_agents")
        .set_function("ai_agents_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn log(message: &str) {
    log!("ai_agents worker: {message}");
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn ai_agents_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::text(&settings::WORKER_DATABASE);
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // The worker runs as a superuser: names in its own statements resolve in pg_catalog only,
    // so an object planted in public never runs with its rights.
    BackgroundWorker::transaction(|| Spi::run("SET search_path TO pg_catalog, pg_temp"))
        .unwrap_or_else(|e| error!("ai_agents worker: setting its search_path failed: {e}"));
    wake::publish_my_latch();
    // SAFETY: reading this process's pid.
    let name = format!("ai_agents-worker-{}", unsafe { pg_sys::MyProcPid });
    let size = usize::try_from(MAX_CONCURRENT_CALLS.get())
        .unwrap_or(1)
        .max(1);
    let mut pool = match Pool::new(size) {
        Ok(pool) => pool,
        Err(e) => error!("ai_agents worker: cannot start its HTTP threads: {e}"),
    };
    log(&format!(
        "serving database \"{database}\" with {size} HTTP threads"
    ));
    let mut pass: Option<Pass> = None;
    let mut last_pass = 0;
    let mut installed = false;
    let mut statements: Option<Statements> = None;
    let mut next_prune = Instant::now();
    let mut next_reports = Instant::now();
    loop {
        if BackgroundWorker::sigterm_received() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload its settings.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // SAFETY: a plain read of the recovery state.
        if unsafe { pg_sys::RecoveryInProgress() } || !(installed || extension_installed()) {
            sleep(&pool, ABSENT_WAIT);
            continue;
        }
        if !installed {
            installed = true;
            release_orphaned_runs(&name);
        }
        let finished = pool.finished();
        let requested = if pass.is_none() {
            wake::pass_requested(last_pass)
        } else {
            None
        };
        // With the worker disabled, only a pass asked for by run_scheduler_once claims.
        let want = if WORKER_ENABLED.get() || requested.is_some() {
            pool.free()
        } else {
            0
        };
        // One short transaction a turn: record what finished, claim what fits, and find out
        // when to look again. An ERROR here ends the worker, which starts again in 5 s.
        let st: &Statements = match &statements {
            Some(st) => st,
            None => statements.insert(
                BackgroundWorker::transaction(Statements::prepare).unwrap_or_else(|e| {
                    error!("ai_agents worker: planning its statements failed: {e}")
                }),
            ),
        };
        let (outcomes, jobs, wait) = BackgroundWorker::transaction(|| {
            let outcomes = record(st, &finished);
            let jobs = if want > 0 {
                claim(st, &name, want)
            } else {
                vec![]
            };
            // A full pool is woken by its calls; otherwise by the next due time.
            let wait = if want > 0 && jobs.len() < want {
                until_next_due(st)
            } else {
                IDLE_WAIT
            };
            (outcomes, jobs, wait)
        });
        // A pass asked for by run_scheduler_once looks at the report schedules too, before
        // the pass is reported done.
        if requested.is_some() || Instant::now() >= next_reports {
            next_reports = build_due_reports();
        }
        for (job_pass, succeeded) in outcomes {
            if let Some(current) = pass.as_mut().filter(|p| Some(p.id) == job_pass) {
                current.count(succeeded);
            }
        }
        let claimed = jobs.len();
        for mut job in jobs {
            job.pass = requested;
            pool.submit(job);
        }
        if let Some(id) = requested {
            last_pass = id;
            pass = Some(Pass {
                id,
                started: Instant::now(),
                outstanding: claimed,
                succeeded: 0,
                failed: 0,
            });
        }
        if let Some(finished) = pass.take_if(|p| p.outstanding == 0) {
            finished.publish();
        }
        if Instant::now() >= next_prune {
            next_prune = prune();
        }
        let now = Instant::now();
        sleep(
            &pool,
            wait.min(next_prune.saturating_duration_since(now))
                .min(next_reports.saturating_duration_since(now)),
        );
    }
    let grace = Duration::from_secs(u64::try_from(HTTP_TIMEOUT_S.get()).unwrap_or(60));
    let finished = pool.drain(grace);
    // Calls are only ever submitted after the statements were planned.
    if let (false, Some(st)) = (finished.is_empty(), &statements) {
        BackgroundWorker::transaction(|| record(st, &finished));
    }
    wake::withdraw_my_latch();
    log("stopped");
    // Exit code 1 asks the postmaster to start the worker again after its restart time: a
    // worker stopped by pg_terminate_backend comes back by itself (at shutdown nothing restarts).
    // SAFETY: ends this process the way Postgres expects a background worker to end.
    unsafe { pg_sys::proc_exit(1) };
}

/// A scheduler pass asked for by run_scheduler_once: the calls it claimed and how they ended.
struct Pass {
    id: u64,
    started: Instant,
    outstanding: usize,
    succeeded: u64,
    failed: u64,
}

impl Pass {
    fn count(&mut self, succeeded: bool) {
        self.outstanding -= 1;
        if succeeded {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
    }

    fn publish(self) {
        let figures = PassFigures {
            executed: self.succeeded + self.failed,
            succeeded: self.succeeded,
            failed: self.failed,
            elapsed: self.started.elapsed(),
        };
        wake::publish_pass(self.id, &figures);
    }
}

/// Rescues the runs an earlier incarnation of the worker left behind.
fn release_orphaned_runs(worker: &str) {
    let released = BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<i32>(
            "SELECT ai_agents.release_orphaned_runs($1)",
            &[worker.into()],
        )
    })
    .unwrap_or_else(|e| error!("ai_agents worker: rescuing interrupted runs failed: {e}"));
    if let Some(count) = released.filter(|&n| n > 0) {
        log(&format!("rescued {count} runs interrupted by a restart"));
    }
}

/// Deletes one batch of history older than ai_agents.history_retention; returns when to prune
/// next.
fn prune() -> Instant {
    let days = HISTORY_RETENTION_DAYS.get();
    if days <= 0 {
        return Instant::now() + PRUNE_EVERY;
    }
    let deleted = BackgroundWorker::transaction(|| {
        statements::value::<i64>(&format!(
            "SELECT ai_agents.prune_history(make_interval(days => {days}), {PRUNE_BATCH})"
        ))
    })
    .unwrap_or_else(|e| error!("ai_agents worker: pruning history failed: {e}"))
    .unwrap_or(0);
    if deleted >= PRUNE_BATCH {
        Instant::now()
    } else {
        Instant::now() + PRUNE_EVERY
    }
}

/// Builds the scheduled reports whose time has come; returns when to look again.
fn build_due_reports() -> Instant {
    let seconds = BackgroundWorker::transaction(|| {
        statements::value::<f64>(
            "SELECT extract(epoch FROM ai_agents.build_due_reports() - clock_timestamp())::float8",
        )
    })
    .unwrap_or_else(|e| error!("ai_agents worker: building scheduled reports failed: {e}"));
    let wait = seconds.map_or(REPORTS_EVERY, |s| {
        Duration::from_secs_f64(s.clamp(0.0, REPORTS_EVERY.as_secs_f64()))
    });
    Instant::now() + wait
}

/// Whether `CREATE EXTENSION ai_agents` has run in this database.
fn extension_installed() -> bool {
    BackgroundWorker::transaction(|| {
        statements::value::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'ai_agents')",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    })
}

fn timeouts() -> llm::Timeouts {
    let total = Duration::from_secs(u64::try_from(HTTP_TIMEOUT_S.get()).unwrap_or(60));
    llm::Timeouts {
        connect: total.min(Duration::from_secs(10)),
        total,
    }
}

/// The lease outlives any call: at least the HTTP timeout plus 30 s.
fn lease() -> Duration {
    let asked = Duration::from_secs(u64::try_from(LEASE_S.get()).unwrap_or(300));
    asked.max(timeouts().total + Duration::from_secs(30))
}

/// Claims up to `free` tasks and turns them into jobs.
fn claim(st: &Statements, worker: &str, free: usize) -> Vec<Job> {
    let free = i32::try_from(free).unwrap_or(i32::MAX);
    let lease = lease().as_secs_f64();
    let history = HISTORY_LIMIT.get();
    let allowlist = settings::text(&settings::ALLOWED_BASE_URLS);
    Spi::connect(|client| {
        let mut jobs = vec![];
        let mut keys = Keys::default();
        for row in client.select(
            &st.claim,
            None,
            &[worker.into(), free.into(), lease.into(), history.into()],
        )? {
            let provider_name: String = row.get(3)?.unwrap_or_default();
            let Some(provider) = llm::Provider::parse(&provider_name) else {
                continue; // the schema's CHECK allows only known providers
            };
            let setting = match provider {
                llm::Provider::OpenAi => &settings::OPENAI_BASE_URL,
                llm::Provider::Anthropic => &settings::ANTHROPIC_BASE_URL,
            };
            // An agent may name its own endpoint (config.base_url), within the allowlist.
            let base_url = row
                .get::<String>(14)?
                .filter(|url| !url.trim().is_empty())
                .unwrap_or_else(|| settings::text(setting));
            let refused = llm::check_base_url(&base_url, &allowlist).err();
            let agent: String = row.get(12)?.unwrap_or_default();
            let organization: String = row.get(13)?.unwrap_or_default();
            let api_key = if refused.is_some() {
                None
            } else {
                keys.get(client, provider, &agent, &organization)?
            };
            let title: String = row.get(8)?.unwrap_or_default();
            let description: Option<String> = row.get(9)?;
            let input: pgrx::JsonB = row.get(10)?.unwrap_or(pgrx::JsonB(serde_json::Value::Null));
            let history: Option<pgrx::JsonB> = row.get(11)?;
            jobs.push(Job {
                pass: None,
                task_id: row.get(1)?.unwrap_or_default(),
                fencing_token: row.get(2)?.unwrap_or_default(),
                request: llm::Request {
                    provider,
                    base_url,
                    api_key,
                    model: row.get(4)?.unwrap_or_default(),
                    system: row.get(5)?.unwrap_or_default(),
                    messages: messages(
                        &title,
                        description.as_deref(),
                        &input.0,
                        history.map(|h| h.0),
                    ),
                    temperature: row.get(6)?.unwrap_or(0.7),
                    max_tokens: row
                        .get::<i32>(7)?
                        .and_then(|t| u32::try_from(t).ok())
                        .unwrap_or(1024),
                },
                timeouts: timeouts(),
                refused,
            });
        }
        Ok::<_, pgrx::spi::Error>(jobs)
    })
    .unwrap_or_else(|e| error!("ai_agents worker: claiming failed: {e}"))
}

/// API keys, looked up once a turn per provider and agent. The first that exists wins: the
/// Supabase Vault secret `ai_agents.<provider>.agent.<agent id>`, then
/// `ai_agents.<provider>.organization.<organization id>`, then the secret named by
/// ai_agents.<provider>_api_key_secret (all only when Vault is installed; the extension works
/// without it), then the superuser-only setting ai_agents.<provider>_api_key. Keys live in
/// Vault or settings only: never in a table of the extension.
#[derive(Default)]
struct Keys {
    vault: Option<bool>,
    found: std::collections::HashMap<(llm::Provider, String), Option<String>>,
}

impl Keys {
    fn get(
        &mut self,
        client: &pgrx::spi::SpiClient,
        provider: llm::Provider,
        agent: &str,
        organization: &str,
    ) -> Result<Option<String>, pgrx::spi::Error> {
        if let Some(known) = self.found.get(&(provider, agent.to_string())) {
            return Ok(known.clone());
        }
        let (name, secret, setting) = match provider {
            llm::Provider::OpenAi => (
                "openai",
                &settings::OPENAI_API_KEY_SECRET,
                &settings::OPENAI_API_KEY,
            ),
            llm::Provider::Anthropic => (
                "anthropic",
                &settings::ANTHROPIC_API_KEY_SECRET,
                &settings::ANTHROPIC_API_KEY,
            ),
        };
        let vault = match self.vault {
            Some(known) => known,
            None => *self.vault.insert(
                client
                    .select(
                        "SELECT to_regclass('vault.decrypted_secrets') IS NOT NULL",
                        None,
                        &[],
                    )?
                    .first()
                    .get_one::<bool>()?
                    .unwrap_or(false),
            ),
        };
        let mut key = None;
        if vault {
            let names = vec![
                format!("ai_agents.{name}.agent.{agent}"),
                format!("ai_agents.{name}.organization.{organization}"),
                settings::text(secret),
            ];
            key = client
                .select(
                    "SELECT s.decrypted_secret FROM vault.decrypted_secrets s \
                      WHERE s.name = ANY($1) AND s.name <> '' \
                      ORDER BY array_position($1, s.name::text) LIMIT 1",
                    Some(1),
                    &[names.into()],
                )?
                .first()
                .get_one::<String>()?;
        }
        let key = key.or_else(|| Some(settings::text(setting)).filter(|k| !k.is_empty()));
        self.found
            .insert((provider, agent.to_string()), key.clone());
        Ok(key)
    }
}

/// A conversation task sends its history; any other task one user message built from it.
fn messages(
    title: &str,
    description: Option<&str>,
    input: &serde_json::Value,
    history: Option<serde_json::Value>,
) -> Vec<llm::Message> {
    let from_history: Vec<llm::Message> = history
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let role = match m.get("role")?.as_str()? {
                "user" => llm::Role::User,
                "assistant" => llm::Role::Assistant,
                _ => return None,
            };
            Some(llm::Message {
                role,
                content: m.get("content")?.as_str()?.to_string(),
            })
        })
        .collect();
    if from_history.is_empty() {
        vec![llm::Message {
            role: llm::Role::User,
            content: llm::task_message(title, description, input),
        }]
    } else {
        from_history
    }
}

/// Records the finished calls; returns, per call, its pass and whether the task completed.
/// The replies are recorded together, in one statement (see record_llm_replies); the failures,
/// rarer and each with its own retry decision, one by one.
fn record(st: &Statements, finished: &[Done]) -> Vec<(Option<u64>, bool)> {
    let replies: Vec<(&Done, &llm::Reply)> = finished
        .iter()
        .filter_map(|done| done.outcome.as_ref().ok().map(|reply| (done, reply)))
        .collect();
    let mut completed = std::collections::HashSet::new();
    if !replies.is_empty() {
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Spi::connect(|client| {
            let rows = client.select(
                &st.replies,
                None,
                &[
                    column(&replies, |d, _| d.task_id.as_str()).into(),
                    column(&replies, |d, _| d.fencing_token).into(),
                    column(&replies, |_, r| r.content.as_str()).into(),
                    column(&replies, |_, r| tokens(r.input_tokens)).into(),
                    column(&replies, |_, r| tokens(r.output_tokens)).into(),
                    column(&replies, |_, r| r.model.as_str()).into(),
                    column(&replies, |_, r| r.request_id.as_deref()).into(),
                    column(&replies, |d, _| elapsed_ms(d)).into(),
                ],
            )?;
            for row in rows {
                if row.get::<String>(2)?.as_deref() == Some("completed") {
                    completed.extend(row.get::<String>(1)?);
                }
            }
            Ok::<_, pgrx::spi::SpiError>(())
        })
        .unwrap_or_else(|e| {
            error!(
                "ai_agents worker: recording {} replies failed: {e}",
                replies.len()
            )
        });
    }
    for done in finished {
        let Err(failure) = &done.outcome else {
            continue;
        };
        Spi::connect(|client| {
            client
                .select(
                    &st.failure,
                    Some(1),
                    &[
                        done.task_id.as_str().into(),
                        done.fencing_token.into(),
                        failure.message.as_str().into(),
                        failure.http_status.map(i32::from).into(),
                        failure
                            .retry_after
                            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                            .into(),
                        failure.permanent.into(),
                        failure.request_id.as_deref().into(),
                        elapsed_ms(done).into(),
                    ],
                )?
                .first()
                .get_one::<String>()
        })
        .unwrap_or_else(|e| {
            error!(
                "ai_agents worker: recording task {} failed: {e}",
                done.task_id
            )
        });
    }
    finished
        .iter()
        .map(|done| (done.pass, completed.contains(&done.task_id)))
        .collect()
}

/// One array argument of record_llm_replies: a field of every reply.
fn column<'a, T>(
    replies: &[(&'a Done, &'a llm::Reply)],
    field: impl Fn(&'a Done, &'a llm::Reply) -> T,
) -> Vec<T> {
    replies.iter().map(|&(d, r)| field(d, r)).collect()
}

fn elapsed_ms(done: &Done) -> i32 {
    i32::try_from(done.elapsed.as_millis()).unwrap_or(i32::MAX)
}

/// How long to sleep: until the next due task or expiring lease, at most IDLE_WAIT.
fn until_next_due(st: &Statements) -> Duration {
    let seconds = Spi::connect(|client| {
        client
            .select(&st.wakeup, Some(1), &[])?
            .first()
            .get_one::<f64>()
    })
    .ok()
    .flatten();
    // Called when nothing more could be claimed: a task that is due but was not claimable (a
    // claimer elsewhere holds its row lock) must not make the worker spin.
    match seconds {
        Some(s) => Duration::from_secs_f64(s.max(0.0)).clamp(MIN_WAIT, IDLE_WAIT),
        None => IDLE_WAIT,
    }
}

/// Sleeps on the latch, the pool's pipe (a call finished) and the timeout.
fn sleep(pool: &Pool, wait: Duration) {
    let events = pg_sys::WL_LATCH_SET
        | pg_sys::WL_TIMEOUT
        | pg_sys::WL_EXIT_ON_PM_DEATH
        | pg_sys::WL_SOCKET_READABLE;
    // SAFETY: waiting on our own latch and pipe; the latch is reset after it fired.
    unsafe {
        pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            events as i32,
            pool.wake_fd(),
            i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}
