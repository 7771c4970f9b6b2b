-- Mark stuck tasks as failed
UPDATE ai_agent_tasks
SET status = 'failed',
    error_message = 'Stuck in running state'
WHERE status = 'running'
AND execution_started_at < NOW() - INTERVAL '1 hour';
