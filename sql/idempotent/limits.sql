-- Limits at the door (src/limits.rs): what a member may store in a task's input or a
-- conversation message, checked where the row is written, so that the worker can always read
-- and send what was accepted. The settings: ai_agents.max_input_bytes, max_input_depth and
-- max_message_bytes (docs/settings.md).

CREATE OR REPLACE FUNCTION ai_agents._check_task_input(input text) RETURNS void
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_task_input_wrapper';

CREATE OR REPLACE FUNCTION ai_agents._check_message(bytes integer) RETURNS void
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_message_size_wrapper';

-- A trigger of its own, so that only writes that set the input pay for the check.
CREATE OR REPLACE FUNCTION ai_agents._validate_task_input() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ai_agents._check_task_input(NEW.input::text);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_tasks_check_input
    BEFORE INSERT OR UPDATE OF input ON ai_agents.ai_agent_tasks
    FOR EACH ROW EXECUTE FUNCTION ai_agents._validate_task_input();

-- A member's (or anyone's) message but the assistant's replies, which the worker records: a
-- long reply must never stop its batch from being recorded.
CREATE OR REPLACE FUNCTION ai_agents._validate_message() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ai_agents._check_message(octet_length(NEW.content));
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_messages_validate
    BEFORE INSERT OR UPDATE OF content ON ai_agents.ai_agent_messages
    FOR EACH ROW WHEN (NEW.role <> 'assistant') EXECUTE FUNCTION ai_agents._validate_message();
