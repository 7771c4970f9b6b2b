-- The task engine (docs/task-states.md): validation, enqueue, claim, complete, fail, heartbeat,
-- cancel, run-now, pause/resume, lease rescue, pruning and the monitoring summary.
--
-- States: a task is claimable when next_run_at is set and due, it is not paused, and its status
-- is 'pending' or - for a recurring task, whose one row records the outcome of its last run -
-- 'completed' or 'failed'. Claiming makes it 'running' under a lease with a fresh fencing token;
-- every write that ends the run must present that token.

-- enable_seqscan = off on the functions of a run's life (claim, complete, fail, heartbeat,
-- rescue, cancel, record): PL/pgSQL keeps a session's generic plans, and plans made while
-- the table was small (a worker that started on an empty queue) were sequential scans that
-- then read a growing backlog on every call - a drain of 20,000 tasks ran at 340 a second.
-- Every statement in them has an index to use.
--
-- plan_cache_mode = force_generic_plan on the functions that take arrays (claim, complete,
-- log, notify, record; set by _plan_generically at the end of this file and of worker.sql):
-- their custom plans, made for each call's arrays, looked cheaper than a
-- generic one forever, so every call planned its statements again (a batch of one cost 222
-- instead of 95 us). A generic plan does not know how many tasks a claim wants, and one made
-- for "many" read every due task and sorted them (ten times slower with a million pending), so
-- claim_due_tasks also sets enable_sort = off: the fair-claim index gives the order (its plans
-- in src/fair_claim are made under these settings too).
--
-- search_path: every PL/pgSQL function pins it (SET search_path = pg_catalog, pg_temp), trigger
-- functions too, which fire with the search_path of whoever writes the table: an object
-- planted in public must never run inside them (about 0.8 us a call). The two small SQL
-- helpers (_current_actor, _next_run_after) stay unpinned so they can be inlined; only
-- pinned functions call them. sql/security.sql and tests/tests/security.rs check all this.

-- Validates every new row, including plain INSERTs as the deployment guide writes them, and
-- re-validates when the fields it checks change. Errors name the problem and carry a SQLSTATE.
CREATE OR REPLACE FUNCTION ai_agents._validate_task() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
            NEW.updated_at := now();
        END IF;
        IF (NEW.agent_id, NEW.organization_id, NEW.schedule_cron, NEW.timezone, NEW.title,
            NEW.status, NEW.task_type, NEW.max_attempts, NEW.idempotency_key)
           IS NOT DISTINCT FROM
           (OLD.agent_id, OLD.organization_id, OLD.schedule_cron, OLD.timezone, OLD.title,
            OLD.status, OLD.task_type, OLD.max_attempts, OLD.idempotency_key) THEN
            RETURN NEW;
        END IF;
    END IF;

    IF NEW.title IS NULL OR btrim(NEW.title) = '' THEN
        RAISE EXCEPTION 'task title must not be empty' USING ERRCODE = '23514';
    END IF;
    IF NEW.status IS NULL OR NEW.status NOT IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'unknown task status "%"', NEW.status USING ERRCODE = '23514',
            HINT = 'Use one of pending, queued, running, completed, failed, cancelled.';
    END IF;
    IF NEW.task_type IS NULL OR NEW.task_type NOT IN ('scheduled', 'adhoc', 'conversation', 'report') THEN
        RAISE EXCEPTION 'unknown task type "%"', NEW.task_type USING ERRCODE = '23514',
            HINT = 'Use one of scheduled, adhoc, conversation, report.';
    END IF;
    IF NEW.max_attempts IS NULL OR NEW.max_attempts < 1 THEN
        RAISE EXCEPTION 'max_attempts must be at least 1, got %', coalesce(NEW.max_attempts::text, 'NULL')
            USING ERRCODE = '23514';
    END IF;
    IF length(NEW.idempotency_key) > 255 THEN
        RAISE EXCEPTION 'idempotency_key is % characters long; at most 255 are allowed', length(NEW.idempotency_key)
            USING ERRCODE = '22001';
    END IF;
    IF NEW.idempotency_key = '' THEN
        RAISE EXCEPTION 'idempotency_key must not be empty (use NULL for none)' USING ERRCODE = '23514';
    END IF;

    IF TG_OP = 'INSERT' OR NEW.agent_id <> OLD.agent_id OR NEW.organization_id IS DISTINCT FROM OLD.organization_id THEN
        -- Looked up within the row's organization where it has one, so that under Citus the
        -- lookup stays on this node (docs/distributed.md#statements).
        IF NEW.organization_id IS NOT NULL THEN
            SELECT ag.organization_id, ag.is_active, ag.tasks_paused INTO a
              FROM ai_agents.ai_agents ag WHERE ag.organization_id = NEW.organization_id AND ag.id = NEW.agent_id;
        ELSE
            SELECT ag.organization_id, ag.is_active, ag.tasks_paused INTO a
              FROM ai_agents.ai_agents ag WHERE ag.id = NEW.agent_id;
        END IF;
        IF NOT FOUND AND NEW.organization_id IS NOT NULL THEN
            RAISE EXCEPTION 'agent % does not exist in organization %', coalesce(NEW.agent_id::text, 'NULL'),
                NEW.organization_id USING ERRCODE = '23503';
        ELSIF NOT FOUND THEN
            RAISE EXCEPTION 'agent % does not exist', coalesce(NEW.agent_id::text, 'NULL') USING ERRCODE = '23503';
        END IF;
        NEW.organization_id := a.organization_id;
        -- An inactive agent's task is held until the agent is active again. enqueue_task refuses
        -- to give an inactive agent tasks; rows written directly (a restore of a dump taken while
        -- the agent was off, the guide's plain INSERT) are kept, held.
        NEW.paused := a.tasks_paused OR NOT a.is_active;
    END IF;

    IF TG_OP = 'INSERT'
       OR NEW.schedule_cron IS DISTINCT FROM OLD.schedule_cron
       OR NEW.timezone IS DISTINCT FROM OLD.timezone THEN
        PERFORM ai_agents.validate_schedule(NEW.schedule_cron, NEW.timezone);
        -- A new or changed schedule decides the next run, unless the writer set one itself.
        IF NEW.schedule_cron IS NOT NULL AND NEW.status IN ('pending', 'completed', 'failed')
           AND (NEW.next_run_at IS NULL
                OR TG_OP = 'UPDATE' AND NEW.next_run_at IS NOT DISTINCT FROM OLD.next_run_at) THEN
            NEW.next_run_at := ai_agents.next_run_time(NEW.schedule_cron, NEW.timezone, now());
        END IF;
    END IF;
    -- A pending task always has a due time: now, unless the writer or its schedule said later.
    IF NEW.status = 'pending' AND NEW.next_run_at IS NULL THEN
        NEW.next_run_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_tasks_validate
    BEFORE INSERT OR UPDATE ON ai_agents.ai_agent_tasks
    FOR EACH ROW EXECUTE FUNCTION ai_agents._validate_task();

-- Pausing or deactivating an agent holds all of its tasks; the copy of the flag on each task
-- keeps held tasks out of the claim index.
CREATE OR REPLACE FUNCTION ai_agents._propagate_agent_pause() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE ai_agents.ai_agent_tasks
       SET paused = (NEW.tasks_paused OR NOT NEW.is_active)
     WHERE organization_id = NEW.organization_id AND agent_id = NEW.id
       AND paused IS DISTINCT FROM (NEW.tasks_paused OR NOT NEW.is_active);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER ai_agents_propagate_pause
    AFTER UPDATE OF tasks_paused, is_active ON ai_agents.ai_agents
    FOR EACH ROW
    WHEN ((OLD.tasks_paused OR NOT OLD.is_active) IS DISTINCT FROM (NEW.tasks_paused OR NOT NEW.is_active))
    EXECUTE FUNCTION ai_agents._propagate_agent_pause();

-- Refuses a member's task when the organization already has as many waiting (pending or
-- queued) tasks as it may: its ai_agent_organization_limits row, else
-- ai_agents.max_waiting_tasks. Counts at most limit + 1 rows of the waiting index.
CREATE OR REPLACE FUNCTION ai_agents._check_waiting_tasks(org uuid) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    allowed integer := coalesce((SELECT l.max_waiting_tasks FROM ai_agents.ai_agent_organization_limits l
                                  WHERE l.organization_id = org),
                                current_setting('ai_agents.max_waiting_tasks')::integer);
    waiting bigint;
BEGIN
    SELECT count(*) INTO waiting
      FROM (SELECT FROM ai_agents.ai_agent_tasks t
             WHERE t.organization_id = org AND t.status IN ('pending', 'queued')
             LIMIT allowed) w;
    IF waiting >= allowed THEN
        RAISE EXCEPTION 'organization % has % tasks waiting; at most % may wait', org, waiting, allowed
            USING ERRCODE = '54000',
                  HINT = 'Wait for tasks to run, or raise ai_agents.max_waiting_tasks or the organization''s ai_agent_organization_limits row.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents.enqueue_task(
    agent_id        uuid,
    title           text,
    description     text DEFAULT NULL,
    input           jsonb DEFAULT '{}',
    task_type       text DEFAULT 'adhoc',
    priority        integer DEFAULT 0,
    run_at          timestamptz DEFAULT NULL,
    schedule_cron   text DEFAULT NULL,
    timezone        text DEFAULT 'UTC',
    idempotency_key text DEFAULT NULL,
    max_attempts    integer DEFAULT 3,
    conversation_id uuid DEFAULT NULL)
