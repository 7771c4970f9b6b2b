//! Agents that act (issue [tools]): SQL functions as tools, run by the worker's loop under the
//! task's organization, every LLM call and tool call stored as a step. Each test scripts the
//! stub for requests carrying its own marker, so the tests run side by side on one worker.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{enqueue, error_of, wait_for, WorkerEnv};
use serde_json::{json, Value};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

fn env() -> &'static WorkerEnv {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    let env = WorkerEnv::kept(&ENV, "tools", &[]);
    static GYM: Once = Once::new();
    GYM.call_once(|| gym_schema(&mut env.connect()));
    env
}

/// A gym application's tables under row-level security by the organization in the request's
/// JWT claims, as a Supabase app writes them, and its three tools' functions.
fn gym_schema(c: &mut Client) {
    c.batch_execute(
        r#"
        CREATE SCHEMA gym;
        CREATE TABLE gym.members (organization_id uuid NOT NULL, name text NOT NULL, plan text NOT NULL,
                                  frozen boolean NOT NULL DEFAULT false);
        CREATE TABLE gym.freezes (organization_id uuid NOT NULL, name text NOT NULL, tool_call_id text NOT NULL);
        ALTER TABLE gym.members ENABLE ROW LEVEL SECURITY;
        ALTER TABLE gym.freezes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY by_organization ON gym.members
            USING (organization_id = (current_setting('request.jwt.claims', true)::jsonb ->> 'organization_id')::uuid);
        CREATE POLICY by_organization ON gym.freezes
            USING (organization_id = (current_setting('request.jwt.claims', true)::jsonb ->> 'organization_id')::uuid);
        GRANT USAGE ON SCHEMA gym TO ai_agents_tool_runner;
        GRANT SELECT, UPDATE ON gym.members TO ai_agents_tool_runner;
        GRANT SELECT, INSERT ON gym.freezes TO ai_agents_tool_runner;
        CREATE FUNCTION gym.member_lookup(args jsonb) RETURNS jsonb LANGUAGE sql STABLE
            SET search_path = pg_catalog AS $$
            SELECT jsonb_build_object(
                'members', coalesce((SELECT jsonb_agg(jsonb_build_object('name', m.name, 'plan', m.plan) ORDER BY m.plan)
                                       FROM gym.members m WHERE m.name = args ->> 'name'), '[]'),
                'agents_visible', (SELECT count(*) FROM ai_agents.ai_agents))
        $$;
        CREATE FUNCTION gym.class_schedule(args jsonb) RETURNS jsonb LANGUAGE sql STABLE
            SET search_path = pg_catalog AS $$
            SELECT jsonb_build_object('day', args ->> 'day', 'classes', jsonb_build_array('spin 07:00', 'yoga 18:00'))
        $$;
        CREATE FUNCTION gym.freeze_membership(args jsonb) RETURNS jsonb LANGUAGE plpgsql
            SET search_path = pg_catalog AS $$
        DECLARE
            org uuid := (current_setting('request.jwt.claims')::jsonb ->> 'organization_id')::uuid;
        BEGIN
            UPDATE gym.members SET frozen = true WHERE name = args ->> 'name';
            INSERT INTO gym.freezes VALUES (org, args ->> 'name', current_setting('ai_agents.tool_call_id'));
            RETURN jsonb_build_object('frozen', args ->> 'name');
        END
        $$;
        "#,
    )
    .expect("the gym schema");
}

/// A gym (organization) with a member Ana on `plan`, its three tools registered, and an agent
/// of `provider` with `tools` attached; returns (organization, agent).
fn gym(c: &mut Client, provider: &str, plan: &str, tools: &[&str]) -> (String, String) {
    let model = if provider == "openai" {
        "gpt-4o-mini"
    } else {
        "claude-3-5-haiku-latest"
    };
    let org: String = c
        .query_one("SELECT gen_random_uuid()::text", &[])
        .unwrap()
        .get(0);
    c.batch_execute(&format!(
        r#"INSERT INTO gym.members VALUES ('{org}', 'Ana', '{plan}');
           INSERT INTO ai_agents.ai_agent_tools (organization_id, name, description, parameters, function, read_only) VALUES
             ('{org}', 'member_lookup', 'A member''s plan, by name.',
              '{{"type": "object", "properties": {{"name": {{"type": "string"}}}}, "required": ["name"], "additionalProperties": false}}',
              'gym.member_lookup(jsonb)', true),
             ('{org}', 'class_schedule', 'The classes of a day.',
              '{{"type": "object", "properties": {{"day": {{"type": "string"}}}}, "required": ["day"]}}',
              'gym.class_schedule(jsonb)', true),
             ('{org}', 'freeze_membership', 'Freezes a member''s membership.',
              '{{"type": "object", "properties": {{"name": {{"type": "string"}}}}, "required": ["name"]}}',
              'gym.freeze_membership(jsonb)', false);"#
    ))
    .expect("a gym");
    let tools: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
    let agent: String = c
        .query_one(
            "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, system_prompt, provider, model, tools)
             VALUES ($1::text::uuid, 'Customer Care', 'customer_care', 'You help gym members.', $2, $3, $4)
             RETURNING id::text",
            &[&org, &provider, &model, &tools],
        )
        .expect("an agent with tools")
        .get(0);
    (org, agent)
}

