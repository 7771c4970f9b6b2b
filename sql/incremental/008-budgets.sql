-- 0.2.0: budgets (docs/budgets.md). A budget caps what an organization (agent_id NULL) or
-- one of its agents may spend on LLM calls per calendar day or month in a time zone.
-- Tenant tables, keyed with organization_id first (docs/releases.md).
CREATE TABLE ai_agents.ai_agent_budgets (
    organization_id uuid NOT NULL,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    agent_id        uuid,
    period          text NOT NULL CONSTRAINT ai_agent_budgets_period_check CHECK (period IN ('day', 'month')),
    timezone        text NOT NULL DEFAULT 'UTC'
                    CONSTRAINT ai_agent_budgets_timezone_check CHECK (length(timezone) BETWEEN 1 AND 64),
    limit_usd       numeric(20, 12) NOT NULL CONSTRAINT ai_agent_budgets_limit_check CHECK (limit_usd > 0),
    -- Shares of the limit that each raise one alert per period.
    thresholds      numeric[] NOT NULL DEFAULT '{0.8, 0.95}'
                    CONSTRAINT ai_agent_budgets_thresholds_check
                    CHECK (cardinality(thresholds) <= 10 AND array_position(thresholds, NULL) IS NULL
                           AND 0 < ALL (thresholds) AND 1 >= ALL (thresholds)),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, id),
    CONSTRAINT ai_agent_budgets_key UNIQUE NULLS NOT DISTINCT (organization_id, agent_id, period),
    CONSTRAINT ai_agent_budgets_agent_fkey FOREIGN KEY (agent_id, organization_id)
        REFERENCES ai_agents.ai_agents (id, organization_id) ON DELETE CASCADE
);

-- A budget's spending in one period: what calls settled, what calls in flight reserved, the
-- thresholds already alerted, and since when a claim has been held back by it.
CREATE TABLE ai_agents.ai_agent_budget_periods (
    organization_id uuid NOT NULL,
    budget_id       uuid NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    spent_usd       numeric(22, 12) NOT NULL DEFAULT 0,
    reserved_usd    numeric(22, 12) NOT NULL DEFAULT 0,
    alerted         numeric[] NOT NULL DEFAULT '{}',
    held_since      timestamptz,
    PRIMARY KEY (organization_id, budget_id, period_start),
    CONSTRAINT ai_agent_budget_periods_budget_fkey FOREIGN KEY (organization_id, budget_id)
        REFERENCES ai_agents.ai_agent_budgets (organization_id, id) ON DELETE CASCADE
);

-- What a running task's call reserved against its budgets (NULL: no budget applied).
ALTER TABLE ai_agents.ai_agent_tasks ADD COLUMN budget_reserved_usd numeric(20, 12);

SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_budgets', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_budget_periods', '');
