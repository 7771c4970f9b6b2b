//! Security (issue [security]): the permission matrix generated from the catalog, tenants kept
//! apart by row-level security and checked entry points, a hostile public schema, secrets that
//! appear nowhere, and the outbound URL allowlist. With AI_AGENTS_TEST_TARGET=citus (run so by
//! scripts/test) every one of them runs against a Citus coordinator with two workers, the tables
//! distributed: the hostile objects, the dumps and the logs on every node.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::Cluster;
use ai_agents_tests::{
    as_role, claims, create_agent, enqueue, error_of, fresh_database, on_citus, on_every_node,
    shared_cluster, strings, supabase_roles, wait_for, WorkerEnv, PLANTED_KEY,
};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

const ORG_A: &str = "0000000a-0000-4000-8000-00000000000a";
const ORG_B: &str = "0000000b-0000-4000-8000-00000000000b";
const AGENT_A: &str = "a0000000-0000-4000-8000-00000000000a";
const AGENT_B: &str = "b0000000-0000-4000-8000-00000000000b";

/// A database with the extension, Supabase's grants applied after it was installed (the roles
/// came later), and two organizations with an agent, a task, a conversation and a report each.
fn tenant_database() -> (Client, String) {
    supabase_roles();
    let (mut c, db) = fresh_database();
    let applied: Vec<String> = c
        .query_one("SELECT ai_agents.apply_role_grants()", &[])
        .unwrap()
        .get(0);
    assert_eq!(applied, vec!["service_role", "authenticated"]);
    c.batch_execute(
        "CREATE FUNCTION public.echo_tool(args jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT args'",
    )
    .expect("a tool's function");
    for (org, agent) in [(ORG_A, AGENT_A), (ORG_B, AGENT_B)] {
        c.batch_execute(&format!(
            "INSERT INTO ai_agents.ai_agents (id, organization_id, name, agent_type, model)
             VALUES ('{agent}', '{org}', 'Care {org}', 'customer_care', 'gpt-4o-mini');
             SELECT ai_agents.enqueue_task('{agent}', 'task of {org}');
             SELECT ai_agents.send_message((ai_agents.start_conversation('{agent}')).id, 'hello from {org}');
             SELECT ai_agents.build_report('Customer Care Weekly Summary', '{org}', '2026-11-16', '2026-11-23', '{agent}');
             INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, max_per_minute) VALUES ('{org}', 10);
             INSERT INTO ai_agents.ai_agent_organization_limits (organization_id, max_waiting_tasks) VALUES ('{org}', 100);
             INSERT INTO ai_agents.ai_agent_budgets (organization_id, period, limit_usd) VALUES ('{org}', 'month', 50);
             SELECT ai_agents._budget_room('{org}', '{agent}');
             INSERT INTO ai_agents.ai_agent_tools (organization_id, name, function) VALUES ('{org}', 'echo', 'public.echo_tool(jsonb)');
             INSERT INTO ai_agents.ai_agent_task_steps (organization_id, task_id, step_number, agent_id, kind, content, fencing_token)
             SELECT organization_id, id, 1, agent_id, 'llm', 'a step of {org}', 0
               FROM ai_agents.ai_agent_tasks WHERE organization_id = '{org}' AND task_type = 'adhoc';
             INSERT INTO ai_agents.ai_agent_activity_log (organization_id, agent_id, action_type, success)
             VALUES ('{org}', '{agent}', 'task_completed', true);
             INSERT INTO ai_agents.ai_agent_usage_hourly
                 (organization_id, agent_id, provider, model, hour, attempts, succeeded, tokens, cost_usd)
             VALUES ('{org}', '{agent}', 'openai', 'gpt-4o-mini', '2026-01-01', 1, 1, 10, 0.01);"
        ))
        .expect("tenant fixture");
    }
    (c, db)
}

/// Tables an organization's members read (their rows only); every other relation is for the
/// service role alone.
const TENANT_TABLES: &[&str] = &[
    "ai_agents",
    "ai_agent_versions",
    "ai_agent_tasks",
    "ai_agent_activity_log",
    "ai_agent_conversations",
    "ai_agent_messages",
    "ai_agent_reports",
    "ai_agent_report_templates",
    "ai_agent_usage_hourly",
    "ai_agent_rate_limits",
    "ai_agent_model_prices",
    "ai_agent_organization_limits",
    "ai_agent_budgets",
    "ai_agent_budget_periods",
    "ai_agent_tools",
    "ai_agent_builtin_tools",
    "ai_agent_task_steps",
    "budget_usage",
    "agent_budget_state",
];
/// Of those, the global tables everyone reads whole (no organization).
const GLOBAL_TABLES: &[&str] = &["ai_agent_model_prices", "ai_agent_builtin_tools"];
/// The functions of the built-in tools, which the tool runner executes.
const BUILTIN_TOOL_FUNCTIONS: &[&str] = &["ai_agents.tool_current_time(jsonb)"];
/// Of those, the views (security_invoker: the tables' row-level security applies).
const TENANT_VIEWS: &[&str] = &["budget_usage", "agent_budget_state"];
const SERVICE_ONLY_RELATIONS: &[&str] = &["rate_limit_usage", "organization_queue"];

