//! Anthropic Messages (`POST {base_url}/messages`).
use serde::Serialize;
use serde_json::{json, Value};

use super::reply::{json_kind, reply_model, token_count, usage_object, Parsed};
use super::{Message, Request, Role, ToolCall, ANSWER_TOOL};

/// The API version this module speaks.
const API_VERSION: &str = "2023-06-01";

/// Put in front of a conversation that starts with an assistant message.
pub(super) const CONVERSATION_CONTINUES: &str = "(conversation continues)";

/// The description of the [`ANSWER_TOOL`], which the model reads to decide when to call it.
const ANSWER_TOOL_DESCRIPTION: &str = "Give the final answer. Its input is the answer.";

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    temperature: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
}

#[derive(Serialize, Debug, PartialEq)]
struct WireMessage {
    role: &'static str,
    content: WireContent,
}

/// A plain string for text-only messages, as they were sent before tools existed; blocks
/// only for messages that carry tool calls or results.
#[derive(Serialize, Debug, PartialEq)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

/// The JSON body; `system` only when not blank, the messages made to alternate, `tools`
/// (the [`ANSWER_TOOL`] last, for a structured answer) and `tool_choice` only when needed.
pub(super) fn request_body(request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    let system = Some(request.system.as_str()).filter(|s| !s.trim().is_empty());
    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.parameters,
            })
        })
        .collect();
    // The model must call a tool, so that the answer comes through the schema; with other
    // tools on offer it may call those first, and the answer tool ends the loop.
    let tool_choice = request.output_schema.as_ref().map(|schema| {
        let choice = if tools.is_empty() {
            json!({"type": "tool", "name": ANSWER_TOOL})
        } else {
            json!({"type": "any"})
        };
        tools.push(json!({
            "name": ANSWER_TOOL,
            "description": ANSWER_TOOL_DESCRIPTION,
            "input_schema": schema,
        }));
        choice
    });
    serde_json::to_vec(&Body {
        model: request.model.trim(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        system,
        messages: alternate(&request.messages),
        tools,
        tool_choice,
    })
}

/// The messages of one side of the conversation, merged.
struct Turn {
    role: Role,
    /// The texts joined by a blank line, empty ones adding nothing.
    text: String,
    /// `tool_use` (assistant) or `tool_result` (user) blocks, in order.
    blocks: Vec<Block>,
}

/// Anthropic requires the first message to be the user's and the roles to alternate, with
/// tool results sent as the user's. Consecutive messages of one side are merged, texts
/// joined by a blank line (empty ones add nothing); a conversation that starts with the
/// assistant gets a user message [`CONVERSATION_CONTINUES`] in front. A merged message with
/// tool calls or results is sent as content blocks: the assistant's text before its
/// `tool_use` blocks, the user's `tool_result` blocks before its text (Anthropic rejects
/// text in front of tool results).
fn alternate(messages: &[Message]) -> Vec<WireMessage> {
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len() + 1);
    for message in messages {
        let role = match message.role {
            Role::Assistant => Role::Assistant,
            Role::User | Role::Tool => Role::User,
        };
        if turns.last().is_none_or(|turn| turn.role != role) {
            turns.push(Turn {
                role,
                text: String::new(),
                blocks: Vec::new(),
            });
        }
        let last = turns.len() - 1;
        let turn = &mut turns[last];
        match message.role {
            Role::Tool => turn.blocks.push(Block::ToolResult {
                tool_use_id: message.tool_call_id.clone().unwrap_or_default(),
                content: message.content.clone(),
                is_error: message.is_error,
            }),
            Role::User | Role::Assistant => {
                if !message.content.is_empty() {
                    if !turn.text.is_empty() {
                        turn.text.push_str("\n\n");
                    }
                    turn.text.push_str(&message.content);
                }
            }
        }
        if message.role == Role::Assistant {
            turn.blocks
                .extend(message.tool_calls.iter().map(|call| Block::ToolUse {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    input: tool_input(&call.arguments),
                }));
        }
    }
    if turns
        .first()
        .is_some_and(|turn| turn.role == Role::Assistant)
    {
        turns.insert(
            0,
            Turn {
                role: Role::User,
                text: CONVERSATION_CONTINUES.to_string(),
                blocks: Vec::new(),
            },
        );
    }
    turns.into_iter().map(wire_message).collect()
}

fn wire_message(turn: Turn) -> WireMessage {
    let content = if turn.blocks.is_empty() {
        WireContent::Text(turn.text)
    } else {
        let text = (!turn.text.is_empty()).then_some(Block::Text { text: turn.text });
        WireContent::Blocks(match turn.role {
            Role::Assistant => text.into_iter().chain(turn.blocks).collect(),
            Role::User | Role::Tool => turn.blocks.into_iter().chain(text).collect(),
        })
    };
    WireMessage {
        role: turn.role.as_str(),
        content,
    }
}

