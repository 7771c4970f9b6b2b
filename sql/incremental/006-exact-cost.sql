-- 0.2.0: costs to 12 decimal places (docs/worker.md#what-is-recorded). A price per million
-- tokens with 6 decimals makes a call's exact cost a number with 12; numeric(14, 6) rounded a
-- call of 10 input and 20 output tokens of gpt-4o-mini ($0.0000135) to $0.000014, 4% off, and
-- sums of many small calls drifted by as much. The columns widen; costs recorded before keep
-- their values.
ALTER TABLE ai_agents.ai_agent_tasks ALTER COLUMN cost_usd TYPE numeric(20, 12);
ALTER TABLE ai_agents.ai_agent_activity_log ALTER COLUMN cost_usd TYPE numeric(20, 12);
ALTER TABLE ai_agents.ai_agent_usage_hourly ALTER COLUMN cost_usd TYPE numeric(22, 12);
