//! OpenAI Chat Completions (`POST {base_url}/chat/completions`), also spoken by Ollama, vLLM,
//! LiteLLM and most gateways.
use serde::Serialize;
use serde_json::{json, Value};

use super::reply::{json_kind, reply_model, token_count, usage_object, Parsed};
use super::{Request, Role, ToolCall};

/// The optional fields are left out when unused, so that a request without tools or schema
/// is exactly what servers that know neither (older gateways, small local models) accept.
#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    temperature: f64,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// `None` (null) only for an assistant message that is nothing but tool calls.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// The JSON body: the system prompt first (when not blank), then the conversation; `tools`
/// and `response_format` only when the request has them.
pub(super) fn request_body(request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    let system = (!request.system.trim().is_empty()).then(|| WireMessage {
        role: "system",
        content: Some(&request.system),
        tool_calls: Vec::new(),
        tool_call_id: None,
    });
    let messages = system
        .into_iter()
        .chain(request.messages.iter().map(|m| {
            let calls = match m.role {
                Role::Assistant => m.tool_calls.as_slice(),
                Role::User | Role::Tool => &[],
            };
            // Null, not "", as OpenAI itself sends a message that is nothing but tool calls.
            let calls_only = m.content.is_empty() && !calls.is_empty();
            WireMessage {
                role: m.role.as_str(),
                content: (!calls_only).then_some(m.content.as_str()),
                tool_calls: calls.iter().map(wire_tool_call).collect(),
                tool_call_id: match m.role {
                    Role::Tool => m.tool_call_id.as_deref(),
                    Role::User | Role::Assistant => None,
                },
            }
        }))
        .collect();
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            json!({"type": "function", "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            }})
        })
        .collect();
    let response_format = request.output_schema.as_ref().map(|schema| {
        json!({"type": "json_schema", "json_schema": {
            "name": "answer",
            "schema": schema,
            "strict": true,
        }})
    });
    serde_json::to_vec(&Body {
        model: request.model.trim(),
        messages,
        temperature: request.temperature,
        max_tokens: request.max_tokens,
        tools,
        response_format,
    })
}

fn wire_tool_call(call: &ToolCall) -> Value {
    json!({"id": call.id, "type": "function", "function": {
        "name": call.name,
        "arguments": call.arguments,
    }})
}

/// `Authorization: Bearer` only when there is a key (local servers need none).
pub(super) fn request_headers(api_key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("accept", "application/json".to_string()),
    ];
    if let Some(key) = api_key {
        headers.push(("authorization", format!("Bearer {key}")));
    }
    headers
}

/// `choices[0].message.content` and `.tool_calls`, `usage.prompt_tokens` /
/// `usage.completion_tokens` (absent usage counts as 0) and `model`. The content may also be
/// an array of `{"type":"text"}` parts, as some compatible servers send. With tool calls, a
/// null or absent content is an empty text; without, it is an error that names the refusal
/// or finish reason.
pub(super) fn parse_reply(reply: &serde_json::Map<String, Value>) -> Result<Parsed, String> {
    let choice = match reply.get("choices") {
        Some(Value::Array(choices)) => choices.first().ok_or("\"choices\" is empty")?,
        None | Some(Value::Null) => return Err("no \"choices\" in the reply".to_string()),
        Some(other) => {
            return Err(format!(
                "\"choices\" is {}, expected an array",
                json_kind(other)
            ))
        }
    };
    let message = match choice.get("message") {
        Some(Value::Object(message)) => message,
        None | Some(Value::Null) => return Err("choices[0].message is missing".to_string()),
        Some(other) => {
            return Err(format!(
                "choices[0].message is {}, expected an object",
                json_kind(other)
            ))
        }
    };
    let tool_calls = match message.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(i, call)| tool_call(i, call))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "choices[0].message.tool_calls is {}, expected an array",
                json_kind(other)
            ))
        }
    };
    let content = match message.get("content") {
        Some(Value::String(content)) => content.clone(),
        Some(Value::Array(parts)) => match text_parts(parts)? {
            Some(text) => text,
            None if !tool_calls.is_empty() => String::new(),
            None => return Err("choices[0].message.content has no text parts".to_string()),
        },
        None | Some(Value::Null) if !tool_calls.is_empty() => String::new(),
        None | Some(Value::Null) => return Err(null_content(choice, message)),
        Some(other) => {
            return Err(format!(
                "choices[0].message.content is {}, expected a string",
                json_kind(other)
            ))
        }
    };
    let usage = usage_object(reply)?;
    let input_tokens = token_count(&usage, "prompt_tokens")?;
    let cached_input_tokens = match usage.get("prompt_tokens_details") {
        None | Some(Value::Null) => 0,
        Some(Value::Object(details)) => token_count(details, "cached_tokens")
            .map_err(|e| e.replace("usage.", "usage.prompt_tokens_details."))?,
        Some(other) => {
            return Err(format!(
                "usage.prompt_tokens_details is {}, expected an object",
                json_kind(other)
            ))
        }
    };
    if cached_input_tokens > input_tokens {
        return Err(format!(
            "usage.prompt_tokens_details.cached_tokens is {cached_input_tokens}, more than \
             usage.prompt_tokens ({input_tokens})"
        ));
    }
    Ok(Parsed {
        content,
        input_tokens,
        cached_input_tokens,
        cache_write_tokens: 0,
        output_tokens: token_count(&usage, "completion_tokens")?,
        model: reply_model(reply)?,
        tool_calls,
    })
}

