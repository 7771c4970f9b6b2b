//! Claiming: due tasks (rate limits applied, by claim_llm_calls) turned into jobs for the HTTP
//! threads. A claimed row is decoded by the names of its columns, which are listed once,
//! in `Statements::claim` (statements.rs).
use super::credential;
use super::pool::Job;
use super::scope::{self, Scope};
use super::secrets::Keys;
use super::statements::Statements;
use super::steps::{self, NumberedCalls, ToolRun};
use crate::fair_claim;
use crate::llm;
use crate::settings::{self, HISTORY_LIMIT, HTTP_TIMEOUT_S, LEASE_S};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData, SpiResult};
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

/// Claims up to `free` tasks and turns them into jobs; a task whose run stopped between a
/// reply and its tool calls gets those calls to run instead of a call. On one server that is
/// one claim; under Citus one per shard of this node with work (_local_scopes), each asking
/// for an equal share of `free` first, then those that filled their share for what is left.
pub fn claim(st: &Statements, worker: &str, free: usize) -> (Vec<Job>, Vec<ToolRun>) {
    Spi::connect(|client| {
        let mut claimed = Claims::default();
        let scopes = client
            .select(&st.scopes, None, &[true.into()])?
            .map(|row| Scope::decode(&row))
            .collect::<SpiResult<Vec<Scope>>>()?;
        let scopes: Vec<Scope> = scope::settled(client, scopes)?
            .into_iter()
            .filter(Scope::has_work)
            .collect();
        let share = free.div_ceil(scopes.len().max(1));
        let mut filled = vec![];
        for scope in scopes {
            let asked = share.min(free - claimed.count());
            if asked > 0 && claimed.claim(client, st, worker, asked, &scope)? == asked {
                filled.push(scope);
            }
        }
        for scope in filled {
            let asked = free - claimed.count();
            if asked > 0 {
                claimed.claim(client, st, worker, asked, &scope)?;
            }
        }
        Ok::<_, pgrx::spi::Error>((claimed.jobs, claimed.runs))
    })
    .unwrap_or_else(|e| error!("{e}"))
}

#[derive(Default)]
struct Claims {
    jobs: Vec<Job>,
    runs: Vec<ToolRun>,
    keys: Keys,
}

impl Claims {
    fn count(&self) -> usize {
        self.jobs.len() + self.runs.len()
    }

    /// Claims up to `asked` tasks of `scope`; returns how many it took.
    fn claim(
        &mut self,
        client: &SpiClient,
        st: &Statements,
        worker: &str,
        asked: usize,
        scope: &Scope,
    ) -> SpiResult<usize> {
        let before = self.count();
        let allowlist = settings::text(&settings::ALLOWED_BASE_URLS);
        for row in client.select(
            &st.claim,
            None,
            &[
                worker.into(),
                i32::try_from(asked).unwrap_or(i32::MAX).into(),
                lease().as_secs_f64().into(),
                HISTORY_LIMIT.get().into(),
                scope.organizations.clone().into(),
            ],
        )? {
            let claimed = Claimed::decode(&row)?;
            let looped = claimed.tools.is_some();
            // A row that cannot become a call fails alone, as that call's permanent failure.
            let call = match claimed.provider_and_messages() {
                Err(failure) => Err(failure),
                Ok((_, _, pending)) if !pending.is_empty() => {
                    // Its reservation is given back: no call is made for it.
                    if let Some(reservation) = fair_claim::reservation(&claimed.task_id) {
                        crate::ratelimit::settle(&reservation, 0);
                    }
                    self.runs.push(ToolRun {
                        task_id: claimed.task_id,
                        fencing_token: claimed.fencing_token,
                        calls: pending,
                    });
                    continue;
                }
                Ok((provider, messages, _)) => {
                    // An agent may name its own endpoint (config.base_url), within the allowlist.
                    let base_url = credential::base_url(provider, claimed.base_url);
                    match llm::check_base_url(&base_url, &allowlist) {
                        Err(refused) => Err(refused),
                        Ok(()) => Ok(llm::Request {
                            api_key: self.keys.get(
                                client,
                                provider,
                                &claimed.agent_id,
                                &claimed.organization_id,
                            )?,
                            provider,
                            base_url,
                            model: claimed.model,
                            system: claimed.system_prompt,
                            messages,
                            temperature: claimed.temperature,
                            max_tokens: claimed.max_tokens,
                            tools: claimed.tools.clone().unwrap_or_default(),
                            output_schema: claimed.output_schema.clone(),
                        }),
                    }
                }
            };
            self.jobs.push(Job {
                pass: None,
                looped,
                output_schema: claimed.output_schema,
                reservation: fair_claim::reservation(&claimed.task_id),
                task_id: claimed.task_id,
                fencing_token: claimed.fencing_token,
                shard: scope.shard,
                call,
                timeouts: timeouts(),
            });
        }
        Ok(self.count() - before)
    }
}

