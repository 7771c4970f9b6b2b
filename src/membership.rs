//! The organizations of a request, from the membership hook (ai_agents.organization_hook).
//! _request_organization_ids (sql/idempotent/security.sql) asks here first.
use crate::run_as::run_as;
use crate::settings::{self, ORGANIZATION_HOOK};
use pgrx::prelude::*;
use pgrx::Uuid;

/// Citus's setting for queries of its tables inside a query on a shard (absent without Citus).
const NESTED_EXECUTION: &std::ffi::CStr = c"citus.allow_nested_distributed_execution";

/// What the membership hook answers for the role of the request (NULL without a hook). The
/// hook runs as that role, also inside the SECURITY DEFINER entry points, so a hook that
/// reads a membership table through its row-level security sees the member's rows only.
/// Being a C function, calling it loads the library first: a value a member set for a
/// superuser-only setting before the library was loaded is then discarded, never read.
#[pg_extern(sql = false)]
fn hook_organization_ids() -> Option<Vec<Option<Uuid>>> {
    let hook = settings::text(&ORGANIZATION_HOOK);
    if hook.trim().is_empty() {
        return None;
    }
    // The name is resolved (and quoted) as the function's owner; the hook then runs as the
    // request's role: what SET ROLE chose (PostgREST sets it per request), else the login.
    let call = Spi::get_one_with_args::<String>(
        "SELECT format('SELECT %s()::uuid[]', $1::regproc)",
        &[hook.as_str().into()],
    )
    .unwrap_or_else(|e| error!("ai_agents.organization_hook: {e}"))
    .unwrap_or_default();
    // SAFETY: reading this backend's role of the request.
    let requester = unsafe { pg_sys::GetOuterUserId() };
    // Under Citus the policies, and so the hook, also run inside a query on a worker's shard,
    // where Citus refuses any query of its tables unless nested execution is allowed: for the
    // hook's call only, at a setting level of its own as a function's SET clause is, undone
    // after (on an error, by the abort). Its tables are reference tables, read from the node's
    // own copy (docs/distributed.md#members).
    // SAFETY: this backend's settings, from its main thread; the name and value are C strings.
    let nest = unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        if !pg_sys::GetConfigOption(NESTED_EXECUTION.as_ptr(), true, false).is_null() {
            pg_sys::set_config_option(
                NESTED_EXECUTION.as_ptr(),
                c"on".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                PgLogLevel::ERROR as i32,
                false,
            );
        }
        nest
    };
    let ids = run_as(requester, || Spi::get_one::<Vec<Option<Uuid>>>(&call))
        .unwrap_or_else(|e| error!("ai_agents.organization_hook {hook}: {e}"));
    // SAFETY: closes the level opened above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    Some(ids.unwrap_or_default())
}
