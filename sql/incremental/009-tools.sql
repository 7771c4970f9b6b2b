-- 0.2.0: agents that act (docs/tools.md). Tools are SQL functions an organization registers;
-- an agent's configuration names the ones it may call, and every LLM call and tool call of a
-- task's loop is a stored step. Tenant tables, keyed with organization_id first
-- (docs/releases.md).
CREATE TABLE ai_agents.ai_agent_tools (
    organization_id uuid NOT NULL,
    -- As both providers accept a tool's name; the ai_agents_ prefix is the worker's own.
    name            text NOT NULL CONSTRAINT ai_agent_tools_name_check
                    CHECK (name ~ '^[a-zA-Z0-9_-]{1,64}$' AND name NOT LIKE 'ai\_agents\_%'),
    description     text NOT NULL DEFAULT ''
                    CONSTRAINT ai_agent_tools_description_check CHECK (octet_length(description) <= 4096),
    -- The JSON Schema of the arguments (an object); checked before every call.
    parameters      jsonb NOT NULL DEFAULT '{"type": "object", "properties": {}}'
                    CONSTRAINT ai_agent_tools_parameters_check
                    CHECK (jsonb_typeof(parameters) = 'object' AND octet_length(parameters::text) <= 65536),
    -- A function (args jsonb) RETURNS jsonb, run as ai_agents_tool_runner. Its signature as
    -- text, stored schema-qualified, and resolved where the tool runs: an OID (regprocedure)
    -- names another function, or none, on another node of a distributed cluster.
    function        text NOT NULL
                    CONSTRAINT ai_agent_tools_function_check CHECK (octet_length(function) <= 1024),
    read_only       boolean NOT NULL DEFAULT true,
    timeout_ms      integer NOT NULL DEFAULT 5000
                    CONSTRAINT ai_agent_tools_timeout_check CHECK (timeout_ms BETWEEN 1 AND 600000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, name)
);

-- Built-in tools: every organization's, unless it registers a tool of the same name. Global
-- data (a reference table under Citus). The extension's own rows, written by
-- sql/idempotent/tools.sql on install and upgrade, so not marked for pg_dump.
CREATE TABLE ai_agents.ai_agent_builtin_tools (
    name            text PRIMARY KEY CONSTRAINT ai_agent_builtin_tools_name_check
                    CHECK (name ~ '^[a-zA-Z0-9_-]{1,64}$' AND name NOT LIKE 'ai\_agents\_%'),
    description     text NOT NULL,
    parameters      jsonb NOT NULL,
    function        text NOT NULL
                    CONSTRAINT ai_agent_builtin_tools_function_check CHECK (octet_length(function) <= 1024),
    read_only       boolean NOT NULL DEFAULT true,
    timeout_ms      integer NOT NULL DEFAULT 5000
                    CONSTRAINT ai_agent_builtin_tools_timeout_check CHECK (timeout_ms BETWEEN 1 AND 600000)
);

-- An agent's tools (by name), the JSON Schema of its final answer and the most LLM calls of
-- one run: configuration, so versions snapshot them and activate_agent_version restores them.
ALTER TABLE ai_agents.ai_agents
    ADD COLUMN tools text[] NOT NULL DEFAULT '{}'
        CONSTRAINT ai_agents_tools_check CHECK (cardinality(tools) <= 64 AND array_position(tools, NULL) IS NULL),
    ADD COLUMN output_schema jsonb
        CONSTRAINT ai_agents_output_schema_check
        CHECK (jsonb_typeof(output_schema) = 'object' AND octet_length(output_schema::text) <= 65536),
    ADD COLUMN max_steps integer NOT NULL DEFAULT 8
        CONSTRAINT ai_agents_max_steps_check CHECK (max_steps BETWEEN 1 AND 100);
ALTER TABLE ai_agents.ai_agent_versions
    ADD COLUMN tools text[] NOT NULL DEFAULT '{}',
    ADD COLUMN output_schema jsonb,
    ADD COLUMN max_steps integer NOT NULL DEFAULT 8;

-- Steps are numbered over the task's life; those of the current run are numbered from
-- run_first_step on (a recurring task's next run starts afresh, a retried run resumes).
-- step_count: the last step's number as of the last LLM step or continuation.
ALTER TABLE ai_agents.ai_agent_tasks
    ADD COLUMN step_count integer NOT NULL DEFAULT 0,
    ADD COLUMN run_first_step integer NOT NULL DEFAULT 1,
    ADD CONSTRAINT ai_agent_tasks_id_organization_key UNIQUE (id, organization_id);

-- One LLM call (kind 'llm') or one tool call (kind 'tool') of a task's loop. A tool step is
-- inserted in the transaction that ran the tool, so its effects and its row commit together.
CREATE TABLE ai_agents.ai_agent_task_steps (
    organization_id uuid NOT NULL,
    task_id         uuid NOT NULL,
    step_number     integer NOT NULL CONSTRAINT ai_agent_task_steps_number_check CHECK (step_number > 0),
    agent_id        uuid NOT NULL,
    kind            text NOT NULL CONSTRAINT ai_agent_task_steps_kind_check CHECK (kind IN ('llm', 'tool')),
    -- llm: the reply's text and the tool calls it asked for ([{id, name, arguments}]).
    content         text,
    tool_calls      jsonb,
    -- tool: the call it answers, its arguments (NULL when they were not JSON), and its
    -- result or its error with SQLSTATE.
    tool_call_id    text,
    tool_name       text,
    arguments       jsonb,
    result          jsonb,
    error           text,
    error_code      text,
    input_tokens    integer,
    output_tokens   integer,
    cost_usd        numeric(20, 12),
    model           text,
    request_id      text,
    duration_ms     integer,
    fencing_token   bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, task_id, step_number),
    CONSTRAINT ai_agent_task_steps_task_fkey FOREIGN KEY (task_id, organization_id)
        REFERENCES ai_agents.ai_agent_tasks (id, organization_id) ON DELETE CASCADE
);

SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_tools', '');
SELECT pg_catalog.pg_extension_config_dump('ai_agents.ai_agent_task_steps', '');

-- _claim_llm_calls returns the loop's tools and steps: a result that changed, so it is made
-- again by sql/idempotent/worker.sql (the guard paused as in 007-token-limits.sql).
DO $$
DECLARE
    guarded boolean := EXISTS (SELECT FROM pg_catalog.pg_event_trigger
                                WHERE evtname = 'ai_agents_guard_extension_objects');
BEGIN
    IF to_regprocedure('ai_agents._claim_llm_calls(text, integer, interval, integer)') IS NOT NULL THEN
        IF guarded THEN
            ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
        END IF;
        DROP FUNCTION ai_agents._claim_llm_calls(text, integer, interval, integer);
        IF guarded THEN
            ALTER EVENT TRIGGER ai_agents_guard_extension_objects ENABLE;
        END IF;
    END IF;
END
$$;
