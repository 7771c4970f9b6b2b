-- Check tables exist
SELECT table_name
FROM information_schema.tables
WHERE table_name = 'ai_agent_versions';

-- Check function exists
SELECT proname
FROM pg_proc
WHERE proname = 'create_agent_version_from_current';

-- Both should return results
