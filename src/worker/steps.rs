//! The agent loop's side in the worker (docs/tools.md). A task whose version has tools sends
//! its run's stored steps with every call; a reply that calls tools is stored as a step
//! (record.rs), then each call runs here, in a transaction of its own on this main thread,
//! and the task goes back to be claimed for its next call. Nothing here is held in memory
//! across a crash: a run resumes from its rows, a stored reply is never asked for again and a
//! stored tool step is never run again.
use super::statements::Statements;
use crate::llm;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use serde_json::Value;

/// Tool calls in order, each with the step number it is stored as.
pub type NumberedCalls = Vec<(i32, llm::ToolCall)>;

/// The tool calls of one reply still to run.
pub struct ToolRun {
    pub task_id: String,
    pub fencing_token: i64,
    pub calls: NumberedCalls,
}

/// A run's stored steps, as messages after the task's own, and the calls of its last reply
/// that have no step yet (a crash came between the reply and its tools).
pub fn replay(steps: &Value) -> (Vec<llm::Message>, NumberedCalls) {
    let mut messages = vec![];
    let mut asked: NumberedCalls = vec![];
    for step in steps.as_array().map(Vec::as_slice).unwrap_or_default() {
        let text = |field: &str| step.get(field).and_then(Value::as_str).unwrap_or_default();
        let number = step
            .get("step_number")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(0);
        match text("kind") {
            "llm" => {
                let calls = tool_calls(step.get("tool_calls").unwrap_or(&Value::Null));
                asked = (number + 1..).zip(calls.iter().cloned()).collect();
                messages.push(llm::Message::assistant(text("content"), calls));
                // An answer the output schema refused: its repair turn.
                if let Some(why) = step.get("error").and_then(Value::as_str) {
                    messages.push(llm::Message::user(format!("{REPAIR}{why}")));
                }
            }
            "tool" => {
                let id = text("tool_call_id");
                asked.retain(|(_, call)| call.id != id);
                let (content, is_error) = match step.get("result") {
                    Some(result) if !result.is_null() => (result.to_string(), false),
                    _ => (format!("error: {}", text("error")), true),
                };
                messages.push(llm::Message::tool_result(id, content, is_error));
            }
            _ => {}
        }
    }
    (messages, asked)
}

/// What the repair turn of a refused answer says before the reasons (fair_claim counts its
/// bytes into a call's token bound).
pub const REPAIR: &str =
    "Your answer does not follow the required JSON Schema. Answer again, with only JSON that does. The problems: ";

/// The answer as JSON, or why the output schema refuses it.
pub fn check_answer(schema: &Value, answer: &str) -> Result<Value, String> {
    let value: Value =
        serde_json::from_str(answer.trim()).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let problems = crate::tools::schema_problems(schema, &value)
        .map_err(|e| format!("the output schema cannot be used ({e})"))?;
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(problems.join("; "))
    }
}

/// The tool calls of a stored reply, `[{id, name, arguments}]`, as the worker stored them.
fn tool_calls(stored: &Value) -> Vec<llm::ToolCall> {
    stored
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|call| {
            let text = |field: &str| {
                call.get(field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            llm::ToolCall {
                id: text("id"),
                name: text("name"),
                arguments: text("arguments"),
            }
        })
        .collect()
}

/// The tool calls of a reply, as they are stored in its step.
pub fn stored_calls(calls: &[llm::ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| serde_json::json!({"id": c.id, "name": c.name, "arguments": c.arguments}))
            .collect(),
    )
}

/// How one tool call's transaction ended.
pub enum Ran {
    /// Stored (with its result or its error), or stored before.
    Stored,
    /// The run is no longer this worker's: nothing more of it runs.
    Stale,
}

/// Runs one call through _run_tool_step, in the caller's transaction (`step` in mod.rs).
pub fn run_one(st: &Statements, run: &ToolRun, number: i32, call: &llm::ToolCall) -> Ran {
    store(&st.tool, "running", run, number, call, &[&call.arguments])
}

/// Stores a call whose transaction could not commit, with that error.
pub fn record_failure(
    st: &Statements,
    run: &ToolRun,
    number: i32,
    call: &llm::ToolCall,
    message: &str,
    code: &str,
) -> Ran {
    store(
        &st.tool_failure,
        "recording",
        run,
        number,
        call,
        &[message, code],
    )
}

