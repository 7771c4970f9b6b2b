-- 0.2.0: build_due_reports takes max_reports, so that the worker builds a bounded batch per
-- turn (sql/idempotent/reports.sql creates it). The one-argument form goes. 0.1.0's drop guard
-- (replaced by guard.sql later in this script) does not know extension scripts, so it is
-- paused for this one drop.
DO $$
BEGIN
    IF to_regprocedure('ai_agents.build_due_reports(timestamptz)') IS NOT NULL THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
        DROP FUNCTION ai_agents.build_due_reports(timestamptz);
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects ENABLE;
    END IF;
END
$$;
