//! The messages of a call: a task's user message, or a conversation's history.
use serde_json::Value;

/// The user message of a task, in a fixed layout:
///
/// ```text
/// Task: {title}
///
/// {description}
///
/// Input:
/// {input as pretty-printed JSON}
/// ```
///
/// Empty parts are left out with their blank line: a blank title, a missing or blank
/// description, and an input that is `null` or `{}`. Title and description are trimmed.
pub fn task_message(title: &str, description: Option<&str>, input: &Value) -> String {
    let mut parts: Vec<String> = Vec::with_capacity(3);
    let title = title.trim();
    if !title.is_empty() {
        parts.push(format!("Task: {title}"));
    }
    if let Some(description) = description.map(str::trim).filter(|d| !d.is_empty()) {
        parts.push(description.to_string());
    }
    let empty_input = match input {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    };
    if !empty_input {
        let pretty = serde_json::to_string_pretty(input).unwrap_or_else(|_| input.to_string());
        parts.push(format!("Input:\n{pretty}"));
    }
    parts.join("\n\n")
}

/// The bytes of a task's user message, from its input as PostgreSQL prints it (an input the
/// worker cannot read is never sent: its length will do).
pub fn task_message_bytes(title: &str, description: Option<&str>, input: &str) -> u64 {
    let bytes = match serde_json::from_str::<Value>(input) {
        Ok(input) => task_message(title, description, &input).len(),
        Err(_) => title.len() + description.map_or(0, str::len) + input.len(),
    };
    bytes as u64
}

/// Tokens of framing per message (role, separators), more than either provider adds.
pub const TOKENS_PER_MESSAGE: u64 = 8;

/// The size of what a call sends, for an upper bound of the tokens it can use.
#[derive(Clone, Copy, Debug)]
pub struct PromptSize {
    pub system_bytes: u64,
    /// The task's user message.
    pub message_bytes: u64,
    /// A conversation task: the most bytes of history it sends, and the most messages.
    pub history: Option<(u64, u64)>,
    /// The agent loop: the bytes of its tool declarations and stored steps (texts, ids,
    /// arguments, results), and how many there are.
    pub tools_and_steps: (u64, u64),
}

impl PromptSize {
    /// The most tokens the call can use, input and output. Byte-level BPE tokenizers, as
    /// OpenAI's and Anthropic's are, make no token of less than one byte of text, so a
    /// text's bytes bound its tokens; each message (the system prompt is one) adds its
    /// framing, and the reply at most `max_tokens`. A tool declaration or a step is framed
    /// twice over: a declaration's wrapping and a step's ids and role outweigh a message's.
    pub fn token_bound(&self, max_tokens: u64) -> u64 {
        let (bytes, messages) = match self.history {
            // A conversation with no messages yet sends the task's message instead.
            Some((history, count)) => (history.max(self.message_bytes), count.max(1)),
            None => (self.message_bytes, 1),
        };
        let (loop_bytes, loop_items) = self.tools_and_steps;
        self.system_bytes
            .saturating_add(bytes)
            .saturating_add(TOKENS_PER_MESSAGE.saturating_mul(messages + 2))
            .saturating_add(loop_bytes)
            .saturating_add(
                TOKENS_PER_MESSAGE
                    .saturating_mul(2)
                    .saturating_mul(loop_items),
            )
            .saturating_add(max_tokens)
    }
}