/// Scripts the stub's `replies` for requests carrying `marker`, enqueues a task titled with it
/// for `agent`, and waits until `condition` (SQL over the task's row) holds; returns the task.
fn run(c: &mut Client, agent: &str, marker: &str, replies: Value, condition: &str) -> String {
    env().stub.script(replies);
    let task = enqueue(c, agent, marker);
    wait_for(c, &task, condition, Duration::from_secs(20));
    task
}

/// The stub's requests that carry `marker`, oldest first.
fn requests_with(marker: &str) -> Vec<Value> {
    env()
        .stub
        .requests()
        .into_iter()
        .filter(|r| r["body"].to_string().contains(marker))
        .map(|r| r["body"].clone())
        .collect()
}

/// One scripted reply for requests carrying `marker`.
fn reply(marker: &str, content: Option<&str>, calls: Value) -> Value {
    let mut behaviour = json!({"match": marker, "tool_calls": calls});
    if let Some(content) = content {
        behaviour["content"] = json!(content);
    }
    if calls.as_array().is_some_and(Vec::is_empty) {
        behaviour.as_object_mut().unwrap().remove("tool_calls");
    }
    behaviour
}

/// A stored step, as the tests look at it.
#[derive(Debug)]
struct Step {
    kind: String,
    tool: Option<String>,
    code: Option<String>,
}

/// The steps of a task, in order.
fn steps(c: &mut Client, task: &str) -> Vec<Step> {
    c.query(
        "SELECT kind, tool_name, error_code FROM ai_agents.ai_agent_task_steps
          WHERE task_id = $1::text::uuid ORDER BY step_number",
        &[&task],
    )
    .unwrap()
    .iter()
    .map(|r| Step {
        kind: r.get(0),
        tool: r.get(1),
        code: r.get(2),
    })
    .collect()
}

fn three_step_conversation(provider: &str) {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = gym(
        &mut c,
        provider,
        "gold",
        &["member_lookup", "class_schedule"],
    );
    // Another gym's Ana, whom the tool must not see.
    gym(&mut c, provider, "platinum-elsewhere", &[]);
    let marker = format!("freeze-question-{provider}-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_a", "name": "member_lookup", "arguments": {"name": "Ana"}}])
            ),
            reply(
                &marker,
                Some("Checking classes."),
                json!([{"id": "call_b", "name": "class_schedule", "arguments": {"day": "monday"}}])
            ),
            reply(&marker, Some("Ana is on gold; spin at 07:00."), json!([])),
        ]),
        "status = 'completed'",
    );

    let sent = requests_with(&marker);
    assert_eq!(sent.len(), 3, "three LLM calls: {sent:#?}");
    let declared: Vec<String> = sent[0]["tools"]
        .as_array()
        .expect("tools declared")
        .iter()
        .map(|t| {
            let name = if provider == "openai" {
                &t["function"]["name"]
            } else {
                &t["name"]
            };
            name.as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(declared, ["member_lookup", "class_schedule"]);
    let messages = |i: usize| sent[i]["messages"].as_array().unwrap().clone();
    if provider == "openai" {
        let second = messages(1);
        // system, the task, the assistant's call, its result.
        assert_eq!(second.len(), 4, "{second:#?}");
        assert_eq!(second[2]["role"], "assistant");
        assert_eq!(second[2]["tool_calls"][0]["id"], "call_a");
        assert_eq!(
            second[2]["tool_calls"][0]["function"]["name"],
            "member_lookup"
        );
        assert_eq!(second[3]["role"], "tool");
        assert_eq!(second[3]["tool_call_id"], "call_a");
        let result: Value = serde_json::from_str(second[3]["content"].as_str().unwrap()).unwrap();
        assert_eq!(result["members"], json!([{"name": "Ana", "plan": "gold"}]));
        assert_eq!(
            result["agents_visible"], 1,
            "the tool reads its organization's agents only"
        );
        let third = messages(2);
        assert_eq!(third.len(), 6);
        assert_eq!(third[4]["content"], "Checking classes.");
        assert_eq!(third[4]["tool_calls"][0]["id"], "call_b");
        assert_eq!(third[5]["role"], "tool");
        assert_eq!(third[5]["tool_call_id"], "call_b");
    } else {
        let second = messages(1);
        // the task, the assistant's tool_use, the user's tool_result.
        assert_eq!(second.len(), 3, "{second:#?}");
        assert_eq!(second[1]["role"], "assistant");
        assert_eq!(second[1]["content"][0]["type"], "tool_use");
        assert_eq!(second[1]["content"][0]["id"], "call_a");
        assert_eq!(second[1]["content"][0]["input"], json!({"name": "Ana"}));
        assert_eq!(second[2]["role"], "user");
        assert_eq!(second[2]["content"][0]["type"], "tool_result");
        assert_eq!(second[2]["content"][0]["tool_use_id"], "call_a");
        let result: Value =
            serde_json::from_str(second[2]["content"][0]["content"].as_str().unwrap()).unwrap();
        assert_eq!(result["members"], json!([{"name": "Ana", "plan": "gold"}]));
        let third = messages(2);
        assert_eq!(third.len(), 5);
        assert_eq!(third[3]["content"][0]["text"], "Checking classes.");
        assert_eq!(third[3]["content"][1]["id"], "call_b");
        assert_eq!(third[4]["content"][0]["tool_use_id"], "call_b");
    }
    let row = c
        .query_one(
            "SELECT output, attempts, tokens_used,
                    (SELECT sum(input_tokens + output_tokens) FROM ai_agents.ai_agent_task_steps s WHERE s.task_id = t.id)::int,
                    (SELECT count(*) FROM ai_agents.ai_agent_activity_log l WHERE l.task_id = t.id AND l.action_type IN ('llm_step', 'tool_called'))
               FROM ai_agents.ai_agent_tasks t WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Ana is on gold; spin at 07:00.");
    assert_eq!(row.get::<_, i32>(1), 1, "the steps used one attempt");
    assert_eq!(
        row.get::<_, i32>(2),
        row.get::<_, i32>(3),
        "tokens summed over the steps"
    );
    assert_eq!(row.get::<_, i64>(4), 5, "an activity row per step");
    let kinds: Vec<(String, Option<String>)> = steps(&mut c, &task)
        .into_iter()
        .map(|s| (s.kind, s.tool))
        .collect();
    assert_eq!(
        kinds,
        [
            ("llm".to_string(), None),
            ("tool".to_string(), Some("member_lookup".to_string())),
            ("llm".to_string(), None),
            ("tool".to_string(), Some("class_schedule".to_string())),
            ("llm".to_string(), None),
        ]
    );
}

#[test]
fn a_three_step_tool_conversation_over_openai() {
    three_step_conversation("openai");
}

#[test]
fn a_three_step_tool_conversation_over_anthropic() {
    three_step_conversation("anthropic");
}

#[test]
fn a_write_tool_commits_once_with_its_step_and_sees_its_call_id() {
    let env = env();
    let mut c = env.connect();
    let (org, agent) = gym(&mut c, "openai", "silver", &["freeze_membership"]);
    let marker = format!("freeze-me-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_freeze", "name": "freeze_membership", "arguments": {"name": "Ana"}}])
            ),
            reply(&marker, Some("Frozen."), json!([])),
        ]),
        "status = 'completed'",
    );
    let rows: Vec<(String, bool)> = c
        .query(
            "SELECT f.tool_call_id, m.frozen FROM gym.freezes f JOIN gym.members m USING (organization_id, name)
              WHERE f.organization_id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [("call_freeze".to_string(), true)]);
    let stored: Vec<(String, Option<String>)> = c
        .query(
            "SELECT kind, tool_call_id FROM ai_agents.ai_agent_task_steps
              WHERE task_id = $1::text::uuid ORDER BY step_number",
            &[&task],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        [
            ("llm".to_string(), None),
            ("tool".to_string(), Some("call_freeze".to_string())),
            ("llm".to_string(), None)
        ]
    );
    // The other gyms' Anas are untouched.
    let frozen_elsewhere: i64 = c
        .query_one(
            "SELECT count(*) FROM gym.members WHERE frozen AND organization_id <> $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(frozen_elsewhere, 0);
}

