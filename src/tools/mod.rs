//! Tools: SQL functions an agent calls. `_run_tool_step` (sql/idempotent/tools.sql) decides
//! whether a call may run and stores it; this module holds what SQL cannot do itself: run the
//! function as ai_agents_tool_runner under a deadline, and check JSON Schemas (`schema`).
mod schema;

pub use schema::problems as schema_problems;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::Duration;

/// The most call statements kept planned: one per tool function a backend calls.
const KEPT_CALLS: usize = 256;

thread_local! {
    /// Each tool function's call statement, planned once per backend (planning it on every
    /// call cost more than the call of a trivial tool).
    static CALLS: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Runs the tool's function on `args` as ai_agents_tool_runner (no superuser, no RLS bypass,
/// and it cannot switch back), cancelled with 57014 after `timeout_ms`. The function is named
/// by its catalog entry and the arguments passed as a parameter, so nothing the model sent is
/// ever part of the statement's text; EXECUTE is checked as the runner when it runs. Declared
/// in sql/idempotent/tools.sql.
#[pg_extern(sql = false)]
fn call_tool(function: pg_sys::Oid, args: pgrx::JsonB, timeout_ms: i32) -> Option<pgrx::JsonB> {
    // SAFETY: catalog lookups through the syscache on this backend's main thread, with a
    // NUL-terminated name; a missing role gives InvalidOid (missing_ok).
    let runner = unsafe { pg_sys::get_role_oid(c"ai_agents_tool_runner".as_ptr(), true) };
    if runner == pg_sys::InvalidOid {
        error!("the role ai_agents_tool_runner is missing");
    }
    let call = format!("SELECT {}($1::jsonb)", qualified_name(function));
    let limit = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0).max(1));
    crate::deadline::within(limit, || {
        crate::run_as::run_as(runner, || {
            with_planned(&call, |statement| {
                Spi::connect(|client| {
                    client
                        .select(statement, Some(1), &[args.into()])?
                        .first()
                        .get_one::<pgrx::JsonB>()
                })
            })
        })
    })
    .unwrap_or_else(|e| error!("calling the tool's function failed: {e}"))
}

/// `schema.name` of a function, each part quoted as needed.
fn qualified_name(function: pg_sys::Oid) -> String {
    // SAFETY: syscache lookups on this backend's main thread; each returns NULL for a function
    // or schema that does not exist, and the strings are read before anything frees them.
    unsafe {
        let name = pg_sys::get_func_name(function);
        let schema = if name.is_null() {
            std::ptr::null_mut()
        } else {
            pg_sys::get_namespace_name(pg_sys::get_func_namespace(function))
        };
        if name.is_null() || schema.is_null() {
            error!("the function {function:?} of the tool no longer exists");
        }
        let quoted = |s: *mut std::ffi::c_char| {
            CStr::from_ptr(pg_sys::quote_identifier(s))
                .to_string_lossy()
                .into_owned()
        };
        format!("{}.{}", quoted(schema), quoted(name))
    }
}

/// Runs `f` with the statement `sql` planned (once per backend).
fn with_planned<R>(sql: &str, f: impl FnOnce(&OwnedPreparedStatement) -> R) -> R {
    CALLS.with(|calls| {
        if !calls.borrow().contains_key(sql) {
            let planned = Spi::connect(|client| {
                client
                    .prepare(sql, &[pg_sys::PgOid::from(pg_sys::JSONBOID)])
                    .map(|p| p.keep())
            })
            .unwrap_or_else(|e| error!("planning the tool's call failed: {e}"));
            let mut calls = calls.borrow_mut();
            if calls.len() >= KEPT_CALLS {
                calls.clear();
            }
            calls.insert(sql.to_string(), planned);
        }
        f(&calls.borrow()[sql])
    })
}
