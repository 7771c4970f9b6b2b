//! The extension's settings (`ai_agents.*`). Registered in `_PG_init`, so they exist in every
//! backend that loaded the library, and in postgresql.conf when it is preloaded.
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// First retry delay of a transient failure; each further attempt doubles it.
pub static RETRY_BASE_DELAY_S: GucSetting<i32> = GucSetting::<i32>::new(10);
/// Upper bound of a retry delay (before a provider's Retry-After, which always wins).
pub static RETRY_MAX_DELAY_S: GucSetting<i32> = GucSetting::<i32>::new(3600);

pub fn register() {
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
