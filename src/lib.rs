//! ai_agents: an AI-agent task system inside PostgreSQL.
//! This file only wires the modules together; each capability lives in its own module.
use pgrx::prelude::*;

mod deadline;
mod error;
mod fair_claim;
mod guard;
mod limits;
mod llm;
mod membership;
mod ratelimit;
mod reports;
mod retry;
mod run_as;
mod schedule;
mod settings;
mod shmem;
mod tools;
mod worker;

pgrx::pg_module_magic!();

// The install script, in order (docs/releases.md). Upgrade scripts replay the same files:
// scripts/upgrade-sql reads this list.
//
// Run-once DDL (sql/incremental/), one file per change in release order, never edited once
// released: tables, indexes, seed rows.
pgrx::extension_sql_file!(
    "../sql/incremental/001-tables.sql",
    name = "incremental_001",
    bootstrap
);
pgrx::extension_sql_file!(
    "../sql/incremental/002-internal-names.sql",
    name = "incremental_002",
    requires = ["incremental_001"]
);
pgrx::extension_sql_file!(
    "../sql/incremental/003-organization-limits.sql",
    name = "incremental_003",
    requires = ["incremental_002"]
);

// Replaceable objects (sql/idempotent/): functions, views, triggers, policies and grants,
// written so that running a file again leaves the same objects. Each file after the tables
// and the Rust functions its SQL calls; security last, so that it covers every table and
// function.
pgrx::extension_sql_file!(
    "../sql/incremental/004-build-due-reports-batch.sql",
    name = "incremental_004",
    requires = ["incremental_003"]
);
pgrx::extension_sql_file!(
    "../sql/incremental/005-fair-claim.sql",
    name = "incremental_005",
    requires = ["incremental_004"]
);
pgrx::extension_sql_file!(
    "../sql/incremental/006-exact-cost.sql",
    name = "incremental_006",
    requires = ["incremental_005"]
);
pgrx::extension_sql_file!(
    "../sql/incremental/007-token-limits.sql",
    name = "incremental_007",
    requires = ["incremental_006"]
);
pgrx::extension_sql_file!(
    "../sql/incremental/008-budgets.sql",
    name = "incremental_008",
    requires = ["incremental_007"]
);
pgrx::extension_sql_file!(
    "../sql/incremental/009-tools.sql",
    name = "incremental_009",
    requires = ["incremental_008"]
);
pgrx::extension_sql_file!(
    "../sql/incremental/010-composite-keys.sql",
    name = "incremental_010",
    requires = ["incremental_009"]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/guard.sql",
    name = "guard",
    requires = ["incremental_010"]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/agents.sql",
    name = "agents",
    requires = ["guard"]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/ratelimit.sql",
    name = "ratelimit",
    requires = [
        "agents",
        ratelimit::rate_limit_keys,
        ratelimit::reload_rate_limit_overrides_at_commit,
        ratelimit::pause_rate_limit,
        ratelimit::reset_rate_limit
    ]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/limits.sql",
    name = "limits",
    requires = ["ratelimit"]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/tasks.sql",
    name = "tasks",
    requires = [
        "limits",
        schedule::next_run_time,
        schedule::validate_schedule,
        retry::failure_is_transient,
        retry::retry_delay
    ]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/worker.sql",
    name = "worker",
    requires = [
        "tasks",
        worker::wake::wake_worker_at_commit,
        worker::wake::run_scheduler_once
    ]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/budgets.sql",
    name = "budgets",
    requires = ["worker"]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/tools.sql",
    name = "tools",
    requires = ["budgets"]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/reports.sql",
    name = "reports",
    requires = [
        "tools",
        reports::render_report_markdown,
        reports::forecast_spend
    ]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/distribute.sql",
    name = "distribute",
    requires = ["reports"]
);
pgrx::extension_sql_file!(
    "../sql/idempotent/security.sql",
    name = "security",
    finalize
);

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