/// One entry of `choices[0].message.tool_calls`: `{id, type: "function", function: {name,
/// arguments}}`. The arguments stay the string the model wrote, valid JSON or not: what to
/// tell the model about bad arguments is the caller's decision. Some compatible servers send
/// them as an object, or leave out `type`; both are accepted.
fn tool_call(i: usize, call: &Value) -> Result<ToolCall, String> {
    let at = format!("choices[0].message.tool_calls[{i}]");
    let call = match call {
        Value::Object(call) => call,
        other => return Err(format!("{at} is {}, expected an object", json_kind(other))),
    };
    match call.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "function" => {}
        Some(other) => {
            return Err(format!(
                "{at}.type is {}, expected \"function\"",
                super::reply::truncate_chars(&other.to_string(), 40)
            ))
        }
    }
    let id = non_empty_string(call.get("id"), &format!("{at}.id"))?;
    let function = match call.get("function") {
        Some(Value::Object(function)) => function,
        None | Some(Value::Null) => return Err(format!("{at} has no \"function\"")),
        Some(other) => {
            return Err(format!(
                "{at}.function is {}, expected an object",
                json_kind(other)
            ))
        }
    };
    let name = non_empty_string(function.get("name"), &format!("{at}.function.name"))?;
    let arguments = match function.get("arguments") {
        Some(Value::String(arguments)) => arguments.clone(),
        Some(object @ Value::Object(_)) => object.to_string(),
        None | Some(Value::Null) => return Err(format!("{at} has no \"function.arguments\"")),
        Some(other) => {
            return Err(format!(
                "{at}.function.arguments is {}, expected a string",
                json_kind(other)
            ))
        }
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

/// A field that must be a non-empty string; `what` names it in the error.
fn non_empty_string(value: Option<&Value>, what: &str) -> Result<String, String> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::String(_)) => Err(format!("{what} is empty")),
        None | Some(Value::Null) => Err(format!("{what} is missing")),
        Some(other) => Err(format!("{what} is {}, expected a string", json_kind(other))),
    }
}

/// The concatenated text parts; `None` when there are none.
fn text_parts(parts: &[Value]) -> Result<Option<String>, String> {
    let mut text = String::new();
    let mut found = false;
    for part in parts {
        if part.get("type").and_then(Value::as_str) == Some("text") {
            match part.get("text") {
                Some(Value::String(t)) => text.push_str(t),
                other => {
                    return Err(format!(
                        "a text part of choices[0].message.content has {} \"text\"",
                        other.map_or("no", json_kind)
                    ))
                }
            }
            found = true;
        }
    }
    Ok(found.then_some(text))
}