#[test]
fn a_tool_not_attached_is_refused_recorded_and_reported_to_the_model() {
    let env = env();
    let mut c = env.connect();
    // freeze_membership is registered for the gym, but not attached to this agent.
    let (org, agent) = gym(&mut c, "openai", "bronze", &["member_lookup"]);
    let marker = format!("sneaky-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_x", "name": "freeze_membership", "arguments": {"name": "Ana"}}])
            ),
            reply(&marker, Some("I could not."), json!([])),
        ]),
        "status = 'completed'",
    );
    let recorded = steps(&mut c, &task);
    assert_eq!(recorded[1].code.as_deref(), Some("42501"), "{recorded:?}");
    let sent = requests_with(&marker);
    let result = &sent[1]["messages"][3];
    assert_eq!(result["tool_call_id"], "call_x");
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("not one of this agent's tools"),
        "{result}"
    );
    let frozen: i64 = c
        .query_one(
            "SELECT count(*) FROM gym.freezes WHERE organization_id = $1::text::uuid",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert_eq!(frozen, 0, "never executed");
}

#[test]
fn a_read_only_tool_that_writes_fails_its_step_with_25006() {
    let env = env();
    let mut c = env.connect();
    let (org, agent) = gym(&mut c, "openai", "gold", &["freeze_membership"]);
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agent_tools SET read_only = true WHERE organization_id = '{org}' AND name = 'freeze_membership'"
    ))
    .unwrap();
    let marker = format!("readonly-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_ro", "name": "freeze_membership", "arguments": {"name": "Ana"}}])
            ),
            reply(&marker, Some("No."), json!([])),
        ]),
        "status = 'completed'",
    );
    let recorded = steps(&mut c, &task);
    assert_eq!(recorded[1].code.as_deref(), Some("25006"), "{recorded:?}");
    let (frozen, logged): (i64, i64) = {
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM gym.members WHERE organization_id = $1::text::uuid AND frozen),
                        (SELECT count(*) FROM ai_agents.ai_agent_activity_log
                          WHERE task_id = $2::text::uuid AND action_type = 'tool_called' AND NOT success
                            AND details ->> 'error_code' = '25006')",
                &[&org, &task],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((frozen, logged), (0, 1));
}