/// A `tool_use` block's `input` must be an object; arguments that are not a JSON object
/// (OpenAI-style text gone wrong, say) are sent as `{}` rather than failing the whole call.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str(arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({}),
    }
}

/// `x-api-key` only when there is a key (a gateway may add its own).
pub(super) fn request_headers(api_key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("accept", "application/json".to_string()),
        ("anthropic-version", API_VERSION.to_string()),
    ];
    if let Some(key) = api_key {
        headers.push(("x-api-key", key.to_string()));
    }
    headers
}

/// The `text` of all `"type": "text"` content blocks, concatenated, and the `tool_use` blocks
/// as tool calls (other blocks, such as `thinking`, are skipped; an empty `content` array is
/// an empty reply, a non-empty one without text or tool_use blocks is an error). A call of
/// the [`ANSWER_TOOL`] is the structured answer: its input is the reply's content, and the
/// reply has no tool calls. Input tokens are `usage.input_tokens` plus the prompt-cache
/// counts `cache_creation_input_tokens` and `cache_read_input_tokens` (0 unless caching is
/// used), so that they cover the whole prompt as OpenAI's do; the two cache counts are kept
/// apart as well, for their own prices.
pub(super) fn parse_reply(reply: &serde_json::Map<String, Value>) -> Result<Parsed, String> {
    match reply.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "message" => {}
        Some(other) => return Err(format!("\"type\" is {other}, expected \"message\"")),
    }
    let blocks = match reply.get("content") {
        Some(Value::Array(blocks)) => blocks,
        None | Some(Value::Null) => return Err("no \"content\" in the reply".to_string()),
        Some(other) => {
            return Err(format!(
                "\"content\" is {}, expected an array",
                json_kind(other)
            ))
        }
    };
    let mut content = String::new();
    let mut text_blocks = 0;
    let mut tool_calls: Vec<ToolCall> = Vec::new();
    let mut answer: Option<String> = None;
    let mut other_kinds: Vec<String> = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                match block.get("text") {
                    Some(Value::String(text)) => content.push_str(text),
                    other => {
                        return Err(format!(
                            "content[{i}] is a text block with {} \"text\"",
                            other.map_or("no", json_kind)
                        ))
                    }
                }
                text_blocks += 1;
            }
            Some("tool_use") => {
                let call = tool_use(i, block)?;
                if call.name == ANSWER_TOOL {
                    answer.get_or_insert(call.arguments);
                } else {
                    tool_calls.push(call);
                }
            }
            kind => other_kinds.push(kind.unwrap_or("?").chars().take(40).collect()),
        }
    }
    if let Some(answer) = answer {
        content = answer;
        tool_calls.clear();
    } else if text_blocks == 0 && tool_calls.is_empty() && !blocks.is_empty() {
        let stop = match reply.get("stop_reason").and_then(Value::as_str) {
            Some(reason) => format!(", stop_reason {reason:?}"),
            None => String::new(),
        };
        return Err(format!(
            "\"content\" has no text or tool_use blocks (only {}{stop})",
            other_kinds.join(", ")
        ));
    }
    let usage = usage_object(reply)?;
    let cache_write_tokens = token_count(&usage, "cache_creation_input_tokens")?;
    let cached_input_tokens = token_count(&usage, "cache_read_input_tokens")?;
    let input_tokens = token_count(&usage, "input_tokens")?
        .saturating_add(cache_write_tokens)
        .saturating_add(cached_input_tokens);
    Ok(Parsed {
        content,
        input_tokens,
        cached_input_tokens,
        cache_write_tokens,
        output_tokens: token_count(&usage, "output_tokens")?,
        model: reply_model(reply)?,
        tool_calls,
    })
}

