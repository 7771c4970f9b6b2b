-- Agents that act (docs/tools.md): tools, the steps of a task's loop, and the run of one tool.
--
-- The worker drives the loop (src/worker/steps.rs): a reply that calls tools is recorded as
-- an 'llm' step by _record_llm_step, each call runs in a transaction of its own through
-- _run_tool_step, and _continue_task puts the task back to be claimed for its next LLM call,
-- which passes the rate limits and budgets like any other call.

-- Tools run as this role (_run_tool_step): no superuser, no RLS bypass, no login. The
-- application grants it what its tools read and write (or makes it a member of
-- `authenticated`, so that tools have a member's rights); apply_role_grants
-- (security.sql) lets it read what a member reads here. Cluster-wide, like the report reader,
-- so created once and kept by DROP EXTENSION.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ai_agents_tool_runner') THEN
        CREATE ROLE ai_agents_tool_runner NOLOGIN;
    END IF;
END
$$;

-- A tool's function takes the arguments and returns the result, both jsonb, so a call is
-- never built from text; and it must not run with more rights than the tool runner has.
-- Returns its signature, schema-qualified, as the tool tables keep it.
CREATE OR REPLACE FUNCTION ai_agents._check_tool_function(fn regprocedure, tool text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
BEGIN
    SELECT pr.prorettype, pr.pronargs = 1 AND pr.proargtypes[0] = 'jsonb'::regtype AS takes_jsonb, pr.prokind, pr.proretset, pr.prosecdef,
           r.rolsuper OR r.rolbypassrls AS owner_unbound
      INTO p
      FROM pg_proc pr JOIN pg_roles r ON r.oid = pr.proowner
     WHERE pr.oid = fn;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the function of tool % no longer exists', tool USING ERRCODE = '42883';
    END IF;
    IF p.prokind <> 'f' OR p.proretset OR p.prorettype <> 'jsonb'::regtype
       OR NOT p.takes_jsonb THEN
        RAISE EXCEPTION 'the function % of tool % must take (args jsonb) and return jsonb', fn, tool
            USING ERRCODE = '42P13';
    END IF;
    IF p.prosecdef AND p.owner_unbound THEN
        RAISE EXCEPTION 'the function % of tool % is SECURITY DEFINER with an owner that is a superuser or bypasses row-level security', fn, tool
            USING ERRCODE = '42501',
                  HINT = 'Tools run as ai_agents_tool_runner under the organization''s row-level security; give the function an owner without those rights, or make it SECURITY INVOKER.';
    END IF;
    IF NOT has_function_privilege('ai_agents_tool_runner', fn, 'EXECUTE') THEN
        RAISE EXCEPTION 'ai_agents_tool_runner may not execute %, the function of tool %', fn, tool
            USING ERRCODE = '42501',
                  HINT = format('GRANT EXECUTE ON FUNCTION %s TO ai_agents_tool_runner', fn);
    END IF;
    RETURN fn::text;
END
$$;

-- The function is named by its schema, since no session's search_path reaches in here.
CREATE OR REPLACE FUNCTION ai_agents._validate_tool() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn regprocedure := to_regprocedure(NEW.function);
BEGIN
    IF fn IS NULL THEN
        RAISE EXCEPTION 'the function % of tool % does not exist', NEW.function, NEW.name
            USING ERRCODE = '42883',
                  HINT = 'Name the function with its schema and argument types, as in public.my_tool(jsonb).';
    END IF;
    NEW.function := ai_agents._check_tool_function(fn, NEW.name);
    PERFORM ai_agents._check_json_schema(NEW.parameters, format('the parameters of tool %s', NEW.name));
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_tools_validate
    BEFORE INSERT OR UPDATE ON ai_agents.ai_agent_tools
    FOR EACH ROW EXECUTE FUNCTION ai_agents._validate_tool();

CREATE OR REPLACE TRIGGER ai_agent_tools_touch BEFORE UPDATE ON ai_agents.ai_agent_tools
    FOR EACH ROW EXECUTE FUNCTION ai_agents._touch_updated_at();

CREATE OR REPLACE TRIGGER ai_agent_builtin_tools_validate
    BEFORE INSERT OR UPDATE ON ai_agents.ai_agent_builtin_tools
    FOR EACH ROW EXECUTE FUNCTION ai_agents._validate_tool();

-- The tools an organization's agents may name: its own, and the built-in ones it has not
-- replaced with one of the same name.
CREATE OR REPLACE FUNCTION ai_agents._tools_of(organization_id uuid)
RETURNS TABLE (name text, description text, parameters jsonb, function text, read_only boolean,
               timeout_ms integer)
-- PL/pgSQL, not SQL: an SQL function would be inlined into a query without a distributed
-- table, which Citus would then leave to PostgreSQL, reading the coordinator's empty tables.
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT t.name, t.description, t.parameters, t.function, t.read_only, t.timeout_ms
      FROM ai_agents.ai_agent_tools t WHERE t.organization_id = _tools_of.organization_id
    UNION ALL
    SELECT b.name, b.description, b.parameters, b.function, b.read_only, b.timeout_ms
      FROM ai_agents.ai_agent_builtin_tools b
     WHERE NOT EXISTS (SELECT FROM ai_agents.ai_agent_tools t
                        WHERE t.organization_id = _tools_of.organization_id AND t.name = b.name);
END
$$;

-- Built-in tool: the date and time now, in UTC and in a time zone the model names.
CREATE OR REPLACE FUNCTION ai_agents.tool_current_time(args jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'utc', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'timezone', z.name,
        'local', to_char(now() AT TIME ZONE z.name, 'YYYY-MM-DD"T"HH24:MI:SS'),
        'weekday', rtrim(to_char(now() AT TIME ZONE z.name, 'FMDay')))
      FROM (SELECT coalesce(args ->> 'timezone', 'UTC') AS name) z
$$;
GRANT EXECUTE ON FUNCTION ai_agents.tool_current_time(jsonb) TO ai_agents_tool_runner;

-- Raises 22023 naming `what` when `schema` is not a JSON Schema the worker can check.
CREATE OR REPLACE FUNCTION ai_agents._check_json_schema(schema jsonb, what text) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'check_json_schema_wrapper';

-- Why `instance` does not follow `schema` (at most 10 reasons), or an empty array.
CREATE OR REPLACE FUNCTION ai_agents._json_schema_errors(schema jsonb, instance jsonb) RETURNS text[]
LANGUAGE c
AS 'MODULE_PATHNAME', 'json_schema_errors_wrapper';

-- The tool's function, run as ai_agents_tool_runner and cancelled after timeout_ms (57014).
CREATE OR REPLACE FUNCTION ai_agents._call_tool(fn regprocedure, args jsonb, timeout_ms integer) RETURNS jsonb
LANGUAGE c
AS 'MODULE_PATHNAME', 'call_tool_wrapper';

-- An agent may name only its organization's tools, each once, and its output schema must be
-- one the worker can check answers against.
CREATE OR REPLACE FUNCTION ai_agents._validate_agent_loop() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing text;
BEGIN
    IF cardinality(NEW.tools) <> (SELECT count(DISTINCT n) FROM unnest(NEW.tools) n) THEN
        RAISE EXCEPTION 'agent % names a tool twice: %', NEW.name, NEW.tools USING ERRCODE = '22023';
    END IF;
    SELECT n INTO missing FROM unnest(NEW.tools) n
     WHERE NOT EXISTS (SELECT FROM ai_agents._tools_of(NEW.organization_id) t WHERE t.name = n)
     LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'agent % names tool %, which is neither built in nor registered by its organization', NEW.name, missing
            USING ERRCODE = '23503',
                  HINT = 'Register it in ai_agents.ai_agent_tools first.';
    END IF;
    IF NEW.output_schema IS NOT NULL THEN
        PERFORM ai_agents._check_json_schema(NEW.output_schema, format('the output schema of agent %s', NEW.name));
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agents_validate_loop
    BEFORE INSERT OR UPDATE OF tools, output_schema, organization_id ON ai_agents.ai_agents
    FOR EACH ROW WHEN (cardinality(NEW.tools) > 0 OR NEW.output_schema IS NOT NULL)
    EXECUTE FUNCTION ai_agents._validate_agent_loop();

-- A run that ends (completed, failed, cancelled) leaves its steps behind: a recurring task's
-- next run starts afresh.
CREATE OR REPLACE FUNCTION ai_agents._steps_run_ended() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The tool steps of its last reply may be past step_count (which LLM steps and
    -- continuations set).
    NEW.run_first_step := greatest(NEW.step_count,
                                   (SELECT max(s.step_number) FROM ai_agents.ai_agent_task_steps s
                                     WHERE s.organization_id = NEW.organization_id AND s.task_id = NEW.id)) + 1;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_tasks_steps_run_ended
    BEFORE UPDATE ON ai_agents.ai_agent_tasks
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND NEW.step_count >= NEW.run_first_step)
    EXECUTE FUNCTION ai_agents._steps_run_ended();

-- The claims a tool call sees in request.jwt.claims: a request of the task's organization, at
-- the path the application's policies read (ai_agents.jwt_organization_claim).
CREATE OR REPLACE FUNCTION ai_agents._tool_claims(t ai_agents.ai_agent_tasks, tool_call_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    path text[] := string_to_array(coalesce(nullif(current_setting('ai_agents.jwt_organization_claim', true), ''),
                                            'organization_id'), '.');
    claims jsonb := to_jsonb(t.organization_id);
BEGIN
    FOR i IN REVERSE cardinality(path)..1 LOOP
        claims := jsonb_build_object(path[i], claims);
    END LOOP;
    RETURN jsonb_build_object('role', 'authenticated', 'organization_id', t.organization_id)
           || claims
           || jsonb_build_object('ai_agents', jsonb_build_object('task_id', t.id, 'agent_id', t.agent_id,
                                                                  'tool_call_id', tool_call_id));
END
$$;

-- Stores a tool call of run `t` as step `step_number`, with its activity row (a step stored
-- before is kept). Ids and names come from the model: kept to 256 characters.
CREATE OR REPLACE FUNCTION ai_agents._store_tool_step(t ai_agents.ai_agent_tasks, step_number integer,
                                          tool_call_id text, tool_name text, arguments jsonb,
                                          result jsonb, error text, error_code text, duration_ms integer)
RETURNS void
LANGUAGE plpgsql -- not sql: Citus plans no SQL function with parameters
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO ai_agents.ai_agent_task_steps
        (organization_id, task_id, step_number, agent_id, kind, tool_call_id, tool_name, arguments,
         result, error, error_code, duration_ms, fencing_token)
    VALUES (t.organization_id, t.id, step_number, t.agent_id, 'tool', left(tool_call_id, 256),
            left(tool_name, 256), arguments, result, error, error_code, duration_ms, t.fencing_token)
    ON CONFLICT DO NOTHING;
    INSERT INTO ai_agents.ai_agent_activity_log
        (organization_id, agent_id, task_id, action_type, success, attempt, execution_time_ms, error, details)
    VALUES (t.organization_id, t.agent_id, t.id, 'tool_called', error IS NULL, t.attempts, duration_ms, error,
            jsonb_build_object('step_number', step_number, 'tool', left(tool_name, 256),
                               'tool_call_id', left(tool_call_id, 256), 'error_code', error_code));
END
$$;
REVOKE ALL ON FUNCTION ai_agents._store_tool_step(ai_agents.ai_agent_tasks, integer, text, text, jsonb, jsonb, text, text, integer) FROM PUBLIC;

-- Runs one tool call of a task's loop and stores it as step `step_number`, in the caller's
-- transaction: a write tool's effects commit with its step, or neither does. A step already
-- stored is never run again ('done'); a run no longer current runs nothing ('stale'). A tool
-- the version does not name, arguments that are not JSON or do not follow the tool's schema,
-- and any error the tool raises are stored as the step's error, for the model to read.
CREATE OR REPLACE FUNCTION ai_agents._run_tool_step(task_id uuid, fencing_token bigint, step_number integer,
                                        tool_call_id text, tool_name text, arguments text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    max_bytes constant integer := 65536;
    t ai_agents.ai_agent_tasks;
    tool record;
    attached boolean;
    args jsonb;
    outcome jsonb;
    err text;
    code text;
    problems text[];
    started timestamptz := clock_timestamp();
    fn text;
    org uuid := ai_agents._task_organization(_run_tool_step.task_id);
BEGIN
    SELECT * INTO t FROM ai_agents.ai_agent_tasks tt
     WHERE tt.organization_id = org AND tt.id = _run_tool_step.task_id FOR UPDATE;
    IF NOT FOUND OR t.status <> 'running' OR t.fencing_token IS DISTINCT FROM _run_tool_step.fencing_token THEN
        RETURN 'stale';
    END IF;
    IF EXISTS (SELECT FROM ai_agents.ai_agent_task_steps s
                WHERE s.organization_id = t.organization_id AND s.task_id = t.id
                  AND s.step_number = _run_tool_step.step_number) THEN
        RETURN 'done';
    END IF;
    SELECT _run_tool_step.tool_name = ANY (v.tools) INTO attached
      FROM ai_agents.ai_agent_versions v WHERE v.organization_id = org AND v.id = t.agent_version_id;
    SELECT * INTO tool FROM ai_agents._tools_of(t.organization_id) tl WHERE tl.name = _run_tool_step.tool_name;
    IF NOT coalesce(attached, false) THEN
        err := format('tool %s is not one of this agent''s tools', left(_run_tool_step.tool_name, 64));
        code := '42501';
    ELSIF tool.name IS NULL THEN
        err := format('tool %s is no longer registered', _run_tool_step.tool_name);
        code := '42704';
    ELSIF octet_length(_run_tool_step.arguments) > max_bytes THEN
        err := format('the arguments are %s bytes, more than the %s a tool call may send',
                      octet_length(_run_tool_step.arguments), max_bytes);
        code := '54000';
    ELSE
        BEGIN
            args := _run_tool_step.arguments::jsonb;
        EXCEPTION WHEN OTHERS THEN
            err := format('the arguments are not JSON: %s', SQLERRM);
            code := SQLSTATE;
        END;
        IF err IS NULL THEN
            problems := ai_agents._json_schema_errors(tool.parameters, args);
            IF cardinality(problems) > 0 THEN
                err := 'the arguments do not follow the tool''s schema: ' || array_to_string(problems, '; ');
                code := '22023';
            END IF;
        END IF;
    END IF;
    IF err IS NULL THEN
        -- A read-only call's step need not wait for its WAL flush: lost in a crash, it runs
        -- again, to no effect; and the claim of the task's next call, which is what sends its
        -- result anywhere, commits synchronously, flushing this first. A write tool's step waits.
        IF tool.read_only THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        BEGIN
            fn := ai_agents._check_tool_function(to_regprocedure(tool.function), tool.name);
            PERFORM set_config('request.jwt.claims', ai_agents._tool_claims(t, _run_tool_step.tool_call_id)::text, true);
            PERFORM set_config('ai_agents.tool_call_id', _run_tool_step.tool_call_id, true);
            PERFORM set_config('ai_agents_tool.organization', t.organization_id::text, true);
            IF tool.read_only THEN
                SET LOCAL transaction_read_only = on;
            END IF;
            outcome := ai_agents._call_tool(fn::regprocedure, args, tool.timeout_ms);
            IF octet_length(outcome::text) > max_bytes THEN
                RAISE EXCEPTION 'the result is % bytes, more than the % a step keeps', octet_length(outcome::text), max_bytes
                    USING ERRCODE = '54000';
            END IF;
            IF tool.read_only THEN
                -- Leaves the subtransaction through its rollback, which also ends its read-only
                -- mode: the step is written next, in the same transaction.
                RAISE EXCEPTION USING ERRCODE = 'AIRO0';
            END IF;
        EXCEPTION
            WHEN SQLSTATE 'AIRO0' THEN NULL;
            -- OTHERS leaves out a cancel: the tool's timeout is one, and it ends the step alone.
            WHEN query_canceled OR OTHERS THEN
                err := SQLERRM;
                code := SQLSTATE;
                outcome := NULL;
        END;
    END IF;
    PERFORM ai_agents._store_tool_step(t, _run_tool_step.step_number, _run_tool_step.tool_call_id,
                                       _run_tool_step.tool_name, args, outcome, err, code,
                                       (extract(epoch FROM clock_timestamp() - started) * 1000)::integer);
    RETURN CASE WHEN err IS NULL THEN 'ran' ELSE 'failed' END;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._run_tool_step(uuid, bigint, integer, text, text, text) FROM PUBLIC;

-- A tool step whose transaction could not commit (the tool left it unable to: a deferred
-- constraint, a read-only mode of its own): stored with the error, nothing of the tool kept.
CREATE OR REPLACE FUNCTION ai_agents._record_tool_failure(task_id uuid, fencing_token bigint, step_number integer,
                                              tool_call_id text, tool_name text, error text, error_code text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    org uuid := ai_agents._task_organization(_record_tool_failure.task_id);
BEGIN
    SELECT * INTO t FROM ai_agents.ai_agent_tasks tt
     WHERE tt.organization_id = org AND tt.id = _record_tool_failure.task_id FOR UPDATE;
    IF NOT FOUND OR t.status <> 'running' OR t.fencing_token IS DISTINCT FROM _record_tool_failure.fencing_token THEN
        RETURN 'stale';
    END IF;
    PERFORM ai_agents._store_tool_step(t, _record_tool_failure.step_number, _record_tool_failure.tool_call_id,
                                       _record_tool_failure.tool_name, NULL, NULL,
                                       'the tool''s transaction could not commit: ' || _record_tool_failure.error,
                                       _record_tool_failure.error_code, NULL);
    RETURN 'failed';
END
$$;
REVOKE ALL ON FUNCTION ai_agents._record_tool_failure(uuid, bigint, integer, text, text, text, text) FROM PUBLIC;

-- Records one LLM reply of a task's loop as its next step; the call's budget reservation
-- settles at its cost here. Then, per reply:
--   * tool calls within max_steps: 'tools', and the step numbers of the calls follow
--     `step_number` in order (the worker runs them, then _continue_task);
--   * tool calls on the max_steps-th call: the task fails for good ('max_steps_exceeded');
--   * an answer the output schema refuses (`invalid` says why; the step keeps it as its
--     error): the run's first gets a repair turn ('repair': the worker continues the task),
--     a second fails the task for good ('schema_invalid');
--   * a final answer: the task completes with the run's tokens and cost ('completed'), and
--     with `result` when the version has an output schema.
-- 'busy': another session holds the task row (offered again next turn); 'discarded': the run
-- is no longer current.
CREATE OR REPLACE FUNCTION ai_agents._record_llm_step(task_id uuid, fencing_token bigint, content text,
                                          tool_calls jsonb, input_tokens bigint, output_tokens bigint,
                                          cached_input_tokens bigint, cache_write_tokens bigint,
                                          model text, request_id text, execution_time_ms integer,
                                          result jsonb, invalid text)
RETURNS TABLE (status text, step_number integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    v ai_agents.ai_agent_versions;
    n integer;
    calls integer;
    cost numeric;
    total record;
    details jsonb;
    org uuid := ai_agents._task_organization(_record_llm_step.task_id);
BEGIN
    BEGIN
        SELECT * INTO t FROM ai_agents.ai_agent_tasks tt
         WHERE tt.organization_id = org AND tt.id = _record_llm_step.task_id FOR UPDATE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        status := 'busy';
        RETURN NEXT;
        RETURN;
    END;
    IF NOT FOUND OR t.status <> 'running' OR t.fencing_token IS DISTINCT FROM _record_llm_step.fencing_token THEN
        BEGIN
            PERFORM ai_agents._refuse_stale_token(_record_llm_step.task_id, _record_llm_step.fencing_token);
        EXCEPTION WHEN object_not_in_prerequisite_state OR no_data_found THEN
            PERFORM ai_agents._log_discarded_result(_record_llm_step.task_id, _record_llm_step.fencing_token,
                                                   SQLERRM, _record_llm_step.request_id);
        END;
        status := 'discarded';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT * INTO v FROM ai_agents.ai_agent_versions vv WHERE vv.organization_id = org AND vv.id = t.agent_version_id;
    -- After the tool steps of the previous reply, which leave the task row alone.
    n := greatest(t.step_count, (SELECT max(s.step_number) FROM ai_agents.ai_agent_task_steps s
                                  WHERE s.organization_id = t.organization_id AND s.task_id = t.id)) + 1;
    cost := ai_agents._llm_cost_usd(v.provider, _record_llm_step.model, _record_llm_step.input_tokens,
                                    _record_llm_step.output_tokens, _record_llm_step.cached_input_tokens,
                                    _record_llm_step.cache_write_tokens);
    details := jsonb_build_object('step_number', n, 'request_id', _record_llm_step.request_id, 'worker', t.locked_by,
                                  'model', _record_llm_step.model,
                                  'input_tokens', _record_llm_step.input_tokens,
                                  'output_tokens', _record_llm_step.output_tokens,
                                  'cached_input_tokens', _record_llm_step.cached_input_tokens,
                                  'cache_write_tokens', _record_llm_step.cache_write_tokens,
                                  'tool_calls', jsonb_array_length(_record_llm_step.tool_calls));
    INSERT INTO ai_agents.ai_agent_task_steps
        (organization_id, task_id, step_number, agent_id, kind, content, tool_calls, result, error,
         input_tokens, output_tokens, cost_usd, model, request_id, duration_ms, fencing_token)
    VALUES (t.organization_id, t.id, n, t.agent_id, 'llm', _record_llm_step.content, _record_llm_step.tool_calls,
            _record_llm_step.result, _record_llm_step.invalid,
            least(_record_llm_step.input_tokens, 2147483647)::integer,
            least(_record_llm_step.output_tokens, 2147483647)::integer, cost, _record_llm_step.model,
            _record_llm_step.request_id, _record_llm_step.execution_time_ms, t.fencing_token);
    INSERT INTO ai_agents.ai_agent_activity_log
        (organization_id, agent_id, task_id, action_type, success, attempt, tokens_used, cost_usd,
         execution_time_ms, details)
    VALUES (t.organization_id, t.agent_id, t.id, 'llm_step', true, t.attempts,
            least(_record_llm_step.input_tokens + _record_llm_step.output_tokens, 2147483647)::integer, cost,
            _record_llm_step.execution_time_ms, details);
    calls := jsonb_array_length(_record_llm_step.tool_calls);
    SELECT least(sum(s.input_tokens::bigint + s.output_tokens), 2147483647)::integer AS tokens,
           sum(s.cost_usd) AS cost, count(*) AS llm_calls, count(s.error) AS refused
      INTO total
      FROM ai_agents.ai_agent_task_steps s
     WHERE s.organization_id = t.organization_id AND s.task_id = t.id
       AND s.step_number >= t.run_first_step AND s.kind = 'llm';
    -- This call's budget reservation settles now, at its cost: the task's later calls bring
    -- reservations of their own.
    IF t.budget_reserved_usd IS NOT NULL THEN
        PERFORM ai_agents._budget_settle(t.organization_id, t.agent_id, t.execution_started_at,
                                         t.budget_reserved_usd, coalesce(cost, 0));
    END IF;
    UPDATE ai_agents.ai_agent_tasks tt
       SET step_count = n, tokens_used = total.tokens, cost_usd = total.cost, budget_reserved_usd = NULL
     WHERE tt.organization_id = org AND tt.id = t.id;
    IF calls > 0 AND total.llm_calls >= v.max_steps THEN
        PERFORM ai_agents.fail_task(t.id, t.fencing_token,
            format('max_steps_exceeded: the model still called tools after %s LLM calls, the version''s max_steps', total.llm_calls),
            permanent => true, tokens_used => total.tokens, cost_usd => total.cost,
            execution_time_ms => _record_llm_step.execution_time_ms,
            details => jsonb_build_object('request_id', _record_llm_step.request_id, 'reason', 'max_steps_exceeded'));
        status := 'max_steps_exceeded';
    ELSIF calls > 0 THEN
        status := 'tools';
    ELSIF _record_llm_step.invalid IS NOT NULL AND total.refused > 1 THEN
        PERFORM ai_agents.fail_task(t.id, t.fencing_token,
            'schema_invalid: the answer does not follow the output schema, after one repair turn: ' || _record_llm_step.invalid,
            permanent => true, tokens_used => total.tokens, cost_usd => total.cost,
            execution_time_ms => _record_llm_step.execution_time_ms,
            details => jsonb_build_object('request_id', _record_llm_step.request_id, 'reason', 'schema_invalid'));
        status := 'schema_invalid';
    ELSIF _record_llm_step.invalid IS NOT NULL THEN
        status := 'repair';
    ELSE
        PERFORM ai_agents.complete_tasks(ARRAY[t.id], ARRAY[t.fencing_token], ARRAY[_record_llm_step.content],
                                         CASE WHEN _record_llm_step.result IS NOT NULL THEN ARRAY[_record_llm_step.result] END,
                                         ARRAY[total.tokens], ARRAY[total.cost],
                                         ARRAY[_record_llm_step.execution_time_ms], ARRAY[details]);
        IF t.conversation_id IS NOT NULL THEN
            INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content, tokens)
            VALUES (t.conversation_id, t.organization_id, 'assistant', _record_llm_step.content,
                    least(_record_llm_step.output_tokens, 2147483647)::integer);
        END IF;
        status := 'completed';
    END IF;
    step_number := n;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._record_llm_step(uuid, bigint, text, jsonb, bigint, bigint, bigint, bigint, text, text, integer, jsonb, text) FROM PUBLIC;

-- After its tool calls, a task goes back to be claimed for its next LLM call. That claim is
-- the same attempt: claim_due_tasks counts one more, taken back here. A one-off task keeps its
-- place in its agent's queue (its creation), so that a run under way finishes before tasks
-- that came after it start; the claim has already moved a recurring one to its next fire time.
CREATE OR REPLACE FUNCTION ai_agents._continue_task(task_id uuid, fencing_token bigint) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    -- Computed first: Citus takes no subquery or volatile function in this UPDATE
    -- (docs/distributed.md#claiming).
    org uuid := ai_agents._task_organization(_continue_task.task_id);
    at timestamptz := now();
    steps integer := (SELECT max(s.step_number) FROM ai_agents.ai_agent_task_steps s
                       WHERE s.organization_id = org AND s.task_id = _continue_task.task_id);
BEGIN
    UPDATE ai_agents.ai_agent_tasks t
       SET status = 'pending',
           next_run_at = CASE WHEN t.schedule_cron IS NULL THEN least(t.created_at, at) ELSE at END,
           attempts = greatest(t.attempts - 1, 0),
           step_count = steps,
           locked_by = NULL, lease_expires_at = NULL
     WHERE t.organization_id = org AND t.id = _continue_task.task_id AND t.status = 'running'
       AND t.fencing_token = _continue_task.fencing_token;
    RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._continue_task(uuid, bigint) FROM PUBLIC;

-- The built-in tools, as this release defines them (replayed on upgrade).
INSERT INTO ai_agents.ai_agent_builtin_tools AS b (name, description, parameters, function, read_only, timeout_ms)
VALUES ('current_time', 'The date, time and weekday now, in UTC and in a time zone.',
        '{"type": "object", "additionalProperties": false,
          "properties": {"timezone": {"type": "string", "description": "An IANA time zone, e.g. Europe/Lisbon; UTC when left out."}}}',
        'ai_agents.tool_current_time(jsonb)', true, 1000)
ON CONFLICT (name) DO UPDATE
   SET description = excluded.description, parameters = excluded.parameters, function = excluded.function,
       read_only = excluded.read_only, timeout_ms = excluded.timeout_ms;
