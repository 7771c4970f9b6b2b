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

/// The `ddl_command_start` event trigger on DROP EXTENSION (guard.sql): when the statement drops
/// this extension, hands its tables back from Citus first (`_release_from_citus`). Written in
/// Rust because only the statement's parse tree says which extensions it drops.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn before_drop_extension(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: Postgres calls an event trigger with EventTriggerData as its context, which
    // is_a checks before the cast; a DROP EXTENSION's parse tree is a DropStmt of Strings.
    let drops_this = unsafe {
        let context = (*fcinfo).context;
        if !pgrx::is_a(context, pg_sys::NodeTag::T_EventTriggerData) {
            error!("before_drop_extension is an event trigger");
        }
        let tree = (*context.cast::<pg_sys::EventTriggerData>()).parsetree;
        pgrx::is_a(tree, pg_sys::NodeTag::T_DropStmt) && {
            let stmt = tree.cast::<pg_sys::DropStmt>();
            (*stmt).removeType == pg_sys::ObjectType::OBJECT_EXTENSION
                && pgrx::PgList::<pg_sys::String>::from_pg((*stmt).objects)
                    .iter_ptr()
                    .any(|name| std::ffi::CStr::from_ptr((*name).sval) == c"ai_agents")
        }
    };
    if drops_this {
        Spi::run("SELECT ai_agents._release_from_citus()").unwrap_or_else(|e| error!("{e}"));
    }
    pg_sys::Datum::from(0)
}

static FUNCTION_INFO_V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

#[no_mangle]
pub extern "C" fn pg_finfo_before_drop_extension() -> &'static pg_sys::Pg_finfo_record {
    &FUNCTION_INFO_V1
}
