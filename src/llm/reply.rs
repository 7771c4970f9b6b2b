//! What the two providers' reply parsers share: the parsed shape and the readers of the JSON
//! fields both protocols have (`usage`, `model`), with the wording of their errors. Plain
//! functions; the parsers (openai.rs, anthropic.rs) and classify.rs import this file, and it
//! imports none of them (only the public types of mod.rs).
use serde_json::Value;

use super::ToolCall;

/// A provider's reply parser: the JSON object of a 2xx body to the reply, or why it is unusable.
pub(super) type ParseReply = fn(&serde_json::Map<String, Value>) -> Result<Parsed, String>;

/// What a provider parser extracts from a 2xx body.
#[derive(Debug, PartialEq)]
pub(super) struct Parsed {
    pub content: String,
    /// Every input token, cached or not.
    pub input_tokens: u64,
    /// Of the input tokens, those read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Of the input tokens, those written to the provider's prompt cache (Anthropic).
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// `None` when the body names no model.
    pub model: Option<String>,
    /// Empty for a final answer.
    pub tool_calls: Vec<ToolCall>,
}

/// `usage.<field>` as a token count: absent or null counts as 0; anything but a
/// non-negative integer is an error.
pub(super) fn token_count(
    usage: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<u64, String> {
    match usage.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("usage.{field} is {n}, expected a non-negative integer")),
        Some(other) => Err(format!(
            "usage.{field} is {}, expected a non-negative integer",
            json_kind(other)
        )),
    }
}

/// The `usage` object of a reply; absent or null means "not reported" (all counts 0).
pub(super) fn usage_object(
    reply: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, String> {
    match reply.get("usage") {
        None | Some(Value::Null) => Ok(serde_json::Map::new()),
        Some(Value::Object(usage)) => Ok(usage.clone()),
        Some(other) => Err(format!(
            "\"usage\" is {}, expected an object",
            json_kind(other)
        )),
    }
}

/// The `model` of a reply: absent or null is `None`, a non-string is an error.
pub(super) fn reply_model(
    reply: &serde_json::Map<String, Value>,
) -> Result<Option<String>, String> {
    match reply.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(model)) => Ok(Some(model.clone())),
        Some(other) => Err(format!(
            "\"model\" is {}, expected a string",
            json_kind(other)
        )),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` characters, with "..." appended when something was cut.
pub(super) fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "abc...");
        assert_eq!(truncate_chars("", 0), "");
        assert_eq!(truncate_chars("ééé", 2), "éé...");
    }

    #[test]
    fn usage_and_model_readers() {
        let reply = json!({"usage": {"prompt_tokens": 3, "x": -1}, "model": 7});
        let reply = reply.as_object().unwrap();
        let usage = usage_object(reply).unwrap();
        assert_eq!(token_count(&usage, "prompt_tokens"), Ok(3));
        assert_eq!(token_count(&usage, "absent"), Ok(0));
        assert!(token_count(&usage, "x")
            .unwrap_err()
            .contains("non-negative integer"));
        assert_eq!(
            reply_model(reply).unwrap_err(),
            "\"model\" is a number, expected a string"
        );
        assert_eq!(json_kind(&json!([])), "an array");
    }
}
