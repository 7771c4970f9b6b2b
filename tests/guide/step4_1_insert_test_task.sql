-- Create a test task that's due now
INSERT INTO ai_agent_tasks (
  agent_id,  -- Replace with actual agent UUID
  organization_id,  -- Replace with actual org UUID
  title,
  description,
  task_type,
  status,
  priority,
  next_run_at,
  schedule_cron
) VALUES (
  'YOUR_AGENT_UUID',
  'YOUR_ORG_UUID',
  'Test Scheduled Task',
  'This is a test to verify the scheduler works',
  'scheduled',
  'pending',
  10,
  NOW(),  -- Due immediately
  '*/10 * * * *'  -- Every 10 minutes
);