fn null_content(choice: &Value, message: &serde_json::Map<String, Value>) -> String {
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return format!(
            "choices[0].message.content is null; the model refused: {}",
            super::reply::truncate_chars(refusal, 300)
        );
    }
    match choice.get("finish_reason").and_then(Value::as_str) {
        Some(reason) => format!("choices[0].message.content is null (finish_reason {reason:?})"),
        None => "choices[0].message.content is null".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{tool_call as call, weather_tool};
    use super::super::{Message, Provider, Role};
    use super::*;
    use serde_json::json;

    fn request(system: &str, messages: Vec<Message>) -> Request {
        Request {
            provider: Provider::OpenAi,
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            model: "gpt-4o-mini".into(),
            system: system.into(),
            messages,
            temperature: 0.2,
            max_tokens: 256,
            tools: vec![],
            output_schema: None,
        }
    }

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
            is_error: false,
        }
    }

    fn body_json(request: &Request) -> Value {
        serde_json::from_slice(&request_body(request).unwrap()).unwrap()
    }

    fn parse(body: Value) -> Result<Parsed, String> {
        match body {
            Value::Object(map) => parse_reply(&map),
            _ => unreachable!(),
        }
    }

    #[test]
    fn body_with_system_prompt() {
        let r = request(
            "You are terse.",
            vec![
                msg(Role::User, "Hi"),
                msg(Role::Assistant, "Hello"),
                msg(Role::User, "Bye"),
            ],
        );
        assert_eq!(
            body_json(&r),
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye"},
                ],
                "temperature": 0.2,
                "max_tokens": 256,
            })
        );
    }

    #[test]
    fn blank_system_prompt_is_left_out() {
        for system in ["", "  \n"] {
            let body = body_json(&request(system, vec![msg(Role::User, "Hi")]));
            assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
        }
    }

    #[test]
    fn hostile_text_is_encoded_exactly() {
        let nasty =
            "quote \" backslash \\ newline \n tab \t nul \0 emoji 🦀 </script> {\"json\": 1}";
        let big = "x".repeat(1024 * 1024) + nasty;
        let r = request(nasty, vec![msg(Role::User, &big)]);
        let raw = request_body(&r).unwrap();
        assert!(!raw.contains(&0u8), "NUL must be escaped");
        let body: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(body["messages"][0]["content"], nasty);
        assert_eq!(body["messages"][1]["content"].as_str().unwrap(), big);
        assert!(String::from_utf8(raw)
            .unwrap()
            .contains(r#"nul \u0000 emoji"#));
    }

    #[test]
    fn headers_with_and_without_key() {
        let with = request_headers(Some("sk-1"));
        assert!(with.contains(&("authorization", "Bearer sk-1".to_string())));
        assert!(with.contains(&("content-type", "application/json".to_string())));
        let without = request_headers(None);
        assert!(without.iter().all(|(name, _)| *name != "authorization"));
    }

    #[test]
    fn parses_a_reply() {
        let parsed = parse(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "first"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
        }))
        .unwrap();
        assert_eq!(
            parsed,
            Parsed {
                content: "first".into(),
                input_tokens: 9,
                cached_input_tokens: 0,
                cache_write_tokens: 0,
                output_tokens: 2,
                model: Some("gpt-4o-mini-2024-07-18".into()),
                tool_calls: vec![],
            }
        );
    }

    #[test]
    fn empty_string_content_is_a_reply() {
        let parsed = parse(json!({"choices": [{"message": {"content": ""}}]})).unwrap();
        assert_eq!(parsed.content, "");
    }

    #[test]
    fn content_parts_are_concatenated() {
        let parsed = parse(json!({"choices": [{"message": {"content": [
            {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}
        ]}}]}))
        .unwrap();
        assert_eq!(parsed.content, "ab");
        let err = parse(json!({"choices": [{"message": {"content": [{"type": "image_url"}]}}]}));
        assert_eq!(
            err.unwrap_err(),
            "choices[0].message.content has no text parts"
        );
        let err =
            parse(json!({"choices": [{"message": {"content": [{"type": "text", "text": 1}]}}]}));
        assert!(err.unwrap_err().contains("has a number \"text\""));
    }

    #[test]
    fn null_content_names_the_reason() {
        let refusal = parse(
            json!({"choices": [{"message": {"content": null, "refusal": "I can't help with that."}}]}),
        );
        assert_eq!(
            refusal.unwrap_err(),
            "choices[0].message.content is null; the model refused: I can't help with that."
        );
        // An empty list of tool calls is no excuse for a missing answer.
        let no_calls = parse(
            json!({"choices": [{"message": {"content": null, "tool_calls": []}, "finish_reason": "stop"}]}),
        );
        assert_eq!(
            no_calls.unwrap_err(),
            "choices[0].message.content is null (finish_reason \"stop\")"
        );
        let missing = parse(
            json!({"choices": [{"message": {"role": "assistant"}, "finish_reason": "length"}]}),
        );
        assert_eq!(
            missing.unwrap_err(),
            "choices[0].message.content is null (finish_reason \"length\")"
        );
    }

    #[test]
    fn structural_errors() {
        let cases = [
            (json!({}), "no \"choices\" in the reply"),
            (json!({"choices": null}), "no \"choices\" in the reply"),
            (
                json!({"choices": {}}),
                "\"choices\" is an object, expected an array",
            ),
            (json!({"choices": []}), "\"choices\" is empty"),
            (json!({"choices": [{}]}), "choices[0].message is missing"),
            (json!({"choices": ["x"]}), "choices[0].message is missing"),
            (
                json!({"choices": [{"message": "x"}]}),
                "choices[0].message is a string, expected an object",
            ),
            (
                json!({"choices": [{"message": {"content": 5}}]}),
                "choices[0].message.content is a number, expected a string",
            ),
            (
                json!({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": true}}),
                "usage.prompt_tokens is a boolean, expected a non-negative integer",
            ),
            (
                json!({"choices": [{"message": {"content": "x"}}], "usage": {"completion_tokens": 1e30}}),
                "usage.completion_tokens is 1e+30, expected a non-negative integer",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(body).unwrap_err(), expected);
        }
    }

    #[test]
    fn cached_tokens_are_read_as_part_of_the_prompt() {
        let reply = |details: Value| {
            parse(json!({"choices": [{"message": {"content": "x"}}],
                         "usage": {"prompt_tokens": 2006, "completion_tokens": 300,
                                   "prompt_tokens_details": details}}))
        };
        let parsed = reply(json!({"cached_tokens": 1920, "audio_tokens": 0})).unwrap();
        assert_eq!(
            (
                parsed.input_tokens,
                parsed.cached_input_tokens,
                parsed.cache_write_tokens
            ),
            (2006, 1920, 0)
        );
        assert_eq!(reply(json!({})).unwrap().cached_input_tokens, 0);
        assert_eq!(reply(Value::Null).unwrap().cached_input_tokens, 0);
        assert_eq!(
            reply(json!({"cached_tokens": "5"})).unwrap_err(),
            "usage.prompt_tokens_details.cached_tokens is a string, expected a non-negative integer"
        );
        assert_eq!(
            reply(json!(7)).unwrap_err(),
            "usage.prompt_tokens_details is a number, expected an object"
        );
        assert_eq!(
            reply(json!({"cached_tokens": 2007})).unwrap_err(),
            "usage.prompt_tokens_details.cached_tokens is 2007, more than usage.prompt_tokens (2006)"
        );
    }

    #[test]
    fn partial_usage_counts_missing_fields_as_zero() {
        let parsed = parse(
            json!({"choices": [{"message": {"content": "x"}}], "usage": {"completion_tokens": 4}}),
        )
        .unwrap();
        assert_eq!((parsed.input_tokens, parsed.output_tokens), (0, 4));
        let parsed =
            parse(json!({"choices": [{"message": {"content": "x"}}], "usage": null})).unwrap();
        assert_eq!((parsed.input_tokens, parsed.output_tokens), (0, 0));
    }

    #[test]
    fn body_with_tools_tool_calls_and_results() {
        let mut r = request(
            "",
            vec![
                Message::user("Weather in Paris and Oslo?"),
                Message::assistant(
                    "",
                    vec![
                        call("call_1", "get_weather", r#"{"city":"Paris"}"#),
                        call("call_2", "get_weather", "{not json"),
                    ],
                ),
                Message::tool_result("call_1", r#"{"temp":21}"#, false),
                Message::tool_result("call_2", "bad arguments", true),
                Message::assistant(
                    "Checking once more.",
                    vec![call("call_3", "get_weather", "{}")],
                ),
            ],
        );
        r.tools = vec![weather_tool()];
        assert_eq!(
            body_json(&r),
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Oslo?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{not json"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "bad arguments"},
                    {"role": "assistant", "content": "Checking once more.", "tool_calls": [
                        {"id": "call_3", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{}"}},
                    ]},
                ],
                "temperature": 0.2,
                "max_tokens": 256,
                "tools": [{"type": "function", "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                }}],
            })
        );
    }

    #[test]
    fn an_empty_assistant_message_without_calls_keeps_its_empty_content() {
        let r = request("", vec![Message::user("a"), Message::assistant("", vec![])]);
        assert_eq!(
            body_json(&r)["messages"][1],
            json!({"role": "assistant", "content": ""})
        );
    }

    #[test]
    fn structured_output_asks_for_a_json_schema() {
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
                            "required": ["ok"], "additionalProperties": false});
        let mut r = request("", vec![Message::user("Fine?")]);
        r.output_schema = Some(schema.clone());
        let body = body_json(&r);
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
        );
        assert!(body.get("tools").is_none(), "{body}");
    }

    #[test]
    fn parses_a_reply_with_two_tool_calls() {
        let parsed = parse(json!({
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "lookup", "arguments": "{oops"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 30}
        }))
        .unwrap();
        assert_eq!(
            parsed,
            Parsed {
                content: String::new(),
                input_tokens: 50,
                cached_input_tokens: 0,
                cache_write_tokens: 0,
                output_tokens: 30,
                model: Some("gpt-4o-mini".into()),
                tool_calls: vec![
                    call("call_a", "get_weather", r#"{"city":"Paris"}"#),
                    call("call_b", "lookup", "{oops"),
                ],
            }
        );
    }

    #[test]
    fn tool_calls_with_text_or_lenient_fields() {
        // Text next to the calls is kept; an absent content or one without text parts is
        // empty; an untyped call and object arguments, as some compatible servers send, do.
        let parsed = parse(
            json!({"choices": [{"message": {"content": "Let me look.", "tool_calls": [
                {"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}
            ]}}]}),
        )
        .unwrap();
        assert_eq!(parsed.content, "Let me look.");
        assert_eq!(parsed.tool_calls, vec![call("c1", "f", r#"{"x":1}"#)]);
        let calls =
            json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]);
        let absent = parse(json!({"choices": [{"message": {"tool_calls": calls}}]})).unwrap();
        assert_eq!((absent.content.as_str(), absent.tool_calls.len()), ("", 1));
        let parts = parse(json!({"choices": [{"message": {"content": [{"type": "refusal"}], "tool_calls": calls}}]}))
            .unwrap();
        assert_eq!((parts.content.as_str(), parts.tool_calls.len()), ("", 1));
    }

    #[test]
    fn malformed_tool_calls() {
        let at = "choices[0].message.tool_calls";
        let cases = [
            (json!({}), format!("{at} is an object, expected an array")),
            (
                json!(["x"]),
                format!("{at}[0] is a string, expected an object"),
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "arguments": "{}"}}]),
                format!("{at}[0].id is missing"),
            ),
            (
                json!([{"id": "", "function": {"name": "f", "arguments": "{}"}}]),
                format!("{at}[0].id is empty"),
            ),
            (
                json!([{"id": 7, "function": {"name": "f", "arguments": "{}"}}]),
                format!("{at}[0].id is a number, expected a string"),
            ),
            (
                json!([{"id": "c", "type": "custom", "function": {"name": "f", "arguments": "{}"}}]),
                format!("{at}[0].type is \"custom\", expected \"function\""),
            ),
            (json!([{"id": "c"}]), format!("{at}[0] has no \"function\"")),
            (
                json!([{"id": "c", "function": "f"}]),
                format!("{at}[0].function is a string, expected an object"),
            ),
            (
                json!([{"id": "c", "function": {"arguments": "{}"}}]),
                format!("{at}[0].function.name is missing"),
            ),
            (
                json!([{"id": "c", "function": {"name": "f"}}]),
                format!("{at}[0] has no \"function.arguments\""),
            ),
            (
                json!([{"id": "c", "function": {"name": "f", "arguments": [1]}}]),
                format!("{at}[0].function.arguments is an array, expected a string"),
            ),
            (
                json!([{"id": "c", "function": {"name": "f", "arguments": "{}"}}, {"id": "d"}]),
                format!("{at}[1] has no \"function\""),
            ),
        ];
        for (calls, expected) in cases {
            let body = json!({"choices": [{"message": {"content": null, "tool_calls": calls}}]});
            assert_eq!(parse(body).unwrap_err(), expected);
        }
    }
}
