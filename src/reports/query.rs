//! A template query must be exactly one SELECT, as PostgreSQL's own parser reads it: a text
//! that closes the sub-select it runs in and adds statements of its own is refused before
//! anything runs, where a regular expression could be fooled.
use pgrx::prelude::*;
use std::ffi::CString;

/// Whether `sql` parses as one SELECT statement (a syntax error is raised as such). Declared
/// in sql/idempotent/reports.sql, so that install and upgrade create it alike.
#[pg_extern(sql = false)]
fn is_single_select(sql: &str) -> bool {
    let Ok(sql) = CString::new(sql) else {
        return false;
    };
    // SAFETY: raw_parser reads the NUL-terminated text and returns a List of RawStmt in the
    // current memory context (NULL for an empty text); a syntax error is raised as an ERROR
    // through pgrx's guard. Only the first element of a one-element list is read.
    unsafe {
        let statements = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if statements.is_null() || (*statements).length != 1 {
            return false;
        }
        let raw = (*(*statements).elements).ptr_value as *mut pg_sys::RawStmt;
        !(*raw).stmt.is_null() && (*(*raw).stmt).type_ == pg_sys::NodeTag::T_SelectStmt
    }
}