#[test]
fn arguments_against_the_schema_are_refused_before_the_call() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = gym(&mut c, "anthropic", "gold", &["member_lookup"]);
    let marker = format!("bad-args-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_bad", "name": "member_lookup", "arguments": {"name": 7, "x": 1}}])
            ),
            reply(&marker, Some("Sorry."), json!([])),
        ]),
        "status = 'completed'",
    );
    let error: String = c
        .query_one(
            "SELECT error FROM ai_agents.ai_agent_task_steps WHERE task_id = $1::text::uuid AND kind = 'tool'",
            &[&task],
        )
        .unwrap()
        .get(0);
    assert!(error.contains("do not follow the tool's schema"), "{error}");
    assert!(error.contains("/name"), "{error}");
    let sent = requests_with(&marker);
    let result = &sent[1]["messages"][2]["content"][0];
    assert_eq!(result["is_error"], true, "{result}");
}

#[test]
fn max_steps_ends_a_model_that_always_calls_a_tool() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = gym(&mut c, "openai", "gold", &["class_schedule"]);
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agents SET max_steps = 3 WHERE id = '{agent}'"
    ))
    .unwrap();
    let marker = format!("loop-forever-{agent}");
    let always: Vec<Value> = (0..6)
        .map(|_| {
            reply(
                &marker,
                None,
                json!([{"name": "class_schedule", "arguments": {"day": "monday"}}]),
            )
        })
        .collect();
    let task = run(
        &mut c,
        &agent,
        &marker,
        Value::Array(always),
        "status = 'failed'",
    );
    let row = c
        .query_one(
            "SELECT error_message, attempts FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    let (error, attempts): (String, i32) = (row.get(0), row.get(1));
    assert!(error.starts_with("max_steps_exceeded"), "{error}");
    assert_eq!(attempts, 1);
    assert_eq!(
        requests_with(&marker).len(),
        3,
        "exactly max_steps LLM calls"
    );
    let kinds: Vec<String> = steps(&mut c, &task).into_iter().map(|s| s.kind).collect();
    assert_eq!(kinds, ["llm", "tool", "llm", "tool", "llm"]);
}

#[test]
fn a_version_rollback_restores_the_tool_set_and_the_output_schema() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = gym(&mut c, "openai", "gold", &["member_lookup"]);
    c.batch_execute(&format!(
        r#"UPDATE ai_agents.ai_agents SET tools = ARRAY['member_lookup', 'freeze_membership'], max_steps = 4,
                                        output_schema = '{{"type": "object"}}' WHERE id = '{agent}';
           SELECT ai_agents.activate_agent_version('{agent}', 1);"#
    ))
    .unwrap();
    let row = c
        .query_one(
            "SELECT a.tools, a.max_steps,
                    (SELECT array_agg(v.tools::text || ' ' || coalesce(v.output_schema::text, 'none')
                                      ORDER BY v.version_number)
                       FROM ai_agents.ai_agent_versions v WHERE v.agent_id = a.id),
                    a.output_schema IS NULL
               FROM ai_agents.ai_agents a WHERE a.id = $1::text::uuid",
            &[&agent],
        )
        .unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), ["member_lookup"]);
    assert_eq!(row.get::<_, i32>(1), 8);
    assert_eq!(
        row.get::<_, Vec<String>>(2),
        [
            "{member_lookup} none",
            r#"{member_lookup,freeze_membership} {"type": "object"}"#
        ]
    );
    assert!(row.get::<_, bool>(3), "version 1 had no output schema");
}

