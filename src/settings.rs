//! The extension's settings (`ai_agents.*`). Registered in `_PG_init`, so they exist in every
//! backend that loaded the library, and in postgresql.conf when it is preloaded.
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

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
/// LLM tokens (input and output) per minute for the whole server; 0: no limit.
pub static RATE_LIMIT_GLOBAL_TOKENS_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Tokens per minute per organization, unless ai_agent_rate_limits says otherwise; 0: none.
pub static RATE_LIMIT_ORGANIZATION_TOKENS_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Tokens per minute per agent, unless ai_agent_rate_limits says otherwise; 0: no limit.
pub static RATE_LIMIT_AGENT_TOKENS_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(0);

/// The database the background worker serves.
pub static WORKER_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// Whether the background worker claims and runs tasks.
pub static WORKER_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// LLM calls in flight at once (threads of the worker's pool).
pub static MAX_CONCURRENT_CALLS: GucSetting<i32> = GucSetting::<i32>::new(8);
/// Longest an LLM call may take, connection included.
pub static HTTP_TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(60);
/// How long a claimed task is the worker's; must exceed the HTTP timeout.
pub static LEASE_S: GucSetting<i32> = GucSetting::<i32>::new(300);
/// Messages of a conversation sent with a conversation task, and their bytes at most (read by
/// _claim_llm_calls).
pub static HISTORY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static HISTORY_MAX_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
pub static OPENAI_BASE_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://api.openai.com/v1"));
pub static ANTHROPIC_BASE_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://api.anthropic.com/v1"));
/// API keys: readable by superusers only, never logged.
pub static OPENAI_API_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ANTHROPIC_API_KEY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Names of Supabase Vault secrets holding the API keys; when set, they win over the keys above.
pub static OPENAI_API_KEY_SECRET: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static ANTHROPIC_API_KEY_SECRET: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
/// URL prefixes the worker may call; an agent's config.base_url or a base URL setting outside
/// them is refused before any request leaves.
pub static ALLOWED_BASE_URLS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://api.openai.com/,https://api.anthropic.com/"));
/// Where a request's organization is read in the JWT claims PostgREST sets.
pub static JWT_ORGANIZATION_CLAIM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"organization_id"));
/// A function mapping the requesting user to organizations, instead of the JWT claim.
pub static ORGANIZATION_HOOK: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
/// What a task's input and a member's message may hold (src/limits.rs).
pub static MAX_INPUT_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
pub static MAX_INPUT_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(32);
pub static MAX_MESSAGE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
/// Tasks an organization's members may have waiting at once (read by enqueue_task).
pub static MAX_WAITING_TASKS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Longest one step of the worker's turn may run, and its lock waits (src/worker/mod.rs).
pub static WORKER_STATEMENT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
pub static WORKER_LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2_000);
/// Longest one query of a report template may run (src/reports/query.rs).
pub static REPORT_QUERY_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Days finished tasks and activity are kept; 0 keeps them forever.
pub static HISTORY_RETENTION_DAYS: GucSetting<i32> = GucSetting::<i32>::new(30);

/// A string setting's value ("" when unset or not UTF-8).
pub fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .and_then(|value| value.into_string().ok())
        .unwrap_or_default()
}

