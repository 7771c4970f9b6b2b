//! Keys ready for distribution by organization (docs/distributed.md#keys): every tenant table is
//! keyed by organization first, and every foreign key between tenant tables names
//! organization_id on both sides, so a row never points into another organization.
use ai_agents_tests::{create_agent, enqueue, error_of, fresh_database, strings};

/// Tables without an organization: global data, reference tables under Citus. Report templates
/// hold the built-in templates (organization NULL) beside the organizations' own.
const GLOBAL_TABLES: [&str; 3] = [
    "ai_agent_builtin_tools",
    "ai_agent_model_prices",
    "ai_agent_report_templates",
];

/// The unique indexes on id alone that a single server keeps (distribution replaces them).
const ID_KEYS: [&str; 5] = [
    "ai_agent_conversations_id_key",
    "ai_agent_reports_id_key",
    "ai_agent_tasks_id_key",
    "ai_agent_versions_id_key",
    "ai_agents_id_key",
];

#[test]
fn every_tenant_table_is_keyed_by_organization_first() {
    let (mut c, _) = fresh_database();
    let tenant_tables = strings(
        &mut c,
        "SELECT c.relname::text FROM pg_class c
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND a.attnotnull
          WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relkind = 'r' ORDER BY 1",
    );
    let all_tables = strings(
        &mut c,
        "SELECT relname::text FROM pg_class
          WHERE relnamespace = 'ai_agents'::regnamespace AND relkind = 'r' ORDER BY 1",
    );
    let global: Vec<&String> = all_tables
        .iter()
        .filter(|t| !tenant_tables.contains(t))
        .collect();
    assert_eq!(global, GLOBAL_TABLES, "a new table must be classified");
    assert!(tenant_tables.len() >= 12, "{tenant_tables:?}");

    // The primary key starts with organization_id, where a table has one (the override rows
    // and the hourly rollup have only a unique key, which includes it: checked below).
    let bad_keys = strings(
        &mut c,
        "SELECT c.relname || ': ' || pg_get_constraintdef(k.oid) FROM pg_constraint k
           JOIN pg_class c ON c.oid = k.conrelid
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND a.attnotnull
          WHERE c.relnamespace = 'ai_agents'::regnamespace AND k.contype = 'p'
            AND k.conkey[1] <> a.attnum",
    );
    assert!(bad_keys.is_empty(), "{bad_keys:?}");
    let without_key = strings(
        &mut c,
        "SELECT c.relname::text FROM pg_class c
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND a.attnotnull
          WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relkind = 'r'
            AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')
          ORDER BY 1",
    );
    assert_eq!(
        without_key,
        ["ai_agent_rate_limits", "ai_agent_usage_hourly"]
    );

    // Every unique index of a tenant table includes organization_id, but for the id keys.
    let unique_without = strings(
        &mut c,
        "SELECT ci.relname::text FROM pg_index i
           JOIN pg_class ci ON ci.oid = i.indexrelid
           JOIN pg_class c ON c.oid = i.indrelid
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND a.attnotnull
          WHERE c.relnamespace = 'ai_agents'::regnamespace AND i.indisunique
            AND NOT a.attnum = ANY (i.indkey::int2[])
          ORDER BY 1",
    );
    assert_eq!(unique_without, ID_KEYS);

    // A foreign key from a tenant table to a tenant table pairs organization_id with
    // organization_id.
    let foreign_keys: Vec<String> = c
        .query(
            "SELECT c.relname || ' -> ' || (SELECT relname FROM pg_class WHERE oid = k.confrelid)
                    || CASE WHEN EXISTS (
                            SELECT FROM unnest(k.conkey, k.confkey) AS p(own, other)
                             WHERE p.own = a.attnum
                               AND p.other = (SELECT attnum FROM pg_attribute
                                               WHERE attrelid = k.confrelid AND attname = 'organization_id'))
                            THEN ' ok' ELSE ' MISSING' END
               FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.conrelid
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND a.attnotnull
              WHERE c.relnamespace = 'ai_agents'::regnamespace AND k.contype = 'f'
                AND (SELECT relname FROM pg_class WHERE oid = k.confrelid) <> ALL ($1::text[])
              ORDER BY 1",
            &[&GLOBAL_TABLES.to_vec()],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(foreign_keys.len() >= 11, "{foreign_keys:?}");
    let missing: Vec<&String> = foreign_keys
        .iter()
        .filter(|k| !k.ends_with(" ok"))
        .collect();
    assert!(missing.is_empty(), "{missing:?}");
}

#[test]
fn a_row_cannot_point_into_another_organization_and_the_log_outlives_its_task() {
    let (mut c, _) = fresh_database();
    let (org_a, agent_a) = create_agent(&mut c, "front desk A");
    let (org_b, agent_b) = create_agent(&mut c, "front desk B");
    let task_a = enqueue(&mut c, &agent_a, "renewals");
    let version_a: String = c
        .query_one(
            "SELECT (ai_agents.create_agent_version_from_current($1::text::uuid)).id::text",
            &[&agent_a],
        )
        .unwrap()
        .get(0);

    // 0.1.0 checked these against the id alone: B could name A's agent or version.
    for sql in [
        format!(
            "INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_per_minute)
             VALUES ('{org_b}', '{agent_a}', 5)"
        ),
        format!(
            "INSERT INTO ai_agents.ai_agent_reports (organization_id, agent_id, report_type, title, period_start, period_end)
             VALUES ('{org_b}', '{agent_a}', 'daily', 'daily', now() - interval '1 day', now())"
        ),
    ] {
        let (code, message) = error_of(&mut c, &sql);
        assert_eq!(code, "23503", "{sql}: {message}");
    }

    let task_b = enqueue(&mut c, &agent_b, "renewals");
    let (code, message) = error_of(
        &mut c,
        &format!(
            "UPDATE ai_agents.ai_agent_tasks SET agent_version_id = '{version_a}' WHERE id = '{task_b}'"
        ),
    );
    assert_eq!(code, "23503", "{message}");

    // The activity log keeps naming a deleted task, in its organization.
    let logged = 3;
    for _ in 0..logged {
        c.execute(
            "INSERT INTO ai_agents.ai_agent_activity_log (organization_id, task_id, action_type, success)
             VALUES ($1::text::uuid, $2::text::uuid, 'note', true)",
            &[&org_a, &task_a],
        )
        .unwrap();
    }
    c.execute(
        "DELETE FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid",
        &[&task_a],
    )
    .unwrap();
    let kept: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_activity_log
              WHERE task_id = $1::text::uuid AND organization_id = $2::text::uuid",
            &[&task_a, &org_a],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        kept, logged,
        "the task's activity stays, in its organization"
    );
}