#[test]
fn tools_are_checked_when_registered_and_attached() {
    let env = env();
    let mut c = env.connect();
    let (org, agent) = gym(&mut c, "openai", "gold", &[]);
    c.batch_execute(
        "CREATE FUNCTION gym.wrong_shape(args text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
         CREATE FUNCTION gym.as_owner(args jsonb) RETURNS jsonb LANGUAGE sql SECURITY DEFINER AS $$ SELECT args $$;
         CREATE FUNCTION gym.hidden(args jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT args $$;
         REVOKE EXECUTE ON FUNCTION gym.hidden(jsonb) FROM PUBLIC;",
    )
    .unwrap();
    let register = |name: &str, function: &str, parameters: &str| {
        format!(
            "INSERT INTO ai_agents.ai_agent_tools (organization_id, name, function, parameters)
             VALUES ('{org}', '{name}', '{function}', '{parameters}')"
        )
    };
    let object = r#"{"type": "object"}"#;
    for (sql, code, words) in [
        (register("shape", "gym.wrong_shape(text)", object), "42P13", "must take (args jsonb) and return jsonb"),
        (register("unqualified", "class_schedule(jsonb)", object), "42883", "the function class_schedule(jsonb) of tool unqualified does not exist"),
        (register("long", &format!("gym.{}(jsonb)", "x".repeat(2000)), object), "42883", "does not exist"),
        (register("owner", "gym.as_owner(jsonb)", object), "42501", "SECURITY DEFINER"),
        (register("hidden", "gym.hidden(jsonb)", object), "42501", "may not execute"),
        (register("bad name!", "gym.class_schedule(jsonb)", object), "23514", "ai_agent_tools_name_check"),
        (register("ai_agents_final_answer", "gym.class_schedule(jsonb)", object), "23514", "ai_agent_tools_name_check"),
        (register("schema", "gym.class_schedule(jsonb)", r#"{"type": 12}"#), "22023", "not a valid JSON Schema"),
        (
            format!("UPDATE ai_agents.ai_agents SET tools = ARRAY['nope'] WHERE id = '{agent}'"),
            "23503",
            "neither built in nor registered",
        ),
        (
            format!("UPDATE ai_agents.ai_agents SET tools = ARRAY['member_lookup', 'member_lookup'] WHERE id = '{agent}'"),
            "22023",
            "names a tool twice",
        ),
        (
            format!(r#"UPDATE ai_agents.ai_agents SET output_schema = '{{"type": "nope"}}' WHERE id = '{agent}'"#),
            "22023",
            "the output schema of agent",
        ),
        (
            format!("UPDATE ai_agents.ai_agents SET output_schema = 'true' WHERE id = '{agent}'"),
            "23514",
            "ai_agents_output_schema_check",
        ),
        (
            format!("UPDATE ai_agents.ai_agents SET max_steps = 0 WHERE id = '{agent}'"),
            "23514",
            "ai_agents_max_steps_check",
        ),
    ] {
        let (got, message) = error_of(&mut c, &sql);
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(words), "{sql}: {message}");
    }
}

/// A Finance agent of `provider` whose answer must follow a forecast schema; returns it.
fn forecaster(c: &mut Client, provider: &str) -> String {
    let (org, _) = gym(c, provider, "gold", &[]);
    let model = if provider == "openai" {
        "gpt-4o-mini"
    } else {
        "claude-3-5-haiku-latest"
    };
    c.query_one(
        r#"INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, system_prompt, provider, model, output_schema)
           VALUES ($1::text::uuid, 'Finance', 'finance', 'You forecast revenue.', $2, $3,
                   '{"type": "object", "required": ["month", "revenue_usd"], "additionalProperties": false,
                     "properties": {"month": {"type": "string"}, "revenue_usd": {"type": "number"}}}')
           RETURNING id::text"#,
        &[&org, &provider, &model],
    )
    .expect("an agent with an output schema")
    .get(0)
}

/// A scripted answer: OpenAI's is the content; Anthropic's the forced answer tool's input.
fn answer(provider: &str, marker: &str, value: Value) -> Value {
    if provider == "openai" {
        json!({"match": marker, "content": value.to_string()})
    } else {
        json!({"match": marker, "tool_calls": [{"name": "ai_agents_final_answer", "arguments": value}]})
    }
}

fn structured(provider: &str) {
    let env = env();
    let mut c = env.connect();
    let agent = forecaster(&mut c, provider);
    // Invalid, then valid: one repair turn, and the result is stored.
    let marker = format!("forecast-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            answer(
                provider,
                &marker,
                json!({"month": "2026-12", "revenue_usd": "a lot"})
            ),
            answer(
                provider,
                &marker,
                json!({"month": "2026-12", "revenue_usd": 41250.5})
            ),
        ]),
        "status = 'completed'",
    );
    let result: String = c
        .query_one(
            "SELECT result::text FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result, json!({"month": "2026-12", "revenue_usd": 41250.5}));
    let sent = requests_with(&marker);
    assert_eq!(sent.len(), 2, "{sent:#?}");
    if provider == "openai" {
        assert_eq!(sent[0]["response_format"]["type"], "json_schema");
        assert_eq!(sent[0]["response_format"]["json_schema"]["strict"], true);
        assert_eq!(
            sent[0]["response_format"]["json_schema"]["schema"]["required"],
            json!(["month", "revenue_usd"])
        );
    } else {
        assert_eq!(sent[0]["tools"][0]["name"], "ai_agents_final_answer");
        assert_eq!(sent[0]["tool_choice"]["name"], "ai_agents_final_answer");
    }
    let repair = sent[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .to_string();
    assert!(
        repair.contains("does not follow the required JSON Schema")
            && repair.contains("/revenue_usd"),
        "{repair}"
    );
    // Always invalid: fails for good after the repair turn, with schema_invalid.
    let marker = format!("forecast-again-{agent}");
    let bad = json!({"month": 12});
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            answer(provider, &marker, bad.clone()),
            answer(provider, &marker, bad.clone()),
            answer(provider, &marker, bad)
        ]),
        "status = 'failed'",
    );
    let row = c
        .query_one(
            "SELECT error_message, attempts, result IS NULL FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    let (error, attempts, no_result): (String, i32, bool) = (row.get(0), row.get(1), row.get(2));
    assert!(error.starts_with("schema_invalid"), "{error}");
    assert_eq!((attempts, no_result), (1, true));
    assert_eq!(requests_with(&marker).len(), 2, "exactly two calls");
}

#[test]
fn a_structured_answer_gets_one_repair_turn_over_openai() {
    structured("openai");
}

#[test]
fn a_structured_answer_gets_one_repair_turn_over_anthropic() {
    structured("anthropic");
}

/// SIGKILLs the worker, if one is running now.
fn kill_worker(c: &mut Client) -> bool {
    let pid: Option<i32> = c
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'ai_agents worker'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0));
    match pid {
        // SAFETY: sending a signal to a process of our own test cluster.
        Some(pid) => unsafe { libc::kill(pid, libc::SIGKILL) == 0 },
        None => false,
    }
}

