//! Tools: SQL functions an agent calls. `_run_tool_step` (sql/idempotent/tools.sql) decides
//! whether a call may run and stores it; this module holds what SQL cannot do itself: run the
//! function as ai_agents_tool_runner under a deadline, and check JSON Schemas (`schema`).
mod schema;

pub use schema::problems as schema_problems;

use pgrx::prelude::*;
use std::time::Duration;

/// Runs the tool's function on `args` as ai_agents_tool_runner (no superuser, no RLS bypass,
/// and it cannot switch back), cancelled with 57014 after `timeout_ms`. The function is named
/// by its catalog entry and the arguments passed as a parameter, so nothing the model sent is
/// ever part of the statement's text. Declared in sql/idempotent/tools.sql.
#[pg_extern(sql = false)]
fn call_tool(function: pg_sys::Oid, args: pgrx::JsonB, timeout_ms: i32) -> Option<pgrx::JsonB> {
    let runner = Spi::get_one::<pg_sys::Oid>("SELECT 'ai_agents_tool_runner'::regrole::oid")
        .ok()
        .flatten()
        .unwrap_or_else(|| error!("the role ai_agents_tool_runner is missing"));
    let name = Spi::get_one_with_args::<String>(
        "SELECT format('%I.%I', n.nspname, p.proname) FROM pg_catalog.pg_proc p \
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1",
        &[function.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| error!("the function {function:?} of the tool no longer exists"));
    let call = format!("SELECT {name}($1::jsonb)");
    let limit = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0).max(1));
    crate::deadline::within(limit, || {
        crate::run_as::run_as(runner, || {
            Spi::get_one_with_args::<pgrx::JsonB>(&call, &[args.into()])
        })
    })
    .unwrap_or_else(|e| error!("calling {name} failed: {e}"))
}
