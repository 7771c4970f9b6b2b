//! OpenAI Chat Completions (`POST {base_url}/chat/completions`), also spoken by Ollama, vLLM,
//! LiteLLM and most gateways.
use serde::Serialize;
use serde_json::Value;

use super::reply::{json_kind, reply_model, token_count, usage_object, Parsed};
use super::Request;

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    temperature: f64,
    max_tokens: u32,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// The JSON body: the system prompt first (when not blank), then the conversation.
pub(super) fn request_body(request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    let system = (!request.system.trim().is_empty()).then(|| WireMessage {
        role: "system",
        content: &request.system,
    });
    let messages = system
        .into_iter()
        .chain(request.messages.iter().map(|m| WireMessage {
            role: m.role.as_str(),
            content: &m.content,
        }))
        .collect();
    serde_json::to_vec(&Body {
        model: request.model.trim(),
        messages,
        temperature: request.temperature,
        max_tokens: request.max_tokens,
    })
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

/// `choices[0].message.content`, `usage.prompt_tokens` / `usage.completion_tokens` (absent
/// usage counts as 0) and `model`. The content may also be an array of `{"type":"text"}`
/// parts, as some compatible servers send; a null content is an error that names the
/// refusal or finish reason.
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
    let content = match message.get("content") {
        Some(Value::String(content)) => content.clone(),
        Some(Value::Array(parts)) => text_parts(parts)?,
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
    })
}

fn text_parts(parts: &[Value]) -> Result<String, String> {
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
    if found {
        Ok(text)
    } else {
        Err("choices[0].message.content has no text parts".to_string())
    }
}

fn null_content(choice: &Value, message: &serde_json::Map<String, Value>) -> String {
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return format!(
            "choices[0].message.content is null; the model refused: {}",
            super::reply::truncate_chars(refusal, 300)
        );
    }
    if message.get("tool_calls").is_some_and(|t| !t.is_null()) {
        return "choices[0].message.content is null; the model asked for tool calls".to_string();
    }
    match choice.get("finish_reason").and_then(Value::as_str) {
        Some(reason) => format!("choices[0].message.content is null (finish_reason {reason:?})"),
        None => "choices[0].message.content is null".to_string(),
    }
}

#[cfg(test)]
mod tests {
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
        }
    }

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
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
        let tools = parse(
            json!({"choices": [{"message": {"content": null, "tool_calls": [{}]}, "finish_reason": "tool_calls"}]}),
        );
        assert!(tools.unwrap_err().contains("tool calls"));
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
}
