//! The background worker: a scheduler inside Postgres that calls the LLM. Every table access
//! is its own short transaction; no transaction is open while a call is in flight (calls run
//! on `pool`'s threads); it sleeps on its latch until the next due time or a wake-up (`wake`).
//!
//! Each step of a turn lives in its own file: `claim` (due tasks to jobs, with `secrets` for
//! API keys), `pool` (the HTTP threads), `record` (what they finished), `prune` and
//! `scheduled_reports` (housekeeping with their own intervals), `statements` (the SQL the
//! worker keeps planned) and `wake` (latch, wake-ups and run_scheduler_once).
mod claim;
mod credential;
mod pool;
mod prune;
mod record;
mod scheduled_reports;
mod scope;
mod secrets;
mod statements;
mod steps;
mod wake;

use crate::fair_claim;
use crate::settings::{
    self, HTTP_TIMEOUT_S, MAX_CONCURRENT_CALLS, WORKER_ENABLED, WORKER_LOCK_TIMEOUT_MS,
    WORKER_STATEMENT_TIMEOUT_MS,
};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use pool::{Done, Pool};
use statements::Statements;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use steps::{Ran, ToolRun};
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
/// How soon a step that failed (a lock or statement timeout, say) is tried again.
const FAILED_WAIT: Duration = Duration::from_secs(1);

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
    apply_session_settings();
    wake::publish_my_latch();
    // Named by server and process: under Citus every node runs a worker, and a worker that
    // starts ends the leases of its own server's earlier incarnations only.
    // SAFETY: reading this server's system identifier and this process's pid.
    let (server, pid) = unsafe { (pg_sys::GetSystemIdentifier(), pg_sys::MyProcPid) };
    let name = format!("ai_agents-worker-{server}-{pid}");
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
            apply_session_settings();
        }
        // SAFETY: a plain read of the recovery state.
        if unsafe { pg_sys::RecoveryInProgress() }
            || !(installed || extension_ready(&mut waiting_for_update))
        {
            sleep(&pool, ABSENT_WAIT);
            continue;
        }
        if !installed {
            if !release_orphaned_runs(&name) {
                sleep(&pool, FAILED_WAIT);
                continue;
            }
            installed = true;
        }
        let mut finished = std::mem::take(&mut unrecorded);
        let arrived = pool.finished();
        record::settle(&arrived);
        finished.extend(arrived);
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
        let st: &Statements = match &statements {
            Some(st) => st,
            None => match step("planning its statements", Statements::prepare) {
                Some(Ok(planned)) => statements.insert(planned),
                failed => {
                    if let Some(Err(e)) = failed {
                        log(&format!("planning its statements failed: {e}"));
                    }
                    unrecorded = finished;
                    sleep(&pool, FAILED_WAIT);
                    continue;
                }
            },
        };
        // Two short transactions a turn: record what finished, then claim what fits and find
        // out when to look again. A step that fails is logged and tried again: nothing in a
        // row, and no lock another session holds, ends the worker.
        let (outcomes, busy, mut tool_runs) = record_finished(st, finished);
        unrecorded = busy;
        // The tool calls of the replies just stored run before the claim, which can then
        // take their tasks' next calls at once.
        run_tools(st, std::mem::take(&mut tool_runs));
        let claimed = step("claiming", || {
            let (jobs, runs) = if want > 0 {
                claim::claim(st, &name, want)
            } else {
                (vec![], vec![])
            };
            // A full pool is woken by its calls; otherwise by the next due time.
            let wait = if want > 0 && jobs.len() + runs.len() < want {
                until_next_due(st)
            } else {
                IDLE_WAIT
            };
            (jobs, runs, wait)
        });
        let (jobs, resumed, wait) = claimed.unwrap_or((vec![], vec![], FAILED_WAIT));
        let resumed_any = !resumed.is_empty();
        run_tools(st, resumed);
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
        // Housekeeping may wait on the latch inside its SQL (a lock wait, a template's
        // pg_sleep), which swallows a wake-up for a task enqueued meanwhile: after it, the
        // worker looks for due tasks again before it sleeps.
        let mut housekept = false;
        // A pass asked for by run_scheduler_once looks at the report schedules too, before
        // the pass is reported done.
        if requested.is_some() || Instant::now() >= next_reports {
            next_reports = scheduled_reports::run_once();
            housekept = true;
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
            housekept = true;
        }
        if housekept || resumed_any {
            continue;
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
    let arrived = pool.drain(grace);
    record::settle(&arrived);
    unrecorded.extend(arrived);
    // Calls are only ever submitted after the statements were planned.
    if let (false, Some(st)) = (unrecorded.is_empty(), &statements) {
        // Tool calls of replies stored now run when the task is claimed again.
        let (_, busy, _) = record_finished(st, unrecorded);
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

/// Rescues the runs an earlier incarnation of the worker left behind; false when that failed
/// (to be tried again before anything is claimed).
fn release_orphaned_runs(worker: &str) -> bool {
    let released = step("rescuing interrupted runs", || {
        Spi::get_one_with_args::<i32>(
            "SELECT ai_agents._release_orphaned_runs($1)",
            &[worker.into()],
        )
    });
    match released {
        Some(Ok(count)) => {
            if let Some(count) = count.filter(|&n| n > 0) {
                log(&format!("rescued {count} runs interrupted by a restart"));
            }
            true
        }
        Some(Err(e)) => {
            log(&format!("rescuing interrupted runs failed: {e}"));
            false
        }
        None => false,
    }
}

/// Runs `body` in a transaction of its own, cut off after ai_agents.worker_statement_timeout.
/// An ERROR inside (a timeout, a lock wait over ai_agents.worker_lock_timeout, anything a row
/// holds) rolls the transaction back and is logged, and None comes back: the worker goes on.
fn step<R>(what: &str, body: impl FnOnce() -> R) -> Option<R> {
    attempt(what, body).ok()
}

/// An ERROR that ended a step: its message and SQLSTATE.
struct StepError {
    message: String,
    code: String,
}

/// `step`, telling what ended it.
fn attempt<R>(what: &str, body: impl FnOnce() -> R) -> Result<R, StepError> {
    let limit =
        Duration::from_millis(u64::try_from(WORKER_STATEMENT_TIMEOUT_MS.get()).unwrap_or(0));
    PgTryBuilder::new(AssertUnwindSafe(|| {
        Ok(crate::deadline::within(limit, || {
            BackgroundWorker::transaction(AssertUnwindSafe(body))
        }))
    }))
    .catch_others(|caught| {
        // SAFETY: the documented way out of a failed transaction in a background worker
        // (as autovacuum's error path does); the error state was flushed by pgrx's guard.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        let report = match &caught {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        warning!(
            "ai_agents worker: {what} failed and is tried again: {} ({:?})",
            report.message(),
            report.sql_error_code()
        );
        Err(StepError {
            message: report.message().to_string(),
            code: sqlstate(report.sql_error_code()),
        })
    })
    .execute()
}

/// The five characters of a SQLSTATE.
fn sqlstate(code: pgrx::PgSqlErrorCode) -> String {
    let mut packed = code as i32;
    (0..5)
        .map(|_| {
            let c = char::from(b'0' + (packed & 0x3f) as u8);
            packed >>= 6;
            c
        })
        .collect()
}

/// Runs the tool calls of each run, each in a transaction of its own, then puts the task back
/// to be claimed for its next call, in the last call's transaction (one commit less a task).
/// A call whose transaction cannot commit is stored with that error; a run that is no longer
/// this worker's stops; a step that cannot even be recorded leaves the run to its lease
/// (rescued and resumed from its stored steps).
fn run_tools(st: &Statements, runs: Vec<ToolRun>) {
    'runs: for run in runs {
        let mut continued = false;
        for (i, (number, call)) in run.calls.iter().enumerate() {
            let last = i + 1 == run.calls.len();
            let ran = match attempt("running a tool", || {
                let ran = steps::run_one(st, &run, *number, call);
                if last && matches!(ran, Ran::Stored) {
                    steps::continue_task(st, &run);
                    continued = true;
                }
                ran
            }) {
                Ok(ran) => Some(ran),
                Err(failed) => {
                    continued = false;
                    step("recording a failed tool", || {
                        steps::record_failure(
                            st,
                            &run,
                            *number,
                            call,
                            &failed.message,
                            &failed.code,
                        )
                    })
                }
            };
            match ran {
                Some(Ran::Stored) => {}
                Some(Ran::Stale) | None => continue 'runs,
            }
        }
        if !continued {
            step("continuing a task", || steps::continue_task(st, &run));
        }
    }
}