RETURNS ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    org uuid;
    active boolean;
    t ai_agents.ai_agent_tasks;
BEGIN
    SELECT ag.organization_id, ag.is_active INTO org, active
      FROM ai_agents.ai_agents ag WHERE ag.id = enqueue_task.agent_id;
    PERFORM ai_agents._check_organization(org, format('agent %s', enqueue_task.agent_id));
    IF org IS NULL THEN
        RAISE EXCEPTION 'agent % does not exist', coalesce(enqueue_task.agent_id::text, 'NULL')
            USING ERRCODE = '23503';
    END IF;
    IF enqueue_task.idempotency_key IS NOT NULL THEN
        SELECT * INTO t FROM ai_agents.ai_agent_tasks
         WHERE organization_id = org AND idempotency_key = enqueue_task.idempotency_key;
        IF FOUND THEN
            RETURN t;
        END IF;
    END IF;
    IF NOT active THEN
        RAISE EXCEPTION 'agent % is not active', enqueue_task.agent_id USING ERRCODE = '55000',
            HINT = 'Activate the agent (is_active = true) before giving it tasks.';
    END IF;
    -- A member (a caller bounded by row-level security) gets a bounded queue: a priority in
    -- [-10, 10], a due time from now to a year ahead, and no more waiting tasks than the
    -- organization's limit, so that one organization cannot jump ahead of the others or
    -- fill the queue.
    IF NOT ai_agents._caller_sees_all_organizations() THEN
        enqueue_task.priority := least(greatest(coalesce(enqueue_task.priority, 0), -10), 10);
        IF enqueue_task.run_at IS NOT NULL THEN
            enqueue_task.run_at := least(greatest(enqueue_task.run_at, now()), now() + interval '1 year');
        END IF;
        PERFORM ai_agents._check_waiting_tasks(org);
    END IF;
    INSERT INTO ai_agents.ai_agent_tasks
        (agent_id, organization_id, title, description, input, task_type, priority, next_run_at,
         schedule_cron, timezone, idempotency_key, max_attempts, conversation_id)
    VALUES
        (enqueue_task.agent_id, org, enqueue_task.title, enqueue_task.description,
         coalesce(enqueue_task.input, '{}'), enqueue_task.task_type, coalesce(enqueue_task.priority, 0),
         enqueue_task.run_at, enqueue_task.schedule_cron, coalesce(enqueue_task.timezone, 'UTC'),
         enqueue_task.idempotency_key, enqueue_task.max_attempts, enqueue_task.conversation_id)
    ON CONFLICT (organization_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO t;
    IF t.id IS NULL THEN
        -- A concurrent enqueue with the same key committed first: its task is the answer.
        SELECT * INTO t FROM ai_agents.ai_agent_tasks
         WHERE organization_id = org AND idempotency_key = enqueue_task.idempotency_key;
    END IF;
    RETURN t;
END
$$;

-- The next run of a task whose run starts or ends now: the next fire time after now for a
-- recurring task (so fire times missed during downtime run once, not once each), none for a
-- one-shot task.
-- A run's next slot after a time: NULL for a one-shot task. IMMUTABLE, as next_run_time is
-- (cron math and the time zone rules compiled into the library; 0.1.0 declared it STABLE):
-- Citus takes only immutable functions of a row's columns in an UPDATE, so the callers pass
-- the time in.
ALTER FUNCTION ai_agents.next_run_time(text, text, timestamptz) IMMUTABLE;
DROP FUNCTION IF EXISTS ai_agents._next_run_after_now(text, text);
CREATE OR REPLACE FUNCTION ai_agents._next_run_after(schedule_cron text, timezone text, after timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN schedule_cron IS NULL THEN NULL
                ELSE ai_agents.next_run_time(schedule_cron, timezone, after) END
$$;

-- How much longer the credential (provider, base URL, API key) a task of this agent would be
-- called with is paused by a 429 (src/worker/credential.rs); NULL: not paused.
CREATE OR REPLACE FUNCTION ai_agents._credential_paused_for(provider text, agent_id text, organization_id text,
                                                           base_url text)
RETURNS interval
LANGUAGE c
AS 'MODULE_PATHNAME', 'credential_paused_for_wrapper';

-- Which due tasks a claim takes (src/fair_claim): shared fairly across organizations and
-- their agents within the rate limits, locked (FOR UPDATE SKIP LOCKED) and each with the
-- agent version to pin. What the limits refuse stays due and is held back, not rewritten.
DROP FUNCTION IF EXISTS ai_agents._choose_due_tasks(integer);
CREATE OR REPLACE FUNCTION ai_agents._choose_due_tasks(max_tasks integer, organizations uuid[])
RETURNS TABLE (task_id uuid, organization_id uuid, version_id uuid, budget_pico bigint)
LANGUAGE c
AS 'MODULE_PATHNAME', 'choose_due_tasks_wrapper';

-- organizations: claim only their tasks (NULL: every organization's). Under Citus a claim names
-- the organizations of one shard (docs/distributed.md#claiming): each node's worker claims its
-- own shards' tasks, every statement a router query.
DROP FUNCTION IF EXISTS ai_agents.claim_due_tasks(text, integer, interval);
CREATE OR REPLACE FUNCTION ai_agents.claim_due_tasks(worker text, max_tasks integer DEFAULT 1,
                                                     lease interval DEFAULT '5 minutes',
                                                     organizations uuid[] DEFAULT NULL)
RETURNS SETOF ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_sort = off -- the generic plans must read the fair-claim index in order (see above)
SET enable_seqscan = off
AS $$
DECLARE
    claimable uuid[];
    owners uuid[];
    versions uuid[];
    reserved bigint[];
    tokens bigint[];
    claimed_at timestamptz := now();
BEGIN
    IF worker IS NULL OR btrim(worker) = '' THEN
        RAISE EXCEPTION 'worker name must not be empty' USING ERRCODE = '22023';
    END IF;
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        RAISE EXCEPTION 'max_tasks must be at least 1, got %', coalesce(max_tasks::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF lease IS NULL OR lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be a positive interval, got %', coalesce(lease::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    -- Any claimer rescues expired leases first, so a crashed worker's tasks come back without
    -- anyone running SQL by hand (the lease index makes this a cheap probe). The rescue also
    -- refuses organizations the claim cannot take (_check_claim_scope), before anything else.
    PERFORM ai_agents.rescue_expired_leases(organizations);
    -- An agent whose current version is gone (only a superuser bypassing triggers can do
    -- that) has nothing to run: its tasks are claimed without a version and fail without a
    -- call.
    SELECT coalesce(array_agg(c.task_id), '{}'), coalesce(array_agg(c.organization_id), '{}'),
           coalesce(array_agg(c.version_id), '{}'), coalesce(array_agg(c.budget_pico), '{}'),
           coalesce(array_agg(nextval('ai_agents.fencing_token_seq')), '{}')
      INTO claimable, owners, versions, reserved, tokens
      FROM ai_agents._choose_due_tasks(max_tasks, organizations) c;
    -- Nothing to claim: no UPDATE, which under Citus would name no shard and go to all of them.
    IF cardinality(claimable) = 0 THEN
        RETURN;
    END IF;
    -- The claimed tasks in one statement: a statement per task cost more in executor start-up
    -- than in the updates themselves. Every value a row's columns do not give is computed
    -- first, and joined by task: Citus takes no volatile function in an UPDATE. The filter on
    -- owners is what routes the statement to its shard.
    RETURN QUERY
    UPDATE ai_agents.ai_agent_tasks t
       SET status = 'running',
           -- A recurring task's new run starts its attempts afresh; a retry adds one.
           attempts = CASE WHEN t.status = 'pending' THEN t.attempts + 1 ELSE 1 END,
           execution_started_at = claimed_at,
           completed_at = NULL,
           -- While it runs, a recurring task already shows its next slot and a one-shot
           -- task none, so a manual status change (as the guide's troubleshooting does)
           -- can never make a one-shot task claimable again.
           next_run_at = ai_agents._next_run_after(t.schedule_cron, t.timezone, claimed_at),
           locked_by = worker,
           lease_expires_at = claimed_at + lease,
           fencing_token = c.token,
           agent_version_id = c.version_id,
           -- What the claim reserved against the task's budgets (docs/budgets.md).
           budget_reserved_usd = c.pico / 1e12
      FROM unnest(claimable, owners, versions, reserved, tokens) AS c(id, organization_id, version_id, pico, token)
     WHERE t.organization_id = ANY (owners) AND t.organization_id = c.organization_id AND t.id = c.id
       -- The ids as an index condition too, so that the tasks are found by id whatever the
       -- session's generic plan expected: one made on a near-empty table read every task of
       -- the organizations instead (engine.rs, a_batch_of_replies_finds_its_tasks_by_id_...).
       AND t.id = ANY (claimable)
    RETURNING t.*;
END
$$;

-- Refuses a claim, rescue or prune for every organization at once where the tables are distributed
-- (Citus locks no rows across shards), and one for organizations of more than one shard.
CREATE OR REPLACE FUNCTION ai_agents._check_claim_scope(organizations uuid[]) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT ai_agents._is_distributed('ai_agents.ai_agent_tasks') THEN
        RETURN;
    END IF;
    IF organizations IS NULL THEN
        RAISE EXCEPTION 'a claim, rescue or prune needs the organizations to work on: the tables are distributed'
            USING ERRCODE = '0A000',
                  HINT = 'Each node''s worker claims its own shards'' tasks; see docs/distributed.md#claiming.';
    END IF;
    IF (SELECT count(DISTINCT pg_catalog.get_shard_id_for_distribution_column('ai_agents.ai_agent_tasks', o))
          FROM unnest(organizations) o) > 1 THEN
        RAISE EXCEPTION 'a claim, rescue or prune takes the organizations of one shard at a time'
            USING ERRCODE = '22023',
                  HINT = 'get_shard_id_for_distribution_column(''ai_agents.ai_agent_tasks'', organization_id) tells an organization''s shard.';
    END IF;
END
$$;

-- The claim queue per organization (docs/fairness.md): its due tasks and how long the oldest
-- has waited, its calls in the limiter's current window and their share of all calls, and
-- its weight. Organizations with due tasks or calls in the window. For the operator: it counts
-- every due task, and reads the limiter, which needs the preloaded library. A function with
-- its search_path pinned, under the view: Citus plans the due tasks apart and then parses the
-- rest again in the caller's search_path, where a `=` of another schema could win.
CREATE OR REPLACE FUNCTION ai_agents._organization_queue()
RETURNS TABLE (organization_id uuid, due_tasks bigint, oldest_due_at timestamptz, oldest_waiting interval,
               calls_in_window bigint, share_of_calls numeric, weight float8)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT t.organization_id, count(*) AS due_tasks, min(t.next_run_at) AS oldest_due_at
          FROM ai_agents.ai_agent_tasks t
         WHERE t.status IN ('pending', 'completed', 'failed') AND t.next_run_at <= now() AND NOT t.paused
         GROUP BY t.organization_id),
    calls AS (
        SELECT substr(u.key, 14)::uuid AS organization_id, u.used
          FROM ai_agents.rate_limit_usage u
         WHERE u.key LIKE 'organization:%' AND u.window = interval '1 minute' AND u.used > 0)
    SELECT coalesce(d.organization_id, c.organization_id),
           coalesce(d.due_tasks, 0),
           d.oldest_due_at,
           now() - d.oldest_due_at,
           coalesce(c.used, 0)::bigint,
           round(coalesce(c.used, 0)::numeric / nullif(sum(c.used) OVER (), 0), 4),
           coalesce(l.weight, 1)::float8
      FROM due d
      FULL JOIN calls c ON c.organization_id = d.organization_id
      LEFT JOIN ai_agents.ai_agent_organization_limits l
        ON l.organization_id = coalesce(d.organization_id, c.organization_id);
END
$$;

CREATE OR REPLACE VIEW ai_agents.organization_queue WITH (security_invoker = true) AS
    SELECT * FROM ai_agents._organization_queue();

-- Raises the error for a completion, failure or heartbeat that does not hold the task's lease.
-- The organization of a task (NULL when there is no such task): asked first by the functions
-- given only a task id, whose later statements then name it (docs/distributed.md#statements).
-- PL/pgSQL: Citus plans no SQL function with parameters.
CREATE OR REPLACE FUNCTION ai_agents._task_organization(task_id uuid) RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT t.organization_id FROM ai_agents.ai_agent_tasks t WHERE t.id = _task_organization.task_id);
END
$$;

CREATE OR REPLACE FUNCTION ai_agents._refuse_stale_token(task_id uuid, fencing_token bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    org uuid := ai_agents._task_organization(_refuse_stale_token.task_id);
BEGIN
    SELECT * INTO t FROM ai_agents.ai_agent_tasks
     WHERE organization_id = org AND id = _refuse_stale_token.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'task % does not exist', coalesce(_refuse_stale_token.task_id::text, 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    RAISE EXCEPTION 'stale fencing token % for task %: the task is % with token %',
        coalesce(_refuse_stale_token.fencing_token::text, 'NULL'), t.id, t.status,
        coalesce(t.fencing_token::text, 'none')
        USING ERRCODE = '55000',
              HINT = 'The lease expired and the task was rescued or claimed again; this result is discarded.';
END
$$;

-- One activity row per task: an attempt's outcome (with the run's tokens, cost and time) or a
-- control event, with who caused it. errors and details hold one entry per task (NULL as a
-- whole for none), so a batch is one INSERT.
CREATE OR REPLACE FUNCTION ai_agents._log_task_events(tasks ai_agents.ai_agent_tasks[], action_type text, success boolean,
                                          errors text[] DEFAULT NULL, details jsonb[] DEFAULT NULL,
                                          with_usage boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql -- not sql: PL/pgSQL keeps the plan of its statement from call to call
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO ai_agents.ai_agent_activity_log
        (organization_id, agent_id, task_id, action_type, success, attempt, tokens_used, cost_usd,
         execution_time_ms, error, details)
    SELECT t.organization_id, t.agent_id, t.id, _log_task_events.action_type, _log_task_events.success,
           t.attempts,
           CASE WHEN with_usage THEN t.tokens_used END,
           CASE WHEN with_usage THEN t.cost_usd END,
           CASE WHEN with_usage THEN t.execution_time_ms END,
           errors[t.ordinality],
           coalesce(_log_task_events.details[t.ordinality], '{}') || jsonb_build_object('by', ai_agents._current_actor())
      FROM unnest(tasks) WITH ORDINALITY t;
END
$$;

-- Tells listeners (LISTEN ai_agents_task_events) that tasks' runs ended, so apps react
-- without polling. Delivered at commit, like every NOTIFY.
CREATE OR REPLACE FUNCTION ai_agents._notify_task_events(tasks ai_agents.ai_agent_tasks[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('ai_agents_task_events', json_build_object(
        'task_id', t.id, 'status', t.status, 'organization_id', t.organization_id,
        'agent_id', t.agent_id, 'attempts', t.attempts, 'next_run_at', t.next_run_at)::text)
       FROM unnest(tasks) t;
END
$$;

-- Completes claimed runs, several in one call and in one statement each for the tasks, their
-- activity and their notifications: the arrays hold one entry per task (outputs, results,
-- tokens, costs, times and details may be NULL as a whole). Returns the completed tasks in the
-- order given. A stale fencing token refuses the whole call (55000) and changes nothing.
CREATE OR REPLACE FUNCTION ai_agents.complete_tasks(
    task_ids           uuid[],
    fencing_tokens     bigint[],
    outputs            text[] DEFAULT NULL,
    results            jsonb[] DEFAULT NULL,
    tokens_used        integer[] DEFAULT NULL,
    costs_usd          numeric[] DEFAULT NULL,
    execution_times_ms integer[] DEFAULT NULL,
    details            jsonb[] DEFAULT NULL)
RETURNS SETOF ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    n integer := coalesce(array_length(task_ids, 1), 0);
    done ai_agents.ai_agent_tasks[];
    stale record;
    finished_at timestamptz := now();
    owners uuid[];
BEGIN
    IF coalesce(array_length(fencing_tokens, 1), 0) <> n
       OR coalesce(array_length(outputs, 1), n) <> n OR coalesce(array_length(results, 1), n) <> n
       OR coalesce(array_length(tokens_used, 1), n) <> n OR coalesce(array_length(costs_usd, 1), n) <> n
       OR coalesce(array_length(execution_times_ms, 1), n) <> n OR coalesce(array_length(details, 1), n) <> n THEN
        RAISE EXCEPTION 'complete_tasks needs one fencing token - and one output, result, tokens, cost, time and details when given - per task id (% ids)', n
            USING ERRCODE = '22023';
    END IF;
    IF (SELECT count(DISTINCT i) <> count(i) FROM unnest(task_ids) i) THEN
        RAISE EXCEPTION 'task ids repeat in one complete_tasks call' USING ERRCODE = '22023';
    END IF;
    -- The statements below name the tasks' organizations (docs/distributed.md#statements).
    owners := ARRAY(SELECT DISTINCT t.organization_id FROM ai_agents.ai_agent_tasks t WHERE t.id = ANY (task_ids));
    WITH given AS (
        SELECT * FROM unnest(task_ids, fencing_tokens, outputs, results, complete_tasks.tokens_used,
                             costs_usd, execution_times_ms)
                      WITH ORDINALITY AS g(id, token, output, result, tokens, cost, ms, i)
    ), completed AS (
        UPDATE ai_agents.ai_agent_tasks t
           SET status = 'completed',
               completed_at = finished_at,
               output = g.output,
               result = g.result,
               tokens_used = g.tokens,
               cost_usd = g.cost,
               execution_time_ms = coalesce(g.ms, (extract(epoch FROM finished_at - t.execution_started_at) * 1000)::integer),
               error_message = NULL,
               locked_by = NULL,
               lease_expires_at = NULL,
               next_run_at = ai_agents._next_run_after(t.schedule_cron, t.timezone, finished_at)
          FROM given g
         WHERE t.organization_id = ANY (owners) AND t.id = g.id AND t.status = 'running' AND t.fencing_token = g.token
           -- The ids as an index condition too (see claim_due_tasks' UPDATE).
           AND t.id = ANY (task_ids)
        RETURNING t, g.i
    )
    SELECT array_agg(c.t ORDER BY c.i) INTO done FROM completed c;
    IF coalesce(array_length(done, 1), 0) < n THEN
        SELECT g.id, g.token INTO stale
          FROM unnest(task_ids, fencing_tokens) WITH ORDINALITY AS g(id, token, i)
         WHERE NOT EXISTS (SELECT FROM unnest(done) d WHERE d.id = g.id)
         ORDER BY g.i LIMIT 1;
        PERFORM ai_agents._refuse_stale_token(stale.id, stale.token);
    END IF;
    -- done[i] is task_ids[i]'s run from here on.
    PERFORM ai_agents._log_task_events(done, 'task_completed', true,
        details => ARRAY(SELECT coalesce(complete_tasks.details[d.ordinality], '{}') || jsonb_build_object(
                                    'fencing_token', d.fencing_token, 'agent_version_id', d.agent_version_id,
                                    'next_run_at', d.next_run_at)
                           FROM unnest(done) WITH ORDINALITY d ORDER BY d.ordinality),
        with_usage => true);
    PERFORM ai_agents._notify_task_events(done);
    RETURN QUERY SELECT * FROM unnest(done);
END
$$;

CREATE OR REPLACE FUNCTION ai_agents.complete_task(
    task_id           uuid,
    fencing_token     bigint,
    output            text DEFAULT NULL,
    result            jsonb DEFAULT NULL,
    tokens_used       integer DEFAULT NULL,
    cost_usd          numeric DEFAULT NULL,
    execution_time_ms integer DEFAULT NULL,
    details           jsonb DEFAULT '{}')
RETURNS ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
BEGIN
    SELECT * INTO t FROM ai_agents.complete_tasks(ARRAY[complete_task.task_id], ARRAY[complete_task.fencing_token],
        ARRAY[complete_task.output], ARRAY[complete_task.result], ARRAY[complete_task.tokens_used],
        ARRAY[complete_task.cost_usd], ARRAY[complete_task.execution_time_ms], ARRAY[complete_task.details]);
    RETURN t;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents.fail_task(
    task_id           uuid,
    fencing_token     bigint,
    error             text,
    http_status       integer DEFAULT NULL,
    retry_after       interval DEFAULT NULL,
    permanent         boolean DEFAULT NULL,
    tokens_used       integer DEFAULT NULL,
    cost_usd          numeric DEFAULT NULL,
    execution_time_ms integer DEFAULT NULL,
    details           jsonb DEFAULT '{}')
RETURNS ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    transient boolean := ai_agents.failure_is_transient(fail_task.http_status, fail_task.permanent);
    delay interval;
    message text := coalesce(nullif(btrim(fail_task.error), ''), 'unknown error');
    org uuid := ai_agents._task_organization(fail_task.task_id);
    next_at timestamptz;
    ended_at timestamptz;
    ms integer;
BEGIN
    SELECT * INTO t FROM ai_agents.ai_agent_tasks
     WHERE organization_id = org AND id = fail_task.task_id
       AND status = 'running' AND fencing_token = fail_task.fencing_token
       FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM ai_agents._refuse_stale_token(fail_task.task_id, fail_task.fencing_token);
    END IF;
    IF transient AND t.attempts < t.max_attempts THEN
        delay := ai_agents.retry_delay(t.attempts, fail_task.retry_after);
    END IF;
    -- The new values are computed here from the locked row: Citus takes no function but an
    -- immutable one inside CASE or coalesce in an UPDATE.
    IF delay IS NULL THEN
        next_at := ai_agents._next_run_after(t.schedule_cron, t.timezone, now());
        ended_at := now();
    ELSE
        next_at := now() + delay;
    END IF;
    ms := coalesce(fail_task.execution_time_ms, (extract(epoch FROM now() - t.execution_started_at) * 1000)::integer);
    UPDATE ai_agents.ai_agent_tasks
       SET status = CASE WHEN delay IS NULL THEN 'failed' ELSE 'pending' END,
           completed_at = ended_at,
           next_run_at = next_at,
           error_message = message,
           tokens_used = fail_task.tokens_used,
           cost_usd = fail_task.cost_usd,
           execution_time_ms = ms,
           locked_by = NULL,
           lease_expires_at = NULL
     WHERE organization_id = t.organization_id AND id = t.id
    RETURNING * INTO t;
    PERFORM ai_agents._log_task_events(ARRAY[t], 'task_failed', false, ARRAY[message],
        ARRAY[coalesce(fail_task.details, '{}') || jsonb_build_object(
            'http_status', fail_task.http_status, 'transient', transient,
            'will_retry', delay IS NOT NULL, 'retry_in_seconds', extract(epoch FROM delay),
            'max_attempts', t.max_attempts, 'fencing_token', t.fencing_token,
            'agent_version_id', t.agent_version_id)],
        with_usage => true);
    IF delay IS NULL THEN
        PERFORM ai_agents._notify_task_events(ARRAY[t]);
    END IF;
    RETURN t;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents.heartbeat_task(task_id uuid, fencing_token bigint, lease interval DEFAULT '5 minutes')
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    expires timestamptz;
    org uuid := ai_agents._task_organization(heartbeat_task.task_id);
BEGIN
    IF heartbeat_task.lease IS NULL OR heartbeat_task.lease <= interval '0' THEN
        RAISE EXCEPTION 'lease must be a positive interval, got %', coalesce(heartbeat_task.lease::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    UPDATE ai_agents.ai_agent_tasks
       SET lease_expires_at = now() + heartbeat_task.lease
     WHERE organization_id = org AND id = heartbeat_task.task_id
       AND status = 'running' AND fencing_token = heartbeat_task.fencing_token
    RETURNING lease_expires_at INTO expires;
    IF NOT FOUND THEN
        PERFORM ai_agents._refuse_stale_token(heartbeat_task.task_id, heartbeat_task.fencing_token);
    END IF;
    RETURN expires;
END
$$;

-- Looks a task up for a control function, locked, or raises a clear error.
CREATE OR REPLACE FUNCTION ai_agents._lock_task(task_id uuid) RETURNS ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    org uuid := ai_agents._task_organization(_lock_task.task_id);
BEGIN
    SELECT * INTO t FROM ai_agents.ai_agent_tasks
     WHERE organization_id = org AND id = _lock_task.task_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'task % does not exist', coalesce(_lock_task.task_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    RETURN t;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents.cancel_task(task_id uuid, reason text DEFAULT NULL)
RETURNS ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks;
    was text;
BEGIN
    PERFORM ai_agents._check_organization(ai_agents._task_organization(cancel_task.task_id),
                                          format('task %s', cancel_task.task_id));
    t := ai_agents._lock_task(cancel_task.task_id);
    was := t.status;
    IF t.status = 'cancelled' THEN
        RETURN t;
    END IF;
    IF t.status IN ('completed', 'failed') AND t.next_run_at IS NULL THEN
        RAISE EXCEPTION 'task % already finished as %', t.id, t.status USING ERRCODE = '55000';
    END IF;
    UPDATE ai_agents.ai_agent_tasks
       SET status = 'cancelled', next_run_at = NULL, locked_by = NULL, lease_expires_at = NULL,
           error_message = coalesce(cancel_task.reason, 'cancelled')
     WHERE organization_id = t.organization_id AND id = t.id
    RETURNING * INTO t;
    PERFORM ai_agents._log_task_events(ARRAY[t], 'task_cancelled', true, ARRAY[cancel_task.reason],
                                      ARRAY[jsonb_build_object('previous_status', was)]);
    PERFORM ai_agents._notify_task_events(ARRAY[t]);
    RETURN t;
END
$$;

-- Runs a task at once: a scheduled or waiting task, a recurring task ahead of its schedule, or a
-- failed one-shot task again with fresh attempts.
CREATE OR REPLACE FUNCTION ai_agents.run_task_now(task_id uuid)
RETURNS ai_agents.ai_agent_tasks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t ai_agents.ai_agent_tasks := ai_agents._lock_task(run_task_now.task_id);
BEGIN
    IF t.status IN ('running', 'cancelled') OR (t.status = 'completed' AND t.next_run_at IS NULL) THEN
        RAISE EXCEPTION 'task % is % and cannot be run now', t.id, t.status USING ERRCODE = '55000',
            HINT = CASE t.status WHEN 'running' THEN 'Wait for the current run to end.'
                                 ELSE 'Enqueue a new task instead.' END;
    END IF;
    UPDATE ai_agents.ai_agent_tasks
       SET next_run_at = now(),
           status = CASE WHEN status = 'failed' AND next_run_at IS NULL THEN 'pending' ELSE status END,
           attempts = CASE WHEN status = 'failed' AND next_run_at IS NULL THEN 0 ELSE attempts END
     WHERE organization_id = t.organization_id AND id = t.id
    RETURNING * INTO t;
    PERFORM ai_agents._log_task_events(ARRAY[t], 'task_run_now', true);
    RETURN t;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents._set_agent_tasks_paused(agent_id uuid, paused boolean) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    held integer;
BEGIN
    UPDATE ai_agents.ai_agents SET tasks_paused = _set_agent_tasks_paused.paused
     WHERE id = _set_agent_tasks_paused.agent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent % does not exist', coalesce(_set_agent_tasks_paused.agent_id::text, 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    SELECT count(*) INTO held FROM ai_agents.ai_agent_tasks
     WHERE agent_id = _set_agent_tasks_paused.agent_id AND paused;
    RETURN held;
END
$$;

-- Holds every task of an agent (running ones finish; nothing new starts). Returns how many
-- tasks are held.
CREATE OR REPLACE FUNCTION ai_agents.pause_agent_tasks(agent_id uuid) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ai_agents._set_agent_tasks_paused(agent_id, true) $$;

-- Releases an agent's tasks; returns how many are still held (0 unless the agent is inactive).
CREATE OR REPLACE FUNCTION ai_agents.resume_agent_tasks(agent_id uuid) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ai_agents._set_agent_tasks_paused(agent_id, false) $$;

-- Expired leases (a worker crashed, the server restarted, a call outlived its lease) go back to
-- pending at once, or fail when no attempts are left; each rescue is logged.
DROP FUNCTION IF EXISTS ai_agents.rescue_expired_leases();
CREATE OR REPLACE FUNCTION ai_agents.rescue_expired_leases(organizations uuid[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    rescued_at timestamptz := now();
    expired record;
BEGIN
    PERFORM ai_agents._check_claim_scope(organizations);
    -- What each run becomes is computed with its lock, and joined by task: Citus takes no
    -- volatile function, nor a stable one of a row's columns, in an UPDATE.
    SELECT array_agg(t.id) AS ids, array_agg(t.organization_id) AS owners,
           array_agg(t.attempts < t.max_attempts) AS retry,
           array_agg(format('lease of worker %s expired at %s on attempt %s of %s%s',
                            t.locked_by, t.lease_expires_at, t.attempts, t.max_attempts,
                            CASE WHEN t.attempts < t.max_attempts THEN '; retrying' ELSE '; no attempts left' END)) AS errors
      INTO expired
      FROM (SELECT * FROM ai_agents.ai_agent_tasks tt
             WHERE tt.status = 'running' AND tt.lease_expires_at < rescued_at
               AND (organizations IS NULL OR tt.organization_id = ANY (organizations))
               FOR UPDATE SKIP LOCKED) t;
    IF expired.ids IS NULL THEN
        RETURN 0;
    END IF;
    WITH updated AS (
        UPDATE ai_agents.ai_agent_tasks t
           SET status = CASE WHEN e.retry THEN 'pending' ELSE 'failed' END,
               next_run_at = CASE WHEN e.retry THEN rescued_at
                                  ELSE ai_agents._next_run_after(t.schedule_cron, t.timezone, rescued_at) END,
               completed_at = CASE WHEN e.retry THEN NULL ELSE rescued_at END,
               error_message = e.error,
               locked_by = NULL,
               lease_expires_at = NULL
          FROM unnest(expired.ids, expired.owners, expired.retry, expired.errors) AS e(id, organization_id, retry, error)
         WHERE t.organization_id = ANY (expired.owners) AND t.organization_id = e.organization_id AND t.id = e.id
        RETURNING t.*
    )
    INSERT INTO ai_agents.ai_agent_activity_log
        (organization_id, agent_id, task_id, action_type, success, attempt, error, details)
    SELECT u.organization_id, u.agent_id, u.id, 'lease_expired', false, u.attempts, u.error_message,
           jsonb_build_object('will_retry', u.status = 'pending', 'fencing_token', u.fencing_token,
                              'max_attempts', u.max_attempts)
      FROM updated u;
    RETURN cardinality(expired.ids);
END
$$;

-- Deletes finished one-shot tasks and activity older than older_than, at most batch_size rows
-- of each per call, so that no call holds many locks or writes much WAL. Returns the number of
-- rows deleted; call again until it returns 0.
-- organizations: prune only theirs (NULL: every organization's); under Citus, those of one
-- shard, as for claim_due_tasks (each node's worker prunes its own shards).
DROP FUNCTION IF EXISTS ai_agents.prune_history(interval, integer);
CREATE OR REPLACE FUNCTION ai_agents.prune_history(older_than interval, batch_size integer DEFAULT 1000,
                                                   organizations uuid[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tasks_deleted bigint;
    activity_deleted bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval, got %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1, got %', coalesce(batch_size::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    PERFORM ai_agents._check_claim_scope(organizations);
    -- What pruned activity says about LLM usage is kept per hour, for reports that look
    -- further back than the history is kept.
    WITH doomed AS (
        SELECT l.organization_id, l.id FROM ai_agents.ai_agent_activity_log l
         WHERE l.created_at < now() - older_than
           AND (organizations IS NULL OR l.organization_id = ANY (organizations))
         ORDER BY l.created_at
         LIMIT batch_size
    ), gone AS (
        DELETE FROM ai_agents.ai_agent_activity_log l USING doomed d
         WHERE l.organization_id = d.organization_id AND l.id = d.id
        RETURNING l.*
    ), rolled_up AS (
        INSERT INTO ai_agents.ai_agent_usage_hourly AS u
            (organization_id, agent_id, provider, model, hour, attempts, succeeded, tokens, cost_usd)
        SELECT g.organization_id, g.agent_id, coalesce(v.provider, 'unknown'),
               coalesce(v.model, g.details ->> 'model', 'unknown'),
               date_trunc('hour', g.created_at, 'UTC'), count(*),
               count(*) FILTER (WHERE g.action_type = 'task_completed'),
               coalesce(sum(g.tokens_used), 0), coalesce(sum(g.cost_usd), 0)
          FROM gone g
          LEFT JOIN ai_agents.ai_agent_versions v
            ON v.organization_id = g.organization_id AND v.id = (g.details ->> 'agent_version_id')::uuid
         WHERE g.action_type IN ('task_completed', 'task_failed')
         GROUP BY 1, 2, 3, 4, 5
        ON CONFLICT ON CONSTRAINT ai_agent_usage_hourly_key DO UPDATE
           SET attempts = u.attempts + excluded.attempts, succeeded = u.succeeded + excluded.succeeded,
               tokens = u.tokens + excluded.tokens, cost_usd = u.cost_usd + excluded.cost_usd
    )
    SELECT count(*) INTO activity_deleted FROM gone;
    WITH doomed AS (
        SELECT t.organization_id, t.id FROM ai_agents.ai_agent_tasks t
         WHERE t.status IN ('completed', 'failed', 'cancelled') AND t.next_run_at IS NULL
           AND t.updated_at < now() - older_than
           AND (organizations IS NULL OR t.organization_id = ANY (organizations))
         ORDER BY t.updated_at
         LIMIT batch_size
           FOR UPDATE SKIP LOCKED
    )
    DELETE FROM ai_agents.ai_agent_tasks t USING doomed d WHERE t.organization_id = d.organization_id AND t.id = d.id;
    GET DIAGNOSTICS tasks_deleted = ROW_COUNT;
    RETURN tasks_deleted + activity_deleted;
END
$$;

-- The deployment guide's monitoring query (Step 5.3), for any period and optionally one
-- organization.
-- PL/pgSQL, not SQL: Citus plans no SQL function with parameters. Planned with the values, one
-- organization's summary names it, so that Citus asks only the node holding it.
CREATE OR REPLACE FUNCTION ai_agents.task_summary(since interval DEFAULT '24 hours', organization_id uuid DEFAULT NULL)
RETURNS TABLE (total_tasks bigint, completed bigint, failed bigint, pending bigint,
               total_tokens bigint, total_cost_usd numeric, avg_execution_time_ms numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT
      COUNT(*),
      COUNT(*) FILTER (WHERE t.status = 'completed'),
      COUNT(*) FILTER (WHERE t.status = 'failed'),
      COUNT(*) FILTER (WHERE t.status = 'pending'),
      SUM(t.tokens_used),
      SUM(t.cost_usd),
      AVG(t.execution_time_ms)
    FROM ai_agents.ai_agent_tasks t
    WHERE t.created_at > NOW() - task_summary.since
      AND (task_summary.organization_id IS NULL OR t.organization_id = task_summary.organization_id);
END
$$;

-- Worker-side functions run LLM calls and spend money: not for PUBLIC.
REVOKE ALL ON FUNCTION ai_agents.claim_due_tasks(text, integer, interval, uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.complete_task(uuid, bigint, text, jsonb, integer, numeric, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.complete_tasks(uuid[], bigint[], text[], jsonb[], integer[], numeric[], integer[], jsonb[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.fail_task(uuid, bigint, text, integer, interval, boolean, integer, numeric, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.heartbeat_task(uuid, bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.rescue_expired_leases(uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents.prune_history(interval, integer, uuid[]) FROM PUBLIC;

-- The functions that take arrays plan generically on one server (see the top of this file).
-- Citus plans no generic plan with parameters, so in a database with Citus they plan each call
-- (docs/distributed.md#statements); distribute() resets them the same way.
CREATE OR REPLACE FUNCTION ai_agents._plan_generically(functions regprocedure[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn regprocedure;
    citus constant boolean := EXISTS (SELECT FROM pg_extension WHERE extname = 'citus');
BEGIN
    FOREACH fn IN ARRAY functions LOOP
        IF citus THEN
            EXECUTE format('ALTER FUNCTION %s RESET plan_cache_mode', fn);
        ELSE
            EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', fn);
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._plan_generically(regprocedure[]) FROM PUBLIC;
SELECT ai_agents._plan_generically(ARRAY[
    'ai_agents.claim_due_tasks(text, integer, interval, uuid[])',
    'ai_agents._log_task_events(ai_agents.ai_agent_tasks[], text, boolean, text[], jsonb[], boolean)',
    'ai_agents._notify_task_events(ai_agents.ai_agent_tasks[])',
    'ai_agents.complete_tasks(uuid[], bigint[], text[], jsonb[], integer[], numeric[], integer[], jsonb[])'
]::regprocedure[]);
