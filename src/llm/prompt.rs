//! The user message that presents a task to the model.
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
