-- 0.2.0: build_due_reports takes max_reports, so that the worker builds a bounded batch per
-- turn (sql/idempotent/reports.sql creates it). The one-argument form goes.
DROP FUNCTION IF EXISTS ai_agents.build_due_reports(timestamptz);
