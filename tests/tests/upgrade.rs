//! Releases: an installed 0.1.0 reaches this version with `ALTER EXTENSION ai_agents UPDATE`,
//! keeps every row, ends up with the same objects as a fresh install (tests/upgrade/catalog.sql),
//! and its worker runs tasks afterwards. The 0.1.0 install script is the one released, frozen
//! in sql/ai_agents--0.1.0.sql (scripts/test puts it beside the installed extension).
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{wait_for, WorkerEnv};
use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

const ORG: &str = "0000000e-0000-4000-8000-000000000001";
const CARE: &str = "e0000000-0000-4000-8000-00000000000c";
const BOOKS: &str = "e0000000-0000-4000-8000-00000000000f";

type Catalog = BTreeSet<(String, String, String)>;

/// The extension's objects, named the same way in both databases (names print qualified
/// when their schema is not on the search_path).
fn catalog(c: &mut Client) -> Catalog {
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    c.query(include_str!("../upgrade/catalog.sql"), &[])
        .expect("reading the catalog")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn version(c: &mut Client) -> String {
    c.query_one(
        "SELECT extversion FROM pg_extension WHERE extname = 'ai_agents'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// The version a plain CREATE EXTENSION installs: the one being built.
fn default_version(c: &mut Client) -> String {
    c.query_one(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'ai_agents'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// A 0.1.0 install with something in every table and a task in every state, through 0.1.0's
/// own SQL API.
fn fill(c: &mut Client) {
    c.batch_execute(&format!(
        "INSERT INTO ai_agents.ai_agents (id, organization_id, name, agent_type, system_prompt, model, provider)
         VALUES ('{CARE}', '{ORG}', 'Front desk', 'customer_care', 'v1', 'gpt-4o-mini', 'openai'),
                ('{BOOKS}', '{ORG}', 'Books', 'finance', 'v1', 'claude-3-5-haiku-latest', 'anthropic');
         UPDATE ai_agents.ai_agents SET system_prompt = 'v2' WHERE id = '{CARE}';
         SELECT ai_agents.create_agent_version_from_current('{CARE}', 'before the upgrade');
         INSERT INTO ai_agents.ai_agent_rate_limits (organization_id, agent_id, max_per_minute)
         VALUES ('{ORG}', NULL, 90), ('{ORG}', '{CARE}', 40);
         INSERT INTO ai_agents.ai_agent_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok)
         VALUES ('openai', 'gym-tuned', 1.5, 6);
         INSERT INTO ai_agents.ai_agent_report_templates (organization_id, name, report_type, period)
         VALUES ('{ORG}', 'Own template', 'custom', 'week');

         -- completed, failed for good, waiting for a retry, running, cancelled
         SELECT ai_agents.enqueue_task('{CARE}', 'completed', idempotency_key => 'k-completed');
         SELECT ai_agents.complete_task(id, fencing_token, 'done', tokens_used => 42, cost_usd => 0.0001)
           FROM ai_agents.claim_due_tasks('w', 1);
         SELECT ai_agents.enqueue_task('{CARE}', 'failed', max_attempts => 1);
         SELECT ai_agents.fail_task(id, fencing_token, 'bad request', 400) FROM ai_agents.claim_due_tasks('w', 1);
         SELECT ai_agents.enqueue_task('{CARE}', 'retrying', max_attempts => 3);
         SELECT ai_agents.fail_task(id, fencing_token, 'upstream 503', 503) FROM ai_agents.claim_due_tasks('w', 1);
         SELECT ai_agents.enqueue_task('{CARE}', 'running');
         SELECT count(*) FROM ai_agents.claim_due_tasks('w', 1, '1 hour');
         SELECT ai_agents.cancel_task((ai_agents.enqueue_task('{CARE}', 'cancelled')).id, 'not needed');
         -- pending later, recurring, held by a paused agent
         SELECT ai_agents.enqueue_task('{CARE}', 'later', input => '{{\"member\": 7}}', run_at => now() + interval '1 day');
         SELECT ai_agents.enqueue_task('{CARE}', 'weekly', schedule_cron => '0 9 * * 1', timezone => 'Europe/Berlin');
         SELECT ai_agents.enqueue_task('{BOOKS}', 'held', run_at => now() + interval '1 day');
         SELECT ai_agents.pause_agent_tasks('{BOOKS}');
         -- a conversation with its reply task, and a report
         SELECT ai_agents.send_message((ai_agents.start_conversation('{CARE}', 'Membership')).id, 'Can I freeze my plan?');
         SELECT ai_agents.build_report('Customer Care Weekly Summary', '{ORG}', '2026-11-23', '2026-11-30');"
    ))
    .expect("filling 0.1.0");
    let states: BTreeSet<String> = c
        .query(
            &format!("SELECT DISTINCT status FROM ai_agents.ai_agent_tasks WHERE organization_id = '{ORG}'"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        states,
        ["cancelled", "completed", "failed", "pending", "running"]
            .map(String::from)
            .into(),
        "a task in every state"
    );
}

/// Prints what only one side has, and fails when anything does.
fn assert_same(upgraded: &Catalog, fresh: &Catalog) {
    let only_upgraded: Vec<_> = upgraded.difference(fresh).collect();
    let only_fresh: Vec<_> = fresh.difference(upgraded).collect();
    for (side, rows) in [("upgraded", &only_upgraded), ("fresh", &only_fresh)] {
        for (kind, name, definition) in rows.iter() {
            println!("only in the {side} install: {kind} {name}\n{definition}\n");
        }
    }
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "{} objects differ between the upgraded and the fresh install (printed above)",
        only_upgraded.len() + only_fresh.len()
    );
}

#[test]
fn an_upgraded_0_1_0_equals_a_fresh_install_keeps_every_row_and_runs_tasks() {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    let env = WorkerEnv::kept(&ENV, "upgrade", &[]);
    let mut admin = env.cluster.connect("postgres");
    // Supabase's roles exist before either install, so both get the same grants.
    admin
        .batch_execute(
            "CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN;
             CREATE ROLE service_role NOLOGIN BYPASSRLS;",
        )
        .unwrap();
    admin.batch_execute("CREATE DATABASE fresh").unwrap();

    // The worker's database gets the released 0.1.0; the worker waits for the update.
    let mut c = env.connect();
    c.batch_execute("DROP EXTENSION ai_agents; CREATE EXTENSION ai_agents VERSION '0.1.0'")
        .expect("installing 0.1.0 (is sql/ai_agents--0.1.0.sql installed?)");
    assert_eq!(version(&mut c), "0.1.0");
    fill(&mut c);
    let fencing_before: i64 = c
        .query_one("SELECT last_value FROM ai_agents.fencing_token_seq", &[])
        .unwrap()
        .get(0);
    c.batch_execute(include_str!("../upgrade/snapshot_rows.sql"))
        .unwrap();
    let counts_before: BTreeSet<(String, i64)> = c
        .query(
            "SELECT relation, count(*) FROM upgrade_check.rows GROUP BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // The update and the checks of the rows in one transaction: the worker, which starts as
    // soon as the version matches, must not change a row before they are compared.
    c.batch_execute("BEGIN; ALTER EXTENSION ai_agents UPDATE;")
        .expect("ALTER EXTENSION ai_agents UPDATE");
    assert_eq!(version(&mut c), default_version(&mut c));
    c.batch_execute(include_str!("../upgrade/missing_rows.sql"))
        .unwrap();
    let missing: Vec<(String, String)> = c
        .query(
            "SELECT relation, data::text FROM pg_temp.missing_rows()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(missing.is_empty(), "rows lost by the upgrade: {missing:#?}");
    let counts_after: BTreeSet<(String, i64)> = c
        .query(
            "SELECT relation, (SELECT count(*) FROM upgrade_check.rows_of(relation))
               FROM (SELECT DISTINCT relation FROM upgrade_check.rows) r",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(counts_after, counts_before, "rows per table and sequence");
    // The cost columns widened to 12 decimal places; a cost recorded before keeps its value.
    let costs: Vec<String> = c
        .query(
            "SELECT cost_usd::text FROM ai_agents.ai_agent_tasks WHERE title = 'completed'
             UNION ALL
             SELECT l.cost_usd::text FROM ai_agents.ai_agent_activity_log l
               JOIN ai_agents.ai_agent_tasks t ON t.id = l.task_id
              WHERE t.title = 'completed' AND l.action_type = 'task_completed'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(costs, ["0.000100000000", "0.000100000000"]);
    c.batch_execute("COMMIT").unwrap();
    println!(
        "upgrade: {} rows in {} tables and sequences kept",
        counts_before.iter().map(|(_, n)| n).sum::<i64>(),
        counts_before.len()
    );

    // Object by object, the same as a fresh install.
    let mut fresh = env.cluster.connect("fresh");
    fresh.batch_execute("CREATE EXTENSION ai_agents").unwrap();
    assert_eq!(version(&mut fresh), default_version(&mut fresh));
    let (upgraded, installed) = (catalog(&mut c), catalog(&mut fresh));
    println!("upgrade: {} catalog objects compared", installed.len());
    assert!(
        installed.len() > 100,
        "the catalog query sees the extension"
    );
    assert_same(&upgraded, &installed);

    // The worker runs a new task, and the fencing tokens go on from where they were.
    let task: String = c
        .query_one(
            &format!("SELECT id::text FROM ai_agents.enqueue_task('{CARE}', 'after the upgrade')"),
            &[],
        )
        .unwrap()
        .get(0);
    wait_for(
        &mut c,
        &task,
        &format!("status = 'completed' AND fencing_token > {fencing_before}"),
        Duration::from_secs(30),
    );
}
