-- Security (docs/security.md): who may see and do what, for Supabase's roles.
--
-- * Every table has row-level security. Rows are visible to a request of role
--   `authenticated` only when their organization is the request's (_request_organization_ids);
--   nobody but a role that bypasses RLS (the owner, superusers, Supabase's service_role)
--   writes a table directly.
-- * `authenticated` reads its organization's rows and calls the few functions a browser may
--   call (enqueue, cancel, start a conversation, send a message, read reports and the
--   summary); each of those that writes is SECURITY DEFINER and checks the organization
--   itself. `anon` gets nothing; PUBLIC executes nothing; `service_role` everything.
-- * Grants to roles that do not exist yet (plain Postgres) are skipped;
--   ai_agents.apply_role_grants() applies them once the roles exist.

-- The role a request runs as, also inside a SECURITY DEFINER function (where current_user is
-- the owner): what SET ROLE chose (PostgREST sets it per request), else the login role.
CREATE OR REPLACE FUNCTION ai_agents._calling_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user
                ELSE current_setting('role')::name END
$$;

-- Callers that see every organization: superusers and roles that bypass row-level security.
CREATE OR REPLACE FUNCTION ai_agents._caller_sees_all_organizations() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r
                      WHERE r.rolname = ai_agents._calling_role()), false)
$$;

-- The organizations of the current request: the membership hook's answer when
-- ai_agents.organization_hook names one (a function without arguments returning uuid[], run
-- as the requesting role by _hook_organization_ids, src/membership.rs), else the JWT claim
-- that PostgREST put into request.jwt.claims, at the path ai_agents.jwt_organization_claim
-- (dots for nesting, e.g. app_metadata.organization_id; a uuid or an array of them). Empty
-- when there is none.
CREATE OR REPLACE FUNCTION ai_agents._hook_organization_ids() RETURNS uuid[]
LANGUAGE c
AS 'MODULE_PATHNAME', 'hook_organization_ids_wrapper';

CREATE OR REPLACE FUNCTION ai_agents._request_organization_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    claim text;
    claims jsonb;
    value jsonb;
    ids uuid[];
