//! A statement timeout where PostgreSQL's own `statement_timeout` does not reach: the SQL a
//! background worker runs through SPI (postgres.c arms the timer only for statements a client
//! sends) and one part of a statement (each query of a report template). It uses the server's
//! own STATEMENT_TIMEOUT timer, so the error is the usual 57014 "canceling statement due to
//! statement timeout", and an outer timeout that would fire sooner still does.
use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::ffi::c_int;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// `STATEMENT_TIMEOUT` of `TimeoutId` in utils/timeout.h (the same from PostgreSQL 13 to 17).
const STATEMENT_TIMEOUT: c_int = 3;

// utils/timeout.h, which pgrx's bindings leave out.
extern "C-unwind" {
    fn enable_timeout_after(id: c_int, delay_ms: c_int);
    fn enable_timeout_at(id: c_int, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: c_int, keep_indicator: bool);
    fn get_timeout_active(id: c_int) -> bool;
    fn get_timeout_finish_time(id: c_int) -> pg_sys::TimestampTz;
}

/// Runs `f`, cancelled with SQLSTATE 57014 when it runs longer than `limit` (zero: no limit
/// of its own). The timer is put back as it was afterwards, also when `f` raises an error.
pub fn within<R>(limit: Duration, f: impl FnOnce() -> R) -> R {
    let Ok(ms) = c_int::try_from(limit.as_millis()) else {
        return f();
    };
    if ms == 0 {
        return f();
    }
    // SAFETY: the timeout module's documented calls on this backend's own timers, from its
    // main thread; the outer deadline is read before ours replaces it.
    let outer = unsafe {
        get_timeout_active(STATEMENT_TIMEOUT).then(|| get_timeout_finish_time(STATEMENT_TIMEOUT))
    };
    let ours = pg_sys::TimestampTz::from(ms) * 1000;
    // SAFETY: as above.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    match outer {
        Some(finish) if finish <= now + ours => {}
        _ => unsafe { enable_timeout_after(STATEMENT_TIMEOUT, ms) },
    }
    PgTryBuilder::new(AssertUnwindSafe(f))
        .finally(|| unsafe {
            // SAFETY: as above. An outer deadline already past has fired (or is firing): it is
            // not armed again, so a caught cancel is not followed by a second one.
            match outer {
                Some(finish) if finish > pg_sys::GetCurrentTimestamp() => {
                    enable_timeout_at(STATEMENT_TIMEOUT, finish)
                }
                _ => disable_timeout(STATEMENT_TIMEOUT, false),
            }
        })
        .execute()
}