#[test]
fn a_write_tool_takes_effect_exactly_once_through_repeated_sigkills() {
    const TASKS: usize = 200;
    const KILLS: usize = 12;
    let env = WorkerEnv::start("tools-killed", &["synchronous_commit = on"]);
    let mut c = env.connect();
    gym_schema(&mut c);
    let (org, agent) = gym(&mut c, "openai", "gold", &["freeze_membership"]);
    c.batch_execute(
        "CREATE TABLE gym.effects (organization_id uuid, tool_call_id text, key text);
         GRANT INSERT ON gym.effects TO ai_agents_tool_runner;
         CREATE FUNCTION gym.record_effect(args jsonb) RETURNS jsonb LANGUAGE plpgsql
             SET search_path = pg_catalog AS $$
         BEGIN
             INSERT INTO gym.effects VALUES ((current_setting('request.jwt.claims')::jsonb ->> 'organization_id')::uuid,
                                             current_setting('ai_agents.tool_call_id'), args ->> 'key');
             PERFORM pg_sleep(0.005);
             RETURN jsonb_build_object('done', 'done-' || (args ->> 'key'));
         END
         $$;",
    )
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_tools (organization_id, name, function, read_only)
         VALUES ('{org}', 'record_effect', 'gym.record_effect(jsonb)', false);
         UPDATE ai_agents.ai_agents SET tools = ARRAY['record_effect'] WHERE id = '{agent}';"
    ))
    .unwrap();
    env.stub.set_default_delay_ms(40);
    // Per task: its final answer once the tool's result is in the request, else its tool
    // call. A call repeated after a kill finds its behaviour again (three of each).
    let mut script = vec![];
    for i in 0..TASKS {
        let key = format!("k{i}-{agent}");
        for _ in 0..3 {
            script.push(json!({"match": format!("done-{key}"), "content": "recorded"}));
        }
        for _ in 0..3 {
            script.push(json!({"match": format!("effect-task-{i}-{agent}"),
                               "tool_calls": [{"id": format!("call-{i}"), "name": "record_effect",
                                               "arguments": {"key": key}}]}));
        }
    }
    env.stub.script(Value::Array(script));
    let mut rng = 0x9e37_79b9_u64;
    let mut random = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    let mut kills = 0;
    let mut enqueued = 0;
    while kills < KILLS {
        for _ in 0..TASKS / KILLS {
            c.execute(
                "INSERT INTO ai_agents.ai_agent_tasks (organization_id, agent_id, title, max_attempts)
                 VALUES ($1::text::uuid, $2::text::uuid, $3, 50)",
                &[&org, &agent, &format!("effect-task-{enqueued}-{agent}")],
            )
            .unwrap();
            enqueued += 1;
        }
        std::thread::sleep(Duration::from_millis(100 + random(500)));
        if kill_worker(&mut c) {
            kills += 1;
        }
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        c = env.reconnect(Duration::from_secs(60));
    }
    while enqueued < TASKS {
        c.execute(
            "INSERT INTO ai_agents.ai_agent_tasks (organization_id, agent_id, title, max_attempts)
             VALUES ($1::text::uuid, $2::text::uuid, $3, 50)",
            &[&org, &agent, &format!("effect-task-{enqueued}-{agent}")],
        )
        .unwrap();
        enqueued += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let open: i64 = c
            .query_one(
                "SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE agent_id = $1::text::uuid AND status <> 'completed'",
                &[&agent],
            )
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} tasks still open");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each stored tool step's effect exists exactly once, and no effect exists without one.
    let (steps, effects, once, orphans): (i64, i64, i64, i64) = {
        let row = c
            .query_one(
                "WITH s AS (SELECT tool_call_id FROM ai_agents.ai_agent_task_steps
                             WHERE organization_id = $1::text::uuid AND kind = 'tool'),
                      e AS (SELECT tool_call_id, count(*) AS n FROM gym.effects GROUP BY 1)
                 SELECT (SELECT count(*) FROM s), (SELECT coalesce(sum(n), 0)::int8 FROM e),
                        (SELECT count(*) FROM s JOIN e USING (tool_call_id) WHERE e.n = 1),
                        (SELECT count(*) FROM e WHERE e.tool_call_id NOT IN (SELECT tool_call_id FROM s))",
                &[&org],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    // Every request the stub saw, by task and by how far into the run it was.
    let mut seen: std::collections::HashMap<(String, usize), usize> = Default::default();
    for request in env.stub.requests() {
        let messages = request["body"]["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(task) = messages
            .get(1)
            .and_then(|m| m["content"].as_str())
            .and_then(|text| text.strip_prefix("Task: "))
        else {
            continue;
        };
        *seen.entry((task.to_string(), messages.len())).or_default() += 1;
    }
    let repeated: usize = seen.values().map(|n| n - 1).sum();
    let rescued: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_activity_log
              WHERE agent_id = $1::text::uuid AND action_type = 'lease_expired'",
            &[&agent],
        )
        .unwrap()
        .get(0);
    println!(
        "tools under SIGKILL: {TASKS} tasks, {kills} kills, {steps} tool steps, {effects} effects \
         ({once} exactly once, {orphans} without a step), {} LLM requests, {repeated} repeated, \
         {rescued} runs rescued",
        seen.values().sum::<usize>()
    );
    assert!(kills >= 10);
    assert_eq!(steps, TASKS as i64, "every task called its tool once");
    assert_eq!((effects, once, orphans), (steps, steps, 0));
    // A call is asked again only when a kill interrupted it before its reply was stored:
    // never more often than runs were rescued.
    assert!(
        repeated as i64 <= rescued,
        "{repeated} repeated calls, {rescued} rescues"
    );
    for ((task, at), n) in &seen {
        let rescues: i64 = c
            .query_one(
                "SELECT count(*) FROM ai_agents.ai_agent_activity_log l
                   JOIN ai_agents.ai_agent_tasks t ON t.id = l.task_id
                  WHERE t.title = $1 AND l.action_type = 'lease_expired'",
                &[task],
            )
            .unwrap()
            .get(0);
        assert!(
            (*n as i64) <= 1 + rescues,
            "{task} asked {n} times at {at} messages with {rescues} rescues"
        );
    }
}

