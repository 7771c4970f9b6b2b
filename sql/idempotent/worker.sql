-- The background worker's side of the SQL API (docs/worker.md): what it claims, how it
-- records what the LLM answered, when it must wake up next, and how others wake it.

-- USD for a call at the price in force now, exactly (prices have 6 decimals per million
-- tokens, so a cost has 12, as the cost columns do); NULL for a model without a price.
-- input_tokens counts every input token; cached_input_tokens (read from the provider's prompt
-- cache) and cache_write_tokens (written to it) are parts of it, each at its own rate when the
-- price has one. At most what the cost columns hold (numeric(20, 12)), so that no reported
-- usage can fail its recording.
CREATE OR REPLACE FUNCTION ai_agents._llm_cost_usd(provider text, model text, input_tokens bigint, output_tokens bigint,
                                        cached_input_tokens bigint, cache_write_tokens bigint)
RETURNS numeric
LANGUAGE plpgsql STABLE -- not sql: PL/pgSQL keeps the plan from call to call
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN (SELECT least((greatest(_llm_cost_usd.input_tokens - _llm_cost_usd.cached_input_tokens
                                   - _llm_cost_usd.cache_write_tokens, 0) * p.input_usd_per_mtok
                          + _llm_cost_usd.cached_input_tokens * coalesce(p.cached_input_usd_per_mtok, p.input_usd_per_mtok)
                          + _llm_cost_usd.cache_write_tokens * coalesce(p.cache_write_usd_per_mtok, p.input_usd_per_mtok)
                          + _llm_cost_usd.output_tokens * p.output_usd_per_mtok) * 0.000001,
                         99999999.999999999999)
              FROM ai_agents.ai_agent_model_prices p
             WHERE p.provider = _llm_cost_usd.provider AND p.model = _llm_cost_usd.model
               AND p.effective_from <= now()
             ORDER BY p.effective_from DESC
             LIMIT 1);
END
$$;

-- Claims due tasks (rate limits applied) and returns what each LLM call needs: the pinned
-- agent version's settings and, for a conversation task, its newest messages, oldest first:
-- at most history_limit of them and ai_agents.history_max_bytes of content (the newest one
-- always), so that no conversation can grow a call beyond what a request may hold.
-- organizations: as for claim_due_tasks (under Citus, those of one shard).
DROP FUNCTION IF EXISTS ai_agents._claim_llm_calls(text, integer, interval, integer);
CREATE OR REPLACE FUNCTION ai_agents._claim_llm_calls(worker text, max_calls integer, lease interval, history_limit integer,
                                          organizations uuid[] DEFAULT NULL)
RETURNS TABLE (task_id uuid, fencing_token bigint, provider text, model text, system_prompt text,
               temperature float8, max_tokens integer, title text, description text, input jsonb,
               history jsonb, agent_id uuid, organization_id uuid, base_url text, tools jsonb,
               steps jsonb, output_schema jsonb)
LANGUAGE plpgsql -- not sql: PL/pgSQL keeps the plan from call to call
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    max_bytes bigint := pg_catalog.pg_size_bytes(current_setting('ai_agents.history_max_bytes'));
    claimed ai_agents.ai_agent_tasks[];
    owners uuid[];
    looping uuid[];
    declared jsonb;
