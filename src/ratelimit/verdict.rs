//! The row `check_rate_limit` and `peek_rate_limit` return, built with a tuple descriptor made
//! once per backend. Every LLM call goes through this check; declared through pgrx's
//! TableIterator, each call rebuilt the descriptor from the catalog, about a sixth of the cost
//! of a check (measured with the rate-limit scenario of bench/run). The SQL declarations are in
//! sql/ratelimit.sql. 0.1.0's declarations (three arguments, the six call-tier columns) still
//! call these symbols until `ALTER EXTENSION ... UPDATE`, and get their own row.
use super::{check_tiers, TierRow};
use crate::error::OrReport;
use pgrx::datum::Uuid;
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use pgrx::IntoDatum;
use std::ptr::null_mut;

const COLUMNS: [(&std::ffi::CStr, pg_sys::Oid); 9] = [
    (c"allowed", pg_sys::BOOLOID),
    (c"refused_tier", pg_sys::TEXTOID),
    (c"retry_after", pg_sys::INTERVALOID),
    (c"remaining_global", pg_sys::INT8OID),
    (c"remaining_organization", pg_sys::INT8OID),
    (c"remaining_agent", pg_sys::INT8OID),
    (c"remaining_global_tokens", pg_sys::INT8OID),
    (c"remaining_organization_tokens", pg_sys::INT8OID),
    (c"remaining_agent_tokens", pg_sys::INT8OID),
];

/// The columns of 0.1.0's declarations: the call tiers only.
const CALL_COLUMNS: usize = 6;

static mut DESCRIPTORS: [pg_sys::TupleDesc; 2] = [null_mut(); 2];

/// The row type of `columns` columns, created in this backend's top memory context on first
/// use.
unsafe fn descriptor(columns: usize) -> pg_sys::TupleDesc {
    let slot = usize::from(columns == COLUMNS.len());
    unsafe {
        if DESCRIPTORS[slot].is_null() {
            let previous = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let descriptor = pg_sys::CreateTemplateTupleDesc(columns as i32);
            for (i, (name, oid)) in COLUMNS.iter().take(columns).enumerate() {
                pg_sys::TupleDescInitEntry(descriptor, (i + 1) as i16, name.as_ptr(), *oid, -1, 0);
            }
            DESCRIPTORS[slot] = pg_sys::BlessTupleDesc(descriptor);
            pg_sys::MemoryContextSwitchTo(previous);
        }
        DESCRIPTORS[slot]
    }
}

fn to_datum(row: TierRow, columns: usize) -> pg_sys::Datum {
    let (
        allowed,
        tier,
        retry_after,
        global,
        organization,
        agent,
        global_t,
        organization_t,
        agent_t,
    ) = row;
    let datums = [
        allowed.into_datum(),
        tier.into_datum(),
        retry_after.into_datum(),
        global.into_datum(),
        organization.into_datum(),
        agent.into_datum(),
        global_t.into_datum(),
        organization_t.into_datum(),
        agent_t.into_datum(),
    ];
    let mut values = [pg_sys::Datum::from(0); COLUMNS.len()];
    let mut nulls = [false; COLUMNS.len()];
    for (i, datum) in datums.into_iter().enumerate() {
        match datum {
            Some(datum) => values[i] = datum,
            None => nulls[i] = true,
        }
    }
    // SAFETY: the values match the descriptor's column types one by one.
    unsafe {
        let tuple =
            pg_sys::heap_form_tuple(descriptor(columns), values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}

/// SAFETY: called by Postgres with the arguments of the SQL declaration (uuid, uuid, integer,
/// bigint), or of 0.1.0's (without the bigint).
unsafe fn verdict(fcinfo: pg_sys::FunctionCallInfo, take: bool) -> pg_sys::Datum {
    let with_tokens = unsafe { (*fcinfo).nargs } > 3;
    let (organization, agent, cost, tokens) = unsafe {
        (
            pg_getarg::<Uuid>(fcinfo, 0),
            pg_getarg::<Uuid>(fcinfo, 1),
            pg_getarg::<i32>(fcinfo, 2),
            if with_tokens {
                pg_getarg::<i64>(fcinfo, 3)
            } else {
                Some(0)
            },
        )
    };
    let columns = if with_tokens {
        COLUMNS.len()
    } else {
        CALL_COLUMNS
    };
    to_datum(
        check_tiers(organization, agent, cost, tokens, take).or_report(),
        columns,
    )
}

static FUNCTION_INFO_V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

#[no_mangle]
pub extern "C" fn pg_finfo_check_rate_limit_fast() -> &'static pg_sys::Pg_finfo_record {
    &FUNCTION_INFO_V1
}

#[no_mangle]
pub extern "C" fn pg_finfo_peek_rate_limit_fast() -> &'static pg_sys::Pg_finfo_record {
    &FUNCTION_INFO_V1
}

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn check_rate_limit_fast(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe { verdict(fcinfo, true) }
}

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn peek_rate_limit_fast(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe { verdict(fcinfo, false) }
}
