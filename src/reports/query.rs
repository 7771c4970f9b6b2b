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

/// The rows of one template query as a JSON array. The query reads as
/// ai_agents_report_reader (no superuser, no RLS bypass: only the organization the caller set
/// in ai_agents_report.organization) and is cancelled after ai_agents.report_query_timeout
/// (57014). $1, $2 and $3 are the organization and the period's start and end. Declared in
/// sql/idempotent/reports.sql; _run_report_queries calls it in a read-only subtransaction.
#[pg_extern(sql = false)]
fn run_report_query(
    sql: &str,
    organization: pgrx::Uuid,
    period_start: pgrx::datum::TimestampWithTimeZone,
    period_end: pgrx::datum::TimestampWithTimeZone,
) -> pgrx::JsonB {
    let query = sql.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
    let wrapped = format!("SELECT coalesce(jsonb_agg(to_jsonb(q)), '[]') FROM ({query}) q");
    // Checked as it will run: a text that closes the sub-select is more than one statement.
    if !is_single_select(&wrapped) {
        crate::error::Error::InvalidParameter("a report query must be exactly one SELECT".into())
            .report();
    }
    let reader = Spi::get_one::<pg_sys::Oid>("SELECT 'ai_agents_report_reader'::regrole::oid")
        .ok()
        .flatten()
        .unwrap_or_else(|| error!("the role ai_agents_report_reader is missing"));
    let limit = std::time::Duration::from_millis(
        u64::try_from(crate::settings::REPORT_QUERY_TIMEOUT_MS.get()).unwrap_or(10_000),
    );
    let rows = crate::deadline::within(limit, || {
        crate::run_as::run_as(reader, || {
            Spi::get_one_with_args::<pgrx::JsonB>(
                &wrapped,
                &[organization.into(), period_start.into(), period_end.into()],
            )
        })
    });
    rows.ok()
        .flatten()
        .unwrap_or_else(|| pgrx::JsonB(serde_json::json!([])))
}
