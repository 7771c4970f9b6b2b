//! The extension's settings (`ai_agents.*`). Registered in `_PG_init`, so they exist in every
//! backend that loaded the library, and in postgresql.conf when it is preloaded.
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// First retry delay of a transient failure; each further attempt doubles it.
pub static RETRY_BASE_DELAY_S: GucSetting<i32> = GucSetting::<i32>::new(10);
/// Upper bound of a retry delay (before a provider's Retry-After, which always wins).
pub static RETRY_MAX_DELAY_S: GucSetting<i32> = GucSetting::<i32>::new(3600);

/// Keys the shared-memory rate limiter can hold (fixed at server start).
pub static RATE_LIMIT_MAX_KEYS: GucSetting<i32> = GucSetting::<i32>::new(4096);
/// Calls per minute across the whole server, for every organization and agent together.
pub static RATE_LIMIT_GLOBAL_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(400);
/// Calls per minute per organization, unless ai_agent_rate_limits says otherwise.
pub static RATE_LIMIT_ORGANIZATION_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Calls per minute per agent, unless ai_agent_rate_limits says otherwise.
pub static RATE_LIMIT_AGENT_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(50);

pub fn register() {
    // A server-start setting can only be defined while the server starts, that is when the
    // library is preloaded; loaded later, the limiter is off anyway.
    // SAFETY: reading a flag Postgres sets before it loads preloaded libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        register_preload_settings();
    }
    GucRegistry::define_int_guc(
        c"ai_agents.rate_limit_global_per_minute",
        c"LLM calls per minute for the whole server.",
        c"The global tier of check_rate_limit and of claim_due_tasks.",
        &RATE_LIMIT_GLOBAL_PER_MINUTE,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.rate_limit_organization_per_minute",
        c"LLM calls per minute per organization.",
        c"Overridden per organization by a row of ai_agents.ai_agent_rate_limits with agent_id NULL.",
        &RATE_LIMIT_ORGANIZATION_PER_MINUTE,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.rate_limit_agent_per_minute",
        c"LLM calls per minute per agent.",
        c"Overridden per agent by a row of ai_agents.ai_agent_rate_limits.",
        &RATE_LIMIT_AGENT_PER_MINUTE,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.retry_base_delay",
        c"Delay before the first retry of a transiently failed task.",
        c"Each further attempt doubles it, with jitter, up to ai_agents.retry_max_delay.",
        &RETRY_BASE_DELAY_S,
        1,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.retry_max_delay",
        c"Longest delay between two attempts of a task.",
        c"A provider's Retry-After longer than this is still honoured.",
        &RETRY_MAX_DELAY_S,
        1,
        7 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
}

fn register_preload_settings() {
    GucRegistry::define_int_guc(
        c"ai_agents.rate_limit_max_keys",
        c"How many rate-limit keys shared memory holds.",
        c"About 1.2 kB of shared memory each. When full, the longest-idle key with nothing left in its window is forgotten; a call that would need more room is refused, never admitted.",
        &RATE_LIMIT_MAX_KEYS,
        16,
        1_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}