/// Runs `statement` (_run_tool_step or _record_tool_failure) for one call: the run, the step
/// number and the call, then `rest`; its status says whether the run is still this worker's.
fn store(
    statement: &OwnedPreparedStatement,
    what: &str,
    run: &ToolRun,
    number: i32,
    call: &llm::ToolCall,
    rest: &[&str],
) -> Ran {
    let mut args: Vec<DatumWithOid> = vec![
        run.task_id.as_str().into(),
        run.fencing_token.into(),
        number.into(),
        call.id.as_str().into(),
        call.name.as_str().into(),
    ];
    args.extend(rest.iter().map(|text| (*text).into()));
    let status = Spi::connect(|client| {
        client
            .select(statement, Some(1), &args)?
            .first()
            .get_one::<String>()
    })
    .unwrap_or_else(|e| {
        error!(
            "{what} tool step {number} of task {} failed: {e}",
            run.task_id
        )
    });
    if status.as_deref() == Some("stale") {
        Ran::Stale
    } else {
        Ran::Stored
    }
}

/// Puts the task back to be claimed for its next call, once all its calls are stored.
pub fn continue_task(st: &Statements, run: &ToolRun) {
    Spi::connect(|client| {
        client
            .select(
                &st.continue_task,
                Some(1),
                &[run.task_id.as_str().into(), run.fencing_token.into()],
            )
            .map(|_| ())
    })
    .unwrap_or_else(|e| error!("continuing task {} failed: {e}", run.task_id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(id: &str, name: &str) -> llm::ToolCall {
        llm::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: "{\"a\":1}".into(),
        }
    }

    #[test]
    fn steps_become_the_assistant_turns_and_tool_results() {
        let calls = vec![call("c1", "lookup"), call("c2", "schedule")];
        let steps = json!([
            {"step_number": 1, "kind": "llm", "content": "", "tool_calls": stored_calls(&calls)},
            {"step_number": 2, "kind": "tool", "tool_call_id": "c1", "result": {"plan": "gold"}},
            {"step_number": 3, "kind": "tool", "tool_call_id": "c2", "result": null, "error": "boom"},
        ]);
        let (messages, pending) = replay(&steps);
        assert_eq!(
            messages,
            vec![
                llm::Message::assistant("", calls),
                llm::Message::tool_result("c1", "{\"plan\":\"gold\"}", false),
                llm::Message::tool_result("c2", "error: boom", true),
            ]
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn a_refused_answer_is_followed_by_its_repair_turn() {
        let schema = json!({"type": "object", "required": ["total"],
                            "properties": {"total": {"type": "number"}}});
        assert_eq!(
            check_answer(&schema, " {\"total\": 3} "),
            Ok(json!({"total": 3}))
        );
        let why = check_answer(&schema, "{\"total\": \"3\"}").unwrap_err();
        assert!(why.starts_with("/total: "), "{why}");
        let not_json = check_answer(&schema, "Total: 3").unwrap_err();
        assert!(not_json.starts_with("the answer is not JSON"), "{not_json}");
        let steps = json!([{"step_number": 1, "kind": "llm", "content": "Total: 3", "tool_calls": [],
                            "error": not_json}]);
        let (messages, pending) = replay(&steps);
        assert_eq!(
            messages,
            vec![
                llm::Message::assistant("Total: 3", vec![]),
                llm::Message::user(format!("{REPAIR}{not_json}")),
            ]
        );
        assert!(pending.is_empty());
        // fair_claim's token bound counts 128 bytes for it.
        assert!(REPAIR.len() < 128);
    }

    #[test]
    fn calls_without_a_step_are_still_to_run_with_their_numbers() {
        let calls = vec![
            call("c1", "lookup"),
            call("c2", "schedule"),
            call("c3", "x"),
        ];
        let steps = json!([
            {"step_number": 4, "kind": "llm", "content": "let me look", "tool_calls": stored_calls(&calls)},
            {"step_number": 5, "kind": "tool", "tool_call_id": "c1", "result": 1},
        ]);
        let (_, pending) = replay(&steps);
        assert_eq!(pending, vec![(6, calls[1].clone()), (7, calls[2].clone())]);
        // A final reply (no calls) leaves nothing to run.
        let (_, none) = replay(
            &json!([{"step_number": 1, "kind": "llm", "content": "done", "tool_calls": []}]),
        );
        assert!(none.is_empty());
    }
}
