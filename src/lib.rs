//! ai_agents: an AI-agent task system inside PostgreSQL.
//! This file only wires the modules together; each capability lives in its own module.
use pgrx::prelude::*;

mod agents;
mod error;
mod llm;
mod ratelimit;
mod reports;
mod schedule;
mod settings;
mod shmem;
mod tasks;
mod worker;

pgrx::pg_module_magic!();

// The tables come first; every other SQL file and function builds on them.
pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

// Row-level security, grants and the checked entry points for Supabase's roles: last, so that
// it covers every table and function.
pgrx::extension_sql_file!("../sql/security.sql", name = "security", finalize);

/// The shared-memory segments, allocated when the library is preloaded.
static SEGMENTS: [&shmem::Segment; 2] = [&ratelimit::SEGMENT, &worker::SEGMENT];

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    shmem::install(&SEGMENTS);
    worker::register();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'ai_agents'"]
    }
}