/// The worker's session settings: lock_timeout from ai_agents.worker_lock_timeout, so that a
/// lock someone holds delays one step, never the whole worker; and no JIT, whose compiling
/// costs seconds where the worker's statements take milliseconds (the disabled plan types of
/// the claim's functions make their estimated costs look huge).
fn apply_session_settings() {
    let lock_timeout = WORKER_LOCK_TIMEOUT_MS.get().to_string();
    for (name, value) in [(c"lock_timeout", lock_timeout.as_str()), (c"jit", "off")] {
        let value = std::ffi::CString::new(value).unwrap_or_default();
        // SAFETY: setting a built-in setting of this session from its main thread, with valid
        // NUL-terminated strings.
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
            );
        }
    }
}

/// Per recorded call, the pass that claimed it and whether it succeeded.
type Outcomes = Vec<(Option<u64>, bool)>;

/// Records the finished calls in one transaction. When that fails, each call is recorded in a
/// transaction of its own, so that one which cannot be recorded waits alone; the calls not
/// recorded (their task row was locked, or recording failed) come back for the next turn.
fn record_finished(st: &Statements, finished: Vec<Done>) -> (Outcomes, Vec<Done>, Vec<ToolRun>) {
    if finished.is_empty() {
        return (vec![], vec![], vec![]);
    }
    if let Some(mut recorded) = step("recording results", || record::record(st, &finished)) {
        let runs = std::mem::take(&mut recorded.tool_runs);
        let (outcomes, left) = recorded.split(finished);
        return (outcomes, left, runs);
    }
    let mut outcomes = vec![];
    let mut left = vec![];
    let mut runs = vec![];
    for done in finished {
        let one = std::slice::from_ref(&done);
        match step("recording one result", || record::record(st, one)) {
            Some(mut recorded) => {
                runs.append(&mut recorded.tool_runs);
                let (o, l) = recorded.split(vec![done]);
                outcomes.extend(o);
                left.extend(l);
            }
            None => left.push(done),
        }
    }
    (outcomes, left, runs)
}

/// Whether the extension is installed in this database at this library's version. A library
/// newer than the installed schema (new files in place, ALTER EXTENSION ai_agents UPDATE not
/// run yet) waits for the update instead of running statements the old schema lacks; it says
/// so once in the log.
fn extension_ready(waiting_for_update: &mut bool) -> bool {
    let installed = step("looking for the extension", || {
        statements::value::<String>(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'ai_agents'",
        )
        .ok()
        .flatten()
    })
    .flatten();
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
    // Called when nothing more could be claimed: due tasks the claim left (held back by a
    // limit, or locked by another claimer) must not make the worker spin.
    let next_due = seconds.map_or(IDLE_WAIT, |s| Duration::from_secs_f64(s.max(0.0)));
    [fair_claim::next_look(), scope::next_settled()]
        .into_iter()
        .flatten()
        .fold(next_due, Duration::min)
        .clamp(MIN_WAIT, IDLE_WAIT)
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