/// A `tool_use` block, `{id, name, input}`, with its input serialized as the arguments.
fn tool_use(i: usize, block: &Value) -> Result<ToolCall, String> {
    let field = |name: &str| match block.get(name) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::String(_)) => Err(format!(
            "content[{i}] is a tool_use block with an empty \"{name}\""
        )),
        other => Err(format!(
            "content[{i}] is a tool_use block with {} \"{name}\"",
            other.map_or("no", json_kind)
        )),
    };
    let id = field("id")?;
    let name = field("name")?;
    let arguments = match block.get("input") {
        Some(input) if !input.is_null() => input.to_string(),
        _ => {
            return Err(format!(
                "content[{i}] is a tool_use block with no \"input\""
            ))
        }
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{tool_call as call, weather_tool};
    use super::super::Provider;
    use super::*;
    use serde_json::json;

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
            is_error: false,
        }
    }

    fn wire(role: &'static str, content: &str) -> WireMessage {
        WireMessage {
            role,
            content: WireContent::Text(content.into()),
        }
    }

    fn request(system: &str, messages: Vec<Message>) -> Request {
        Request {
            provider: Provider::Anthropic,
            base_url: "https://api.anthropic.com/v1".into(),
            api_key: Some("k".into()),
            model: " claude-sonnet-4-5 ".into(),
            system: system.into(),
            messages,
            temperature: 0.0,
            max_tokens: 1024,
            tools: vec![],
            output_schema: None,
        }
    }

    fn parse(body: Value) -> Result<Parsed, String> {
        match body {
            Value::Object(map) => parse_reply(&map),
            _ => unreachable!(),
        }
    }

    #[test]
    fn alternating_messages_pass_unchanged() {
        let messages = [
            msg(Role::User, "a"),
            msg(Role::Assistant, "b"),
            msg(Role::User, "c"),
        ];
        assert_eq!(
            alternate(&messages),
            vec![wire("user", "a"), wire("assistant", "b"), wire("user", "c")]
        );
    }

    #[test]
    fn consecutive_roles_are_merged() {
        let messages = [
            msg(Role::User, "a"),
            msg(Role::User, "b"),
            msg(Role::Assistant, "c"),
            msg(Role::Assistant, ""),
            msg(Role::Assistant, "d"),
            msg(Role::User, ""),
            msg(Role::User, "e"),
        ];
        assert_eq!(
            alternate(&messages),
            vec![
                wire("user", "a\n\nb"),
                wire("assistant", "c\n\nd"),
                wire("user", "e")
            ]
        );
    }

    #[test]
    fn leading_assistant_message_gets_a_user_message_first() {
        let messages = [
            msg(Role::Assistant, "x"),
            msg(Role::Assistant, "y"),
            msg(Role::User, "z"),
        ];
        assert_eq!(
            alternate(&messages),
            vec![
                wire("user", CONVERSATION_CONTINUES),
                wire("assistant", "x\n\ny"),
                wire("user", "z")
            ]
        );
        assert_eq!(alternate(&[]), vec![]);
    }

    #[test]
    fn body_fields() {
        let r = request(
            "Be exact.",
            vec![msg(Role::User, "q1"), msg(Role::User, "q2")],
        );
        let body: Value = serde_json::from_slice(&request_body(&r).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "temperature": 0.0,
                "system": "Be exact.",
                "messages": [{"role": "user", "content": "q1\n\nq2"}],
            })
        );
        let r = request(" ", vec![msg(Role::User, "q")]);
        let body: Value = serde_json::from_slice(&request_body(&r).unwrap()).unwrap();
        assert!(body.get("system").is_none(), "{body}");
    }

    #[test]
    fn hostile_text_is_encoded_exactly() {
        let nasty = "\"quoted\"\n\0\u{1b}[31m\\";
        let r = request(nasty, vec![msg(Role::User, nasty)]);
        let raw = request_body(&r).unwrap();
        assert!(!raw.contains(&0u8));
        let body: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(body["system"], nasty);
        assert_eq!(body["messages"][0]["content"], nasty);
    }

    #[test]
    fn headers_with_and_without_key() {
        let with = request_headers(Some("sk-ant-1"));
        assert!(with.contains(&("x-api-key", "sk-ant-1".to_string())));
        assert!(with.contains(&("anthropic-version", "2023-06-01".to_string())));
        assert!(with.iter().all(|(name, _)| *name != "authorization"));
        let without = request_headers(None);
        assert!(without.iter().all(|(name, _)| *name != "x-api-key"));
        assert!(without.contains(&("anthropic-version", "2023-06-01".to_string())));
    }

    #[test]
    fn parses_a_reply() {
        let parsed = parse(json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Hello, "},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}},
                {"type": "text", "text": "world"}
            ],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": null}
        }))
        .unwrap();
        assert_eq!(
            parsed,
            Parsed {
                content: "Hello, world".into(),
                input_tokens: 120,
                cached_input_tokens: 100,
                cache_write_tokens: 0,
                output_tokens: 5,
                model: Some("claude-sonnet-4-5-20250929".into()),
                tool_calls: vec![ToolCall {
                    id: "t".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                }],
            }
        );
    }

    #[test]
    fn empty_content_is_an_empty_reply() {
        let parsed = parse(
            json!({"type": "message", "content": [], "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 0}}),
        )
        .unwrap();
        assert_eq!(parsed.content, "");
        assert_eq!((parsed.input_tokens, parsed.output_tokens), (3, 0));
        assert_eq!(parsed.model, None);
    }

    #[test]
    fn structural_errors() {
        let cases = [
            (
                json!({"type": "message"}),
                "no \"content\" in the reply".to_string(),
            ),
            (
                json!({"content": "hi"}),
                "\"content\" is a string, expected an array".to_string(),
            ),
            (
                json!({"type": "completion", "content": []}),
                "\"type\" is \"completion\", expected \"message\"".to_string(),
            ),
            (
                json!({"content": [{"type": "thinking"}], "stop_reason": "max_tokens"}),
                "\"content\" has no text or tool_use blocks (only thinking, stop_reason \"max_tokens\")"
                    .to_string(),
            ),
            (
                json!({"content": [{"text": "untyped"}]}),
                "\"content\" has no text or tool_use blocks (only ?)".to_string(),
            ),
            (
                json!({"content": [{"type": "text"}]}),
                "content[0] is a text block with no \"text\"".to_string(),
            ),
            (
                json!({"content": [{"type": "text", "text": null}]}),
                "content[0] is a text block with null \"text\"".to_string(),
            ),
            (
                json!({"content": [], "usage": {"input_tokens": "20"}}),
                "usage.input_tokens is a string, expected a non-negative integer".to_string(),
            ),
            (
                json!({"content": [], "usage": {"output_tokens": -1}}),
                "usage.output_tokens is -1, expected a non-negative integer".to_string(),
            ),
            (
                json!({"content": [], "usage": {"cache_read_input_tokens": []}}),
                "usage.cache_read_input_tokens is an array, expected a non-negative integer"
                    .to_string(),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(body).unwrap_err(), expected);
        }
    }

    #[test]
    fn cache_reads_and_writes_are_kept_apart() {
        let parsed = parse(
            json!({"content": [], "usage": {"input_tokens": 50, "output_tokens": 7,
            "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 3000}}),
        )
        .unwrap();
        assert_eq!(
            (
                parsed.input_tokens,
                parsed.cached_input_tokens,
                parsed.cache_write_tokens,
                parsed.output_tokens
            ),
            (4250, 3000, 1200, 7)
        );
    }

    #[test]
    fn token_sums_saturate() {
        let parsed = parse(json!({"content": [], "usage": {"input_tokens": u64::MAX, "cache_read_input_tokens": 5}})).unwrap();
        assert_eq!(parsed.input_tokens, u64::MAX);
    }

    fn body_json(request: &Request) -> Value {
        serde_json::from_slice(&request_body(request).unwrap()).unwrap()
    }

    #[test]
    fn body_with_tools_tool_calls_and_results() {
        let mut r = request(
            "",
            vec![
                Message::user("Weather in Paris and Oslo?"),
                Message::assistant(
                    "Looking.",
                    vec![
                        call("toolu_1", "get_weather", r#"{"city":"Paris"}"#),
                        call("toolu_2", "get_weather", "{not json"),
                    ],
                ),
                Message::tool_result("toolu_1", r#"{"temp":21}"#, false),
                Message::tool_result("toolu_2", "bad arguments", true),
                Message::user("Also, be brief."),
                Message::assistant("", vec![call("toolu_3", "get_weather", "[1]")]),
                Message::tool_result("toolu_3", "", false),
            ],
        );
        r.tools = vec![weather_tool()];
        assert_eq!(
            body_json(&r),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "temperature": 0.0,
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Oslo?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "{\"temp\":21}"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "bad arguments", "is_error": true},
                        {"type": "text", "text": "Also, be brief."},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_3", "content": ""},
                    ]},
                ],
                "tools": [{
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                }],
            })
        );
    }

    #[test]
    fn tool_results_merge_into_one_user_message_before_its_text() {
        let messages = [
            Message::user("q"),
            Message::assistant("", vec![call("t1", "f", "{}"), call("t2", "g", "{}")]),
            Message::user("first, a note"),
            Message::tool_result("t1", "r1", false),
            Message::user(""),
            Message::tool_result("t2", "r2", false),
            Message::user("then this"),
            Message::assistant("done", vec![]),
            Message::user("thanks"),
        ];
        let result = |id: &str, content: &str| Block::ToolResult {
            tool_use_id: id.into(),
            content: content.into(),
            is_error: false,
        };
        assert_eq!(
            alternate(&messages),
            vec![
                wire("user", "q"),
                WireMessage {
                    role: "assistant",
                    content: WireContent::Blocks(vec![
                        Block::ToolUse {
                            id: "t1".into(),
                            name: "f".into(),
                            input: json!({}),
                        },
                        Block::ToolUse {
                            id: "t2".into(),
                            name: "g".into(),
                            input: json!({}),
                        },
                    ]),
                },
                WireMessage {
                    role: "user",
                    content: WireContent::Blocks(vec![
                        result("t1", "r1"),
                        result("t2", "r2"),
                        Block::Text {
                            text: "first, a note\n\nthen this".into(),
                        },
                    ]),
                },
                wire("assistant", "done"),
                wire("user", "thanks"),
            ]
        );
    }

    #[test]
    fn a_leading_assistant_tool_call_gets_a_user_message_first() {
        let messages = [
            Message::assistant("", vec![call("t1", "f", r#"{"a":1}"#)]),
            Message::tool_result("t1", "r", false),
        ];
        let sent = alternate(&messages);
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0], wire("user", CONVERSATION_CONTINUES));
        assert_eq!(sent[1].role, "assistant");
        assert_eq!(sent[2].role, "user");
    }

    #[test]
    fn structured_output_adds_the_answer_tool() {
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
        let answer_tool = json!({
            "name": ANSWER_TOOL,
            "description": "Give the final answer. Its input is the answer.",
            "input_schema": schema,
        });
        let mut r = request("", vec![Message::user("Fine?")]);
        r.output_schema = Some(schema.clone());
        let body = body_json(&r);
        assert_eq!(body["tools"], json!([answer_tool]));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "ai_agents_final_answer"})
        );
        r.tools = vec![weather_tool()];
        let body = body_json(&r);
        assert_eq!(body["tools"][0]["name"], "get_weather");
        assert_eq!(body["tools"][1], answer_tool);
        assert_eq!(body["tools"].as_array().map(Vec::len), Some(2));
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        // Tools alone leave the choice to the model.
        r.output_schema = None;
        let body = body_json(&r);
        assert!(body.get("tool_choice").is_none(), "{body}");
        assert_eq!(body["tools"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn parses_a_reply_with_two_tool_calls() {
        let parsed = parse(json!({
            "type": "message", "model": "claude-test",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "lookup", "input": {}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 40, "output_tokens": 25}
        }))
        .unwrap();
        assert_eq!(
            parsed,
            Parsed {
                content: "Let me check.".into(),
                input_tokens: 40,
                cached_input_tokens: 0,
                cache_write_tokens: 0,
                output_tokens: 25,
                model: Some("claude-test".into()),
                tool_calls: vec![
                    call("toolu_a", "get_weather", r#"{"city":"Paris"}"#),
                    call("toolu_b", "lookup", "{}"),
                ],
            }
        );
    }

    #[test]
    fn the_answer_tool_is_the_structured_answer() {
        let parsed = parse(json!({
            "type": "message",
            "content": [
                {"type": "text", "text": "Here it is."},
                {"type": "tool_use", "id": "toolu_x", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_y", "name": ANSWER_TOOL, "input": {"ok": true, "why": "a \"b\""}},
                {"type": "tool_use", "id": "toolu_z", "name": ANSWER_TOOL, "input": {"ok": false}}
            ],
            "stop_reason": "tool_use"
        }))
        .unwrap();
        assert_eq!(parsed.content, r#"{"ok":true,"why":"a \"b\""}"#);
        assert_eq!(parsed.tool_calls, vec![]);
    }

    #[test]
    fn malformed_tool_use_blocks() {
        let cases = [
            (
                json!({"type": "tool_use", "name": "f", "input": {}}),
                "content[0] is a tool_use block with no \"id\"",
            ),
            (
                json!({"type": "tool_use", "id": "", "name": "f", "input": {}}),
                "content[0] is a tool_use block with an empty \"id\"",
            ),
            (
                json!({"type": "tool_use", "id": "t", "input": {}}),
                "content[0] is a tool_use block with no \"name\"",
            ),
            (
                json!({"type": "tool_use", "id": "t", "name": 3, "input": {}}),
                "content[0] is a tool_use block with a number \"name\"",
            ),
            (
                json!({"type": "tool_use", "id": "t", "name": "f"}),
                "content[0] is a tool_use block with no \"input\"",
            ),
            (
                json!({"type": "tool_use", "id": "t", "name": "f", "input": null}),
                "content[0] is a tool_use block with no \"input\"",
            ),
        ];
        for (block, expected) in cases {
            assert_eq!(parse(json!({"content": [block]})).unwrap_err(), expected);
        }
    }
}
