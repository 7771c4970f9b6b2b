-- Rate limits (docs/rate-limits.md). The counting lives in shared memory (src/ratelimit);
-- this file has the usage view and keeps every backend's copy of the overrides current.

-- Current usage per key: tier keys 'global', 'organization:<uuid>', 'agent:<uuid>', app keys
-- 'app:<key>', and paused keys.
CREATE OR REPLACE VIEW ai_agents.rate_limit_usage AS
    SELECT * FROM ai_agents._rate_limit_keys();

CREATE OR REPLACE FUNCTION ai_agents._rate_limit_overrides_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ai_agents._reload_rate_limit_overrides_at_commit();
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_rate_limits_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ai_agents.ai_agent_rate_limits
    FOR EACH STATEMENT EXECUTE FUNCTION ai_agents._rate_limit_overrides_changed();

-- Limits are the operator's to change and to spend.
REVOKE ALL ON FUNCTION ai_agents.pause_rate_limit(text, timestamptz, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.reset_rate_limit(text) FROM PUBLIC;

-- The tiers of one LLM call, calls and tokens (C functions in src/ratelimit/verdict.rs, whose
-- result row is built without a catalog lookup per call: this is the hot path).
CREATE OR REPLACE FUNCTION ai_agents.check_rate_limit(
    organization_id uuid, agent_id uuid, cost integer DEFAULT 1, tokens bigint DEFAULT 0,
    OUT allowed boolean, OUT refused_tier text, OUT retry_after interval,
    OUT remaining_global bigint, OUT remaining_organization bigint, OUT remaining_agent bigint,
    OUT remaining_global_tokens bigint, OUT remaining_organization_tokens bigint,
    OUT remaining_agent_tokens bigint)
RETURNS record
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'check_rate_limit_fast';

CREATE OR REPLACE FUNCTION ai_agents.peek_rate_limit(
    organization_id uuid, agent_id uuid, cost integer DEFAULT 1, tokens bigint DEFAULT 0,
    OUT allowed boolean, OUT refused_tier text, OUT retry_after interval,
    OUT remaining_global bigint, OUT remaining_organization bigint, OUT remaining_agent bigint,
    OUT remaining_global_tokens bigint, OUT remaining_organization_tokens bigint,
    OUT remaining_agent_tokens bigint)
RETURNS record
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'peek_rate_limit_fast';
