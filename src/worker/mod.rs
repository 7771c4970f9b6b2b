//! The background worker: a scheduler inside Postgres that calls the LLM. Every table access
//! is its own short transaction; no transaction is open while a call is in flight (calls run
//! on `pool`'s threads); it sleeps on its latch until the next due time or a wake-up (`wake`).
//!
//! Each step of a turn lives in its own file: `claim` (due tasks to jobs, with `secrets` for
//! API keys), `pool` (the HTTP threads), `record` (what they finished), `prune` and
//! `scheduled_reports` (housekeeping with their own intervals), `statements` (the SQL the
//! worker keeps planned) and `wake` (latch, wake-ups and run_scheduler_once).
mod claim;
mod pool;
mod prune;
mod record;
mod scheduled_reports;
mod secrets;
mod statements;
mod wake;

use crate::settings::{self, HTTP_TIMEOUT_S, MAX_CONCURRENT_CALLS, WORKER_ENABLED};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pool::Pool;
use statements::Statements;
use std::time::{Duration, Instant};
use wake::PassFigures;

pub use wake::SEGMENT;

/// Longest sleep with nothing due: a safety net, not a tick.
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// The shortest sleep when nothing more was claimable.
const MIN_WAIT: Duration = Duration::from_millis(5);
/// How often an idle worker looks again while the extension is absent or the server is a standby.
const ABSENT_WAIT: Duration = Duration::from_secs(5);
/// How soon a call whose task row was locked is offered for recording again.
const BUSY_WAIT: Duration = Duration::from_secs(1);

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
    // Finished calls whose task rows another session held locked: recorded in a later turn.
    let mut unrecorded = vec![];
    let mut waiting_for_update = false;
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
        if unsafe { pg_sys::RecoveryInProgress() }
            || !(installed || extension_ready(&mut waiting_for_update))
        {
            sleep(&pool, ABSENT_WAIT);
            continue;
        }
        if !installed {
            installed = true;
            release_orphaned_runs(&name);
        }
        let mut finished = std::mem::take(&mut unrecorded);
        finished.extend(pool.finished());
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
        let (recorded, jobs, wait) = BackgroundWorker::transaction(|| {
            let recorded = record::record(st, finished);
            let jobs = if want > 0 {
                claim::claim(st, &name, want)
            } else {
                vec![]
            };
            // A full pool is woken by its calls; otherwise by the next due time.
            let wait = if want > 0 && jobs.len() < want {
                until_next_due(st)
            } else {
                IDLE_WAIT
            };
            (recorded, jobs, wait)
        });
        unrecorded = recorded.busy;
        // A pass asked for by run_scheduler_once looks at the report schedules too, before
        // the pass is reported done.
        if requested.is_some() || Instant::now() >= next_reports {
            next_reports = scheduled_reports::run_once();
        }
        for (job_pass, succeeded) in recorded.outcomes {
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
            next_prune = prune::run_once();
        }
        let now = Instant::now();
        let wait = if unrecorded.is_empty() {
            wait
        } else {
            wait.min(BUSY_WAIT)
        };
        sleep(
            &pool,
            wait.min(next_prune.saturating_duration_since(now))
                .min(next_reports.saturating_duration_since(now)),
        );
    }
    let grace = Duration::from_secs(u64::try_from(HTTP_TIMEOUT_S.get()).unwrap_or(60));
    unrecorded.extend(pool.drain(grace));
    // Calls are only ever submitted after the statements were planned.
    if let (false, Some(st)) = (unrecorded.is_empty(), &statements) {
        let busy = BackgroundWorker::transaction(|| record::record(st, unrecorded).busy);
        if !busy.is_empty() {
            // Their leases expire and the tasks are rescued and run again.
            log(&format!(
                "{} results left unrecorded: their task rows stay locked",
                busy.len()
            ));
        }
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
            "SELECT ai_agents._release_orphaned_runs($1)",
            &[worker.into()],
        )
    })
    .unwrap_or_else(|e| error!("ai_agents worker: rescuing interrupted runs failed: {e}"));
    if let Some(count) = released.filter(|&n| n > 0) {
        log(&format!("rescued {count} runs interrupted by a restart"));
    }
}

/// Whether the extension is installed in this database at this library's version. A library
/// newer than the installed schema (new files in place, ALTER EXTENSION ai_agents UPDATE not
/// run yet) waits for the update instead of running statements the old schema lacks; it says
/// so once in the log.
fn extension_ready(waiting_for_update: &mut bool) -> bool {
    let installed = BackgroundWorker::transaction(|| {
        statements::value::<String>(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'ai_agents'",
        )
        .ok()
        .flatten()
    });
    match installed {
        Some(version) if version == env!("CARGO_PKG_VERSION") => true,
        Some(version) => {
            if !std::mem::replace(waiting_for_update, true) {
                log(&format!(
                    "ai_agents {version} is installed, this library is {}: waiting for ALTER EXTENSION ai_agents UPDATE",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            false
        }
        None => false,
    }
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
