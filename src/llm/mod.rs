//! LLM client: one blocking chat call to OpenAI-compatible or Anthropic endpoints.
//!
//! Pure Rust (std, serde, serde_json, ureq); nothing here knows about Postgres, so every
//! piece can be tested with plain `cargo test`. One capability per file:
//!
//! * `mod.rs` - the public types and [`call`], which validates, chooses the provider's
//!   protocol, sends and interprets;
//! * `openai.rs` / `anthropic.rs` - request body and reply parsing for each protocol;
//! * `reply.rs` - what the two reply parsers share (imports none of the files here);
//! * `classify.rs` - turning an HTTP status, headers and body into a [`Reply`] or a [`Failure`];
//! * `status.rs` - the one rule for which failures are worth a retry, also used by `fail_task`;
//! * `transport.rs` - the HTTP exchange itself (ureq), mapping network errors;
//! * `prompt.rs` - the messages of a call: a task's user message or a conversation's history.
//!
//! Tools and structured answers are part of the same call: a [`Request`] may offer
//! [`ToolSpec`]s and ask for an answer following a JSON Schema; a [`Reply`] then carries either
//! the [`ToolCall`]s the model asked for or the final answer. Running the tools is the
//! worker's business; this module only speaks both wire formats.
//!
//! The api key is never part of a message, a `Debug` output or a log line: `Request`'s
//! `Debug` prints `<redacted>`, and every [`Failure`] message is scrubbed of the key before
//! it is returned, in case a provider or proxy echoes it back.
use std::fmt;
use std::time::Duration;

mod allowlist;
mod anthropic;
mod classify;
mod openai;
mod prompt;
mod reply;
mod status;
mod transport;

#[cfg(test)]
mod tests;

pub use allowlist::check_base_url;
pub use prompt::{messages, task_message_bytes, PromptSize};
pub use status::is_transient;

/// A provider's side of a call, chosen once where the provider is known, so that the files
/// that build and interpret requests never pick a provider themselves.
struct Protocol {
    /// Appended to the base URL.
    path: &'static str,
    request_body: fn(&Request) -> Result<Vec<u8>, serde_json::Error>,
    request_headers: fn(Option<&str>) -> Vec<(&'static str, String)>,
    parse_reply: reply::ParseReply,
}

/// Which wire protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// OpenAI Chat Completions, also spoken by Ollama, vLLM, LiteLLM and most gateways.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl Provider {
    /// `"openai"` or `"anthropic"` (ASCII case and surrounding whitespace ignored).
    pub fn parse(name: &str) -> Option<Provider> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("openai") {
            Some(Provider::OpenAi)
        } else if name.eq_ignore_ascii_case("anthropic") {
            Some(Provider::Anthropic)
        } else {
            None
        }
    }

    /// How to speak this provider's protocol.
    fn protocol(self) -> Protocol {
        match self {
            Provider::OpenAi => Protocol {
                path: "chat/completions",
                request_body: openai::request_body,
                request_headers: openai::request_headers,
                parse_reply: openai::parse_reply,
            },
            Provider::Anthropic => Protocol {
                path: "messages",
                request_body: anthropic::request_body,
                request_headers: anthropic::request_headers,
                parse_reply: anthropic::parse_reply,
            },
        }
    }

    /// The lower-case name used in messages, the inverse of [`Provider::parse`].
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of the tool through which Anthropic gives a structured answer: Anthropic has no
/// response format, so the answer's JSON Schema is offered as this tool's input and the
/// model is made to call a tool. Tool names given in a [`Request`] may not use it.
pub const ANSWER_TOOL: &str = "ai_agents_final_answer";

/// A tool the model may call: sent as OpenAI `tools[].function` / Anthropic `tools[]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema object describing the tool's arguments.
    pub parameters: serde_json::Value,
}

/// A tool call the model asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text as the model sent it (OpenAI sends a string that may be invalid JSON;
    /// Anthropic's `input` object is serialized).
    pub arguments: String,
}

/// Who wrote a message of the conversation. The system prompt is separate ([`Request::system`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// The result of a tool call, answering an assistant message's [`ToolCall`].
    Tool,
}