pub fn register() {
    // A server-start setting can only be defined while the server starts, that is when the
    // library is preloaded; loaded later, the limiter is off anyway.
    // SAFETY: reading a flag Postgres sets before it loads preloaded libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        register_preload_settings();
    }
    GucRegistry::define_bool_guc(
        c"ai_agents.worker_enabled",
        c"Whether the background worker claims and runs tasks.",
        c"Off: the worker stays connected but claims nothing.",
        &WORKER_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.http_timeout",
        c"Longest an LLM call may take, connecting included.",
        c"A call that takes longer fails as transient and is retried.",
        &HTTP_TIMEOUT_S,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.lease",
        c"How long a claimed task belongs to the worker before it may be rescued.",
        c"Must exceed ai_agents.http_timeout; the worker uses at least the timeout plus 30 s.",
        &LEASE_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.history_limit",
        c"Newest messages of a conversation sent with a conversation task.",
        c"Oldest first, after the system prompt.",
        &HISTORY_LIMIT,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.history_max_bytes",
        c"Most bytes of conversation history sent with a conversation task.",
        c"The newest messages that fit; the newest one is always sent.",
        &HISTORY_MAX_BYTES,
        1,
        256 * 1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.max_input_bytes",
        c"Largest task input accepted, in bytes of its JSON text.",
        c"A larger input is refused with SQLSTATE 54000 when the task is written.",
        &MAX_INPUT_BYTES,
        2,
        256 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.max_input_depth",
        c"Deepest nesting of arrays and objects accepted in a task input.",
        c"A deeper input is refused with SQLSTATE 54000; the worker's JSON reader stops at 128.",
        &MAX_INPUT_DEPTH,
        1,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.max_message_bytes",
        c"Largest conversation message a member may store, in bytes.",
        c"A larger one is refused with SQLSTATE 54000; the assistant's replies are not limited.",
        &MAX_MESSAGE_BYTES,
        1,
        256 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.max_waiting_tasks",
        c"Tasks an organization's members may have waiting (pending or queued) at once.",
        c"More are refused with SQLSTATE 54000; ai_agent_organization_limits overrides it.",
        &MAX_WAITING_TASKS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ai_agents.openai_base_url",
        c"Base URL of the OpenAI-compatible API (OpenAI, Ollama, vLLM, LiteLLM...).",
        c"The worker posts to <base>/chat/completions.",
        &OPENAI_BASE_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ai_agents.anthropic_base_url",
        c"Base URL of the Anthropic API.",
        c"The worker posts to <base>/messages.",
        &ANTHROPIC_BASE_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ai_agents.openai_api_key",
        c"API key for the OpenAI-compatible provider.",
        c"Readable by superusers only; never logged.",
        &OPENAI_API_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"ai_agents.anthropic_api_key",
        c"API key for Anthropic.",
        c"Readable by superusers only; never logged.",
        &ANTHROPIC_API_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"ai_agents.allowed_base_urls",
        c"Comma-separated URL prefixes the worker may send LLM requests to.",
        c"Other base URLs, from settings or an agent's config.base_url, are refused before any request leaves.",
        &ALLOWED_BASE_URLS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // Superuser-only: whoever sets these decides which organization a request belongs to.
    GucRegistry::define_string_guc(
        c"ai_agents.jwt_organization_claim",
        c"Path (dots for nesting) of the organization id in request.jwt.claims.",
        c"Row-level security shows a request the rows of this organization (or these organizations).",
        &JWT_ORGANIZATION_CLAIM,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ai_agents.organization_hook",
        c"A function without arguments returning uuid[]: the organizations of the requesting user.",
        c"When set, it replaces the JWT claim; it runs as the requesting role.",
        &ORGANIZATION_HOOK,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ai_agents.openai_api_key_secret",
        c"Name of the Supabase Vault secret that holds the OpenAI API key.",
        c"Read from vault.decrypted_secrets when set; wins over ai_agents.openai_api_key.",
        &OPENAI_API_KEY_SECRET,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"ai_agents.anthropic_api_key_secret",
        c"Name of the Supabase Vault secret that holds the Anthropic API key.",
        c"Read from vault.decrypted_secrets when set; wins over ai_agents.anthropic_api_key.",
        &ANTHROPIC_API_KEY_SECRET,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.worker_statement_timeout",
        c"Longest one step of the worker's turn (recording, claiming, building reports, pruning) may run.",
        c"A step that runs longer is cancelled and logged; the worker goes on with its next turn.",
        &WORKER_STATEMENT_TIMEOUT_MS,
        100,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.worker_lock_timeout",
        c"Longest the worker waits for a lock another session holds.",
        c"The worker's lock_timeout; a step that waits longer is cancelled and tried again next turn.",
        &WORKER_LOCK_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.report_query_timeout",
        c"Longest one query of a report template may run.",
        c"A query that runs longer is cancelled (SQLSTATE 57014) and its report fails.",
        &REPORT_QUERY_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"ai_agents.history_retention",
        c"Days finished one-shot tasks and activity rows are kept.",
        c"The worker prunes older ones in small batches; 0 keeps everything.",
        &HISTORY_RETENTION_DAYS,
        0,
        36_500,
        GucContext::Sighup,
        GucFlags::default(),
    );
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
        c"ai_agents.rate_limit_global_tokens_per_minute",
        c"LLM tokens (input and output) per minute for the whole server.",
        c"The global token tier of check_rate_limit and of claim_due_tasks; 0: no limit.",
        &RATE_LIMIT_GLOBAL_TOKENS_PER_MINUTE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.rate_limit_organization_tokens_per_minute",
        c"LLM tokens (input and output) per minute per organization.",
        c"Overridden per organization by ai_agents.ai_agent_rate_limits.max_tokens_per_minute (agent_id NULL); 0: no limit.",
        &RATE_LIMIT_ORGANIZATION_TOKENS_PER_MINUTE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.rate_limit_agent_tokens_per_minute",
        c"LLM tokens (input and output) per minute per agent.",
        c"Overridden per agent by ai_agents.ai_agent_rate_limits.max_tokens_per_minute; 0: no limit.",
        &RATE_LIMIT_AGENT_TOKENS_PER_MINUTE,
        0,
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
    GucRegistry::define_string_guc(
        c"ai_agents.database",
        c"The database whose tasks the ai_agents background worker runs.",
        c"The worker idles until CREATE EXTENSION ai_agents has run there.",
        &WORKER_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ai_agents.max_concurrent_calls",
        c"LLM calls the background worker makes at once.",
        c"The size of the worker's pool of HTTP threads.",
        &MAX_CONCURRENT_CALLS,
        1,
        1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
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
