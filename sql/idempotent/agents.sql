-- Agent versions: immutable snapshots of an agent's configuration. Every agent has a current
-- version from the moment it exists; tasks are pinned to the version they ran with.

-- Who made a change: the Supabase user (JWT "sub") when PostgREST set the claims, else the role.
CREATE OR REPLACE FUNCTION ai_agents._current_actor() RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub',
                    current_user::text)
$$;

-- Every statement names the organization (docs/distributed.md#statements): under Citus it
-- then runs on the one node holding the organization, as the trigger below must.
CREATE OR REPLACE FUNCTION ai_agents._snapshot_agent(org uuid, agent uuid, change_note text)
RETURNS ai_agents.ai_agent_versions
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a ai_agents.ai_agents;
    cur ai_agents.ai_agent_versions;
    number integer;
BEGIN
    -- The row lock serializes version numbering per agent.
    SELECT * INTO a FROM ai_agents.ai_agents t WHERE t.organization_id = org AND t.id = agent FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent % does not exist', agent USING ERRCODE = 'P0002';
    END IF;
    SELECT * INTO cur FROM ai_agents.ai_agent_versions v
     WHERE v.organization_id = org AND v.id = a.current_version_id;
    IF FOUND AND (cur.name, cur.agent_type, cur.system_prompt, cur.provider, cur.model,
                  cur.temperature, cur.max_tokens, cur.config, cur.tools, cur.output_schema, cur.max_steps)
                 IS NOT DISTINCT FROM
                 (a.name, a.agent_type, a.system_prompt, a.provider, a.model,
                  a.temperature, a.max_tokens, a.config, a.tools, a.output_schema, a.max_steps) THEN
        RETURN cur;
    END IF;
    -- Counted first: Citus takes no subquery inside INSERT ... VALUES.
    SELECT coalesce(max(v.version_number), 0) + 1 INTO number FROM ai_agents.ai_agent_versions v
     WHERE v.organization_id = org AND v.agent_id = a.id;
    INSERT INTO ai_agents.ai_agent_versions
        (agent_id, organization_id, version_number, name, agent_type, system_prompt, provider,
         model, temperature, max_tokens, config, tools, output_schema, max_steps, change_note, created_by)
    VALUES
        (a.id, a.organization_id, number,
         a.name, a.agent_type, a.system_prompt, a.provider, a.model, a.temperature, a.max_tokens,
         a.config, a.tools, a.output_schema, a.max_steps, change_note, ai_agents._current_actor())
    RETURNING * INTO cur;
    UPDATE ai_agents.ai_agents t SET current_version_id = cur.id WHERE t.organization_id = org AND t.id = a.id;
    RETURN cur;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._snapshot_agent(uuid, uuid, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ai_agents.create_agent_version_from_current(agent_id uuid, change_note text DEFAULT NULL)
RETURNS ai_agents.ai_agent_versions
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid;
BEGIN
    IF create_agent_version_from_current.agent_id IS NULL THEN
        RAISE EXCEPTION 'agent_id must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT a.organization_id INTO org FROM ai_agents.ai_agents a WHERE a.id = create_agent_version_from_current.agent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent % does not exist', create_agent_version_from_current.agent_id
            USING ERRCODE = 'P0002';
    END IF;
    RETURN ai_agents._snapshot_agent(org, create_agent_version_from_current.agent_id,
                                     create_agent_version_from_current.change_note);
END
$$;

-- Roll an agent back (or forward) to one of its versions. The agent's configuration becomes
-- that version's and no new version is written: the snapshot trigger finds it identical.
CREATE OR REPLACE FUNCTION ai_agents.activate_agent_version(agent_id uuid, version_number integer)
RETURNS ai_agents.ai_agents
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v ai_agents.ai_agent_versions;
    a ai_agents.ai_agents;
BEGIN
    SELECT * INTO v FROM ai_agents.ai_agent_versions
     WHERE agent_id = activate_agent_version.agent_id
       AND version_number = activate_agent_version.version_number;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent % has no version %', activate_agent_version.agent_id,
            activate_agent_version.version_number USING ERRCODE = 'P0002';
    END IF;
    UPDATE ai_agents.ai_agents
       SET current_version_id = v.id, name = v.name, agent_type = v.agent_type,
           system_prompt = v.system_prompt, provider = v.provider, model = v.model,
           temperature = v.temperature, max_tokens = v.max_tokens, config = v.config,
           tools = v.tools, output_schema = v.output_schema, max_steps = v.max_steps
     WHERE organization_id = v.organization_id AND id = v.agent_id
    RETURNING * INTO a;
    INSERT INTO ai_agents.ai_agent_activity_log
        (organization_id, agent_id, action_type, success, details)
    VALUES (a.organization_id, a.id, 'agent_version_activated', true,
            jsonb_build_object('version_number', v.version_number, 'version_id', v.id,
                               'by', ai_agents._current_actor()));
    RETURN a;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents._snapshot_agent_version() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ai_agents._snapshot_agent(
        NEW.organization_id, NEW.id, CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'configuration changed' END);
    RETURN NULL;
END
$$;

-- A row that arrives with its current version (pg_dump restoring both tables) keeps it.
CREATE OR REPLACE TRIGGER ai_agents_version_on_insert
    AFTER INSERT ON ai_agents.ai_agents
    FOR EACH ROW WHEN (NEW.current_version_id IS NULL)
    EXECUTE FUNCTION ai_agents._snapshot_agent_version();

CREATE OR REPLACE TRIGGER ai_agents_version_on_change
    AFTER UPDATE OF name, agent_type, system_prompt, provider, model, temperature, max_tokens, config,
                    tools, output_schema, max_steps
    ON ai_agents.ai_agents
    FOR EACH ROW
    WHEN ((OLD.name, OLD.agent_type, OLD.system_prompt, OLD.provider, OLD.model, OLD.temperature,
           OLD.max_tokens, OLD.config, OLD.tools, OLD.output_schema, OLD.max_steps)
          IS DISTINCT FROM
          (NEW.name, NEW.agent_type, NEW.system_prompt, NEW.provider, NEW.model, NEW.temperature,
           NEW.max_tokens, NEW.config, NEW.tools, NEW.output_schema, NEW.max_steps))
    EXECUTE FUNCTION ai_agents._snapshot_agent_version();

CREATE OR REPLACE FUNCTION ai_agents._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- A writer that sets updated_at itself (a data migration, a test) is taken at its word.
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agents_touch BEFORE UPDATE ON ai_agents.ai_agents
    FOR EACH ROW EXECUTE FUNCTION ai_agents._touch_updated_at();

-- Versions are immutable in deed: no UPDATE, and no DELETE but the cascade from deleting their
-- agent (a task pins its version when claimed; a deleted one would leave nothing to run).
CREATE OR REPLACE FUNCTION ai_agents._refuse_version_update() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT FROM ai_agents.ai_agents a WHERE a.organization_id = OLD.organization_id AND a.id = OLD.agent_id) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'agent versions cannot be deleted (version % of agent %)', OLD.version_number, OLD.agent_id
            USING ERRCODE = '0A000',
                  HINT = 'Deleting the agent deletes its versions; activate_agent_version switches versions.';
    END IF;
    RAISE EXCEPTION 'agent versions are immutable (version % of agent %)', OLD.version_number, OLD.agent_id
        USING ERRCODE = '0A000',
              HINT = 'Change the agent instead: a new version is recorded automatically.';
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_versions_immutable BEFORE UPDATE OR DELETE ON ai_agents.ai_agent_versions
    FOR EACH ROW EXECUTE FUNCTION ai_agents._refuse_version_update();
