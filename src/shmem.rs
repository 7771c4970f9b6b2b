//! The extension's shared-memory segments: each capability that needs one declares a
//! `Segment`; `_PG_init` installs them while the library is preloaded, and the postmaster
//! allocates and initializes them once for all processes.
use pgrx::pg_sys;
use std::ffi::CStr;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};

pub struct Segment {
    name: &'static CStr,
    size: fn() -> usize,
    /// Writes the initial content into a fresh segment of `size()` bytes.
    init: unsafe fn(*mut u8),
    /// Whether the segment comes with its own LWLock.
    with_lock: bool,
    memory: AtomicPtr<u8>,
    lock: AtomicPtr<pg_sys::LWLock>,
}

impl Segment {
    pub const fn new(
        name: &'static CStr,
        size: fn() -> usize,
        init: unsafe fn(*mut u8),
        with_lock: bool,
    ) -> Segment {
        Segment {
            name,
            size,
            init,
            with_lock,
            memory: AtomicPtr::new(null_mut()),
            lock: AtomicPtr::new(null_mut()),
        }
    }

    /// The segment's memory, or None when the library was not preloaded.
    pub fn memory(&self) -> Option<*mut u8> {
        let memory = self.memory.load(Ordering::Acquire);
        (!memory.is_null()).then_some(memory)
    }

    /// The segment's LWLock (null unless it asked for one and was allocated).
    pub fn lock(&self) -> *mut pg_sys::LWLock {
        self.lock.load(Ordering::Acquire)
    }
}

static mut SEGMENTS: &[&Segment] = &[];
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// Called from `_PG_init`; does nothing unless the library is being preloaded.
pub fn install(segments: &'static [&'static Segment]) {
    // SAFETY: _PG_init runs once per process, single-threaded, before any hook can fire.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        SEGMENTS = segments;
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
        for segment in SEGMENTS {
            pg_sys::RequestAddinShmemSpace((segment.size)());
            if segment.with_lock {
                pg_sys::RequestNamedLWLockTranche(segment.name.as_ptr(), 1);
            }
        }
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
        for segment in SEGMENTS {
            let mut found = false;
            let memory =
                pg_sys::ShmemInitStruct(segment.name.as_ptr(), (segment.size)(), &mut found)
                    .cast::<u8>();
            if !found {
                (segment.init)(memory);
            }
            segment.memory.store(memory, Ordering::Release);
            if segment.with_lock {
                let tranche = pg_sys::GetNamedLWLockTranche(segment.name.as_ptr());
                segment
                    .lock
                    .store(&raw mut (*tranche).lock, Ordering::Release);
            }
        }
        pg_sys::LWLockRelease(init_lock);
    }
}
