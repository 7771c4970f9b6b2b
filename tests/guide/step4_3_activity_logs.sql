SELECT
  action_type,
  success,
  tokens_used,
  cost_usd,
  execution_time_ms,
  created_at
FROM ai_agent_activity_log
WHERE task_id = 'YOUR_TASK_UUID'
ORDER BY created_at DESC;

-- Should show activity records