impl Role {
    /// The role as OpenAI names it (Anthropic sends tool results as the user's).
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One turn of the conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Assistant messages: the tools it called, in order (empty otherwise).
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: the call this result answers.
    pub tool_call_id: Option<String>,
    /// Tool messages: the tool failed (Anthropic `is_error`).
    pub is_error: bool,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
        }
    }

    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Message {
        Message {
            role: Role::Assistant,
            content: content.into(),
            tool_calls,
            tool_call_id: None,
            is_error: false,
        }
    }

    pub fn tool_result(
        tool_call_id: impl Into<String>,
        content: impl Into<String>,
        is_error: bool,
    ) -> Message {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_call_id.into()),
            is_error,
        }
    }
}

/// Everything needed for one call.
#[derive(Clone)]
pub struct Request {
    pub provider: Provider,
    /// Up to and including the version, without the endpoint: `https://api.openai.com/v1`,
    /// `https://api.anthropic.com/v1`, `http://127.0.0.1:8089/v1`. Trailing slashes are ignored.
    pub base_url: String,
    /// Sent as `Authorization: Bearer` (OpenAI) or `x-api-key` (Anthropic) when present and
    /// not blank; surrounding whitespace is trimmed. Never printed.
    pub api_key: Option<String>,
    pub model: String,
    /// System prompt; left out of the request when empty.
    pub system: String,
    /// Chronological. Anthropic needs alternating roles starting with the user; see
    /// [`call`] for how other sequences are adapted.
    pub messages: Vec<Message>,
    pub temperature: f64,
    pub max_tokens: u32,
    /// The tools the model may call; none are sent when empty.
    pub tools: Vec<ToolSpec>,
    /// A JSON Schema the final answer must follow: OpenAI `response_format`, Anthropic the
    /// [`ANSWER_TOOL`].
    pub output_schema: Option<serde_json::Value>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("system", &self.system)
            .field("messages", &self.messages)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("tools", &self.tools)
            .field("output_schema", &self.output_schema)
            .finish()
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub content: String,
    /// Every input token; the two counts after it are parts of it, priced at their own rates.
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// As the provider reports it; the requested model when the reply names none.
    pub model: String,
    /// OpenAI: header `x-request-id`; Anthropic: header `request-id`.
    pub request_id: Option<String>,
    /// The tools the model asked to call, in order; empty for a final answer (which, with
    /// [`Request::output_schema`], is the structured answer's JSON text in `content`).
    pub tool_calls: Vec<ToolCall>,
}

/// Why a call did not produce a [`Reply`].
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Names the problem and includes the provider's own error message (at most ~500
    /// characters of it). Never contains the api key.
    pub message: String,
    /// `None` when no HTTP response arrived (timeout, refused, reset, DNS) or the request was
    /// rejected before sending.
    pub http_status: Option<u16>,
    /// From `retry-after-ms` or `Retry-After` (delta-seconds; an HTTP-date gives `None`),
    /// capped at one day.
    pub retry_after: Option<Duration>,
    /// `true`: retrying the same request cannot succeed (bad key, bad request, exhausted quota).
    pub permanent: bool,
    pub request_id: Option<String>,
}

impl Failure {
    /// A request that is never sent (it is invalid, or not allowed out): retrying cannot help.
    pub fn not_sent(message: String) -> Failure {
        Failure {
            message,
            http_status: None,
            retry_after: None,
            permanent: true,
            request_id: None,
        }
    }
}

/// Limits for one call.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Establishing the TCP (and TLS) connection.
    pub connect: Duration,
    /// Everything, from name resolution to the last byte of the response body.
    pub total: Duration,
}

