//! Waking the worker: it publishes its latch in shared memory, and a transaction that adds or
//! reschedules tasks sets that latch when it commits - not earlier, when the worker could not
//! yet see the change. `run_scheduler_once` asks it for a pass through the same segment.
use crate::shmem::Segment;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[repr(C)]
struct State {
    latch: AtomicPtr<pg_sys::Latch>,
    pid: AtomicI32,
    /// Scheduler passes asked for (run_scheduler_once) and the last one finished.
    passes_requested: AtomicU64,
    passes_done: AtomicU64,
    /// Figures of the last finished pass.
    executed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    elapsed_ms: AtomicU64,
}

pub static SEGMENT: Segment = Segment::new(c"ai_agents worker", size, init, false);

fn size() -> usize {
    size_of::<State>()
}

/// SAFETY: `memory` is a fresh segment of `size()` bytes.
unsafe fn init(memory: *mut u8) {
    unsafe {
        memory.cast::<State>().write(State {
            latch: AtomicPtr::new(std::ptr::null_mut()),
            pid: AtomicI32::new(0),
            passes_requested: AtomicU64::new(0),
            passes_done: AtomicU64::new(0),
            executed: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            elapsed_ms: AtomicU64::new(0),
        })
    };
}

fn state() -> Option<&'static State> {
    // SAFETY: the segment holds a State from the postmaster's start on.
    SEGMENT
        .memory()
        .map(|memory| unsafe { &*memory.cast::<State>() })
}

/// Called by the worker once it runs: from now on commits that change tasks wake it.
pub fn publish_my_latch() {
    if let Some(state) = state() {
        // SAFETY: MyProc is this process's PGPROC in shared memory, valid until it exits.
        let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch };
        state.latch.store(latch, Ordering::Release);
        // SAFETY: reading this process's pid.
        state
            .pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
    }
}

/// Called by the worker on its way out, so nobody sets a latch that is about to be reused.
pub fn withdraw_my_latch() {
    if let Some(state) = state() {
        state.latch.store(std::ptr::null_mut(), Ordering::Release);
        state.pid.store(0, Ordering::Release);
    }
}

/// The newest scheduler pass asked for, if the worker has not taken it up yet.
pub fn pass_requested(after: u64) -> Option<u64> {
    let requested = state()?.passes_requested.load(Ordering::Acquire);
    (requested > after).then_some(requested)
}

/// What a finished scheduler pass did, for `run_scheduler_once`.
pub struct PassFigures {
    pub executed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

pub fn publish_pass(pass: u64, figures: &PassFigures) {
    if let Some(state) = state() {
        state.executed.store(figures.executed, Ordering::Relaxed);
        state.succeeded.store(figures.succeeded, Ordering::Relaxed);
        state.failed.store(figures.failed, Ordering::Relaxed);
        let ms = u64::try_from(figures.elapsed.as_millis()).unwrap_or(u64::MAX);
        state.elapsed_ms.store(ms, Ordering::Relaxed);
        state.passes_done.fetch_max(pass, Ordering::Release);
    }
}

fn set_worker_latch(state: &State) {
    let latch = state.latch.load(Ordering::Acquire);
    if !latch.is_null() {
        // SAFETY: the latch is the worker's PGPROC latch in shared memory; SetLatch is safe to
        // call on another process's latch.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// The in-database twin of the deployment guide's manual `curl` of its cron endpoint: asks the
/// worker for one scheduler pass now (claim what is due, call the LLM, record), waits for it,
/// and answers in the endpoint's JSON shape. The calling session makes no HTTP call.
#[pg_extern(volatile, parallel_unsafe)]
fn run_scheduler_once(timeout: default!(pgrx::datum::Interval, "'30 seconds'")) -> pgrx::JsonB {
    let started = Instant::now();
    let limit = Duration::try_from(timeout).unwrap_or(Duration::from_secs(30));
    let Some(state) = state().filter(|s| s.pid.load(Ordering::Acquire) != 0) else {
        error!(
            "the ai_agents worker is not running: it needs ai_agents in shared_preload_libraries \
             and ai_agents.database naming the database it serves"
        );
    };
    let pass = state.passes_requested.fetch_add(1, Ordering::AcqRel) + 1;
    set_worker_latch(state);
    while state.passes_done.load(Ordering::Acquire) < pass {
        if started.elapsed() >= limit {
            return pgrx::JsonB(serde_json::json!({
                "success": false,
                "error": format!("the worker did not finish the pass within {limit:?}"),
                "executionTimeMs": started.elapsed().as_millis() as u64,
            }));
        }
        // SAFETY: a short sleep on this backend's own latch that also serves interrupts.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                5,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
    pgrx::JsonB(serde_json::json!({
        "success": true,
        "executedCount": state.executed.load(Ordering::Relaxed),
        "successCount": state.succeeded.load(Ordering::Relaxed),
        "failureCount": state.failed.load(Ordering::Relaxed),
        "executionTimeMs": state.elapsed_ms.load(Ordering::Relaxed),
    }))
}

/// Wakes the worker when the current transaction commits (used by a trigger on the tasks).
#[pg_extern(volatile, parallel_unsafe, name = "_wake_worker_at_commit")]
fn wake_worker_at_commit() {
    let Some(current) = state() else { return };
    // SAFETY: reading this process's pid.
    if current.pid.load(Ordering::Acquire) == unsafe { pg_sys::MyProcPid } {
        return; // the worker's own claims and results need no wake-up
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        if let Some(state) = state() {
            set_worker_latch(state);
        }
    });
}
