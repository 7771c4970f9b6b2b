-- 1. Disable cron job processing (set all to future date)
UPDATE ai_agent_tasks
SET next_run_at = NOW() + INTERVAL '1 year'
WHERE status = 'pending';

-- 2. Stop any running tasks
UPDATE ai_agent_tasks
SET status = 'cancelled',
    error_message = 'System rollback'
WHERE status IN ('running', 'queued');

-- 3. Drop new tables (if needed)
DROP TABLE IF EXISTS ai_agent_reports CASCADE;
DROP TABLE IF EXISTS ai_agent_report_templates CASCADE;
DROP TABLE IF EXISTS ai_agent_versions CASCADE;

-- 4. Remove new columns
ALTER TABLE ai_agent_tasks
DROP COLUMN IF EXISTS idempotency_key,
DROP COLUMN IF EXISTS execution_started_at,
DROP COLUMN IF EXISTS agent_version_id;
