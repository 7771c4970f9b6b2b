//! The key table in shared memory: sized from `ai_agents.rate_limit_max_keys` when the
//! library is preloaded (see crate::shmem), guarded by one LWLock. Every check holds the lock
//! for a few microseconds of plain Rust that cannot raise a Postgres error.
use super::table::{Slot, Table};
use crate::error::Error;
use crate::settings::RATE_LIMIT_MAX_KEYS;
use crate::shmem::Segment;
use pgrx::pg_sys;
use std::sync::atomic::{AtomicU64, Ordering};

#[repr(C)]
struct Header {
    /// Bumped when the override table changes, so backends reload their copy.
    overrides_generation: AtomicU64,
    /// Live keys in the table; changed only under the lock.
    live: u64,
    max_keys: u64,
    slot_count: u64,
}

/// The key table's segment: a header followed by the slots.
pub static SEGMENT: Segment = Segment::new(c"ai_agents rate limits", size, init, true);

fn max_keys() -> usize {
    usize::try_from(RATE_LIMIT_MAX_KEYS.get()).unwrap_or(1)
}

fn size() -> usize {
    size_of::<Header>() + Table::slots_for(max_keys()) * size_of::<Slot>()
}

/// SAFETY: `memory` is a fresh segment of `size()` bytes, aligned for Header and Slot.
unsafe fn init(memory: *mut u8) {
    let slot_count = Table::slots_for(max_keys());
    let header = memory.cast::<Header>();
    unsafe {
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
}

fn header() -> Result<*mut Header, Error> {
    SEGMENT
        .memory()
        .map(|m| m.cast::<Header>())
        .ok_or(Error::NotPreloaded)
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
        pg_sys::LWLockAcquire(SEGMENT.lock(), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = std::slice::from_raw_parts_mut(
            header.add(1).cast::<Slot>(),
            (*header).slot_count as usize,
        );
        let mut table = Table::new(slots, (*header).max_keys as usize, &mut (*header).live);
        let result = f(&mut table, now_us());
        pg_sys::LWLockRelease(SEGMENT.lock());
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
