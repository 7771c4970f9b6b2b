SELECT
  id,
  title,
  status,
  execution_started_at,
  completed_at,
  tokens_used,
  cost_usd,
  error_message
FROM ai_agent_tasks
WHERE title = 'Test Scheduled Task'
ORDER BY created_at DESC
LIMIT 1;

-- Expected status: 'completed' or 'failed'
-- Should have execution_started_at and completed_at timestamps
