-- 0.2.0: limits per organization that are not rates. Keyed by organization_id alone, so that
-- the table can be distributed by it (docs/releases.md).
CREATE TABLE ai_agents.ai_agent_organization_limits (
    organization_id   uuid PRIMARY KEY,
    -- Tasks of the organization that may wait (pending or queued) at once; NULL: the
    -- setting ai_agents.max_waiting_tasks.
    max_waiting_tasks integer CONSTRAINT ai_agent_organization_limits_waiting_check CHECK (max_waiting_tasks > 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_organization_limits', '');

-- Counting an organization's waiting tasks reads only those.
CREATE INDEX ai_agent_tasks_waiting_idx ON ai_agents.ai_agent_tasks (organization_id)
    WHERE status IN ('pending', 'queued');