/// What a browser may call. Every other function of the extension is the service role's.
const AUTHENTICATED_FUNCTIONS: &[&str] = &[
    "ai_agents._request_organization_ids()",
    "ai_agents._hook_organization_ids()",
    "ai_agents.enqueue_task(uuid,text,text,jsonb,text,integer,timestamp with time zone,text,text,text,integer,uuid)",
    "ai_agents.cancel_task(uuid,text)",
    "ai_agents.start_conversation(uuid,text,jsonb)",
    "ai_agents.send_message(uuid,text,text)",
    "ai_agents.get_latest_agent_report(uuid,text)",
    "ai_agents.task_summary(interval,uuid)",
    "ai_agents.forward_request_claims()",
];
/// The roles that run what others wrote: template queries (the reader) and tools (the runner).
const RESTRICTED_ROLES: &[&str] = &["ai_agents_report_reader", "ai_agents_tool_runner"];
/// SECURITY DEFINER only where a browser's call must write: each checks the organization.
const SECURITY_DEFINER: &[&str] = &[
    "ai_agents.enqueue_task(uuid,text,text,jsonb,text,integer,timestamp with time zone,text,text,text,integer,uuid)",
    "ai_agents.cancel_task(uuid,text)",
    "ai_agents.start_conversation(uuid,text,jsonb)",
    "ai_agents.send_message(uuid,text,text)",
];
/// SQL helpers left unpinned so they can be inlined; only pinned functions call them.
const UNPINNED_SQL_HELPERS: &[&str] = &[
    "ai_agents._current_actor()",
    "ai_agents._next_run_after(text,text,timestamp with time zone)",
    "ai_agents.forward_request_claims()",
];