BEGIN
    -- The claim first, in a statement of its own. It sees tasks committed up to its own
    -- statements' snapshots, later than this function's; a conversation's newest message was
    -- committed with its task, so only a statement that starts after the claim is sure to see
    -- it (in one statement, a message sent just then was missing from its own reply's call).
    claimed := ARRAY(SELECT c FROM ai_agents.claim_due_tasks(_claim_llm_calls.worker, _claim_llm_calls.max_calls,
                                                             _claim_llm_calls.lease, _claim_llm_calls.organizations) c);
    -- Every statement below names the claimed tasks' organizations (docs/distributed.md#statements).
    owners := ARRAY(SELECT DISTINCT t.organization_id FROM unnest(claimed) t);
    -- An agent with tools or an output schema runs the loop: the declarations of its
    -- organization's tools, asked apart from the query below, which Citus runs on the shard,
    -- where a function reading distributed tables cannot run.
    looping := ARRAY(SELECT DISTINCT v.organization_id
                       FROM unnest(claimed) t
                       JOIN ai_agents.ai_agent_versions v
                         ON v.organization_id = ANY (owners) AND v.organization_id = t.organization_id
                        AND v.id = t.agent_version_id
                      WHERE cardinality(v.tools) > 0 OR v.output_schema IS NOT NULL);
    SELECT jsonb_object_agg(o, (SELECT jsonb_object_agg(tl.name, jsonb_build_object(
                                           'name', tl.name, 'description', tl.description, 'parameters', tl.parameters))
                                  FROM ai_agents._tools_of(o) tl))
      INTO declared
      FROM unnest(looping) o;
    RETURN QUERY
    SELECT t.id, t.fencing_token, v.provider, v.model, v.system_prompt, v.temperature::float8,
           v.max_tokens, t.title, t.description, t.input,
           CASE WHEN t.conversation_id IS NOT NULL THEN
               (SELECT coalesce(jsonb_agg(jsonb_build_object('role', m.role, 'content', m.content)
                                          ORDER BY m.created_at, m.id), '[]')
                  FROM (SELECT newest.*,
                               sum(octet_length(newest.content)) OVER w AS bytes,
                               row_number() OVER w AS n
                          FROM (SELECT * FROM ai_agents.ai_agent_messages mm
                                 WHERE mm.organization_id = ANY (owners) AND mm.organization_id = t.organization_id
                                   AND mm.conversation_id = t.conversation_id AND mm.role IN ('user', 'assistant')
                                 ORDER BY mm.created_at DESC, mm.id DESC
                                 LIMIT _claim_llm_calls.history_limit) newest
                        WINDOW w AS (ORDER BY newest.created_at DESC, newest.id DESC)) m
                 WHERE m.bytes <= max_bytes OR m.n = 1)
           END,
           t.agent_id, t.organization_id, v.config ->> 'base_url',
           -- The loop's tools in the version's order (one no longer registered is left out; a
           -- call of it is refused), and the run's steps so far.
           CASE WHEN cardinality(v.tools) > 0 OR v.output_schema IS NOT NULL THEN
               (SELECT coalesce(jsonb_agg(declared -> t.organization_id::text -> n.name ORDER BY n.i), '[]')
                  FROM unnest(v.tools) WITH ORDINALITY n(name, i)
                 WHERE declared -> t.organization_id::text ? n.name)
           END,
           CASE WHEN cardinality(v.tools) > 0 OR v.output_schema IS NOT NULL THEN
               (SELECT coalesce(jsonb_agg(jsonb_build_object('step_number', s.step_number, 'kind', s.kind,
                                                             'content', s.content, 'tool_calls', s.tool_calls,
                                                             'tool_call_id', s.tool_call_id, 'tool_name', s.tool_name,
                                                             'result', s.result, 'error', s.error)
                                          ORDER BY s.step_number), '[]')
                  FROM ai_agents.ai_agent_task_steps s
                 WHERE s.organization_id = ANY (owners) AND s.organization_id = t.organization_id
                   AND s.task_id = t.id AND s.step_number >= t.run_first_step)
           END,
           v.output_schema
      FROM unnest(claimed) t
      -- No version (it was deleted behind the extension's back): the worker fails the task.
      LEFT JOIN ai_agents.ai_agent_versions v
        ON v.organization_id = ANY (owners) AND v.organization_id = t.organization_id AND v.id = t.agent_version_id;
END
$$;

-- Records a batch of LLM replies in one call: their tasks complete with tokens and cost (one
-- complete_tasks), conversations get the assistant's messages. A reply for a run that is no
-- longer current (cancelled, or its lease expired and the task was claimed again) is
-- discarded and logged, not an error. Returns each task's status, or 'discarded'.
CREATE OR REPLACE FUNCTION ai_agents._record_llm_reply_batch(task_ids uuid[], fencing_tokens bigint[], contents text[],
                                                 input_tokens bigint[], output_tokens bigint[],
                                                 cached_input_tokens bigint[], cache_write_tokens bigint[],
                                                 models text[], request_ids text[], execution_times_ms integer[])
RETURNS TABLE (task_id uuid, status text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    stale record;
    live record;
    costs numeric[];
    -- The statements below name the tasks' organizations (docs/distributed.md#statements); the
    -- worker records the replies of one shard's tasks at a time.
    owners uuid[] := ARRAY(SELECT DISTINCT t.organization_id FROM ai_agents.ai_agent_tasks t
                            WHERE t.id = ANY (_record_llm_reply_batch.task_ids));
BEGIN
    -- Locked first (in one order, as every batch is), so that a run found current stays so
    -- until it is completed.
    -- NOWAIT: a row another session holds makes the batch fail at once (55P03), and
    -- _record_llm_replies reports that reply 'busy' instead of the worker waiting on it.
    PERFORM FROM ai_agents.ai_agent_tasks t
      WHERE t.organization_id = ANY (owners) AND t.id = ANY (_record_llm_reply_batch.task_ids)
      ORDER BY t.id FOR UPDATE OF t NOWAIT;
    SELECT array_agg(g.id ORDER BY g.i) AS ids, array_agg(g.token ORDER BY g.i) AS tokens,
           array_agg(g.content ORDER BY g.i) AS contents,
           array_agg(least(g.input::numeric + g.output, 2147483647)::integer ORDER BY g.i) AS tokens_used,
           -- Priced below: Citus runs this query on the shard, where a function reading the
           -- (reference) price table cannot run.
           array_agg(v.provider ORDER BY g.i) AS providers, array_agg(g.model ORDER BY g.i) AS models,
           array_agg(g.input ORDER BY g.i) AS inputs, array_agg(g.output ORDER BY g.i) AS outputs,
           array_agg(g.cached ORDER BY g.i) AS cached, array_agg(g.written ORDER BY g.i) AS written,
           array_agg(g.ms ORDER BY g.i) AS times,
           -- The worker that claimed the run (under Citus, its node's: docs/distributed.md).
           array_agg(jsonb_build_object('request_id', g.request_id, 'worker', t.locked_by, 'model', g.model,
                                        'input_tokens', g.input, 'output_tokens', g.output,
                                        'cached_input_tokens', g.cached, 'cache_write_tokens', g.written) ORDER BY g.i) AS details,
           array_agg(least(g.output, 2147483647)::integer ORDER BY g.i) AS output_tokens
      INTO live
      FROM unnest(_record_llm_reply_batch.task_ids, _record_llm_reply_batch.fencing_tokens, _record_llm_reply_batch.contents,
                  _record_llm_reply_batch.input_tokens, _record_llm_reply_batch.output_tokens,
                  _record_llm_reply_batch.cached_input_tokens, _record_llm_reply_batch.cache_write_tokens,
                  _record_llm_reply_batch.models, _record_llm_reply_batch.request_ids,
                  _record_llm_reply_batch.execution_times_ms) WITH ORDINALITY AS g(id, token, content, input, output, cached, written, model, request_id, ms, i)
      JOIN ai_agents.ai_agent_tasks t
        ON t.organization_id = ANY (owners) AND t.id = g.id AND t.status = 'running' AND t.fencing_token = g.token
      -- The ids as an index condition too (see claim_due_tasks' UPDATE).
       AND t.id = ANY (_record_llm_reply_batch.task_ids)
      -- A version deleted behind the extension's back during the call: the reply is kept, at
      -- no known price.
      LEFT JOIN ai_agents.ai_agent_versions v
        ON v.organization_id = ANY (owners) AND v.organization_id = t.organization_id AND v.id = t.agent_version_id;
    FOR stale IN
        SELECT g.id, g.token, g.request_id
          FROM unnest(_record_llm_reply_batch.task_ids, _record_llm_reply_batch.fencing_tokens,
                      _record_llm_reply_batch.request_ids) AS g(id, token, request_id)
         WHERE g.id <> ALL (coalesce(live.ids, '{}'))
    LOOP
        BEGIN
            PERFORM ai_agents._refuse_stale_token(stale.id, stale.token);
        EXCEPTION WHEN object_not_in_prerequisite_state OR no_data_found THEN
            PERFORM ai_agents._log_discarded_result(stale.id, stale.token, SQLERRM, stale.request_id);
        END;
        task_id := stale.id;
        status := 'discarded';
        RETURN NEXT;
    END LOOP;
    IF live.ids IS NULL THEN
        RETURN;
    END IF;
    costs := ARRAY(SELECT ai_agents._llm_cost_usd(c.provider, c.model, c.input, c.output, c.cached, c.written)
                     FROM unnest(live.providers, live.models, live.inputs, live.outputs, live.cached, live.written)
                          WITH ORDINALITY AS c(provider, model, input, output, cached, written, i)
                    ORDER BY c.i);
    RETURN QUERY
    WITH completed AS (
        SELECT c.id, c.status, c.conversation_id, c.organization_id, c.output, m.tokens
          FROM ai_agents.complete_tasks(live.ids, live.tokens, live.contents, NULL,
                                        live.tokens_used, costs, live.times, live.details)
               WITH ORDINALITY c
          JOIN unnest(live.output_tokens) WITH ORDINALITY AS m(tokens, i) ON m.i = c.ordinality
    ), said AS (
        INSERT INTO ai_agents.ai_agent_messages (conversation_id, organization_id, role, content, tokens)
        SELECT c.conversation_id, c.organization_id, 'assistant', c.output, c.tokens
          FROM completed c WHERE c.conversation_id IS NOT NULL
    )
    SELECT c.id, c.status FROM completed c;
END
$$;
SELECT ai_agents._plan_generically(ARRAY['ai_agents._record_llm_reply_batch(uuid[], bigint[], text[], bigint[], bigint[], bigint[], bigint[], text[], text[], integer[])'::regprocedure]);


-- What the worker calls with a turn's replies: the batch, or, when the tables refuse one of
-- its replies (anything about one row), each reply on its own, and a reply that still cannot
-- be recorded fails its task with the reason. One bad reply never takes the others' recording
-- (paid for already) down with it, nor the worker. A reply whose task row another session
-- holds locked is 'busy': not recorded now, the worker offers it again next turn.
CREATE OR REPLACE FUNCTION ai_agents._record_llm_replies(task_ids uuid[], fencing_tokens bigint[], contents text[],
                                             input_tokens bigint[], output_tokens bigint[],
                                             cached_input_tokens bigint[], cache_write_tokens bigint[],
                                             models text[], request_ids text[], execution_times_ms integer[])
RETURNS TABLE (task_id uuid, status text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    i integer;
BEGIN
    BEGIN
        RETURN QUERY SELECT * FROM ai_agents._record_llm_reply_batch(task_ids, fencing_tokens, contents,
            input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, models, request_ids,
            execution_times_ms);
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        -- Nothing of the batch is kept (its rows were not returned yet); one by one below.
    END;
    FOR i IN 1 .. coalesce(array_length(task_ids, 1), 0) LOOP
        BEGIN
            RETURN QUERY SELECT * FROM ai_agents._record_llm_reply_batch(task_ids[i:i], fencing_tokens[i:i],
                contents[i:i], input_tokens[i:i], output_tokens[i:i], cached_input_tokens[i:i],
                cache_write_tokens[i:i], models[i:i], request_ids[i:i], execution_times_ms[i:i]);
        EXCEPTION
            WHEN lock_not_available THEN
                task_id := task_ids[i];
                status := 'busy';
                RETURN NEXT;
            WHEN OTHERS THEN
                task_id := task_ids[i];
                status := ai_agents._record_llm_failure(task_ids[i], fencing_tokens[i],
                              'the reply could not be recorded: ' || SQLERRM, NULL, NULL, true,
                              request_ids[i], execution_times_ms[i]);
                RETURN NEXT;
        END;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents._record_llm_failure(task_id uuid, fencing_token bigint, error text,
                                             http_status integer, retry_after_ms bigint,
                                             permanent boolean, request_id text,
                                             execution_time_ms integer)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    org uuid := ai_agents._task_organization(_record_llm_failure.task_id);
BEGIN
    -- As for replies: a task row another session holds is 'busy', offered again next turn.
    PERFORM FROM ai_agents.ai_agent_tasks tt
      WHERE tt.organization_id = org AND tt.id = _record_llm_failure.task_id FOR UPDATE NOWAIT;
    -- A 429 with Retry-After has paused the credential that was refused before this runs
    -- (src/worker/credential.rs): claim_due_tasks holds back the tasks that would use it.
    t := ai_agents.fail_task(_record_llm_failure.task_id, _record_llm_failure.fencing_token,
            _record_llm_failure.error,
            http_status => _record_llm_failure.http_status,
            retry_after => _record_llm_failure.retry_after_ms * interval '1 millisecond',
            permanent => _record_llm_failure.permanent,
            execution_time_ms => _record_llm_failure.execution_time_ms,
            details => jsonb_build_object('request_id', _record_llm_failure.request_id));
    RETURN t.status;
EXCEPTION
    WHEN lock_not_available THEN
        RETURN 'busy';
    -- A run no longer current, or a task deleted during its call.
    WHEN object_not_in_prerequisite_state OR no_data_found THEN
        PERFORM ai_agents._log_discarded_result(_record_llm_failure.task_id, _record_llm_failure.fencing_token,
                                               SQLERRM, _record_llm_failure.request_id);
        RETURN 'discarded';
END
$$;

CREATE OR REPLACE FUNCTION ai_agents._log_discarded_result(task_id uuid, fencing_token bigint, reason text, request_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    org uuid := ai_agents._task_organization(_log_discarded_result.task_id);
BEGIN
    -- Its values first: Citus takes no subquery inside INSERT ... VALUES.
    SELECT * INTO t FROM ai_agents.ai_agent_tasks tt
     WHERE tt.organization_id = org AND tt.id = _log_discarded_result.task_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO ai_agents.ai_agent_activity_log
        (organization_id, agent_id, task_id, action_type, success, attempt, error, details)
    VALUES (t.organization_id, t.agent_id, t.id, 'result_discarded', false, t.attempts,
            _log_discarded_result.reason,
            jsonb_build_object('fencing_token', _log_discarded_result.fencing_token,
                               'request_id', _log_discarded_result.request_id));
END
$$;

-- Runs cut short by a crash or restart of the worker (tasks locked by an earlier incarnation of
-- it: a worker's name is ai_agents-worker-<server>-<pid>, and there is one worker per server)
-- have their leases ended when it starts, not only when they run out: the claim that follows
-- rescues them (every claim rescues its organizations' expired leases first). Returns how many.
CREATE OR REPLACE FUNCTION ai_agents._release_orphaned_runs(current_worker text) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    orphaned integer;
    -- Under Citus the other nodes' workers are alive: only this server's earlier ones count.
    this_server text := left(current_worker, length(current_worker) - strpos(reverse(current_worker), '-') + 1);
    ended timestamptz := now() - interval '1 microsecond';
BEGIN
    UPDATE ai_agents.ai_agent_tasks
       SET lease_expires_at = ended
     WHERE status = 'running' AND starts_with(locked_by, this_server) AND locked_by <> current_worker;
    GET DIAGNOSTICS orphaned = ROW_COUNT;
    RETURN orphaned;
END
$$;

-- What this server's worker claims or prunes for, one call per row: on one server every
-- organization (a single row of NULLs); under Citus, each shard of tasks placed on this node
-- with its organizations (docs/distributed.md#the-worker-on-each-node): those with due tasks
-- or expired leases when `due` (none: empty), else every one with an agent. Shards are read directly, on their
-- own node, so no other node's tasks are ever claimed here; the claim itself, a router query to
-- the shard's placement, decides which tasks it takes.
CREATE OR REPLACE FUNCTION ai_agents._local_scopes(due boolean)
RETURNS TABLE (shard bigint, organizations uuid[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    placed record;
BEGIN
    IF NOT ai_agents._is_distributed('ai_agents.ai_agent_tasks') THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- Citus's catalogs, named only where Citus is known to be installed. A task shard's agents
    -- are in the agents shard of the same hash range (the tables are co-located).
    FOR placed IN EXECUTE
        'SELECT t.shardid AS tasks, a.shardid AS agents
           FROM pg_catalog.pg_dist_shard t
           JOIN pg_catalog.pg_dist_placement p ON p.shardid = t.shardid
           JOIN pg_catalog.pg_dist_shard a ON a.logicalrelid = ''ai_agents.ai_agents''::regclass
                                          AND a.shardminvalue = t.shardminvalue
          WHERE t.logicalrelid = ''ai_agents.ai_agent_tasks''::regclass
            AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)
          ORDER BY t.shardid'
    LOOP
        shard := placed.tasks;
        IF due THEN
            EXECUTE format('SELECT array_agg(DISTINCT t.organization_id) FROM ai_agents.%I t
                             WHERE (t.status IN (''pending'', ''completed'', ''failed'') AND t.next_run_at IS NOT NULL
                                    AND NOT t.paused AND t.next_run_at <= now())
                                OR t.lease_expires_at < now()',
                           'ai_agent_tasks_' || placed.tasks)
                INTO organizations;
        ELSE
            EXECUTE format('SELECT array_agg(DISTINCT a.organization_id) FROM ai_agents.%I a',
                           'ai_agents_' || placed.agents)
                INTO organizations;
        END IF;
        organizations := coalesce(organizations, '{}');
        RETURN NEXT;
    END LOOP;
END
$$;

-- The claims of the last minute of a shard's tasks (NULL: of every task, on one server): what
-- each one's latest claim was, with its age. A worker counts them in its limiter when it
-- finds the shard new on its node (moved there, or the worker started), so that an
-- organization's windows hold across the move (src/worker/scope.rs).
CREATE OR REPLACE FUNCTION ai_agents._recent_claims(shard bigint)
RETURNS TABLE (organization_id uuid, agent_id uuid, age_us bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT t.organization_id, t.agent_id,
                (extract(epoch FROM clock_timestamp() - t.execution_started_at) * 1000000)::bigint
           FROM ai_agents.%I t
          WHERE t.execution_started_at > clock_timestamp() - interval ''1 minute''',
        CASE WHEN shard IS NULL THEN 'ai_agent_tasks' ELSE 'ai_agent_tasks_' || shard END);
END
$$;

-- When the worker must look again without being woken: the next task to fall due or lease to
-- expire. Tasks due already that the claim did not take are held back by a limit or locked
-- by another claimer; the claim itself says when to look at them again (src/fair_claim).
CREATE OR REPLACE FUNCTION ai_agents._next_wakeup() RETURNS timestamptz
LANGUAGE plpgsql STABLE -- not sql: PL/pgSQL keeps the plan from call to call
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off -- the kept plan must use the indexes however small the table was (sql/tasks.sql)
AS $$
BEGIN
    RETURN least(
        (SELECT min(t.next_run_at) FROM ai_agents.ai_agent_tasks t
          WHERE t.status IN ('pending', 'completed', 'failed') AND t.next_run_at > now() AND NOT t.paused),
        (SELECT min(t.lease_expires_at) FROM ai_agents.ai_agent_tasks t
          WHERE t.status = 'running' AND t.lease_expires_at IS NOT NULL));
END
$$;

-- A new or rescheduled task wakes the worker as soon as its transaction commits (before the
-- commit the worker could not see it).
CREATE OR REPLACE FUNCTION ai_agents._wake_worker_on_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ai_agents._wake_worker_at_commit();
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_tasks_wake_worker
    AFTER INSERT OR UPDATE OF next_run_at, status ON ai_agents.ai_agent_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION ai_agents._wake_worker_on_change();

REVOKE ALL ON FUNCTION ai_agents._claim_llm_calls(text, integer, interval, integer, uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents._record_llm_replies(uuid[], bigint[], text[], bigint[], bigint[], bigint[], bigint[], text[], text[], integer[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents._record_llm_failure(uuid, bigint, text, integer, bigint, boolean, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.run_scheduler_once(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents._release_orphaned_runs(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents._local_scopes(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents._recent_claims(bigint) FROM PUBLIC;
