//! pg_dump keeps the extension's user data (pg_extension_config_dump) and a dump restores
//! into a fresh database with every row, version pin and sequence position intact.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, fresh_database, shared_cluster};

const FINGERPRINT: &str = "SELECT
    (SELECT string_agg(a.name || ':' || v.version_number, ',' ORDER BY a.name)
       FROM ai_agents.ai_agents a JOIN ai_agents.ai_agent_versions v ON v.id = a.current_version_id),
    (SELECT string_agg(t.title || ':' || t.status || ':' || coalesce(v.version_number::text, '-'), ',' ORDER BY t.title)
       FROM ai_agents.ai_agent_tasks t LEFT JOIN ai_agents.ai_agent_versions v ON v.id = t.agent_version_id),
    (SELECT count(*) FROM ai_agents.ai_agent_versions)::text,
    (SELECT count(*) FROM ai_agents.ai_agent_activity_log)::text,
    (SELECT string_agg(m.role || ':' || m.content, ',' ORDER BY m.id) FROM ai_agents.ai_agent_messages m),
    (SELECT count(*) FROM ai_agents.ai_agent_report_templates)::text,
    (SELECT count(*) FROM ai_agents.ai_agent_model_prices)::text,
    (SELECT count(*) FROM ai_agents.ai_agent_reports r JOIN ai_agents.ai_agent_report_templates t ON t.id = r.template_id)::text";

fn fingerprint(c: &mut Client) -> Vec<Option<String>> {
    let row = c.query_one(FINGERPRINT, &[]).unwrap();
    (0..row.len()).map(|i| row.get(i)).collect()
}

#[test]
fn a_dump_restores_every_row_of_the_extension() {
    let (mut c, db) = fresh_database();
    let (org, agent) = create_agent(&mut c, "Customer Care");
    c.batch_execute(&format!(
        "UPDATE ai_agents.ai_agents SET system_prompt = 'v2' WHERE id = '{agent}';
         SELECT ai_agents.enqueue_task('{agent}', 'done');
         SELECT ai_agents.complete_task(id, fencing_token, 'ok') FROM ai_agents.claim_due_tasks('w', 1);
         UPDATE ai_agents.ai_agents SET system_prompt = 'v3' WHERE id = '{agent}';
         SELECT ai_agents.enqueue_task('{agent}', 'waiting', schedule_cron => '0 9 * * 1', timezone => 'Europe/Berlin');
         INSERT INTO ai_agents.ai_agent_conversations (id, organization_id, agent_id)
              VALUES ('11111111-1111-4111-8111-111111111111', '{org}', '{agent}');
         INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content)
              VALUES ('11111111-1111-4111-8111-111111111111', '{org}', 'user', 'hi'),
                     ('11111111-1111-4111-8111-111111111111', '{org}', 'assistant', 'hello');
         INSERT INTO ai_agents.ai_agent_report_templates (organization_id, name, report_type, period)
              VALUES ('{org}', 'Own template', 'custom', 'week');
         INSERT INTO ai_agents.ai_agent_reports (organization_id, agent_id, template_id, report_type, title, period_start, period_end)
              SELECT '{org}', '{agent}', id, report_type, name, now() - interval '7 days', now()
                FROM ai_agents.ai_agent_report_templates WHERE is_builtin;
         INSERT INTO ai_agents.ai_agent_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok)
              VALUES ('openai', 'gpt-4o-mini', 0.2, 0.8);"
    ))
    .unwrap();
    // An agent switched off with a task still waiting: the task is held, and it must come
    // back (held) from the dump, although nobody may give an inactive agent new tasks.
    let (_, finance) = create_agent(&mut c, "Finance");
    c.batch_execute(&format!(
        "SELECT ai_agents.enqueue_task('{finance}', 'held');
         UPDATE ai_agents.ai_agents SET is_active = false WHERE id = '{finance}';"
    ))
    .unwrap();
    let held = |c: &mut Client| -> bool {
        c.query_one(
            "SELECT paused FROM ai_agents.ai_agent_tasks WHERE title = 'held'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert!(held(&mut c));
    let before = fingerprint(&mut c);
    assert_eq!(before[0].as_deref(), Some("Customer Care:3,Finance:1"));

    let cluster = shared_cluster();
    let dump = cluster.client_program("pg_dump", &db, &[]);
    let sql = String::from_utf8(dump.stdout).unwrap();
    assert!(
        sql.contains("COPY ai_agents.ai_agent_tasks"),
        "task rows are in the dump"
    );
    assert!(
        !sql.contains("What the Customer Care agent did this week"),
        "built-in seed rows are not dumped"
    );

    let restored = cluster.create_blank_database();
    let path = std::env::temp_dir().join(format!("ai_agents_dump_{}.sql", std::process::id()));
    std::fs::write(&path, &sql).unwrap();
    cluster.client_program(
        "psql",
        &restored,
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            path.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(&path).unwrap();

    let mut r = cluster.connect(&restored);
    assert_eq!(fingerprint(&mut r), before);
    assert!(held(&mut r), "the inactive agent's task is restored held");
    // Sequences continue where they were: new rows do not collide with restored ones.
    r.batch_execute(&format!(
        "SELECT ai_agents.enqueue_task('{agent}', 'after restore');
         SELECT ai_agents.complete_task(id, fencing_token) FROM ai_agents.claim_due_tasks('w', 1);
         INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content)
              VALUES ('11111111-1111-4111-8111-111111111111', '{org}', 'user', 'still here');"
    ))
    .unwrap();
    let token_grew: bool = r
        .query_one(
            "SELECT max(fencing_token) > 1 FROM ai_agents.ai_agent_tasks WHERE title = 'after restore'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(token_grew);
}
