-- ai_agents data model as released in 0.1.0 (docs/sql-api.md, Tables). Table and column
-- names follow the deployment guide so that its SQL runs unchanged with
-- search_path = ai_agents, public.
--
-- Run-once DDL: released, so never edited. A later change to a table goes into the next
-- numbered file of sql/incremental/ (docs/releases.md).

-- Fencing tokens: one sequence for all tasks, so a token is never reused, not even after a
-- task row is deleted and a new one takes its place.
CREATE SEQUENCE ai_agents.fencing_token_seq;

CREATE TABLE ai_agents.ai_agents (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id    uuid NOT NULL,
    name               text NOT NULL CONSTRAINT ai_agents_name_not_empty CHECK (btrim(name) <> ''),
    agent_type         text NOT NULL DEFAULT 'customer_care'
                       CONSTRAINT ai_agents_agent_type_not_empty CHECK (btrim(agent_type) <> ''),
    system_prompt      text NOT NULL DEFAULT '',
    provider           text NOT NULL DEFAULT 'openai'
                       CONSTRAINT ai_agents_provider_check CHECK (provider IN ('openai', 'anthropic')),
    model              text NOT NULL DEFAULT 'gpt-4o-mini'
                       CONSTRAINT ai_agents_model_not_empty CHECK (btrim(model) <> ''),
    temperature        numeric(3, 2) NOT NULL DEFAULT 0.7
                       CONSTRAINT ai_agents_temperature_check CHECK (temperature BETWEEN 0 AND 2),
    max_tokens         integer NOT NULL DEFAULT 1024
                       CONSTRAINT ai_agents_max_tokens_check CHECK (max_tokens > 0),
    config             jsonb NOT NULL DEFAULT '{}'
                       CONSTRAINT ai_agents_config_is_object CHECK (jsonb_typeof(config) = 'object'),
    is_active          boolean NOT NULL DEFAULT true,
    -- Pausing holds every task of the agent (see pause_agent_tasks); tasks carry a copy of the
    -- flag so that the claim index can leave them out.
    tasks_paused       boolean NOT NULL DEFAULT false,
    current_version_id uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- Target of the tasks' composite foreign key: a task's organization is its agent's.
    CONSTRAINT ai_agents_id_organization_key UNIQUE (id, organization_id)
);
CREATE INDEX ai_agents_organization_idx ON ai_agents.ai_agents (organization_id);

CREATE TABLE ai_agents.ai_agent_versions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id        uuid NOT NULL,
    organization_id uuid NOT NULL,
    version_number  integer NOT NULL CONSTRAINT ai_agent_versions_number_check CHECK (version_number > 0),
    name            text NOT NULL,
    agent_type      text NOT NULL,
    system_prompt   text NOT NULL,
    provider        text NOT NULL,
    model           text NOT NULL,
    temperature     numeric(3, 2) NOT NULL,
    max_tokens      integer NOT NULL,
    config          jsonb NOT NULL,
    change_note     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL DEFAULT current_user,
    CONSTRAINT ai_agent_versions_agent_number_key UNIQUE (agent_id, version_number),
    FOREIGN KEY (agent_id, organization_id)
        REFERENCES ai_agents.ai_agents (id, organization_id) ON DELETE CASCADE
);

-- ai_agents.current_version_id has no foreign key on purpose: with one, agents and versions
-- would reference each other and pg_dump could not restore either table's rows first. The
-- functions in sql/agents.sql are the only writers of the column.

CREATE TABLE ai_agents.ai_agent_conversations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    agent_id        uuid NOT NULL,
    title           text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (agent_id, organization_id)
        REFERENCES ai_agents.ai_agents (id, organization_id) ON DELETE CASCADE,
    -- Messages and tasks name their organization with the conversation: one cannot point
    -- into another organization's conversation.
    CONSTRAINT ai_agent_conversations_id_organization_key UNIQUE (id, organization_id)
);
CREATE INDEX ai_agent_conversations_agent_idx ON ai_agents.ai_agent_conversations (agent_id);
CREATE INDEX ai_agent_conversations_organization_idx ON ai_agents.ai_agent_conversations (organization_id);