BEGIN
    -- A report template's query, run as the reader for the report's organization (only
    -- _run_report_query becomes the reader, after _run_report_queries set the organization).
    IF current_user = 'ai_agents_report_reader' THEN
        RETURN ARRAY[current_setting('ai_agents_report.organization')::uuid];
    END IF;
    -- A tool's function, run as the tool runner for its task's organization (only
    -- _call_tool becomes the runner, after _run_tool_step set the organization).
    IF current_user = 'ai_agents_tool_runner' THEN
        RETURN ARRAY[current_setting('ai_agents_tool.organization')::uuid];
    END IF;
    -- Asked first: the call loads the library, so the superuser-only settings read below hold
    -- their real values, never one a member set before the library was loaded.
    ids := ai_agents._hook_organization_ids();
    IF ids IS NOT NULL THEN
        RETURN ids;
    END IF;
    claim := coalesce(nullif(current_setting('ai_agents.jwt_organization_claim', true), ''),
                      'organization_id');
    claims := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
    value := claims #> string_to_array(claim, '.');
    RETURN CASE jsonb_typeof(value)
        WHEN 'string' THEN ARRAY[(value #>> '{}')::uuid]
        WHEN 'array' THEN ARRAY(SELECT e::uuid FROM jsonb_array_elements_text(value) e)
        ELSE '{}'::uuid[] END;
EXCEPTION WHEN invalid_text_representation THEN
    RAISE EXCEPTION 'the JWT claim "%" is not an organization id (a uuid or an array of them)', claim
        USING ERRCODE = '22P02';
END
$$;

-- Under Citus, a member's query on a distributed table runs on the worker that holds the rows,
-- where the policies ask that worker's session for the request's claims; PostgREST put them
-- into the coordinator's session only. Called at the start of a request (PostgREST's
-- db-pre-request), this sets them again with SET LOCAL, which Citus sends on to every worker
-- the transaction reaches (citus.propagate_set_commands = local). Without Citus it does
-- nothing. It pins no search_path, as settings of its own would undo its SET LOCALs on return:
-- every name in it is qualified instead.
CREATE OR REPLACE FUNCTION ai_agents.forward_request_claims() RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    claims constant text := pg_catalog.current_setting('request.jwt.claims', true);
BEGIN
    IF pg_catalog.current_setting('citus.propagate_set_commands', true) IS NULL THEN
        RETURN;
    END IF;
    SET LOCAL citus.propagate_set_commands = 'local';
    IF claims IS NOT NULL THEN
        EXECUTE pg_catalog.format('SET LOCAL request.jwt.claims = %L', claims);
    END IF;
END
$$;

-- Refuses a caller who may not act for `org`; `what` names the object in the message, which is
-- the same whether the object exists elsewhere or not at all, so ids cannot be probed.
CREATE OR REPLACE FUNCTION ai_agents._check_organization(org uuid, what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT ai_agents._caller_sees_all_organizations()
       AND (org IS NULL OR NOT org = ANY (ai_agents._request_organization_ids())) THEN
        RAISE EXCEPTION '% is not in your organization', what
            USING ERRCODE = '42501',
                  HINT = 'The organization comes from the JWT claim named by ai_agents.jwt_organization_claim.';
    END IF;
END
$$;

-- A new conversation with one of the organization's agents.
CREATE OR REPLACE FUNCTION ai_agents.start_conversation(agent_id uuid, title text DEFAULT NULL, metadata jsonb DEFAULT '{}')
RETURNS ai_agents.ai_agent_conversations
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := (SELECT a.organization_id FROM ai_agents.ai_agents a WHERE a.id = start_conversation.agent_id);
    c ai_agents.ai_agent_conversations;
BEGIN
    PERFORM ai_agents._check_organization(org, format('agent %s', agent_id));
    IF org IS NULL THEN
        RAISE EXCEPTION 'agent % does not exist', coalesce(agent_id::text, 'NULL') USING ERRCODE = '23503';
    END IF;
    INSERT INTO ai_agents.ai_agent_conversations (organization_id, agent_id, title, metadata)
    VALUES (org, agent_id, title, coalesce(metadata, '{}'))
    RETURNING * INTO c;
    RETURN c;
END
$$;

-- A member's message: stored, and a conversation task enqueued for the agent's reply (which
-- the worker adds to the conversation). An idempotency key belongs to its conversation: sent
-- again with the same key, the message is not stored again and the same task comes back; the
-- key never meets task keys of enqueue_task or of other conversations.
CREATE OR REPLACE FUNCTION ai_agents.send_message(conversation_id uuid, content text, idempotency_key text DEFAULT NULL)
RETURNS ai_agents.ai_agent_tasks
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c ai_agents.ai_agent_conversations;
    task_key text;
    earlier ai_agents.ai_agent_tasks;
BEGIN
    SELECT * INTO c FROM ai_agents.ai_agent_conversations cc WHERE cc.id = send_message.conversation_id;
    PERFORM ai_agents._check_organization(c.organization_id, format('conversation %s', conversation_id));
    IF c.id IS NULL THEN
        RAISE EXCEPTION 'conversation % does not exist', coalesce(conversation_id::text, 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    IF content IS NULL OR btrim(content) = '' THEN
        RAISE EXCEPTION 'a message needs content' USING ERRCODE = '22023';
    END IF;
    IF send_message.idempotency_key IS NOT NULL THEN
        IF length(send_message.idempotency_key) > 200 THEN
            RAISE EXCEPTION 'idempotency_key is % characters long; at most 200 are allowed for a message',
                length(send_message.idempotency_key) USING ERRCODE = '22001';
        END IF;
        task_key := format('message %s %s', c.id, send_message.idempotency_key);
        -- Concurrent retries of one message wait for each other, so only one stores it.
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(task_key, 0));
        SELECT * INTO earlier FROM ai_agents.ai_agent_tasks t
         WHERE t.organization_id = c.organization_id AND t.idempotency_key = task_key;
        IF FOUND THEN
            RETURN earlier;
        END IF;
    END IF;
    INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content)
    VALUES (c.id, c.organization_id, 'user', content);
    RETURN ai_agents.enqueue_task(c.agent_id, 'Reply in conversation', task_type => 'conversation',
                                  conversation_id => c.id, idempotency_key => task_key);
END
$$;

-- Grants for the report reader and for Supabase's roles that exist now, on this node; run
-- again after creating them (apply_role_grants). Returns the Supabase roles it found.
CREATE OR REPLACE FUNCTION ai_agents._grant_to_roles() RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    applied text[] := '{}';
    on_citus_worker constant boolean := ai_agents._on_citus_worker();
    -- What members read, through row-level security; the report reader reads the same.
    tenant_tables constant text :=
        'ai_agents.ai_agents, ai_agents.ai_agent_versions, ai_agents.ai_agent_tasks,
         ai_agents.ai_agent_activity_log, ai_agents.ai_agent_conversations,
         ai_agents.ai_agent_messages, ai_agents.ai_agent_reports,
         ai_agents.ai_agent_report_templates, ai_agents.ai_agent_usage_hourly,
         ai_agents.ai_agent_rate_limits, ai_agents.ai_agent_model_prices,
         ai_agents.ai_agent_organization_limits, ai_agents.ai_agent_budgets,
         ai_agents.ai_agent_budget_periods, ai_agents.budget_usage, ai_agents.agent_budget_state,
         ai_agents.ai_agent_tools, ai_agents.ai_agent_builtin_tools, ai_agents.ai_agent_task_steps';
BEGIN
    -- A Citus worker refuses grants on the schema it shares with the coordinator, as changes
    -- to make there: these are this node's own, sent by the coordinator's apply_role_grants.
    IF on_citus_worker THEN
        PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
    ELSIF current_setting('citus.multi_shard_modify_mode', true) IS NOT NULL THEN
        -- On a coordinator, grants on distributed and reference tables in one transaction go
        -- over one connection per node: Citus refuses them after a parallel one.
        PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    -- Template queries run as the reader (see _run_report_queries); the policies call
    -- _request_organization_ids.
    GRANT USAGE ON SCHEMA ai_agents TO ai_agents_report_reader;
    EXECUTE format('GRANT SELECT ON %s TO ai_agents_report_reader', tenant_tables);
    GRANT EXECUTE ON FUNCTION ai_agents._request_organization_ids() TO ai_agents_report_reader;
    -- Tools run as the runner (_run_tool_step): it reads what a member of the task's
    -- organization reads here, and whatever the application grants it.
    GRANT USAGE ON SCHEMA ai_agents TO ai_agents_tool_runner;
    EXECUTE format('GRANT SELECT ON %s TO ai_agents_tool_runner', tenant_tables);
    GRANT EXECUTE ON FUNCTION ai_agents._request_organization_ids() TO ai_agents_tool_runner;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA ai_agents TO service_role;
        GRANT ALL ON ALL TABLES IN SCHEMA ai_agents TO service_role;
        GRANT ALL ON ALL SEQUENCES IN SCHEMA ai_agents TO service_role;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ai_agents TO service_role;
        -- Nobody needs to become the reader: _run_report_query switches to it. 0.1.0 made
        -- service_role a member, so that its build_report could.
        IF pg_has_role('service_role', 'ai_agents_report_reader', 'MEMBER') THEN
            REVOKE ai_agents_report_reader FROM service_role;
        END IF;
        applied := applied || 'service_role'::text;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        GRANT USAGE ON SCHEMA ai_agents TO authenticated;
        EXECUTE format('GRANT SELECT ON %s TO authenticated', tenant_tables);
        GRANT EXECUTE ON FUNCTION
            ai_agents._request_organization_ids(),
            ai_agents._hook_organization_ids(),
            ai_agents.enqueue_task(uuid, text, text, jsonb, text, integer, timestamptz, text, text, text, integer, uuid),
            ai_agents.cancel_task(uuid, text),
            ai_agents.start_conversation(uuid, text, jsonb),
            ai_agents.send_message(uuid, text, text),
            ai_agents.get_latest_agent_report(uuid, text),
            ai_agents.task_summary(interval, uuid),
            ai_agents.forward_request_claims()
           TO authenticated;
        applied := applied || 'authenticated'::text;
    END IF;
    -- anon: nothing, on purpose.
    RETURN applied;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._grant_to_roles() FROM PUBLIC;

-- The grants, on this node and, on a Citus coordinator, on every worker: a member's query on a
-- distributed table runs there, as the member's role (docs/distributed.md#members).
CREATE OR REPLACE FUNCTION ai_agents.apply_role_grants() RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The workers first, each in a transaction of its own: this transaction's grants on the
    -- schema reach them too, and would hold the locks their own grants wait for.
    PERFORM ai_agents._run_on_workers('SELECT ai_agents._grant_to_roles()', 'granting on');
    RETURN ai_agents._grant_to_roles();
END
$$;

-- Row-level security: the policy is for everyone; grants decide who reaches the table at all.
-- A policy reads the request's organizations through a subquery, so that a scan asks once, not
-- per row. Citus refuses subqueries in the policies of its tables: in a database with Citus the
-- function is called as it is (docs/distributed.md#row-level-security).
CREATE OR REPLACE FUNCTION ai_agents._write_organization_policies() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl text;
    organizations constant text := CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')
                                        THEN 'ai_agents._request_organization_ids()'
                                        ELSE '(SELECT ai_agents._request_organization_ids())' END;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['ai_agents', 'ai_agent_versions', 'ai_agent_tasks', 'ai_agent_activity_log',
                               'ai_agent_conversations', 'ai_agent_messages', 'ai_agent_reports',
                               'ai_agent_usage_hourly', 'ai_agent_rate_limits',
                               'ai_agent_organization_limits', 'ai_agent_budgets',
                               'ai_agent_budget_periods', 'ai_agent_tools', 'ai_agent_task_steps',
                               'ai_agent_report_templates'] LOOP
        EXECUTE format('ALTER TABLE ai_agents.%I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('DROP POLICY IF EXISTS organization_rows ON ai_agents.%I', tbl);
        -- Built-in templates (no organization) are everyone's.
        EXECUTE format('CREATE POLICY organization_rows ON ai_agents.%I FOR SELECT USING (%s organization_id = ANY (%s::uuid[]))',
                       tbl, CASE WHEN tbl = 'ai_agent_report_templates' THEN 'organization_id IS NULL OR' ELSE '' END,
                       organizations);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._write_organization_policies() FROM PUBLIC;
SELECT ai_agents._write_organization_policies();
ALTER TABLE ai_agents.ai_agent_model_prices ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS everyone_reads_prices ON ai_agents.ai_agent_model_prices;
CREATE POLICY everyone_reads_prices ON ai_agents.ai_agent_model_prices FOR SELECT USING (true);
ALTER TABLE ai_agents.ai_agent_builtin_tools ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS everyone_reads_builtin_tools ON ai_agents.ai_agent_builtin_tools;
CREATE POLICY everyone_reads_builtin_tools ON ai_agents.ai_agent_builtin_tools FOR SELECT USING (true);

-- The mutators a browser may call check the organization themselves (they bypass RLS as owner).
ALTER FUNCTION ai_agents.enqueue_task(uuid, text, text, jsonb, text, integer, timestamptz, text, text, text, integer, uuid)
    SECURITY DEFINER;
ALTER FUNCTION ai_agents.cancel_task(uuid, text) SECURITY DEFINER;

-- Report template queries run as this role (_run_report_queries): it reads the extension's
-- tables through their row-level security, for the report's organization, and nothing else
-- (its grants are apply_role_grants'). A cluster-wide role, so created once and kept by DROP
-- EXTENSION.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ai_agents_report_reader') THEN
        CREATE ROLE ai_agents_report_reader NOLOGIN NOINHERIT;
    END IF;
END
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ai_agents FROM PUBLIC;
-- This node's: under Citus, CREATE EXTENSION runs this script on every node.
SELECT ai_agents._grant_to_roles();
