-- 0.2.0: the tables of 0.1.0 keyed by organization first (docs/distributed.md#keys), as
-- DESIGN.md section 12 asks of every tenant table: the primary key is (organization_id, id),
-- and a foreign key between tenant tables names organization_id on both sides, so that a row
-- and everything it points to live in one organization, and under Citus on one shard group.
--
-- On one server the tables whose rows are found by id keep a unique index on id alone: it finds
-- a row by its id, as the worker and the SQL API do, and keeps ids unique across organizations.
-- Citus cannot enforce a unique index without the distribution column: distributing the
-- tables will replace these indexes with plain ones.
--
-- Report templates stay keyed by id: the built-in templates (organization_id NULL) are global
-- data beside the organizations' own, and the table becomes a reference table.
--
-- Run on an upgrade, 0.1.0's drop guard would refuse the constraints this replaces: it does not
-- know extension scripts. It is paused for this file (sql/idempotent/guard.sql replaces it
-- later in the same script). On a fresh install it does not exist yet.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'ai_agents_guard_extension_objects') THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
    END IF;
END
$$;

-- The foreign keys that point at the keys replaced below go first, and come back at the end
-- naming organization_id first.
ALTER TABLE ai_agents.ai_agent_versions
    DROP CONSTRAINT ai_agent_versions_agent_id_organization_id_fkey;
ALTER TABLE ai_agents.ai_agent_conversations
    DROP CONSTRAINT ai_agent_conversations_agent_id_organization_id_fkey;
ALTER TABLE ai_agents.ai_agent_messages
    DROP CONSTRAINT ai_agent_messages_conversation_id_organization_id_fkey;
ALTER TABLE ai_agents.ai_agent_tasks
    DROP CONSTRAINT ai_agent_tasks_agent_id_organization_id_fkey,
    DROP CONSTRAINT ai_agent_tasks_conversation_id_organization_id_fkey,
    DROP CONSTRAINT ai_agent_tasks_agent_version_id_fkey;
ALTER TABLE ai_agents.ai_agent_activity_log
    DROP CONSTRAINT ai_agent_activity_log_task_id_fkey;
ALTER TABLE ai_agents.ai_agent_reports
    DROP CONSTRAINT ai_agent_reports_agent_id_fkey;
ALTER TABLE ai_agents.ai_agent_rate_limits
    DROP CONSTRAINT ai_agent_rate_limits_agent_id_fkey;
ALTER TABLE ai_agents.ai_agent_budgets
    DROP CONSTRAINT ai_agent_budgets_agent_fkey;
ALTER TABLE ai_agents.ai_agent_task_steps
    DROP CONSTRAINT ai_agent_task_steps_task_fkey;

-- The keys. The (id, organization_id) unique constraints existed only for the foreign keys,
-- and the organization indexes are the new primary keys' leading column.
ALTER TABLE ai_agents.ai_agents
    DROP CONSTRAINT ai_agents_pkey,
    DROP CONSTRAINT ai_agents_id_organization_key,
    ADD PRIMARY KEY (organization_id, id),
    ADD CONSTRAINT ai_agents_id_key UNIQUE (id);
DROP INDEX ai_agents.ai_agents_organization_idx;

ALTER TABLE ai_agents.ai_agent_versions
    DROP CONSTRAINT ai_agent_versions_pkey,
    DROP CONSTRAINT ai_agent_versions_agent_number_key,
    ADD PRIMARY KEY (organization_id, id),
    ADD CONSTRAINT ai_agent_versions_id_key UNIQUE (id),
    ADD CONSTRAINT ai_agent_versions_agent_number_key UNIQUE (organization_id, agent_id, version_number);

ALTER TABLE ai_agents.ai_agent_conversations
    DROP CONSTRAINT ai_agent_conversations_pkey,
    DROP CONSTRAINT ai_agent_conversations_id_organization_key,
    ADD PRIMARY KEY (organization_id, id),
    ADD CONSTRAINT ai_agent_conversations_id_key UNIQUE (id);
DROP INDEX ai_agents.ai_agent_conversations_organization_idx;

