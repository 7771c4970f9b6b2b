SELECT
  title,
  status,
  error_message
FROM ai_agent_tasks
WHERE title LIKE 'Rate Limit Test%'
AND status = 'failed'
AND error_message LIKE '%rate limit%';

-- Should show some tasks failed due to rate limiting
