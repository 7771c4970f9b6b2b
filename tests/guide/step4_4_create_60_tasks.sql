-- Create 60 tasks (exceeds 50/min agent limit)
INSERT INTO ai_agent_tasks (
  agent_id,
  organization_id,
  title,
  task_type,
  status,
  next_run_at
)
SELECT
  'YOUR_AGENT_UUID',
  'YOUR_ORG_UUID',
  'Rate Limit Test ' || generate_series,
  'adhoc',
  'pending',
  NOW()
FROM generate_series(1, 60);