-- Messages and activity are only read by their conversation, task or organization: no index
-- on id alone.
ALTER TABLE ai_agents.ai_agent_messages
    DROP CONSTRAINT ai_agent_messages_pkey,
    ADD PRIMARY KEY (organization_id, id);

ALTER TABLE ai_agents.ai_agent_tasks
    DROP CONSTRAINT ai_agent_tasks_pkey,
    DROP CONSTRAINT ai_agent_tasks_id_organization_key,
    ADD PRIMARY KEY (organization_id, id),
    ADD CONSTRAINT ai_agent_tasks_id_key UNIQUE (id);

ALTER TABLE ai_agents.ai_agent_activity_log
    DROP CONSTRAINT ai_agent_activity_log_pkey,
    ADD PRIMARY KEY (organization_id, id);

ALTER TABLE ai_agents.ai_agent_reports
    DROP CONSTRAINT ai_agent_reports_pkey,
    ADD PRIMARY KEY (organization_id, id),
    ADD CONSTRAINT ai_agent_reports_id_key UNIQUE (id);

-- The foreign keys again. Citus refuses ON DELETE SET NULL on a key that holds the
-- distribution column, so none does: the activity log keeps the id of a deleted task, as a log
-- keeps what happened, and points at it no more.
ALTER TABLE ai_agents.ai_agent_versions
    ADD CONSTRAINT ai_agent_versions_agent_fkey FOREIGN KEY (organization_id, agent_id)
        REFERENCES ai_agents.ai_agents (organization_id, id) ON DELETE CASCADE;
ALTER TABLE ai_agents.ai_agent_conversations
    ADD CONSTRAINT ai_agent_conversations_agent_fkey FOREIGN KEY (organization_id, agent_id)
        REFERENCES ai_agents.ai_agents (organization_id, id) ON DELETE CASCADE;
ALTER TABLE ai_agents.ai_agent_messages
    ADD CONSTRAINT ai_agent_messages_conversation_fkey FOREIGN KEY (organization_id, conversation_id)
        REFERENCES ai_agents.ai_agent_conversations (organization_id, id) ON DELETE CASCADE;
ALTER TABLE ai_agents.ai_agent_tasks
    ADD CONSTRAINT ai_agent_tasks_agent_fkey FOREIGN KEY (organization_id, agent_id)
        REFERENCES ai_agents.ai_agents (organization_id, id) ON DELETE CASCADE,
    ADD CONSTRAINT ai_agent_tasks_conversation_fkey FOREIGN KEY (organization_id, conversation_id)
        REFERENCES ai_agents.ai_agent_conversations (organization_id, id) ON DELETE CASCADE,
    -- Versions are deleted only with their agent, whose tasks go too: no action needed.
    ADD CONSTRAINT ai_agent_tasks_version_fkey FOREIGN KEY (organization_id, agent_version_id)
        REFERENCES ai_agents.ai_agent_versions (organization_id, id);
ALTER TABLE ai_agents.ai_agent_reports
    ADD CONSTRAINT ai_agent_reports_agent_fkey FOREIGN KEY (organization_id, agent_id)
        REFERENCES ai_agents.ai_agents (organization_id, id) ON DELETE CASCADE;
ALTER TABLE ai_agents.ai_agent_rate_limits
    ADD CONSTRAINT ai_agent_rate_limits_agent_fkey FOREIGN KEY (organization_id, agent_id)
        REFERENCES ai_agents.ai_agents (organization_id, id) ON DELETE CASCADE;
ALTER TABLE ai_agents.ai_agent_budgets
    ADD CONSTRAINT ai_agent_budgets_agent_fkey FOREIGN KEY (organization_id, agent_id)
        REFERENCES ai_agents.ai_agents (organization_id, id) ON DELETE CASCADE;
ALTER TABLE ai_agents.ai_agent_task_steps
    ADD CONSTRAINT ai_agent_task_steps_task_fkey FOREIGN KEY (organization_id, task_id)
        REFERENCES ai_agents.ai_agent_tasks (organization_id, id) ON DELETE CASCADE;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'ai_agents_guard_extension_objects') THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects ENABLE;
    END IF;
END
$$;
