//! Waking the worker: it publishes its latch in shared memory, and a transaction that adds or
//! reschedules tasks sets that latch when it commits - not earlier, when the worker could not
//! yet see the change.
use crate::shmem::Segment;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

#[repr(C)]
struct State {
    latch: AtomicPtr<pg_sys::Latch>,
    pid: AtomicI32,
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

/// Wakes the worker when the current transaction commits (used by a trigger on the tasks).
#[pg_extern(volatile, parallel_unsafe)]
fn wake_worker_at_commit() {
    let Some(current) = state() else { return };
    // SAFETY: reading this process's pid.
    if current.pid.load(Ordering::Acquire) == unsafe { pg_sys::MyProcPid } {
        return; // the worker's own claims and results need no wake-up
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        if let Some(state) = state() {
            let latch = state.latch.load(Ordering::Acquire);
            if !latch.is_null() {
                // SAFETY: the latch is the worker's PGPROC latch in shared memory; SetLatch is
                // safe to call on another process's latch.
                unsafe { pg_sys::SetLatch(latch) };
            }
        }
    });
}
