//! What one claim or prune is for: on one server every organization; under Citus the
//! organizations of one shard placed on this node (sql: _local_scopes), as Citus locks rows
//! within one shard only.
use pgrx::spi::{SpiHeapTupleData, SpiResult};

/// Selects the scopes: with due work (true), or all (false).
pub const SCOPES: &str = "SELECT shard, organizations::text[] FROM ai_agents._local_scopes($1)";

pub struct Scope {
    /// The shard of tasks; None on one server.
    pub shard: Option<i64>,
    /// None: every organization.
    pub organizations: Option<Vec<String>>,
}

impl Scope {
    /// A row of SCOPES.
    pub fn decode(row: &SpiHeapTupleData) -> SpiResult<Scope> {
        Ok(Scope {
            shard: row.get(1)?,
            organizations: row.get(2)?,
        })
    }
}
