//! Limits at the door: what a member may store in a task's input or a conversation message,
//! checked by the tables' validation triggers where the row is written, so that whatever was
//! accepted the worker can read and send. The settings are superuser-only, with documented
//! defaults (docs/settings.md); the checks are plain functions.
use crate::error::{Error, OrReport};
use crate::settings::{MAX_INPUT_BYTES, MAX_INPUT_DEPTH, MAX_MESSAGE_BYTES};
use pgrx::prelude::*;

/// Why a value is refused, with the message that names the problem.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Over a size or depth limit (SQLSTATE 54000).
    LimitExceeded(String),
    /// Something the worker could not read (SQLSTATE 22023).
    Unreadable(String),
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Error {
        match refusal {
            Refusal::LimitExceeded(message) => Error::LimitExceeded(message),
            Refusal::Unreadable(message) => Error::InvalidParameter(message),
        }
    }
}

/// Whether a task's input, as the JSON text of its jsonb, may be stored: at most `max_bytes`
/// long, nested at most `max_depth` deep, and readable by the worker (its JSON reader keeps
/// numbers as doubles, so one beyond their range is refused).
pub fn check_input(json: &str, max_bytes: usize, max_depth: usize) -> Result<(), Refusal> {
    if json.len() > max_bytes {
        return Err(Refusal::LimitExceeded(format!(
            "the task's input is {} bytes of JSON; at most {max_bytes} are allowed (ai_agents.max_input_bytes)",
            json.len()
        )));
    }
    let depth = nesting_depth(json);
    if depth > max_depth {
        return Err(Refusal::LimitExceeded(format!(
            "the task's input is nested {depth} levels deep; at most {max_depth} are allowed (ai_agents.max_input_depth)"
        )));
    }
    serde_json::from_str::<serde_json::Value>(json)
        .map(|_| ())
        .map_err(|e| {
            Refusal::Unreadable(format!(
                "the task's input cannot be read by the worker ({e}): numbers must lie within ±1.7976931348623157e308"
            ))
        })
}

/// Whether a member's message of `bytes` bytes may be stored.
pub fn check_message(bytes: usize, max_bytes: usize) -> Result<(), Refusal> {
    if bytes > max_bytes {
        return Err(Refusal::LimitExceeded(format!(
            "the message is {bytes} bytes long; at most {max_bytes} are allowed (ai_agents.max_message_bytes)"
        )));
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in JSON text (brackets inside strings ignored).
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn setting(value: i32) -> usize {
    usize::try_from(value).unwrap_or(0)
}

// Both declared in sql/idempotent/limits.sql, so that install and upgrade create them alike.

/// The tasks' validation trigger's check of an input (jsonb passed as its text).
#[pg_extern(sql = false)]
fn check_task_input(input: &str) {
    check_input(
        input,
        setting(MAX_INPUT_BYTES.get()),
        setting(MAX_INPUT_DEPTH.get()),
    )
    .map_err(Error::from)
    .or_report()
}

/// The messages' validation trigger's check of a member's message.
#[pg_extern(sql = false)]
fn check_message_size(bytes: i32) {
    check_message(setting(bytes), setting(MAX_MESSAGE_BYTES.get()))
        .map_err(Error::from)
        .or_report()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings() {
        assert_eq!(nesting_depth("{}"), 1);
        assert_eq!(nesting_depth("1"), 0);
        assert_eq!(nesting_depth(r#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(nesting_depth(r#"{"a": "[[[{{{", "b": "\"]["}"#), 1);
        assert_eq!(nesting_depth(&"[".repeat(200)), 200);
    }

    #[test]
    fn inputs_within_the_limits_pass() {
        assert!(check_input(r#"{"member": 7, "x": [1.5e300]}"#, 100, 2).is_ok());
        assert!(check_input("{}", 2, 1).is_ok());
    }

    /// The message of a refusal of the expected kind.
    fn refused(result: Result<(), Refusal>, limit: bool) -> String {
        match (result, limit) {
            (Err(Refusal::LimitExceeded(message)), true) => message,
            (Err(Refusal::Unreadable(message)), false) => message,
            (other, _) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn inputs_beyond_a_limit_are_refused_with_the_setting_named() {
        let too_big = refused(check_input(r#"{"a": 1}"#, 7, 10), true);
        assert!(too_big.contains("8 bytes of JSON; at most 7"), "{too_big}");
        let too_deep = refused(check_input("[[[1]]]", 100, 2), true);
        assert!(
            too_deep.contains("nested 3 levels deep; at most 2"),
            "{too_deep}"
        );
        let unreadable = refused(check_input(r#"{"n": 1e400}"#, 100, 10), false);
        assert!(unreadable.contains("number out of range"), "{unreadable}");
    }

    #[test]
    fn messages_beyond_the_limit_are_refused() {
        assert!(check_message(10, 10).is_ok());
        let message = refused(check_message(11, 10), true);
        assert!(message.contains("11 bytes long; at most 10"), "{message}");
    }
}
