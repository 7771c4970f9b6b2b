-- Find duplicate running tasks
SELECT agent_id, COUNT(*)
FROM ai_agent_tasks
WHERE status IN ('running', 'queued')
GROUP BY agent_id
HAVING COUNT(*) > 1;