#[test]
fn a_built_in_tool_serves_every_organization_unless_one_registers_its_own() {
    let env = env();
    let mut c = env.connect();
    let (org, agent) = gym(&mut c, "openai", "gold", &[]);
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agents SET tools = ARRAY['current_time'] WHERE id = '{agent}'"
    ))
    .unwrap();
    let marker = format!("what-time-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_t", "name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}}])
            ),
            reply(
                &marker,
                None,
                json!([{"id": "call_z", "name": "current_time", "arguments": {"timezone": "Mars/Olympus"}}])
            ),
            reply(&marker, Some("It is morning in Tokyo."), json!([])),
        ]),
        "status = 'completed'",
    );
    let rows: Vec<(Option<String>, Option<String>, Option<String>)> = c
        .query(
            "SELECT result ->> 'timezone', result ->> 'local', error_code FROM ai_agents.ai_agent_task_steps
              WHERE task_id = $1::text::uuid AND kind = 'tool' ORDER BY step_number",
            &[&task],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows[0].0.as_deref(), Some("Asia/Tokyo"), "{rows:?}");
    assert_eq!(rows[0].1.as_ref().map(String::len), Some(19), "{rows:?}");
    // An unknown time zone is the tool's error, sent back to the model.
    assert_eq!(rows[1].2.as_deref(), Some("22023"), "{rows:?}");
    // An organization's own tool of that name replaces the built-in one for it alone.
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_tools (organization_id, name, function)
         VALUES ('{org}', 'current_time', 'gym.class_schedule(jsonb)')"
    ))
    .unwrap();
    let marker = format!("what-time-again-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_o", "name": "current_time", "arguments": {"day": "monday"}}])
            ),
            reply(&marker, Some("Spin at 07:00."), json!([])),
        ]),
        "status = 'completed'",
    );
    let classes: String = c
        .query_one(
            "SELECT result ->> 'classes' FROM ai_agents.ai_agent_task_steps
              WHERE task_id = $1::text::uuid AND kind = 'tool'",
            &[&task],
        )
        .unwrap()
        .get(0);
    assert!(classes.contains("spin 07:00"), "{classes}");
}