/// A conversation task sends its history; any other task one user message built from it.
pub fn messages(
    title: &str,
    description: Option<&str>,
    input: &Value,
    history: Option<Value>,
) -> Vec<super::Message> {
    let from_history: Vec<super::Message> = history
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let content = m.get("content")?.as_str()?;
            match m.get("role")?.as_str()? {
                "user" => Some(super::Message::user(content)),
                "assistant" => Some(super::Message::assistant(content, Vec::new())),
                _ => None,
            }
        })
        .collect();
    if from_history.is_empty() {
        let task = task_message(title, description, input);
        vec![super::Message::user(task)]
    } else {
        from_history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_token_bound_covers_every_byte_sent_and_the_reply() {
        let input = r#"{"member": "Ana", "plan": {"name": "Gold", "months": [1, 2]}}"#;
        let bytes = task_message_bytes("Freeze?", Some("Answer kindly."), input);
        let sent = task_message(
            "Freeze?",
            Some("Answer kindly."),
            &serde_json::from_str(input).unwrap(),
        );
        // Pretty-printed, the message is longer than the input as PostgreSQL prints it.
        assert_eq!(bytes, sent.len() as u64);
        assert!(bytes > input.len() as u64);
        let task = PromptSize {
            system_bytes: 40,
            message_bytes: bytes,
            history: None,
            tools_and_steps: (0, 0),
        };
        assert_eq!(
            task.token_bound(256),
            40 + bytes + 3 * TOKENS_PER_MESSAGE + 256
        );
        // A conversation: its history's bound, or the task message when that is longer.
        let talk = PromptSize {
            history: Some((1_000, 20)),
            ..task
        };
        assert_eq!(talk.token_bound(0), 40 + 1_000 + 22 * TOKENS_PER_MESSAGE);
        let short = PromptSize {
            history: Some((10, 0)),
            ..task
        };
        assert_eq!(short.token_bound(0), 40 + bytes + 3 * TOKENS_PER_MESSAGE);
        // Multi-byte text: one token per byte at most, never per character.
        assert_eq!(
            task_message_bytes("é", None, "null"),
            "Task: é".len() as u64
        );
        // An input the worker cannot read still has a bound.
        assert_eq!(task_message_bytes("t", None, "{bad"), 5);
        // The loop: its tools and steps, each framed twice over.
        let looped = PromptSize {
            tools_and_steps: (500, 3),
            ..task
        };
        assert_eq!(
            looped.token_bound(256),
            task.token_bound(256) + 500 + 6 * TOKENS_PER_MESSAGE
        );
        let huge = PromptSize {
            system_bytes: u64::MAX,
            message_bytes: 1,
            history: None,
            tools_and_steps: (u64::MAX, u64::MAX),
        };
        assert_eq!(huge.token_bound(u64::MAX), u64::MAX);
    }

    #[test]
    fn full_layout() {
        let message = task_message(
            "Summarise the ticket",
            Some("Write two sentences.\nBe kind."),
            &json!({"ticket": 42, "tags": ["a", "b"]}),
        );
        assert_eq!(
            message,
            "Task: Summarise the ticket\n\nWrite two sentences.\nBe kind.\n\nInput:\n{\n  \"tags\": [\n    \"a\",\n    \"b\"\n  ],\n  \"ticket\": 42\n}"
        );
    }

    #[test]
    fn empty_parts_are_left_out() {
        assert_eq!(task_message("T", None, &Value::Null), "Task: T");
        assert_eq!(task_message("T", Some(""), &json!({})), "Task: T");
        assert_eq!(task_message(" T \n", Some("  \n "), &json!({})), "Task: T");
        assert_eq!(task_message("T", Some(" d "), &Value::Null), "Task: T\n\nd");
        assert_eq!(
            task_message("", Some("d"), &json!({"k": "v"})),
            "d\n\nInput:\n{\n  \"k\": \"v\"\n}"
        );
        assert_eq!(task_message("", None, &json!(7)), "Input:\n7");
        assert_eq!(task_message("  ", None, &Value::Null), "");
    }

    #[test]
    fn non_object_inputs_are_kept() {
        assert_eq!(task_message("T", None, &json!([])), "Task: T\n\nInput:\n[]");
        assert_eq!(
            task_message("T", None, &json!("")),
            "Task: T\n\nInput:\n\"\""
        );
        assert_eq!(
            task_message("T", None, &json!(false)),
            "Task: T\n\nInput:\nfalse"
        );
    }

    #[test]
    fn text_is_not_escaped() {
        let message = task_message(
            "Say \"hi\"",
            Some("a\tb"),
            &json!({"q": "line\nbreak \"x\""}),
        );
        assert_eq!(
            message,
            "Task: Say \"hi\"\n\na\tb\n\nInput:\n{\n  \"q\": \"line\\nbreak \\\"x\\\"\"\n}"
        );
    }
}

#[cfg(test)]
mod messages_tests {
    use super::*;
    use crate::llm::Role;
    use serde_json::json;

    #[test]
    fn a_conversation_sends_its_user_and_assistant_turns() {
        let history = json!([
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "ignored"},
            {"role": "assistant", "content": "hello"},
            {"role": "user"}
        ]);
        let sent = messages("t", None, &Value::Null, Some(history));
        let sent: Vec<(Role, &str)> = sent.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(sent, [(Role::User, "hi"), (Role::Assistant, "hello")]);
    }

    #[test]
    fn any_other_task_sends_one_user_message() {
        for history in [None, Some(json!([])), Some(json!({"not": "a list"}))] {
            let sent = messages("Greet", Some("kindly"), &json!({"name": "Ann"}), history);
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].role, Role::User);
            assert_eq!(
                sent[0].content,
                task_message("Greet", Some("kindly"), &json!({"name": "Ann"}))
            );
        }
    }
}