-- Plain sequences rather than identity columns: pg_dump keeps an extension sequence's
-- position only for a sequence that is itself marked with pg_extension_config_dump.
CREATE SEQUENCE ai_agents.ai_agent_messages_id_seq;
CREATE TABLE ai_agents.ai_agent_messages (
    id              bigint PRIMARY KEY DEFAULT nextval('ai_agents.ai_agent_messages_id_seq'),
    conversation_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    role            text NOT NULL CONSTRAINT ai_agent_messages_role_check
                    CHECK (role IN ('system', 'user', 'assistant')),
    content         text NOT NULL,
    tokens          integer CONSTRAINT ai_agent_messages_tokens_check CHECK (tokens >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (conversation_id, organization_id)
        REFERENCES ai_agents.ai_agent_conversations (id, organization_id) ON DELETE CASCADE
);
-- Conversation tasks load the newest N messages: this index serves that without a sort.
CREATE INDEX ai_agent_messages_conversation_idx
    ON ai_agents.ai_agent_messages (conversation_id, created_at DESC, id DESC);

CREATE TABLE ai_agents.ai_agent_tasks (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id             uuid NOT NULL,
    organization_id      uuid NOT NULL,
    agent_version_id     uuid REFERENCES ai_agents.ai_agent_versions (id) ON DELETE SET NULL,
    conversation_id      uuid,
    title                text NOT NULL CONSTRAINT ai_agent_tasks_title_not_empty CHECK (btrim(title) <> ''),
    description          text,
    task_type            text NOT NULL DEFAULT 'adhoc' CONSTRAINT ai_agent_tasks_task_type_check
                         CHECK (task_type IN ('scheduled', 'adhoc', 'conversation', 'report')),
    status               text NOT NULL DEFAULT 'pending' CONSTRAINT ai_agent_tasks_status_check
                         CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    priority             integer NOT NULL DEFAULT 0,
    next_run_at          timestamptz,
    schedule_cron        text,
    timezone             text NOT NULL DEFAULT 'UTC',
    idempotency_key      text CONSTRAINT ai_agent_tasks_idempotency_key_length
                         CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    execution_started_at timestamptz,
    completed_at         timestamptz,
    attempts             integer NOT NULL DEFAULT 0 CONSTRAINT ai_agent_tasks_attempts_check CHECK (attempts >= 0),
    max_attempts         integer NOT NULL DEFAULT 3
                         CONSTRAINT ai_agent_tasks_max_attempts_check CHECK (max_attempts >= 1),
    run_count            integer NOT NULL DEFAULT 0,
    locked_by            text,
    lease_expires_at     timestamptz,
    fencing_token        bigint,
    paused               boolean NOT NULL DEFAULT false,
    input                jsonb NOT NULL DEFAULT '{}',
    output               text,
    result               jsonb,
    tokens_used          integer,
    cost_usd             numeric(14, 6),
    execution_time_ms    integer,
    error_message        text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (agent_id, organization_id)
        REFERENCES ai_agents.ai_agents (id, organization_id) ON DELETE CASCADE,
    FOREIGN KEY (conversation_id, organization_id)
        REFERENCES ai_agents.ai_agent_conversations (id, organization_id) ON DELETE CASCADE,
    CONSTRAINT ai_agent_tasks_lease_check CHECK (status <> 'running' OR lease_expires_at IS NOT NULL)
);
-- Idempotency: one task per key and organization. enqueue_task relies on this index.
CREATE UNIQUE INDEX ai_agent_tasks_idempotency_idx
    ON ai_agents.ai_agent_tasks (organization_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim index: only rows that can become due are in it, in claim order, so claiming
-- reads the first due entries instead of scanning finished history.
CREATE INDEX ai_agent_tasks_claim_idx
    ON ai_agents.ai_agent_tasks (priority DESC, next_run_at)
    WHERE status IN ('pending', 'completed', 'failed') AND next_run_at IS NOT NULL AND NOT paused;
-- The worker's next wake-up: the earliest next_run_at among the same rows.
CREATE INDEX ai_agent_tasks_due_idx
    ON ai_agents.ai_agent_tasks (next_run_at)
    WHERE status IN ('pending', 'completed', 'failed') AND next_run_at IS NOT NULL AND NOT paused;
-- Lease rescue looks only at leased (running) rows. The predicate is on the lease, not on the
-- status: with `status = 'running'` the planner matched this small index to every statement
-- that completes or fails one task by id (`... AND status = 'running'`) and read all of it -
-- dead versions too while a long transaction held back clean-up - instead of the primary key.
CREATE INDEX ai_agent_tasks_lease_idx
    ON ai_agents.ai_agent_tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX ai_agent_tasks_agent_idx ON ai_agents.ai_agent_tasks (agent_id);
CREATE INDEX ai_agent_tasks_organization_created_idx ON ai_agents.ai_agent_tasks (organization_id, created_at);
CREATE INDEX ai_agent_tasks_created_idx ON ai_agents.ai_agent_tasks (created_at);
-- Pruning looks for finished one-shot rows by age.
CREATE INDEX ai_agent_tasks_finished_idx
    ON ai_agents.ai_agent_tasks (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled') AND next_run_at IS NULL;
CREATE INDEX ai_agent_tasks_conversation_idx ON ai_agents.ai_agent_tasks (conversation_id)
    WHERE conversation_id IS NOT NULL;

CREATE SEQUENCE ai_agents.ai_agent_activity_log_id_seq;
CREATE TABLE ai_agents.ai_agent_activity_log (
    id                bigint PRIMARY KEY DEFAULT nextval('ai_agents.ai_agent_activity_log_id_seq'),
    organization_id   uuid NOT NULL,
    agent_id          uuid,
    task_id           uuid REFERENCES ai_agents.ai_agent_tasks (id) ON DELETE SET NULL,
    action_type       text NOT NULL,
    success           boolean NOT NULL,
    attempt           integer,
    tokens_used       integer,
    cost_usd          numeric(14, 6),
    execution_time_ms integer,
    error             text,
    details           jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_agent_activity_log_task_idx ON ai_agents.ai_agent_activity_log (task_id, created_at);
CREATE INDEX ai_agent_activity_log_organization_idx
    ON ai_agents.ai_agent_activity_log (organization_id, created_at);
CREATE INDEX ai_agent_activity_log_created_idx ON ai_agents.ai_agent_activity_log (created_at);

CREATE TABLE ai_agents.ai_agent_report_templates (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL: a built-in template, offered to every organization.
    organization_id    uuid,
    name               text NOT NULL CONSTRAINT ai_agent_report_templates_name_not_empty CHECK (btrim(name) <> ''),
    report_type        text NOT NULL,
    -- The agents a report belongs to and whose LLM writes its narrative (NULL: any agent).
    agent_type         text,
    description        text,
    -- 'agent': the figures of the report's agent; 'organization': of all the organization's
    -- agents (a finance report about everyone's spend still belongs to the finance agent).
    scope              text NOT NULL DEFAULT 'agent' CONSTRAINT ai_agent_report_templates_scope_check
                       CHECK (scope IN ('agent', 'organization')),
    period             text NOT NULL CONSTRAINT ai_agent_report_templates_period_check
                       CHECK (period IN ('week', 'month')),
    sections           text[] NOT NULL DEFAULT '{}',
    -- Extra named read-only queries: {"name": "SELECT ... WHERE org = $1 AND at >= $2 AND at < $3"}.
    queries            jsonb NOT NULL DEFAULT '{}'
                       CONSTRAINT ai_agent_report_templates_queries_check CHECK (jsonb_typeof(queries) = 'object'),
    narrative_prompt   text,
    -- When a finished period's report is built (e.g. Monday 07:00 for the week before).
    schedule_cron      text,
    -- Periods and schedules are read in this time zone.
    timezone           text NOT NULL DEFAULT 'UTC',
    -- Scheduled generation covers periods ending after this (set when the schedule changes),
    -- so a new schedule does not back-fill history.
    schedule_starts_at timestamptz NOT NULL DEFAULT now(),
    is_active          boolean NOT NULL DEFAULT true,
    is_builtin         boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ai_agent_report_templates_name_key UNIQUE NULLS NOT DISTINCT (organization_id, name)
);

CREATE TABLE ai_agents.ai_agent_reports (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL,
    agent_id         uuid REFERENCES ai_agents.ai_agents (id) ON DELETE CASCADE,
    template_id      uuid REFERENCES ai_agents.ai_agent_report_templates (id) ON DELETE SET NULL,
    report_type      text NOT NULL,
    title            text NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    data             jsonb NOT NULL DEFAULT '{}',
    markdown         text,
    narrative        text,
    narrative_status text NOT NULL DEFAULT 'not_requested' CONSTRAINT ai_agent_reports_narrative_status_check
                     CHECK (narrative_status IN ('not_requested', 'pending', 'written', 'missing')),
    -- Why the narrative is missing.
    narrative_error  text,
    -- The task writing the narrative: only its result is stored (a rebuild starts a new one).
    narrative_task_id uuid,
    status           text NOT NULL DEFAULT 'ready' CONSTRAINT ai_agent_reports_status_check
                     CHECK (status IN ('building', 'ready', 'failed')),
    -- Why a scheduled build failed.
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ai_agent_reports_period_check CHECK (period_end > period_start),
    -- Building the same template for the same organization, agent and period replaces the report.
    CONSTRAINT ai_agent_reports_period_key UNIQUE NULLS NOT DISTINCT
        (template_id, organization_id, agent_id, period_start, period_end)
);
CREATE INDEX ai_agent_reports_narrative_task_idx ON ai_agents.ai_agent_reports (narrative_task_id)
    WHERE narrative_task_id IS NOT NULL;
CREATE INDEX ai_agent_reports_agent_idx ON ai_agents.ai_agent_reports (agent_id, report_type, period_end DESC);
CREATE INDEX ai_agent_reports_organization_idx ON ai_agents.ai_agent_reports (organization_id, period_end DESC);

-- What pruning takes out of the activity log, kept per hour: spend trends and monthly
-- reports reach further back than the activity history is kept.
CREATE TABLE ai_agents.ai_agent_usage_hourly (
    organization_id uuid NOT NULL,
    agent_id        uuid,
    provider        text NOT NULL,
    model           text NOT NULL,
    hour            timestamptz NOT NULL,
    attempts        bigint NOT NULL,
    succeeded       bigint NOT NULL,
    tokens          bigint NOT NULL,
    cost_usd        numeric(16, 6) NOT NULL,
    CONSTRAINT ai_agent_usage_hourly_key UNIQUE NULLS NOT DISTINCT (organization_id, agent_id, provider, model, hour)
);

-- Prices change over time: a new price is a new row with a later effective_from, so costs
-- already recorded stay explainable and seeded rows are never edited in place.
CREATE TABLE ai_agents.ai_agent_model_prices (
    provider                  text NOT NULL,
    model                     text NOT NULL,
    effective_from            timestamptz NOT NULL DEFAULT now(),
    input_usd_per_mtok        numeric(12, 6) NOT NULL CONSTRAINT ai_agent_model_prices_input_check CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok       numeric(12, 6) NOT NULL CONSTRAINT ai_agent_model_prices_output_check CHECK (output_usd_per_mtok >= 0),
    is_builtin                boolean NOT NULL DEFAULT false,
    PRIMARY KEY (provider, model, effective_from)
);

-- Per-organization (agent_id NULL) and per-agent overrides of the per-minute call limits.
CREATE TABLE ai_agents.ai_agent_rate_limits (
    organization_id uuid NOT NULL,
    agent_id        uuid REFERENCES ai_agents.ai_agents (id) ON DELETE CASCADE,
    max_per_minute  integer NOT NULL CONSTRAINT ai_agent_rate_limits_max_check CHECK (max_per_minute > 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ai_agent_rate_limits_key UNIQUE NULLS NOT DISTINCT (organization_id, agent_id)
);

-- Seed rows: the deployment guide's two report templates and the model prices.
INSERT INTO ai_agents.ai_agent_report_templates
    (id, name, report_type, agent_type, description, scope, period, sections, narrative_prompt,
     schedule_cron, is_builtin)
VALUES
    -- Fixed ids: reports refer to them, and a restored dump must find the same ids.
    ('00000000-0000-4000-8000-000000000001', 'Customer Care Weekly Summary', 'weekly_performance', 'customer_care',
     'What the Customer Care agent did this week: tasks and conversations, success rate, latency, failures, tokens and cost, compared with the previous week.',
     'agent', 'week',
     '{tasks_by_status,conversations,success_rate,latency,failures,usage,previous_period}',
     'You write for the owner of a gym, who has one minute. In at most five sentences: how many members the customer care agent helped this week, how reliable and fast it was, what went wrong and what it cost, how that compares with last week, and one thing to watch next week. Use only the figures below.',
     '0 7 * * 1', true),
    ('00000000-0000-4000-8000-000000000002', 'Finance Monthly Forecast', 'monthly_forecast', 'finance',
     'Spend and tokens by agent and model over the month, the trend over previous months, and a forecast of next month''s spend.',
     'organization', 'month',
     '{usage,per_agent,per_model,trend,forecast}',
     'You write for the owner of a gym, who has one minute. In at most five sentences: what the AI agents cost this month and which agent and model spent most, whether spend is rising or falling, and what next month will probably cost (say how the forecast was made). Use only the figures below.',
     '0 7 1 * *', true);

-- USD per million tokens (list prices; operators add rows with a later effective_from).
INSERT INTO ai_agents.ai_agent_model_prices
    (provider, model, effective_from, input_usd_per_mtok, output_usd_per_mtok, is_builtin)
VALUES
    ('openai', 'gpt-4o',             '2024-01-01', 2.50, 10.00, true),
    ('openai', 'gpt-4o-mini',        '2024-01-01', 0.15, 0.60, true),
    ('openai', 'gpt-4.1',            '2024-01-01', 2.00, 8.00, true),
    ('openai', 'gpt-4.1-mini',       '2024-01-01', 0.40, 1.60, true),
    ('openai', 'gpt-4.1-nano',       '2024-01-01', 0.10, 0.40, true),
    ('openai', 'o4-mini',            '2024-01-01', 1.10, 4.40, true),
    ('anthropic', 'claude-3-5-haiku-latest',  '2024-01-01', 0.80, 4.00, true),
    ('anthropic', 'claude-3-5-sonnet-latest', '2024-01-01', 3.00, 15.00, true),
    ('anthropic', 'claude-sonnet-4-0',        '2024-01-01', 3.00, 15.00, true),
    ('anthropic', 'claude-opus-4-0',          '2024-01-01', 15.00, 75.00, true);

-- pg_dump keeps user data of extension tables only when told; built-in seed rows are
-- recreated by CREATE EXTENSION and so are left out.
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agents', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_versions', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_conversations', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_messages', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_tasks', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_activity_log', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_reports', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_rate_limits', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_usage_hourly', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_report_templates', 'WHERE NOT is_builtin');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_model_prices', 'WHERE NOT is_builtin');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.fencing_token_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_messages_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_activity_log_id_seq', '');