#[test]
fn a_step_the_limits_refuse_waits_with_its_steps_kept_and_no_attempt_used() {
    let env = env();
    let mut c = env.connect();
    let (org, agent) = gym(&mut c, "openai", "gold", &["class_schedule"]);
    // One call a minute for this agent: its second call (after the tool) is refused.
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_per_minute)
         VALUES ('{org}', '{agent}', 1)"
    ))
    .unwrap();
    let marker = format!("held-step-{agent}");
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            reply(
                &marker,
                None,
                json!([{"id": "call_h", "name": "class_schedule", "arguments": {"day": "monday"}}])
            ),
            reply(&marker, Some("Spin at 07:00."), json!([])),
        ]),
        "status = 'pending' AND step_count = 2",
    );
    std::thread::sleep(Duration::from_millis(500));
    let row = c
        .query_one(
            "SELECT status, attempts, step_count,
                    (SELECT count(*) FROM ai_agents.ai_agent_activity_log l
                      WHERE l.agent_id = t.agent_id AND l.action_type = 'rate_limited')
               FROM ai_agents.ai_agent_tasks t WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap();
    let held: (String, i32, i32, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        held,
        ("pending".to_string(), 0, 2, 1),
        "held back, steps kept, no attempt used"
    );
    assert_eq!(requests_with(&marker).len(), 1);
    // Room again: the next step runs, and the run is still its first attempt.
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agent_rate_limits SET max_per_minute = 100 WHERE agent_id = '{agent}';
         SELECT ai_agents.run_scheduler_once();"
    ))
    .unwrap();
    wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(20),
    );
    let (attempts, steps): (i32, i32) = {
        let row = c
            .query_one(
                "SELECT attempts, step_count FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
                &[&task],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((attempts, steps), (1, 3));
    assert_eq!(
        requests_with(&marker).len(),
        2,
        "the stored reply was not asked for again"
    );
}

#[test]
fn hostile_model_output_and_slow_tools_fail_their_steps_alone() {
    let env = env();
    let mut c = env.connect();
    let (org, agent) = gym(&mut c, "openai", "gold", &[]);
    c.batch_execute(&format!(
        "CREATE FUNCTION gym.slow_{n}(args jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT pg_sleep(2); SELECT args $$;
         CREATE FUNCTION gym.big_{n}(args jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT to_jsonb(repeat('x', 70000)) $$;
         INSERT INTO ai_agents.ai_agent_tools (organization_id, name, function, timeout_ms) VALUES
           ('{org}', 'slow', 'gym.slow_{n}(jsonb)', 200), ('{org}', 'big', 'gym.big_{n}(jsonb)', 5000);
         UPDATE ai_agents.ai_agents SET tools = ARRAY['member_lookup', 'slow', 'big'] WHERE id = '{agent}';",
        n = agent.replace('-', "_")
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let marker = format!("hostile-output-{agent}");
    let huge = "y".repeat(70_000);
    // A reply whose arguments are not JSON, sent verbatim as a provider would.
    let not_json = json!({
        "id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_bad", "type": "function",
                            "function": {"name": "member_lookup", "arguments": "{\"email\": "}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}
    });
    let task = run(
        &mut c,
        &agent,
        &marker,
        json!([
            {"match": marker, "body": not_json.to_string()},
            reply(&marker, None, json!([
                {"id": "call_huge", "name": "member_lookup", "arguments": {"name": huge}},
                {"id": "call_slow", "name": "slow", "arguments": {}},
                {"id": "call_big", "name": "big", "arguments": {}}
            ])),
            reply(&marker, Some("Sorry, nothing worked."), json!([])),
        ]),
        "status = 'completed'",
    );
    let codes: Vec<(String, Option<String>)> = c
        .query(
            "SELECT tool_call_id, error_code FROM ai_agents.ai_agent_task_steps
              WHERE task_id = $1::text::uuid AND kind = 'tool' ORDER BY step_number",
            &[&task],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let code = |s: &str| Some(s.to_string());
    assert_eq!(
        codes,
        [
            ("call_bad".to_string(), code("22P02")),
            ("call_huge".to_string(), code("54000")),
            ("call_slow".to_string(), code("57014")),
            ("call_big".to_string(), code("54000")),
        ]
    );
    // The worker never restarted, and the answer came after the errors went back.
    let sent = requests_with(&marker);
    assert_eq!(sent.len(), 3);
    let last = sent[2]["messages"].to_string();
    // The timeout ended the tool's subtransaction, not the step's transaction.
    assert!(
        last.contains("canceling statement due to statement timeout")
            && !last.contains("could not commit"),
        "{last}"
    );
}

#[test]
fn a_recurring_tasks_next_run_starts_afresh() {
    let env = env();
    let mut c = env.connect();
    let (org, agent) = gym(&mut c, "openai", "gold", &["class_schedule"]);
    let marker = format!("every-second-{agent}");
    env.stub.script(json!([
        reply(
            &marker,
            None,
            json!([{"id": "call_r1", "name": "class_schedule", "arguments": {"day": "monday"}}])
        ),
        reply(&marker, Some("first run done"), json!([])),
        reply(&marker, Some("second run done"), json!([])),
    ]));
    let task: String = c
        .query_one(
            "INSERT INTO ai_agents.ai_agent_tasks (organization_id, agent_id, title, task_type, schedule_cron)
             VALUES ($1::text::uuid, $2::text::uuid, $3, 'scheduled', '* * * * * *') RETURNING id::text",
            &[&org, &agent, &marker],
        )
        .unwrap()
        .get(0);
    wait_for(
        &mut c,
        &task,
        "coalesce(output = 'second run done', false)",
        Duration::from_secs(20),
    );
    c.batch_execute(&format!("SELECT ai_agents.cancel_task('{task}')"))
        .unwrap();
    let sent = requests_with(&marker);
    assert!(sent.len() >= 3, "{sent:#?}");
    // The second run's call sends the task alone: none of the first run's steps.
    assert_eq!(
        sent[2]["messages"].as_array().unwrap().len(),
        2,
        "{:#?}",
        sent[2]
    );
    let kinds: Vec<String> = steps(&mut c, &task).into_iter().map(|s| s.kind).collect();
    assert_eq!(kinds[..4], ["llm", "tool", "llm", "llm"]);
    let first: i32 = c
        .query_one(
            "SELECT run_first_step FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
            &[&task],
        )
        .unwrap()
        .get(0);
    assert!(
        first >= 5,
        "each run ended moved run_first_step past its steps: {first}"
    );
}

#[test]
fn a_tool_step_that_cannot_commit_is_stored_once_with_its_error() {
    let env = env();
    let mut c = env.connect();
    let (_, agent) = gym(&mut c, "openai", "gold", &[]);
    // Uncommitted, so the worker never sees the task: this session claims it itself.
    let mut t = c.transaction().unwrap();
    let id: String = t
        .query_one(
            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, 'cannot commit')",
            &[&agent],
        )
        .unwrap()
        .get(0);
    let token: i64 = t
        .query_one(
            "SELECT fencing_token FROM ai_agents.claim_due_tasks('tester', 1, '1 minute') WHERE id = $1::text::uuid",
            &[&id],
        )
        .unwrap()
        .get(0);
    let record = |t: &mut ai_agents_tests::postgres::Transaction,
                  token: i64,
                  error: &str|
     -> String {
        t.query_one(
            "SELECT ai_agents._record_tool_failure($1::text::uuid, $2, 2, 'call_c', 'freeze', $3, '23505')",
            &[&id, &token, &error],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(record(&mut t, token, "deferred constraint"), "failed");
    assert_eq!(record(&mut t, token, "again"), "failed");
    assert_eq!(record(&mut t, token + 1, "stale"), "stale");
    let steps: Vec<(String, String)> = t
        .query(
            "SELECT error, error_code FROM ai_agents.ai_agent_task_steps WHERE task_id = $1::text::uuid",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        steps,
        [(
            "the tool's transaction could not commit: deferred constraint".to_string(),
            "23505".to_string()
        )]
    );
    let logged: i64 = t
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_activity_log
              WHERE task_id = $1::text::uuid AND action_type = 'tool_called' AND NOT success",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(logged, 2, "each attempt to record it is logged");
    t.rollback().unwrap();
}
