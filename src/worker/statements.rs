//! The statements the worker runs every turn, planned once and kept across transactions:
//! parsing and planning them on every call cost about a quarter of the worker's time. They
//! are run as statements that may write but do not claim a transaction id up front, so an
//! idle turn - one that finds nothing - writes no WAL.
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiResult};

pub struct Statements {
    pub scopes: OwnedPreparedStatement,
    pub claim: OwnedPreparedStatement,
    pub replies: OwnedPreparedStatement,
    pub failure: OwnedPreparedStatement,
    pub wakeup: OwnedPreparedStatement,
    pub llm_step: OwnedPreparedStatement,
    pub tool: OwnedPreparedStatement,
    pub tool_failure: OwnedPreparedStatement,
    pub continue_task: OwnedPreparedStatement,
}

impl Statements {
    /// Plans the statements; called inside the worker's first transaction with the extension.
    pub fn prepare() -> SpiResult<Statements> {
        Spi::connect(|client| {
            let text = PgOid::from(pg_sys::TEXTOID);
            let int4 = PgOid::from(pg_sys::INT4OID);
            let int8 = PgOid::from(pg_sys::INT8OID);
            let float8 = PgOid::from(pg_sys::FLOAT8OID);
            let boolean = PgOid::from(pg_sys::BOOLOID);
            let texts = PgOid::from(pg_sys::TEXTARRAYOID);
            let int8s = PgOid::from(pg_sys::INT8ARRAYOID);
            let int4s = PgOid::from(pg_sys::INT4ARRAYOID);
            let keep = |sql: &str, types: &[PgOid]| -> SpiResult<OwnedPreparedStatement> {
                Ok(client.prepare_mut(sql, types)?.keep())
            };
            Ok(Statements {
                scopes: keep(super::scope::SCOPES, &[boolean])?,
                // Decoded by these names in claim.rs.
                claim: keep(
                    "SELECT task_id::text, fencing_token, provider, model, system_prompt, temperature, \
                            max_tokens, title, description, input::text, history::text, agent_id::text, \
                            organization_id::text, base_url, tools, steps::text, output_schema \
                       FROM ai_agents._claim_llm_calls($1, $2, make_interval(secs => $3), $4, $5::uuid[])",
                    &[text, int4, float8, int4, texts],
                )?,
                replies: keep(
                    "SELECT task_id::text, status \
                       FROM ai_agents._record_llm_replies($1::uuid[], $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[texts, int8s, texts, int8s, int8s, int8s, int8s, texts, texts, int4s],
                )?,
                failure: keep(
                    "SELECT ai_agents._record_llm_failure($1::uuid, $2, $3, $4, $5, $6, $7, $8)",
                    &[text, int8, text, int4, int8, boolean, text, int4],
                )?,
                wakeup: keep(
                    "SELECT extract(epoch FROM ai_agents._next_wakeup() - clock_timestamp())::float8",
                    &[],
                )?,
                // Decoded in record.rs.
                llm_step: keep(
                    "SELECT status, step_number \
                       FROM ai_agents._record_llm_step($1::uuid, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, \
                                                       $12::jsonb, $13)",
                    &[text, int8, text, text, int8, int8, int8, int8, text, text, int4, text, text],
                )?,
                tool: keep(
                    "SELECT ai_agents._run_tool_step($1::uuid, $2, $3, $4, $5, $6)",
                    &[text, int8, int4, text, text, text],
                )?,
                tool_failure: keep(
                    "SELECT ai_agents._record_tool_failure($1::uuid, $2, $3, $4, $5, $6, $7)",
                    &[text, int8, int4, text, text, text, text],
                )?,
                continue_task: keep(
                    "SELECT ai_agents._continue_task($1::uuid, $2)",
                    &[text, int8],
                )?,
            })
        })
    }
}

/// The first column of the first row of `sql`, run in the current transaction without
/// claiming a transaction id for it (unlike `Spi::get_one`): a statement that writes nothing
/// leaves no commit record behind.
pub fn value<T: FromDatum + IntoDatum>(sql: &str) -> SpiResult<Option<T>> {
    Spi::connect(|client| client.select(sql, Some(1), &[])?.first().get_one())
}