#[test]
fn the_permission_matrix_generated_from_the_catalog_holds_cell_by_cell() {
    let (mut c, db) = tenant_database();
    // Function names print with their schema.
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    let relations = strings(
        &mut c,
        "SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = 'ai_agents'::regnamespace
            AND c.relkind IN ('r', 'v', 'm', 'p', 'f') ORDER BY 1",
    );
    let functions = strings(
        &mut c,
        "SELECT regexp_replace(p.oid::regprocedure::text, ', ', ',', 'g') FROM pg_proc p
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'ai_agents' ORDER BY 1",
    );
    assert!(
        relations.len() >= 12 && functions.len() >= 50,
        "{relations:?} {functions:?}"
    );
    let unclassified: Vec<&String> = relations
        .iter()
        .filter(|r| {
            !TENANT_TABLES.contains(&r.as_str()) && !SERVICE_ONLY_RELATIONS.contains(&r.as_str())
        })
        .collect();
    assert!(
        unclassified.is_empty(),
        "relations nobody classified: {unclassified:?}"
    );

    // The roles that run SQL others wrote (report template queries, tools): no superuser, no
    // RLS bypass, no login.
    for role in RESTRICTED_ROLES {
        let unbound: bool = c
            .query_one(
                "SELECT rolsuper OR rolbypassrls OR rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[role],
            )
            .unwrap()
            .get(0);
        assert!(!unbound, "{role} is a superuser, bypasses RLS or logs in");
    }
    // Privileges, from the catalog: PUBLIC (as the role `nobody` and as 'public'), anon,
    // authenticated, service_role and the restricted roles, on every relation and function.
    let roles = ["public", "nobody", "anon", "authenticated", "service_role"]
        .into_iter()
        .chain(RESTRICTED_ROLES.iter().copied());
    let roles: Vec<&str> = roles.collect();
    let mut cells = 0;
    for relation in &relations {
        for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
            for &role in &roles {
                let expected = match role {
                    "service_role" => true,
                    "authenticated" | "ai_agents_report_reader" | "ai_agents_tool_runner" => {
                        privilege == "SELECT" && TENANT_TABLES.contains(&relation.as_str())
                    }
                    _ => false,
                };
                let got: bool = c
                    .query_one(
                        "SELECT has_table_privilege($1, ('ai_agents.' || quote_ident($2))::regclass, $3)",
                        &[&role, relation, &privilege],
                    )
                    .unwrap()
                    .get(0);
                assert_eq!(got, expected, "{role} {privilege} on {relation}");
                cells += 1;
            }
        }
    }
    for function in &functions {
        for &role in &roles {
            let expected = match role {
                "service_role" => true,
                "authenticated" => AUTHENTICATED_FUNCTIONS.contains(&function.as_str()),
                // Only what the policies call, and the runner the built-in tools.
                "ai_agents_report_reader" => function == "ai_agents._request_organization_ids()",
                "ai_agents_tool_runner" => {
                    function == "ai_agents._request_organization_ids()"
                        || BUILTIN_TOOL_FUNCTIONS.contains(&function.as_str())
                }
                _ => false,
            };
            let got: bool = c
                .query_one(
                    "SELECT has_function_privilege($1, $2::text::regprocedure, 'EXECUTE')",
                    &[&role, function],
                )
                .unwrap()
                .get(0);
            assert_eq!(got, expected, "{role} EXECUTE {function}");
            cells += 1;
        }
    }
    for role in ["public", "nobody", "anon"] {
        let usage: bool = c
            .query_one(
                "SELECT has_schema_privilege($1, 'ai_agents', 'USAGE')",
                &[&role],
            )
            .unwrap()
            .get(0);
        assert!(!usage, "{role} reaches the schema");
    }

    // Row by row: each organization's member sees its own rows and writes no table directly;
    // anon reaches nothing.
    for (org, other) in [(ORG_A, ORG_B), (ORG_B, ORG_A)] {
        let mut member = as_role(&db, "authenticated", Some(&claims(org)));
        for table in TENANT_TABLES {
            let visible: i64 = member
                .query_one(&format!("SELECT count(*) FROM ai_agents.{table}"), &[])
                .unwrap()
                .get(0);
            let filter = match *table {
                "ai_agent_model_prices" | "ai_agent_builtin_tools" => "true".to_string(),
                "ai_agent_report_templates" => {
                    format!("organization_id IS NULL OR organization_id = '{org}'")
                }
                _ => format!("organization_id = '{org}'"),
            };
            let expected: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM ai_agents.{table} WHERE {filter}"),
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(visible, expected, "{org} reading {table}");
            if !GLOBAL_TABLES.contains(table) && *table != "ai_agent_report_templates" {
                assert!(expected > 0, "the fixture has {table} rows of {org}");
                let foreign: i64 = member
                    .query_one(&format!("SELECT count(*) FROM ai_agents.{table} WHERE organization_id = '{other}'"), &[])
                    .unwrap()
                    .get(0);
                assert_eq!(foreign, 0, "{org} sees {other}'s {table}");
            }
            let column: String = c
                .query_one(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = ('ai_agents.' || $1)::regclass AND attnum = 1",
                    &[table],
                )
                .unwrap()
                .get(0);
            // A view refuses writes before privileges are looked at (55000); the matrix
            // above shows members have none on it.
            let writes = if TENANT_VIEWS.contains(table) {
                vec![]
            } else {
                vec![
                    format!("DELETE FROM ai_agents.{table}"),
                    format!("UPDATE ai_agents.{table} t SET {column} = t.{column}"),
                    format!("INSERT INTO ai_agents.{table} DEFAULT VALUES"),
                ]
            };
            for write in writes {
                let (code, message) = error_of(&mut member, &write);
                assert_eq!(code, "42501", "{write}: {message}");
            }
            cells += 4;
        }
    }
    let mut anon = as_role(&db, "anon", None);
    for table in TENANT_TABLES {
        let (code, _) = error_of(&mut anon, &format!("SELECT 1 FROM ai_agents.{table}"));
        assert_eq!(code, "42501");
    }
    let (code, _) = error_of(
        &mut anon,
        &format!("SELECT ai_agents.enqueue_task('{AGENT_A}', 'x')"),
    );
    assert_eq!(code, "42501");
    // service_role sees and writes everything.
    let mut service = as_role(&db, "service_role", None);
    let all: i64 = service
        .query_one("SELECT count(*) FROM ai_agents.ai_agent_tasks", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        all, 6,
        "per organization: enqueued, conversation, report narrative"
    );
    service
        .batch_execute(&format!("SELECT ai_agents.claim_due_tasks('svc', 1, '1 minute', ARRAY['{ORG_A}']::uuid[]); UPDATE ai_agents.ai_agent_rate_limits SET max_per_minute = 11 WHERE organization_id = '{ORG_A}'"))
        .expect("service_role writes");
    println!(
        "permission matrix: {} relations, {} functions, {cells} cells asserted",
        relations.len(),
        functions.len()
    );
}

