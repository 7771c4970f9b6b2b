-- The deployment guide's Step 4 for real: agents, the guide's INSERT as written, and the
-- background worker running the tasks against the LLM (the local stub, or a real provider
-- when scripts/run was given an API key).
\set ON_ERROR_STOP 1
SET search_path = ai_agents, public;
\pset footer off

\echo '-- 1. A gym (organization) and its three agents'
SELECT gen_random_uuid() AS org \gset
INSERT INTO ai_agents (organization_id, name, agent_type, system_prompt, model)
VALUES (:'org', 'Customer Care', 'customer_care', 'You answer gym members kindly and briefly.', 'gpt-4o-mini'),
       (:'org', 'Financial Manager', 'finance', 'You watch the gym''s revenue and costs.', 'gpt-4o-mini'),
       (:'org', 'Lead Follow-up', 'lead_followup', 'You follow up on trial-class leads.', 'gpt-4o-mini');
SELECT id AS agent FROM ai_agents WHERE name = 'Customer Care' AND organization_id = :'org' \gset
SELECT a.name, v.version_number FROM ai_agents a JOIN ai_agent_versions v ON v.id = a.current_version_id
 WHERE a.organization_id = :'org' ORDER BY a.name;

\echo '-- 2. The guide''s Step 4.1 INSERT, as written, with real ids'
INSERT INTO ai_agent_tasks (
  agent_id, organization_id, title, description, task_type, status, priority, next_run_at, schedule_cron
) VALUES (
  :'agent', :'org', 'Test Scheduled Task', 'This is a test to verify the scheduler works',
  'scheduled', 'pending', 10, NOW(), '*/10 * * * *'
);

\echo '-- 3. An ad-hoc task, enqueued twice with one idempotency key: one task'
SELECT id, title, status FROM enqueue_task(:'agent', 'Reply to member #4711', input => '{"member": 4711}',
                                          idempotency_key => 'ticket-4711');
SELECT id, title, status FROM enqueue_task(:'agent', 'Reply to member #4711', input => '{"member": 4711}',
                                          idempotency_key => 'ticket-4711');

\echo '-- 4. The background worker claims them at once (woken at commit), calls the LLM, records the results'
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM ai_agent_tasks WHERE completed_at IS NULL AND status <> 'cancelled');
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT title, status, attempts, tokens_used, cost_usd, execution_time_ms,
       left(regexp_replace(output, '\s+', ' ', 'g'), 60) AS output
  FROM ai_agent_tasks ORDER BY created_at;

\echo '-- 5. The guide''s Step 4.2 query'
SELECT id, title, status, execution_started_at, completed_at, tokens_used, cost_usd, error_message, next_run_at
FROM ai_agent_tasks WHERE title = 'Test Scheduled Task' ORDER BY created_at DESC LIMIT 1;

\echo '-- 6. Activity (one row per attempt) and the Step 5.3 summary'
SELECT l.action_type, l.success, l.attempt, l.tokens_used, l.cost_usd, t.title
  FROM ai_agent_activity_log l JOIN ai_agent_tasks t ON t.id = l.task_id ORDER BY l.id;
SELECT * FROM task_summary('24 hours');

\echo '-- 7. The two seeded reports for this week and this month, with the agents'' narratives'
SELECT id AS finance FROM ai_agents WHERE name = 'Financial Manager' AND organization_id = :'org' \gset
SELECT id AS weekly FROM build_report('Customer Care Weekly Summary', :'org',
    date_trunc('week', now(), 'UTC'), date_trunc('week', now(), 'UTC') + interval '1 week', :'agent') \gset
SELECT id AS monthly FROM build_report('Finance Monthly Forecast', :'org',
    date_trunc('month', now(), 'UTC'), date_trunc('month', now(), 'UTC') + interval '1 month', :'finance') \gset
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM ai_agent_reports WHERE narrative_status = 'pending');
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT title, report_type, narrative_status FROM get_latest_agent_report(:'agent')
UNION ALL
SELECT title, report_type, narrative_status FROM get_latest_agent_report(:'finance', 'monthly_forecast');
\pset format unaligned
\pset tuples_only on
SELECT markdown FROM ai_agent_reports WHERE id IN (:'weekly', :'monthly') ORDER BY report_type DESC;
