-- 0.2.0: costs to 12 decimal places (docs/worker.md#what-is-recorded). A price per million
-- tokens with 6 decimals makes a call's exact cost a number with 12; numeric(14, 6) rounded a
-- call of 10 input and 20 output tokens of gpt-4o-mini ($0.0000135) to $0.000014, 4% off, and
-- sums of many small calls drifted by as much. The columns widen; costs recorded before keep
-- their values.
ALTER TABLE ai_agents.ai_agent_tasks ALTER COLUMN cost_usd TYPE numeric(20, 12);
ALTER TABLE ai_agents.ai_agent_activity_log ALTER COLUMN cost_usd TYPE numeric(20, 12);
ALTER TABLE ai_agents.ai_agent_usage_hourly ALTER COLUMN cost_usd TYPE numeric(22, 12);

-- Cached input is billed at its own rate: reads from a provider's prompt cache for a fraction
-- of the input price, and (Anthropic) writes to it for more. NULL: billed as plain input.
ALTER TABLE ai_agents.ai_agent_model_prices
    ADD COLUMN cached_input_usd_per_mtok numeric(12, 6)
        CONSTRAINT ai_agent_model_prices_cached_input_check CHECK (cached_input_usd_per_mtok >= 0),
    ADD COLUMN cache_write_usd_per_mtok numeric(12, 6)
        CONSTRAINT ai_agent_model_prices_cache_write_check CHECK (cache_write_usd_per_mtok >= 0);

-- The built-in models' list prices for cached input (Anthropic: cache reads at a tenth of the
-- input price, five-minute cache writes at 1.25 times it).
UPDATE ai_agents.ai_agent_model_prices p
   SET cached_input_usd_per_mtok = c.cached, cache_write_usd_per_mtok = c.write
  FROM (VALUES ('openai', 'gpt-4o', 1.25, NULL),
               ('openai', 'gpt-4o-mini', 0.075, NULL),
               ('openai', 'gpt-4.1', 0.50, NULL),
               ('openai', 'gpt-4.1-mini', 0.10, NULL),
               ('openai', 'gpt-4.1-nano', 0.025, NULL),
               ('openai', 'o4-mini', 0.275, NULL),
               ('anthropic', 'claude-3-5-haiku-latest', 0.08, 1.00),
               ('anthropic', 'claude-3-5-sonnet-latest', 0.30, 3.75),
               ('anthropic', 'claude-sonnet-4-0', 0.30, 3.75),
               ('anthropic', 'claude-opus-4-0', 1.50, 18.75)) AS c(provider, model, cached, write)
 WHERE p.provider = c.provider AND p.model = c.model AND p.is_builtin;
