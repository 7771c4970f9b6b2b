-- 0.2.0: tokens per minute beside calls per minute (docs/rate-limits.md#token-tiers). An
-- override row may set either limit or both; NULL leaves the setting in force.
ALTER TABLE ai_agents.ai_agent_rate_limits
    ALTER COLUMN max_per_minute DROP NOT NULL,
    ADD COLUMN max_tokens_per_minute integer
        CONSTRAINT ai_agent_rate_limits_max_tokens_check CHECK (max_tokens_per_minute > 0),
    ADD CONSTRAINT ai_agent_rate_limits_some_limit_check
        CHECK (max_per_minute IS NOT NULL OR max_tokens_per_minute IS NOT NULL);

-- Functions whose arguments or result columns changed: check_rate_limit and peek_rate_limit
-- take a token count and return the token tiers' room, the recording of replies and the
-- price of a call take the cached-input counts. sql/idempotent/ creates them again. On a
-- fresh install none exists yet; an upgrade pauses 0.1.0's drop guard (replaced by guard.sql
-- later in this script), which does not know extension scripts.
DO $$
DECLARE
    old regprocedure;
    guarded boolean := EXISTS (SELECT FROM pg_catalog.pg_event_trigger
                                WHERE evtname = 'ai_agents_guard_extension_objects');
BEGIN
    FOR old IN
        SELECT to_regprocedure(signature) FROM unnest(ARRAY[
            'ai_agents.check_rate_limit(uuid, uuid, integer)',
            'ai_agents.peek_rate_limit(uuid, uuid, integer)',
            'ai_agents._llm_cost_usd(text, text, bigint, bigint)',
            'ai_agents._record_llm_replies(uuid[], bigint[], text[], bigint[], bigint[], text[], text[], integer[])',
            'ai_agents._record_llm_reply_batch(uuid[], bigint[], text[], bigint[], bigint[], text[], text[], integer[])'
        ]) AS signature
        WHERE to_regprocedure(signature) IS NOT NULL
    LOOP
        IF guarded THEN
            ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
        END IF;
        EXECUTE format('DROP FUNCTION %s', old);
        IF guarded THEN
            ALTER EVENT TRIGGER ai_agents_guard_extension_objects ENABLE;
        END IF;
    END LOOP;
END
$$;
