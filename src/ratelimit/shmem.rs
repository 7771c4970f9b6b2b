//! The key table in shared memory: sized from `ai_agents.rate_limit_max_keys` when the
//! library is preloaded, guarded by one LWLock. Every check holds the lock for a few
//! microseconds of plain Rust that cannot raise a Postgres error.
use super::table::{Slot, Table};
use crate::error::Error;
use crate::settings::RATE_LIMIT_MAX_KEYS;
use pgrx::pg_sys;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};

const NAME: &std::ffi::CStr = c"ai_agents rate limits";

#[repr(C)]
struct Header {
    /// Bumped when the override table changes, so backends reload their copy.
    overrides_generation: AtomicU64,
    /// Live keys in the table; changed only under the lock.
    live: u64,
    max_keys: u64,
    slot_count: u64,
}

static mut HEADER: *mut Header = null_mut();
static mut LOCK: *mut pg_sys::LWLock = null_mut();
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

fn max_keys() -> usize {
    usize::try_from(RATE_LIMIT_MAX_KEYS.get()).unwrap_or(1)
}

fn size() -> usize {
    size_of::<Header>() + Table::slots_for(max_keys()) * size_of::<Slot>()
}

/// Called from `_PG_init`; does nothing unless the library is being preloaded.
pub fn init() {
    // SAFETY: _PG_init runs once per process, single-threaded, before any hook can fire.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST_HOOK {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(size());
        pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), 1);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP_HOOK {
            previous();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let header = pg_sys::ShmemInitStruct(NAME.as_ptr(), size(), &mut found).cast::<Header>();
        if !found {
            let slot_count = Table::slots_for(max_keys());
            header.write(Header {
                overrides_generation: AtomicU64::new(1),
                live: 0,
                max_keys: max_keys() as u64,
                slot_count: slot_count as u64,
            });
            let slots = header.add(1).cast::<Slot>();
            for i in 0..slot_count {
                slots.add(i).write(Slot::EMPTY);
            }
        }
        HEADER = header;
        LOCK = &raw mut (*pg_sys::GetNamedLWLockTranche(NAME.as_ptr())).lock;
        pg_sys::LWLockRelease(init_lock);
    }
}

fn header() -> Result<*mut Header, Error> {
    // SAFETY: HEADER is set once in the postmaster's startup hook and inherited by every
    // backend; it points into shared memory that lives as long as the server.
    let header = unsafe { HEADER };
    if header.is_null() {
        Err(Error::NotPreloaded)
    } else {
        Ok(header)
    }
}

/// Microseconds on the system-wide monotonic clock: the same in every process, and never
/// running back when the wall clock is adjusted.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Runs `f` on the table under the exclusive lock, with the clock read under the lock so that
/// time never runs back between two holders.
pub fn with_table<T>(f: impl FnOnce(&mut Table, u64) -> T) -> Result<T, Error> {
    let header = header()?;
    // SAFETY: the slots follow the header in the segment sized by `size()`; the LWLock gives
    // this process exclusive access until it is released, and `f` is plain Rust that does not
    // raise Postgres errors (an unexpected panic still releases LWLocks on abort).
    unsafe {
        pg_sys::LWLockAcquire(LOCK, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = std::slice::from_raw_parts_mut(
            header.add(1).cast::<Slot>(),
            (*header).slot_count as usize,
        );
        let mut table = Table::new(slots, (*header).max_keys as usize, &mut (*header).live);
        let result = f(&mut table, now_us());
        pg_sys::LWLockRelease(LOCK);
        Ok(result)
    }
}

pub fn overrides_generation() -> Result<u64, Error> {
    // SAFETY: see `header`; the counter is atomic, so no lock is needed.
    Ok(unsafe { &(*header()?).overrides_generation }.load(Ordering::Acquire))
}

pub fn bump_overrides_generation() -> Result<(), Error> {
    // SAFETY: see `header`; the counter is atomic, so no lock is needed.
    unsafe { &(*header()?).overrides_generation }.fetch_add(1, Ordering::AcqRel);
    Ok(())
}
