-- Check tables exist
SELECT table_name
FROM information_schema.tables
WHERE table_name IN ('ai_agent_reports', 'ai_agent_report_templates');

-- Check seeded templates
SELECT name, report_type FROM ai_agent_report_templates;

-- Should return 2 templates:
-- 'Customer Care Weekly Summary' - weekly_performance
-- 'Finance Monthly Forecast' - monthly_forecast
