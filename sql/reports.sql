-- Reports (DESIGN.md section 6).

-- The newest report of an agent, optionally of one type, as the deployment guide names it.
CREATE FUNCTION ai_agents.get_latest_agent_report(agent_id uuid, report_type text DEFAULT NULL)
RETURNS ai_agents.ai_agent_reports
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.* FROM ai_agents.ai_agent_reports r
     WHERE r.agent_id = get_latest_agent_report.agent_id
       AND (get_latest_agent_report.report_type IS NULL OR r.report_type = get_latest_agent_report.report_type)
     ORDER BY r.created_at DESC, r.id DESC
     LIMIT 1
$$;
