//! Agent versions: numbering, no duplicate snapshots, automatic snapshots, pinning, rollback.
use ai_agents_tests::postgres::Client;
use ai_agents_tests::{create_agent, error_of, fresh_database};

fn versions(c: &mut Client, agent: &str) -> Vec<(i32, String)> {
    c.query(
        "SELECT version_number, system_prompt FROM ai_agents.ai_agent_versions \
         WHERE agent_id = $1::text::uuid ORDER BY version_number",
        &[&agent],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn current(c: &mut Client, agent: &str) -> (i32, String) {
    let row = c
        .query_one(
            "SELECT v.version_number, a.system_prompt FROM ai_agents.ai_agents a \
             JOIN ai_agents.ai_agent_versions v ON v.id = a.current_version_id WHERE a.id = $1::text::uuid",
            &[&agent],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn set_prompt(c: &mut Client, agent: &str, prompt: &str) {
    c.execute(
        "UPDATE ai_agents.ai_agents SET system_prompt = $2 WHERE id = $1::text::uuid",
        &[&agent, &prompt],
    )
    .unwrap();
}

#[test]
fn versions_are_numbered_per_agent_and_taken_on_every_change() {
    let (mut c, _) = fresh_database();
    let (_, a) = create_agent(&mut c, "a");
    let (_, b) = create_agent(&mut c, "b");
    assert_eq!(
        versions(&mut c, &a),
        [(1, "You help gym members.".to_string())]
    );
    set_prompt(&mut c, &a, "Be brief.");
    set_prompt(&mut c, &a, "Be brief."); // no change, no version
    c.execute(
        "UPDATE ai_agents.ai_agents SET is_active = true WHERE id = $1::text::uuid",
        &[&a],
    )
    .unwrap();
    c.execute(
        "UPDATE ai_agents.ai_agents SET config = '{\"tone\": \"warm\"}' WHERE id = $1::text::uuid",
        &[&a],
    )
    .unwrap();
    set_prompt(&mut c, &b, "Chase leads.");
    assert_eq!(
        versions(&mut c, &a).iter().map(|v| v.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "created, prompt changed, config changed"
    );
    assert_eq!(
        versions(&mut c, &b).iter().map(|v| v.0).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(current(&mut c, &a).0, 3);
}

#[test]
fn an_identical_snapshot_is_not_duplicated() {
    let (mut c, _) = fresh_database();
    let (_, a) = create_agent(&mut c, "a");
    let first: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.create_agent_version_from_current($1::text::uuid)",
            &[&a],
        )
        .unwrap()
        .get(0);
    let second: String = c
        .query_one(
            "SELECT id::text FROM ai_agents.create_agent_version_from_current($1::text::uuid, 'again')",
            &[&a],
        )
        .unwrap()
        .get(0);
    assert_eq!(first, second);
    assert_eq!(versions(&mut c, &a).len(), 1);
    let (code, _) = error_of(
        &mut c,
        "SELECT ai_agents.create_agent_version_from_current(gen_random_uuid())",
    );
    assert_eq!(code, "P0002");
}

#[test]
fn a_claimed_task_records_its_version_and_rollback_restores_the_old_configuration() {
    let (mut c, _) = fresh_database();
    let (_, a) = create_agent(&mut c, "a");
    let claim_version = |c: &mut Client| -> i32 {
        c.execute(
            "SELECT ai_agents.enqueue_task($1::text::uuid, 'job')",
            &[&a],
        )
        .unwrap();
        c.query_one(
            "SELECT v.version_number FROM ai_agents.claim_due_tasks('w', 1) t \
             JOIN ai_agents.ai_agent_versions v ON v.id = t.agent_version_id",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(claim_version(&mut c), 1);
    set_prompt(&mut c, &a, "New and worse prompt.");
    assert_eq!(claim_version(&mut c), 2);

    let restored: String = c
        .query_one(
            "SELECT system_prompt FROM ai_agents.activate_agent_version($1::text::uuid, 1)",
            &[&a],
        )
        .unwrap()
        .get(0);
    assert_eq!(restored, "You help gym members.");
    assert_eq!(
        current(&mut c, &a),
        (1, "You help gym members.".to_string())
    );
    assert_eq!(
        versions(&mut c, &a).len(),
        2,
        "rolling back writes no new version"
    );
    assert_eq!(claim_version(&mut c), 1);
    // The earlier tasks keep the versions they ran with.
    let pinned: Vec<i32> = c
        .query(
            "SELECT v.version_number FROM ai_agents.ai_agent_tasks t \
             JOIN ai_agents.ai_agent_versions v ON v.id = t.agent_version_id ORDER BY t.created_at, v.version_number",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sorted = pinned.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 1, 2]);
    let (code, message) = error_of(
        &mut c,
        &format!("SELECT ai_agents.activate_agent_version('{a}', 9)"),
    );
    assert_eq!(code, "P0002", "{message}");
    let activated: i64 = c
        .query_one(
            "SELECT count(*) FROM ai_agents.ai_agent_activity_log WHERE action_type = 'agent_version_activated'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(activated, 1);
}
