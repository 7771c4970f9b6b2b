//! JSON Schemas of tool arguments, checked with the `jsonschema` crate (no network: a schema
//! that refers to a remote document is refused when it is registered).
use crate::error::{Error, OrReport};
use pgrx::prelude::*;
use serde_json::Value;

/// How many reasons a refusal lists: enough for the model to repair its call, bounded for
/// the step row and the next prompt.
const MAX_REASONS: usize = 10;

/// Why `instance` does not follow `schema`, at most MAX_REASONS reasons, each with the place
/// in the instance it is about.
pub fn problems(schema: &Value, instance: &Value) -> Result<Vec<String>, String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    Ok(validator
        .iter_errors(instance)
        .take(MAX_REASONS)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect())
}

/// Refuses a schema the worker could not check arguments against (22023, naming `what`).
/// Declared in sql/idempotent/tools.sql.
#[pg_extern(sql = false)]
fn check_json_schema(schema: pgrx::JsonB, what: &str) {
    jsonschema::validator_for(&schema.0)
        .map(|_| ())
        .map_err(|e| Error::InvalidParameter(format!("{what} is not a valid JSON Schema: {e}")))
        .or_report()
}

/// Declared in sql/idempotent/tools.sql.
#[pg_extern(sql = false)]
fn json_schema_errors(schema: pgrx::JsonB, instance: pgrx::JsonB) -> Vec<String> {
    problems(&schema.0, &instance.0)
        .map_err(|e| Error::InvalidParameter(format!("the tool's schema cannot be used: {e}")))
        .or_report()
}

#[cfg(test)]
mod tests {
    use super::problems;
    use serde_json::json;

    #[test]
    fn arguments_that_follow_the_schema_have_no_problems() {
        let schema = json!({"type": "object", "properties": {"member_id": {"type": "integer"}},
                            "required": ["member_id"], "additionalProperties": false});
        assert_eq!(problems(&schema, &json!({"member_id": 7})), Ok(vec![]));
        let found = problems(&schema, &json!({"member_id": "7", "x": 1})).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().any(|p| p.starts_with("/member_id: ")),
            "{found:?}"
        );
        let missing = problems(&schema, &json!({})).unwrap();
        assert!(missing[0].contains("member_id"), "{missing:?}");
    }

    #[test]
    fn reasons_are_bounded() {
        let schema = json!({"type": "array", "items": {"type": "string"}});
        let many = serde_json::Value::Array((0..50).map(|i| json!(i)).collect());
        assert_eq!(problems(&schema, &many).unwrap().len(), super::MAX_REASONS);
    }

    #[test]
    fn a_broken_schema_is_an_error() {
        assert!(problems(&json!({"type": 12}), &json!(1)).is_err());
    }
}
