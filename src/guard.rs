//! What the guard against dropping parts of the extension (sql/idempotent/guard.sql) cannot
//! see from SQL: whether an extension script is running, whose drops are the extension's own
//! (an upgrade that replaces a policy, say).
use pgrx::prelude::*;

/// Whether a CREATE EXTENSION or ALTER EXTENSION script runs in this session. Declared in
/// guard.sql rather than generated, so that install and upgrade scripts create it alike.
#[pg_extern(sql = false)]
fn in_extension_script() -> bool {
    // SAFETY: a plain read of a flag Postgres sets while it runs an extension script.
    unsafe { pg_sys::creating_extension }
}