/// Largest response body accepted, after decompression.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// One blocking call. Safe to run on any thread (no global state: every call builds its own
/// HTTP agent, so no connection is reused either).
///
/// Before anything is sent, the request is checked (base URL scheme, non-empty model and
/// messages, finite temperature, an api key that fits in an HTTP header, tool results that
/// name their call, tool names that are given, distinct and not [`ANSWER_TOOL`]); a bad
/// request is a permanent [`Failure`] without an HTTP status.
///
/// For Anthropic, which requires the conversation to start with a user message and roles to
/// alternate, consecutive messages of the same role are merged (joined by a blank line, empty
/// ones skipped; tool results count as the user's and come first in their message) and,
/// when the first message is the assistant's, a user message `(conversation continues)` is
/// put in front of it. A trailing assistant message is sent as is, so Anthropic continues it
/// (a "prefill").
pub fn call(request: &Request, timeouts: Timeouts) -> Result<Reply, Failure> {
    let api_key = request
        .api_key
        .as_deref()
        .map(str::trim)
        .filter(|key| !key.is_empty());
    let result = call_inner(request, api_key, timeouts);
    match (result, api_key) {
        (Err(failure), Some(key)) => Err(classify::redact(failure, key)),
        (result, _) => result,
    }
}

fn call_inner(
    request: &Request,
    api_key: Option<&str>,
    timeouts: Timeouts,
) -> Result<Reply, Failure> {
    let provider = request.provider;
    validate(request, api_key)?;
    let base = request.base_url.trim().trim_end_matches('/');
    let protocol = provider.protocol();
    let url = format!("{base}/{}", protocol.path);
    let headers = (protocol.request_headers)(api_key);
    let body = (protocol.request_body)(request).map_err(|e| {
        Failure::not_sent(format!("could not encode the {provider} request body: {e}"))
    })?;
    let response = transport::post(provider, &url, &headers, body, timeouts)?;
    let interpret = |body: &[u8]| {
        classify::interpret(
            provider,
            protocol.parse_reply,
            &request.model,
            response.status,
            &response.headers,
            body,
            response.truncated,
        )
    };
    match (interpret(&response.body), api_key) {
        // A body that echoes the key is scrubbed before any of it is quoted, so that not even
        // a prefix of the key survives the truncation of a long error message.
        (Err(_), Some(key)) if classify::contains_secret(&response.body, key) => {
            interpret(&classify::redact_bytes(&response.body, key))
        }
        (result, _) => result,
    }
}

fn validate(request: &Request, api_key: Option<&str>) -> Result<(), Failure> {
    let provider = request.provider;
    let base = request.base_url.trim();
    let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
        base.len() > scheme.len()
            && base
                .get(..scheme.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
    });
    if !scheme_ok {
        return Err(Failure::not_sent(format!(
            "invalid {provider} base_url {base:?}: it must start with http:// or https://"
        )));
    }
    if request.model.trim().is_empty() {
        return Err(Failure::not_sent(format!("no model given for {provider}")));
    }
    if request.messages.is_empty() {
        return Err(Failure::not_sent(format!(
            "the {provider} request has no messages"
        )));
    }
    if !request.temperature.is_finite() {
        return Err(Failure::not_sent(format!(
            "invalid temperature {} for {provider}: it must be a finite number",
            request.temperature
        )));
    }
    if let Some(i) = request.messages.iter().position(|m| {
        m.role == Role::Tool
            && m.tool_call_id
                .as_deref()
                .is_none_or(|id| id.trim().is_empty())
    }) {
        return Err(Failure::not_sent(format!(
            "message {i} of the {provider} request is a tool result without a tool_call_id"
        )));
    }
    for (i, tool) in request.tools.iter().enumerate() {
        if tool.name.trim().is_empty() {
            return Err(Failure::not_sent(format!(
                "tool {i} of the {provider} request has no name"
            )));
        }
        if tool.name == ANSWER_TOOL {
            return Err(Failure::not_sent(format!(
                "the tool name {ANSWER_TOOL:?} is reserved for structured answers"
            )));
        }
        if request.tools[..i].iter().any(|t| t.name == tool.name) {
            return Err(Failure::not_sent(format!(
                "the {provider} request offers two tools named {:?}",
                tool.name
            )));
        }
    }
    if let Some(key) = api_key {
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Failure::not_sent(format!(
                "the {provider} api key contains characters that cannot be sent in an HTTP \
                 header (only printable ASCII without spaces is allowed)"
            )));
        }
    }
    Ok(())
}
