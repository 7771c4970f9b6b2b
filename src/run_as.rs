//! Running code as another role from inside a function, where SET ROLE is refused (in a
//! SECURITY DEFINER function) or could be undone by the code it runs: the membership hook runs
//! as the role of the request, a report template's query as ai_agents_report_reader.
use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

/// Runs `f` with `role` as the current user, as a restricted operation (the code cannot
/// change the role back, as in the index expressions of VACUUM); the previous user comes back
/// afterwards, also when `f` raises an error.
pub fn run_as<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: reading and setting this backend's current user, from its main thread.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            role,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    PgTryBuilder::new(AssertUnwindSafe(f))
        // SAFETY: as above.
        .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(user, context) })
        .execute()
}
