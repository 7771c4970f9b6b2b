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
            let role = match m.get("role")?.as_str()? {
                "user" => super::Role::User,
                "assistant" => super::Role::Assistant,
                _ => return None,
            };
            Some(super::Message {
                role,
                content: m.get("content")?.as_str()?.to_string(),
            })
        })
        .collect();
    if from_history.is_empty() {
        vec![super::Message {
            role: super::Role::User,
            content: task_message(title, description, input),
        }]
    } else {
        from_history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
