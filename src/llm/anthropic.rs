//! Anthropic Messages (`POST {base_url}/messages`).
use serde::Serialize;
use serde_json::Value;

use super::reply::{json_kind, reply_model, token_count, usage_object, Parsed};
use super::{Message, Request, Role};

/// The API version this module speaks.
const API_VERSION: &str = "2023-06-01";

/// Put in front of a conversation that starts with an assistant message.
pub(super) const CONVERSATION_CONTINUES: &str = "(conversation continues)";

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    temperature: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<WireMessage>,
}

#[derive(Serialize, Debug, PartialEq)]
struct WireMessage {
    role: &'static str,
    content: String,
}

/// The JSON body; `system` only when not blank, the messages made to alternate.
pub(super) fn request_body(request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    let system = Some(request.system.as_str()).filter(|s| !s.trim().is_empty());
    serde_json::to_vec(&Body {
        model: request.model.trim(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        system,
        messages: alternate(&request.messages),
    })
}

/// Anthropic requires the first message to be the user's and the roles to alternate.
/// Consecutive messages of one role are merged, joined by a blank line (empty ones add
/// nothing); a conversation that starts with the assistant gets a user message
/// [`CONVERSATION_CONTINUES`] in front.
fn alternate(messages: &[Message]) -> Vec<WireMessage> {
    let mut merged: Vec<(Role, String)> = Vec::with_capacity(messages.len() + 1);
    for message in messages {
        match merged.last_mut() {
            Some((role, text)) if *role == message.role => {
                if !message.content.is_empty() {
                    if !text.is_empty() {
                        text.push_str("\n\n");
                    }
                    text.push_str(&message.content);
                }
            }
            _ => merged.push((message.role, message.content.clone())),
        }
    }
    if merged
        .first()
        .is_some_and(|(role, _)| *role == Role::Assistant)
    {
        merged.insert(0, (Role::User, CONVERSATION_CONTINUES.to_string()));
    }
    merged
        .into_iter()
        .map(|(role, content)| WireMessage {
            role: role.as_str(),
            content,
        })
        .collect()
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

/// The `text` of all `"type": "text"` content blocks, concatenated (other blocks, such as
/// `thinking` or `tool_use`, are skipped; an empty `content` array is an empty reply, a
/// non-empty one without text blocks is an error). Input tokens are `usage.input_tokens`
/// plus the prompt-cache counts `cache_creation_input_tokens` and `cache_read_input_tokens`
/// (0 unless caching is used), so that they cover the whole prompt as OpenAI's do; the two
/// cache counts are kept apart as well, for their own prices.
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
    let mut other_kinds: Vec<String> = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str);
        if kind == Some("text") {
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
        } else {
            other_kinds.push(kind.unwrap_or("?").chars().take(40).collect());
        }
    }
    if text_blocks == 0 && !blocks.is_empty() {
        let stop = match reply.get("stop_reason").and_then(Value::as_str) {
            Some(reason) => format!(", stop_reason {reason:?}"),
            None => String::new(),
        };
        return Err(format!(
            "\"content\" has no text blocks (only {}{stop})",
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
    })
}

#[cfg(test)]
mod tests {
    use super::super::Provider;
    use super::*;
    use serde_json::json;

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }

    fn wire(role: &'static str, content: &str) -> WireMessage {
        WireMessage {
            role,
            content: content.into(),
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
                json!({"content": [{"type": "tool_use"}], "stop_reason": "tool_use"}),
                "\"content\" has no text blocks (only tool_use, stop_reason \"tool_use\")"
                    .to_string(),
            ),
            (
                json!({"content": [{"text": "untyped"}]}),
                "\"content\" has no text blocks (only ?)".to_string(),
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
}
