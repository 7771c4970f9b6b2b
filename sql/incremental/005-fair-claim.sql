-- 0.2.0: fair claiming (docs/fairness.md). An organization's weight is its share of a busy
-- system relative to the others.
ALTER TABLE ai_agents.ai_agent_organization_limits
    ADD COLUMN weight real NOT NULL DEFAULT 1
        CONSTRAINT ai_agent_organization_limits_weight_check CHECK (weight >= 0.01 AND weight <= 100);

-- The fair-claim index: a claim finds each agent with claimable tasks in one probe (a skip
-- scan over organization and agent), and that agent's most urgent due task in another.
CREATE INDEX ai_agent_tasks_fair_claim_idx
    ON ai_agents.ai_agent_tasks (organization_id, agent_id, priority DESC, next_run_at)
    WHERE status IN ('pending', 'completed', 'failed') AND next_run_at IS NOT NULL AND NOT paused;

-- It replaces the global claim order (priority, due time), which let one organization's
-- backlog stand in front of every other organization's tasks. 0.1.0's drop guard (replaced by
-- guard.sql later in this script) does not know extension scripts, so an upgrade pauses it
-- for this one drop; a fresh install has no guard yet.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'ai_agents_guard_extension_objects') THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
        DROP INDEX ai_agents.ai_agent_tasks_claim_idx;
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects ENABLE;
    ELSE
        DROP INDEX ai_agents.ai_agent_tasks_claim_idx;
    END IF;
END
$$;