#[test]
fn security_definer_only_where_needed_and_every_function_pins_its_search_path() {
    let (mut c, _db) = fresh_database();
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    let definers = strings(
        &mut c,
        "SELECT regexp_replace(p.oid::regprocedure::text, ', ', ',', 'g') FROM pg_proc p
          WHERE p.pronamespace = 'ai_agents'::regnamespace AND p.prosecdef ORDER BY 1",
    );
    let mut expected: Vec<String> = SECURITY_DEFINER.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(definers, expected);
    // Every function written in SQL or PL/pgSQL pins search_path, but for the two inlined helpers.
    let unpinned = strings(
        &mut c,
        "SELECT regexp_replace(p.oid::regprocedure::text, ', ', ',', 'g') FROM pg_proc p
          JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'ai_agents'::regnamespace AND l.lanname IN ('sql', 'plpgsql')
           AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
         ORDER BY 1",
    );
    assert_eq!(unpinned, UNPINNED_SQL_HELPERS.to_vec());
}

#[test]
fn one_organization_cannot_touch_anothers_agents_tasks_or_conversations() {
    let (mut c, db) = tenant_database();
    let task_b: String = c
        .query_one(&format!("SELECT id::text FROM ai_agents.ai_agent_tasks WHERE organization_id = '{ORG_B}' AND task_type = 'adhoc'"), &[])
        .unwrap()
        .get(0);
    let conversation_b: String = c
        .query_one(&format!("SELECT id::text FROM ai_agents.ai_agent_conversations WHERE organization_id = '{ORG_B}'"), &[])
        .unwrap()
        .get(0);
    let mut a = as_role(&db, "authenticated", Some(&claims(ORG_A)));
    // Guessing ids reads nothing.
    for sql in [
        format!("SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE id = '{task_b}'"),
        format!("SELECT count(*) FROM ai_agents.ai_agent_messages WHERE conversation_id = '{conversation_b}'"),
        format!("SELECT count(*) FROM ai_agents.ai_agents WHERE id = '{AGENT_B}'"),
    ] {
        let n: i64 = a.query_one(&sql, &[]).unwrap().get(0);
        assert_eq!(n, 0, "{sql}");
    }
    let report: Option<String> = a
        .query_one(
            &format!("SELECT (ai_agents.get_latest_agent_report('{AGENT_B}')).id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(report.is_none());
    let own: Option<String> = a
        .query_one(
            &format!("SELECT (ai_agents.get_latest_agent_report('{AGENT_A}')).id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(own.is_some());
    let total: i64 = a
        .query_one(
            "SELECT total_tasks FROM ai_agents.task_summary('1 day')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(total, 3, "the summary counts A's tasks only");

    // Acting on B's objects fails with the same clear error whether they exist or not.
    for (sql, object) in [
        (
            format!("SELECT ai_agents.enqueue_task('{AGENT_B}', 'spend B''s budget')"),
            format!("agent {AGENT_B}"),
        ),
        (
            "SELECT ai_agents.enqueue_task('b0000000-0000-4000-8000-0000000000ff', 'guess')"
                .to_string(),
            "agent b0000000-0000-4000-8000-0000000000ff".to_string(),
        ),
        (
            format!("SELECT ai_agents.cancel_task('{task_b}')"),
            format!("task {task_b}"),
        ),
        (
            format!("SELECT ai_agents.start_conversation('{AGENT_B}')"),
            format!("agent {AGENT_B}"),
        ),
        (
            format!("SELECT ai_agents.send_message('{conversation_b}', 'hi')"),
            format!("conversation {conversation_b}"),
        ),
    ] {
        let (code, message) = error_of(&mut a, &sql);
        assert_eq!(
            (code.as_str(), message.as_str()),
            (
                "42501",
                format!("{object} is not in your organization").as_str()
            ),
            "{sql}"
        );
    }
    // Versioning and worker functions are not a member's at all.
    for sql in [
        format!("SELECT ai_agents.create_agent_version_from_current('{AGENT_B}')"),
        format!("SELECT ai_agents.activate_agent_version('{AGENT_A}', 1)"),
        "SELECT ai_agents.claim_due_tasks('me', 10, '1 minute')".to_string(),
        format!("SELECT ai_agents.build_report('Customer Care Weekly Summary', '{ORG_A}', '2026-11-16', '2026-11-23')"),
    ] {
        let (code, _) = error_of(&mut a, &sql);
        assert_eq!(code, "42501", "{sql}");
    }
    // A's own agent with B's conversation: the composite foreign key refuses it.
    let (code, message) = error_of(
        &mut a,
        &format!("SELECT ai_agents.enqueue_task('{AGENT_A}', 'read B', task_type => 'conversation', conversation_id => '{conversation_b}')"),
    );
    assert_eq!(code, "23503", "{message}");
    // Nothing of B's changed.
    let b_tasks: i64 = c
        .query_one(&format!("SELECT count(*) FROM ai_agents.ai_agent_tasks WHERE organization_id = '{ORG_B}' AND status = 'pending'"), &[])
        .unwrap()
        .get(0);
    assert_eq!(b_tasks, 3);
    // Its own: enqueue, converse, cancel.
    let own_task: String = a
        .query_one(&format!("SELECT id::text FROM ai_agents.enqueue_task('{AGENT_A}', 'mine', idempotency_key => 'k1')"), &[])
        .unwrap()
        .get(0);
    // The conversation first, then the call with its id: under Citus a call taking a subquery
    // over a distributed table would run on the shard (docs/distributed.md).
    let conversation_a: String = a
        .query_one(&format!("SELECT id::text FROM ai_agents.ai_agent_conversations WHERE agent_id = '{AGENT_A}'"), &[])
        .unwrap()
        .get(0);
    let reply: String = a
        .query_one(
            &format!(
                "SELECT task_type FROM ai_agents.send_message('{conversation_a}', 'and again')"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reply, "conversation");
    let status: String = a
        .query_one(
            &format!("SELECT status FROM ai_agents.cancel_task('{own_task}')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "cancelled");
    let by: String = c
        .query_one(&format!("SELECT details ->> 'by' FROM ai_agents.ai_agent_activity_log WHERE task_id = '{own_task}' AND action_type = 'task_cancelled'"), &[])
        .unwrap()
        .get(0);
    assert_eq!(by, format!("user-of-{ORG_A}"), "the JWT's user is recorded");
}

#[test]
fn organizations_come_from_a_nested_claim_or_a_membership_hook() {
    let (mut c, db) = tenant_database();
    c.batch_execute(
        "CREATE TABLE public.memberships (user_id text, organization_id uuid);
         GRANT SELECT ON public.memberships TO authenticated;
         CREATE FUNCTION public.member_organizations() RETURNS uuid[] LANGUAGE sql STABLE AS
           $$ SELECT coalesce(array_agg(organization_id), '{}') FROM public.memberships
               WHERE user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub' $$;
         GRANT EXECUTE ON FUNCTION public.member_organizations() TO authenticated;",
    )
    .unwrap();
    if on_citus() {
        // The hook runs where the policies do, on the workers too: its table is on every node.
        c.batch_execute("SELECT create_reference_table('public.memberships')")
            .unwrap();
    }
    c.batch_execute(&format!(
        "INSERT INTO public.memberships VALUES ('coach', '{ORG_A}'), ('coach', '{ORG_B}'), ('trainee', '{ORG_B}')"
    ))
    .unwrap();
    let visible_agents = |client: &mut Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM ai_agents.ai_agents", &[])
            .unwrap()
            .get(0)
    };
    // A nested claim, as Supabase's app_metadata. The settings are the superuser's to make:
    // here per database, on every node (under Citus the workers' policies read them too).
    on_every_node(
        &db,
        &format!("ALTER DATABASE {db} SET ai_agents.jwt_organization_claim = 'app_metadata.organizations'"),
    );
    let nested_claims =
        format!(r#"{{"sub": "x", "app_metadata": {{"organizations": ["{ORG_A}", "{ORG_B}"]}}}}"#);
    let mut nested = as_role(&db, "authenticated", Some(&nested_claims));
    assert_eq!(visible_agents(&mut nested), 2);
    let mut flat = as_role(&db, "authenticated", Some(&claims(ORG_A)));
    assert_eq!(
        visible_agents(&mut flat),
        0,
        "the claim is read where the setting says"
    );
    // The membership hook instead of claims.
    on_every_node(
        &db,
        &format!(
            "ALTER DATABASE {db} SET ai_agents.organization_hook = 'public.member_organizations'"
        ),
    );
    for (user, expected) in [("coach", 2), ("trainee", 1), ("stranger", 0)] {
        let mut member = as_role(
            &db,
            "authenticated",
            Some(&format!(r#"{{"sub": "{user}"}}"#)),
        );
        assert_eq!(visible_agents(&mut member), expected, "{user}");
    }
    on_every_node(
        &db,
        &format!("ALTER DATABASE {db} RESET ai_agents.jwt_organization_claim; ALTER DATABASE {db} RESET ai_agents.organization_hook"),
    );
    // Only a superuser chooses where organizations come from.
    let mut member = as_role(&db, "authenticated", Some(&claims(ORG_A)));
    let (code, _) = error_of(
        &mut member,
        "SET ai_agents.organization_hook = 'public.member_organizations'",
    );
    assert_eq!(code, "42501");
    let (code, _) = error_of(&mut member, "SET ai_agents.jwt_organization_claim = 'sub'");
    assert_eq!(code, "42501");
    // A claim that is not a uuid is an error, not an empty answer.
    let mut member = as_role(
        &db,
        "authenticated",
        Some(r#"{"sub": "x", "organization_id": "gym-7"}"#),
    );
    let (code, message) = error_of(&mut member, "SELECT count(*) FROM ai_agents.ai_agents");
    assert_eq!(code, "22P02", "{message}");
}

/// Functions and operators in public that shadow built-ins for the types the extension's SQL
/// uses; each records that it ran. Exact signatures lose to pg_catalog only while pg_catalog
/// is searched first, so the tests also put public before it.
const HOSTILE: &str = "
    CREATE TABLE IF NOT EXISTS public.hostile_calls (what text);
    GRANT INSERT ON public.hostile_calls TO PUBLIC;
    CREATE OR REPLACE FUNCTION public.hostile(what text) RETURNS void LANGUAGE sql AS
        $$ INSERT INTO public.hostile_calls VALUES (what) $$;
    CREATE OR REPLACE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS
        $$ SELECT public.hostile('now'); SELECT pg_catalog.now() $$;
    CREATE OR REPLACE FUNCTION public.btrim(text) RETURNS text LANGUAGE sql AS
        $$ SELECT public.hostile('btrim'); SELECT pg_catalog.btrim($1) $$;
    CREATE OR REPLACE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS
        $$ SELECT public.hostile('lower'); SELECT pg_catalog.lower($1) $$;
    CREATE OR REPLACE FUNCTION public.format(text, uuid) RETURNS text LANGUAGE sql AS
        $$ SELECT public.hostile('format'); SELECT pg_catalog.format($1, $2) $$;
    CREATE OR REPLACE FUNCTION public.jsonb_build_object(text, uuid) RETURNS jsonb LANGUAGE sql AS
        $$ SELECT public.hostile('jsonb_build_object'); SELECT pg_catalog.jsonb_build_object($1, $2) $$;
    CREATE OR REPLACE FUNCTION public.gen_random_uuid() RETURNS uuid LANGUAGE sql AS
        $$ SELECT public.hostile('gen_random_uuid'); SELECT pg_catalog.gen_random_uuid() $$;
    CREATE OR REPLACE FUNCTION public.hostile_eq(text, text) RETURNS boolean LANGUAGE sql AS
        $$ SELECT public.hostile('= text'); SELECT pg_catalog.texteq($1, $2) $$;
    CREATE OR REPLACE FUNCTION public.hostile_uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE sql AS
        $$ SELECT public.hostile('= uuid'); SELECT pg_catalog.uuid_eq($1, $2) $$;
    CREATE OR REPLACE FUNCTION public.hostile_int_eq(integer, integer) RETURNS boolean LANGUAGE sql AS
        $$ SELECT public.hostile('= int'); SELECT pg_catalog.int4eq($1, $2) $$;
    CREATE OR REPLACE FUNCTION public.hostile_jsonb_concat(jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS
        $$ SELECT public.hostile('|| jsonb'); SELECT pg_catalog.jsonb_concat($1, $2) $$;
    DO $$ BEGIN
        CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.hostile_eq);
        CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.hostile_uuid_eq);
        CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.hostile_int_eq);
        CREATE OPERATOR public.|| (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.hostile_jsonb_concat);
    EXCEPTION WHEN duplicate_function THEN NULL;
    END $$;
";

#[test]
fn a_hostile_public_schema_never_runs_inside_the_extension() {
    // Under Citus the hostile objects are on every node, where the extension's triggers,
    // policies and functions run too, and every node records what ran.
    let (nodes, db): (Vec<&Cluster>, String) = if on_citus() {
        let citus = ai_agents_tests::citus::shared();
        (citus.nodes().collect(), citus.blank_database())
    } else {
        let cluster = shared_cluster();
        (vec![cluster], cluster.create_blank_database())
    };
    let mut c = nodes[0].connect(&db);
    // Before install.
    on_every_node(&db, HOSTILE);
    c.batch_execute("CREATE EXTENSION ai_agents").unwrap();
    if on_citus() {
        c.batch_execute("SET client_min_messages = warning; SELECT ai_agents.distribute(4)")
            .unwrap();
    }
    // And after: replaced and added again.
    on_every_node(&db, HOSTILE);
    // The hostile objects work where public comes first: the test can fail.
    c.batch_execute("SET search_path = public, pg_catalog; SELECT 'a'::text = 'a'::text, now()")
        .unwrap();
    let probe: i64 = c
        .query_one("SELECT count(*) FROM public.hostile_calls", &[])
        .unwrap()
        .get(0);
    assert!(probe >= 2, "the hostile operators are live: {probe}");
    on_every_node(&db, "TRUNCATE public.hostile_calls");
    // The guide's statements and the SQL API, with public searched before pg_catalog.
    c.batch_execute(&format!(
        "SET search_path = public, pg_catalog, ai_agents;
         INSERT INTO ai_agents.ai_agents (id, organization_id, name, agent_type, model)
         VALUES ('{AGENT_A}', '{ORG_A}', 'Care', 'customer_care', 'gpt-4o-mini');
         UPDATE ai_agents.ai_agents SET system_prompt = 'changed' WHERE id OPERATOR(pg_catalog.=) '{AGENT_A}';
         INSERT INTO ai_agents.ai_agent_tasks (agent_id, organization_id, title, description, task_type, status, priority, next_run_at, schedule_cron)
         VALUES ('{AGENT_A}', '{ORG_A}', 'Test Scheduled Task', 'guide', 'scheduled', 'pending', 10, pg_catalog.now(), '*/10 * * * *');
         SELECT ai_agents.enqueue_task('{AGENT_A}', 'ad hoc', idempotency_key => 'k');
         SELECT ai_agents.enqueue_task('{AGENT_A}', 'ad hoc', idempotency_key => 'k');
         SELECT ai_agents.send_message((ai_agents.start_conversation('{AGENT_A}')).id, 'hello');
         SELECT ai_agents.complete_task(t.id, t.fencing_token, output => 'ok', tokens_used => 10)
           FROM ai_agents.claim_due_tasks('w', 2, '1 minute', ARRAY['{ORG_A}']::uuid[]) t;
         SELECT ai_agents.fail_task(t.id, t.fencing_token, 'boom', http_status => 503)
           FROM ai_agents.claim_due_tasks('w', 5, '1 minute', ARRAY['{ORG_A}']::uuid[]) t;
         WITH pending AS MATERIALIZED (
             SELECT id FROM ai_agents.ai_agent_tasks WHERE status OPERATOR(pg_catalog.=) 'pending')
         SELECT ai_agents.cancel_task(p.id) FROM pending p;
         SELECT * FROM ai_agents.task_summary('24 hours');
         SELECT ai_agents.build_report('Customer Care Weekly Summary', '{ORG_A}', '2026-11-16', '2026-11-23', '{AGENT_A}');
         SELECT ai_agents.build_due_reports();
         SELECT ai_agents.get_latest_agent_report('{AGENT_A}');
         SELECT ai_agents.create_agent_version_from_current('{AGENT_A}', 'note');
         SELECT ai_agents.activate_agent_version('{AGENT_A}', 1);
         SELECT ai_agents.pause_agent_tasks('{AGENT_A}'); SELECT ai_agents.resume_agent_tasks('{AGENT_A}');
         INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, max_per_minute) VALUES ('{ORG_A}', 5);
         SELECT * FROM ai_agents.rate_limit_usage;
         SELECT * FROM ai_agents.organization_queue;
         SELECT ai_agents.prune_history('0 days', 100, ARRAY['{ORG_A}']::uuid[]);"
    ))
    .expect("the extension under a hostile search_path");
    // In a transaction of its own, as it is run: under Citus, grants after reads of distributed
    // tables in one transaction are refused.
    c.batch_execute("SELECT ai_agents.apply_role_grants()")
        .expect("the grants under a hostile search_path");
    for node in nodes {
        let calls = strings(
            &mut node.connect(&db),
            "SELECT DISTINCT what FROM public.hostile_calls ORDER BY 1",
        );
        assert!(
            calls.is_empty(),
            "hostile code ran inside the extension on the node at {}: {calls:?}",
            node.port()
        );
    }
}

fn worker_env() -> &'static WorkerEnv {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    WorkerEnv::kept(&ENV, "security", &["synchronous_commit = on"])
}

#[test]
fn a_base_url_off_the_allowlist_is_refused_and_no_request_leaves() {
    let env = worker_env();
    let mut c = env.connect();
    let (_, agent) = create_agent(&mut c, "points elsewhere");
    // An agent's own endpoint, off the allowlist (the stub itself, on another path prefix, so
    // that a request that left would be seen).
    let elsewhere = env.stub.base_url.replace("/v1", "/internal");
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agents SET config = jsonb_build_object('base_url', '{elsewhere}') WHERE id = '{agent}'"
    ))
    .unwrap();
    let task = enqueue(&mut c, &agent, "exfiltrate");
    wait_for(&mut c, &task, "status = 'failed'", Duration::from_secs(10));
    let row = c
        .query_one(
            &format!(
                "SELECT error_message, attempts FROM ai_agents.ai_agent_tasks WHERE id = '{task}'"
            ),
            &[],
        )
        .unwrap();
    let error: String = row.get(0);
    let attempts: i32 = row.get(1);
    assert_eq!(
        error,
        format!("base URL {elsewhere} is not allowed: it matches no prefix of ai_agents.allowed_base_urls; no request was sent")
    );
    assert_eq!(attempts, 1, "refused at once, not retried");
    // The other tests of this cluster call the stub too: this test's requests are those of
    // its tasks.
    let mine = |title: &str| -> Vec<serde_json::Value> {
        env.stub
            .requests()
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/internal"))
                    || r["body"].to_string().contains(&format!("Task: {title}"))
            })
            .collect()
    };
    assert!(
        mine("exfiltrate").is_empty(),
        "a request left: {:?}",
        mine("exfiltrate")
    );
    // Within the allowlist, the agent's own endpoint is used.
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agents SET config = jsonb_build_object('base_url', '{}') WHERE id = '{agent}'",
        env.stub.base_url
    ))
    .unwrap();
    let task = enqueue(&mut c, &agent, "allowed");
    wait_for(
        &mut c,
        &task,
        "status = 'completed'",
        Duration::from_secs(10),
    );
    assert_eq!(mine("allowed").len(), 1);
    assert!(mine("exfiltrate").is_empty());
}

#[test]
fn a_planted_key_appears_in_no_table_dump_log_or_error() {
    let env = worker_env();
    let mut c = env.connect();
    let (org, agent) = create_agent(&mut c, "key holder");
    // Replies that echo the key back, as OpenAI's 401 does, and a success, a conversation, a
    // report with its narrative.
    env.stub.script(serde_json::json!([
        {"match": "echo the key", "status": 401, "body": format!("{{\"error\": {{\"message\": \"Incorrect API key provided: {PLANTED_KEY}\"}}}}")},
        {"match": "echo in a 500", "status": 500, "body": format!("upstream said {PLANTED_KEY}")},
    ]));
    let echoed = enqueue(&mut c, &agent, "echo the key");
    let echoed_500 = enqueue(&mut c, &agent, "echo in a 500");
    let fine = enqueue(&mut c, &agent, "a plain task");
    for task in [&echoed, &fine] {
        wait_for(
            &mut c,
            task,
            "status IN ('completed', 'failed')",
            Duration::from_secs(10),
        );
    }
    wait_for(
        &mut c,
        &echoed_500,
        "attempts >= 1 AND status <> 'running'",
        Duration::from_secs(10),
    );
    let message: String = c
        .query_one(
            &format!("SELECT error_message FROM ai_agents.ai_agent_tasks WHERE id = '{echoed}'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        message.contains("Incorrect API key provided: <redacted>"),
        "{message}"
    );
    c.batch_execute(&format!(
        "SELECT ai_agents.build_report('Customer Care Weekly Summary', '{org}', '2026-11-16', '2026-11-23', '{agent}')"
    ))
    .unwrap();
    // Every table of the extension, as text.
    let tables = strings(&mut c, "SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relkind = 'r'");
    for table in &tables {
        let hits: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM ai_agents.{table} t WHERE t::text LIKE '%' || $1 || '%'"
                ),
                &[&PLANTED_KEY],
            )
            .unwrap()
            .get(0);
        assert_eq!(hits, 0, "the key is in {table}");
    }
    // Settings do not show it to a role that is not a superuser.
    c.batch_execute("CREATE ROLE key_reader LOGIN").unwrap();
    let (code, _) = error_of(
        &mut c,
        "SET ROLE key_reader; SELECT current_setting('ai_agents.openai_api_key')",
    );
    assert_eq!(code, "42501");
    c.batch_execute("RESET ROLE").unwrap();
    // pg_dump of the database, data included, and the server log (errors of the worker
    // included): of every node under Citus.
    for node in env.nodes() {
        let dump = node.client_program("pg_dump", env.database(), &[]);
        assert!(
            !String::from_utf8_lossy(&dump.stdout).contains(PLANTED_KEY),
            "the key is in pg_dump of the node at {}",
            node.port()
        );
        let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
        assert!(!log.is_empty(), "the server log is read");
        assert!(
            !log.contains(PLANTED_KEY),
            "the key is in the server log of the node at {}",
            node.port()
        );
    }
}

#[test]
fn installed_after_the_roles_exist_the_grants_are_in_place_at_once() {
    supabase_roles();
    let cluster = shared_cluster();
    // Under Citus, a database of the Citus cluster: it creates the extension once the roles
    // exist, as here.
    let (mut admin, db) = if on_citus() {
        fresh_database()
    } else {
        let db = cluster.create_blank_database();
        let mut admin = cluster.connect(&db);
        admin.batch_execute("CREATE EXTENSION ai_agents").unwrap();
        (admin, db)
    };
    let mut member = as_role(&db, "authenticated", Some(&claims(ORG_A)));
    let n: i64 = member
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_report_templates",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the built-in templates are everyone's");
    let grants: BTreeMap<String, bool> = ["authenticated", "service_role", "anon"]
        .iter()
        .map(|role| {
            let usage: bool = admin
                .query_one(
                    "SELECT has_schema_privilege($1, 'ai_agents', 'USAGE')",
                    &[role],
                )
                .unwrap()
                .get(0);
            (role.to_string(), usage)
        })
        .collect();
    assert_eq!(
        grants,
        BTreeMap::from([
            ("anon".into(), false),
            ("authenticated".into(), true),
            ("service_role".into(), true)
        ])
    );
}
