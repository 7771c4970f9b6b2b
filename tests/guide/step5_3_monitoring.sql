-- Agent task execution summary (last 24 hours)
SELECT
  COUNT(*) as total_tasks,
  COUNT(*) FILTER (WHERE status = 'completed') as completed,
  COUNT(*) FILTER (WHERE status = 'failed') as failed,
  COUNT(*) FILTER (WHERE status = 'pending') as pending,
  SUM(tokens_used) as total_tokens,
  SUM(cost_usd) as total_cost_usd,
  AVG(execution_time_ms) as avg_execution_time_ms
FROM ai_agent_tasks
WHERE created_at > NOW() - INTERVAL '24 hours';