/// One row of claim_llm_calls, read by column name.
struct Claimed {
    task_id: String,
    fencing_token: i64,
    /// NULL when the task's agent version no longer exists.
    provider: Option<String>,
    model: String,
    system_prompt: String,
    temperature: f64,
    max_tokens: u32,
    title: String,
    description: Option<String>,
    /// jsonb as text: PostgreSQL accepts documents (deeper nesting, numbers beyond f64) that
    /// serde_json refuses, and such a task must fail alone, not stop the worker.
    input: String,
    /// A conversation's newest messages, oldest first, as text; NULL for other tasks.
    history: Option<String>,
    agent_id: String,
    organization_id: String,
    base_url: Option<String>,
    /// The version's tools (None: it has neither tools nor an output schema, and the task
    /// makes one call).
    tools: Option<Vec<llm::ToolSpec>>,
    /// The run's stored steps (jsonb as text), when the version has tools.
    steps: Option<String>,
    /// The JSON Schema of the final answer, when the version has one.
    output_schema: Option<serde_json::Value>,
}

impl Claimed {
    fn decode(row: &SpiHeapTupleData) -> SpiResult<Claimed> {
        Ok(Claimed {
            task_id: row.get_by_name("task_id")?.unwrap_or_default(),
            fencing_token: row.get_by_name("fencing_token")?.unwrap_or_default(),
            provider: row.get_by_name("provider")?,
            model: row.get_by_name("model")?.unwrap_or_default(),
            system_prompt: row.get_by_name("system_prompt")?.unwrap_or_default(),
            temperature: row.get_by_name("temperature")?.unwrap_or(0.7),
            max_tokens: row
                .get_by_name::<i32, _>("max_tokens")?
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(1024),
            title: row.get_by_name("title")?.unwrap_or_default(),
            description: row.get_by_name("description")?,
            input: row.get_by_name("input")?.unwrap_or_default(),
            history: row.get_by_name("history")?,
            agent_id: row.get_by_name("agent_id")?.unwrap_or_default(),
            organization_id: row.get_by_name("organization_id")?.unwrap_or_default(),
            base_url: row.get_by_name("base_url")?,
            tools: row
                .get_by_name::<pgrx::JsonB, _>("tools")?
                .map(|tools| tool_specs(&tools.0)),
            steps: row.get_by_name("steps")?,
            output_schema: row
                .get_by_name::<pgrx::JsonB, _>("output_schema")?
                .map(|schema| schema.0),
        })
    }

    /// The provider and the messages of the call, with the run's steps after the task's own,
    /// and the tool calls of the run still to run; or why this row cannot become a call.
    fn provider_and_messages(
        &self,
    ) -> Result<(llm::Provider, Vec<llm::Message>, NumberedCalls), llm::Failure> {
        let Some(name) = self.provider.as_deref() else {
            return Err(llm::Failure::not_sent(
                "the task's agent version no longer exists".to_string(),
            ));
        };
        let provider = llm::Provider::parse(name).ok_or_else(|| {
            llm::Failure::not_sent(format!(
                "the agent version names an unknown provider {name:?}"
            ))
        })?;
        let input = json("input", &self.input)?;
        let history = self
            .history
            .as_deref()
            .map(|history| json("conversation history", history))
            .transpose()?;
        let mut messages = llm::messages(&self.title, self.description.as_deref(), &input, history);
        let (done, pending) = match self.steps.as_deref() {
            Some(stored) => steps::replay(&json("steps", stored)?),
            None => (vec![], vec![]),
        };
        messages.extend(done);
        Ok((provider, messages, pending))
    }
}

/// The declarations of a version's tools, `[{name, description, parameters}]`.
fn tool_specs(tools: &serde_json::Value) -> Vec<llm::ToolSpec> {
    let text = |tool: &serde_json::Value, field: &str| {
        tool.get(field)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    tools
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|tool| llm::ToolSpec {
            name: text(tool, "name"),
            description: text(tool, "description"),
            parameters: tool
                .get("parameters")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        })
        .collect()
}

/// A jsonb value of the claimed row, parsed for the call.
fn json(what: &str, text: &str) -> Result<serde_json::Value, llm::Failure> {
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text).map_err(|e| {
        llm::Failure::not_sent(format!(
            "the task's {what} cannot be sent: the worker cannot read it as JSON ({e})"
        ))
    })
}
