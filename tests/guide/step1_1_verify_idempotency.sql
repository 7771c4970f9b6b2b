-- Check new columns exist
SELECT column_name, data_type
FROM information_schema.columns
WHERE table_name = 'ai_agent_tasks'
AND column_name IN ('idempotency_key', 'execution_started_at');

-- Should return 2 rows
