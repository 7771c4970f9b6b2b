//! Claiming: due tasks (rate limits applied, by claim_llm_calls) turned into jobs for the HTTP
//! threads. A claimed row is decoded by the names of its columns, which are listed once,
//! in `Statements::claim` (statements.rs).
use super::pool::Job;
use super::secrets::Keys;
use super::statements::Statements;
use crate::llm;
use crate::settings::{self, HISTORY_LIMIT, HTTP_TIMEOUT_S, LEASE_S};
use pgrx::prelude::*;
use pgrx::spi::{SpiHeapTupleData, SpiResult};
use std::time::Duration;

/// The timeouts of one call, from ai_agents.http_timeout.
fn timeouts() -> llm::Timeouts {
    let total = Duration::from_secs(u64::try_from(HTTP_TIMEOUT_S.get()).unwrap_or(60));
    llm::Timeouts {
        connect: total.min(Duration::from_secs(10)),
        total,
    }
}

/// The lease outlives any call: at least the HTTP timeout plus 30 s.
fn lease() -> Duration {
    let asked = Duration::from_secs(u64::try_from(LEASE_S.get()).unwrap_or(300));
    asked.max(timeouts().total + Duration::from_secs(30))
}

/// Claims up to `free` tasks and turns them into jobs.
pub fn claim(st: &Statements, worker: &str, free: usize) -> Vec<Job> {
    let free = i32::try_from(free).unwrap_or(i32::MAX);
    let lease = lease().as_secs_f64();
    let history = HISTORY_LIMIT.get();
    let allowlist = settings::text(&settings::ALLOWED_BASE_URLS);
    Spi::connect(|client| {
        let mut jobs = vec![];
        let mut keys = Keys::default();
        for row in client.select(
            &st.claim,
            None,
            &[worker.into(), free.into(), lease.into(), history.into()],
        )? {
            let call = Claimed::decode(&row)?;
            let Some(provider) = llm::Provider::parse(&call.provider) else {
                continue; // the schema's CHECK allows only known providers
            };
            let setting = match provider {
                llm::Provider::OpenAi => &settings::OPENAI_BASE_URL,
                llm::Provider::Anthropic => &settings::ANTHROPIC_BASE_URL,
            };
            // An agent may name its own endpoint (config.base_url), within the allowlist.
            let base_url = call
                .base_url
                .filter(|url| !url.trim().is_empty())
                .unwrap_or_else(|| settings::text(setting));
            let refused = llm::check_base_url(&base_url, &allowlist).err();
            let api_key = if refused.is_some() {
                None
            } else {
                keys.get(client, provider, &call.agent_id, &call.organization_id)?
            };
            jobs.push(Job {
                pass: None,
                task_id: call.task_id,
                fencing_token: call.fencing_token,
                request: llm::Request {
                    provider,
                    base_url,
                    api_key,
                    model: call.model,
                    system: call.system_prompt,
                    messages: llm::messages(
                        &call.title,
                        call.description.as_deref(),
                        &call.input,
                        call.history,
                    ),
                    temperature: call.temperature,
                    max_tokens: call.max_tokens,
                },
                timeouts: timeouts(),
                refused,
            });
        }
        Ok::<_, pgrx::spi::Error>(jobs)
    })
    .unwrap_or_else(|e| error!("ai_agents worker: claiming failed: {e}"))
}

/// One row of claim_llm_calls, read by column name.
struct Claimed {
    task_id: String,
    fencing_token: i64,
    provider: String,
    model: String,
    system_prompt: String,
    temperature: f64,
    max_tokens: u32,
    title: String,
    description: Option<String>,
    input: serde_json::Value,
    /// A conversation's newest messages, oldest first; NULL for other tasks.
    history: Option<serde_json::Value>,
    agent_id: String,
    organization_id: String,
    base_url: Option<String>,
}

impl Claimed {
    fn decode(row: &SpiHeapTupleData) -> SpiResult<Claimed> {
        Ok(Claimed {
            task_id: row.get_by_name("task_id")?.unwrap_or_default(),
            fencing_token: row.get_by_name("fencing_token")?.unwrap_or_default(),
            provider: row.get_by_name("provider")?.unwrap_or_default(),
            model: row.get_by_name("model")?.unwrap_or_default(),
            system_prompt: row.get_by_name("system_prompt")?.unwrap_or_default(),
            temperature: row.get_by_name("temperature")?.unwrap_or(0.7),
            max_tokens: row
                .get_by_name::<i32, _>("max_tokens")?
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(1024),
            title: row.get_by_name("title")?.unwrap_or_default(),
            description: row.get_by_name("description")?,
            input: row
                .get_by_name::<pgrx::JsonB, _>("input")?
                .map_or(serde_json::Value::Null, |j| j.0),
            history: row.get_by_name::<pgrx::JsonB, _>("history")?.map(|j| j.0),
            agent_id: row.get_by_name("agent_id")?.unwrap_or_default(),
            organization_id: row.get_by_name("organization_id")?.unwrap_or_default(),
            base_url: row.get_by_name("base_url")?,
        })
    }
}
