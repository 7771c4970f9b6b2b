-- Reports (docs/reports.md): figures computed from tasks and activity for an organization
-- and a period, a Markdown rendering a gym owner reads, and a narrative written by the agent's
-- LLM through the task queue. Every function pins search_path: they are not on the hot path.
-- The functions that read tenant tables are PL/pgSQL and name the organization in every
-- statement, joins included: under Citus each statement then runs on the node holding it
-- (Citus plans no SQL-language function with parameters; docs/distributed.md#statements).

-- Whether a template query is exactly one SELECT, as PostgreSQL's parser reads it
-- (src/reports/query.rs); a syntax error is raised as such.
CREATE OR REPLACE FUNCTION ai_agents._is_single_select(sql text) RETURNS boolean
LANGUAGE c STABLE STRICT
AS 'MODULE_PATHNAME', 'is_single_select_wrapper';

-- Refuses a template query that is not exactly one SELECT (22023), naming it.
CREATE OR REPLACE FUNCTION ai_agents._run_report_query(sql text, organization uuid,
                                                       period_start timestamptz, period_end timestamptz)
RETURNS jsonb
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'run_report_query_wrapper';
REVOKE ALL ON FUNCTION ai_agents._run_report_query(text, uuid, timestamptz, timestamptz) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ai_agents._check_report_query(name text, sql text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    single boolean;
BEGIN
    BEGIN
        single := ai_agents._is_single_select(sql);
    EXCEPTION WHEN syntax_error THEN
        RAISE EXCEPTION 'report query "%" is not valid SQL: %', name, SQLERRM USING ERRCODE = '22023';
    END;
    IF NOT single THEN
        RAISE EXCEPTION 'report query "%" must be exactly one SELECT statement', name USING ERRCODE = '22023';
    END IF;
END
$$;

-- Templates are checked when written, so that a bad one fails where it is made, not in the
-- worker at 07:00 on a Monday.
CREATE OR REPLACE FUNCTION ai_agents._validate_report_template() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unknown text;
    bad_query text;
BEGIN
    SELECT s INTO unknown FROM unnest(NEW.sections) s
     WHERE s IS NULL OR s NOT IN ('tasks_by_status', 'conversations', 'success_rate', 'latency', 'failures',
                                  'usage', 'per_agent', 'per_model', 'previous_period', 'trend', 'forecast',
                                  'budget')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown report section "%"', coalesce(unknown, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Sections: tasks_by_status, conversations, success_rate, latency, failures, usage, per_agent, per_model, previous_period, trend, forecast, budget.';
    END IF;
    SELECT q.key INTO bad_query FROM jsonb_each(NEW.queries) q
     WHERE jsonb_typeof(q.value) <> 'string' OR btrim(q.value #>> '{}') = '' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'report query "%" must be the text of a SELECT', bad_query USING ERRCODE = '22023';
    END IF;
    PERFORM ai_agents._check_report_query(q.key, q.value #>> '{}') FROM jsonb_each(NEW.queries) q;
    IF NEW.schedule_cron IS NOT NULL THEN
        PERFORM ai_agents.validate_schedule(NEW.schedule_cron, NEW.timezone);
    ELSE
        PERFORM now() AT TIME ZONE NEW.timezone;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
        -- A changed schedule starts from now unless the same statement says otherwise.
        IF (NEW.schedule_cron, NEW.timezone, NEW.period, NEW.is_active)
               IS DISTINCT FROM (OLD.schedule_cron, OLD.timezone, OLD.period, OLD.is_active)
           AND NEW.schedule_starts_at = OLD.schedule_starts_at THEN
            NEW.schedule_starts_at := now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_report_templates_validate
    BEFORE INSERT OR UPDATE ON ai_agents.ai_agent_report_templates
    FOR EACH ROW EXECUTE FUNCTION ai_agents._validate_report_template();

-- The period containing `anchor` (back = 0) and the `back` periods before it, as the template's
-- time zone sees weeks (from Monday) and months: a week of a daylight-saving change is 167 or
-- 169 hours long.
CREATE OR REPLACE FUNCTION ai_agents._report_periods(period text, timezone text, anchor timestamptz, back integer)
RETURNS TABLE (periods_back integer, period_start timestamptz, period_end timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k,
           (date_trunc($1, $3, $2) AT TIME ZONE $2 - k * ('1 ' || $1)::interval) AT TIME ZONE $2,
           (date_trunc($1, $3, $2) AT TIME ZONE $2 - (k - 1) * ('1 ' || $1)::interval) AT TIME ZONE $2
      FROM generate_series(0, $4) k
$$;

-- Attempts and events of one window, from the activity log: outcomes, latency, failures.
CREATE OR REPLACE FUNCTION ai_agents._report_window(org uuid, agent uuid, from_ts timestamptz, to_ts timestamptz)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
        'attempts', count(*) FILTER (WHERE l.run),
        'succeeded', count(*) FILTER (WHERE l.action_type = 'task_completed'),
        'failed_attempts', count(*) FILTER (WHERE l.action_type = 'task_failed'),
        'retried', count(*) FILTER (WHERE l.action_type = 'task_failed' AND l.will_retry),
        'given_up', count(*) FILTER (WHERE l.action_type = 'task_failed' AND NOT l.will_retry),
        'tasks_handled', count(DISTINCT l.task_id) FILTER (WHERE l.run),
        -- Of the runs that ended (succeeded, or failed with no retry left), the share that
        -- succeeded: a retry that later succeeds is not a failure to the gym owner.
        'success_rate', round(count(*) FILTER (WHERE l.action_type = 'task_completed')::numeric
                              / nullif(count(*) FILTER (WHERE l.action_type = 'task_completed'
                                                          OR (l.action_type = 'task_failed' AND NOT l.will_retry)), 0), 4),
        'latency_samples', count(l.execution_time_ms) FILTER (WHERE l.action_type = 'task_completed'),
        'latency_p50_ms', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY l.execution_time_ms)
                                 FILTER (WHERE l.action_type = 'task_completed'))::numeric, 1),
        'latency_p95_ms', round((percentile_cont(0.95) WITHIN GROUP (ORDER BY l.execution_time_ms)
                                 FILTER (WHERE l.action_type = 'task_completed'))::numeric, 1),
        'rate_limited', count(*) FILTER (WHERE l.action_type = 'rate_limited'),
        'cancelled', count(*) FILTER (WHERE l.action_type = 'task_cancelled'))
      FROM (SELECT a.action_type, a.task_id, a.execution_time_ms,
                   a.action_type IN ('task_completed', 'task_failed') AS run,
                   coalesce((a.details ->> 'will_retry')::boolean, false) AS will_retry
              FROM ai_agents.ai_agent_activity_log a
             WHERE a.organization_id = org AND (agent IS NULL OR a.agent_id = agent)
               AND a.created_at >= from_ts AND a.created_at < to_ts) l);
END
$$;

-- LLM usage of one window per agent and model: the activity log where it is still kept, the
-- hourly roll-up of what pruning took out of it.
CREATE OR REPLACE FUNCTION ai_agents._report_usage(org uuid, agent uuid, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (agent_id uuid, provider text, model text, attempts bigint, succeeded bigint,
               tokens bigint, cost_usd numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT u.agent_id, u.provider, u.model, sum(u.attempts)::bigint, sum(u.succeeded)::bigint,
           sum(u.tokens)::bigint, sum(u.cost_usd)
      FROM (SELECT l.agent_id, coalesce(v.provider, 'unknown') AS provider,
                   coalesce(v.model, l.details ->> 'model', 'unknown') AS model, 1 AS attempts,
                   (l.action_type = 'task_completed')::integer AS succeeded,
                   coalesce(l.tokens_used, 0) AS tokens, coalesce(l.cost_usd, 0) AS cost_usd
              FROM ai_agents.ai_agent_activity_log l
              LEFT JOIN ai_agents.ai_agent_versions v
                ON v.organization_id = l.organization_id AND v.id = (l.details ->> 'agent_version_id')::uuid
             WHERE l.organization_id = org AND (agent IS NULL OR l.agent_id = agent)
               AND l.created_at >= from_ts AND l.created_at < to_ts
               AND l.action_type IN ('task_completed', 'task_failed')
            UNION ALL
            SELECT h.agent_id, h.provider, h.model, h.attempts, h.succeeded, h.tokens, h.cost_usd
              FROM ai_agents.ai_agent_usage_hourly h
             WHERE h.organization_id = org AND (agent IS NULL OR h.agent_id = agent)
               AND h.hour >= from_ts AND h.hour < to_ts) u
     GROUP BY 1, 2, 3;
END
$$;

CREATE OR REPLACE FUNCTION ai_agents._report_usage_totals(org uuid, agent uuid, from_ts timestamptz, to_ts timestamptz)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object('attempts', coalesce(sum(u.attempts), 0), 'succeeded', coalesce(sum(u.succeeded), 0),
                              'tokens', coalesce(sum(u.tokens), 0), 'cost_usd', coalesce(sum(u.cost_usd), 0))
      FROM ai_agents._report_usage($1, $2, $3, $4) u
$$;

-- Runs the template's own queries with $1 = organization id, $2 = period start, $3 = period
-- end, each as a sub-select (exactly one SELECT, checked again here for templates written
-- before the check) in a read-only subtransaction, as the role ai_agents_report_reader
-- (_run_report_query): whoever builds the report (the worker is a superuser), the queries read
-- only the report organization's rows of the extension's tables, through row-level security,
-- and each stops after ai_agents.report_query_timeout. The subtransaction always ends by
-- rolling back - that restores read-write for storing the report - so the rows are carried
-- out in a variable.
CREATE OR REPLACE FUNCTION ai_agents._run_report_queries(template_name text, queries jsonb, org uuid,
                                             from_ts timestamptz, to_ts timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    results jsonb := '{}';
    query record;
    query_rows jsonb;
    running text;
BEGIN
    PERFORM ai_agents._check_report_query(q.key, q.value #>> '{}') FROM jsonb_each(queries) q;
    BEGIN
        PERFORM set_config('transaction_read_only', 'on', true);
        PERFORM set_config('ai_agents_report.organization', org::text, true);
        FOR query IN SELECT q.key, q.value #>> '{}' AS sql FROM jsonb_each(queries) q ORDER BY q.key LOOP
            running := query.key;
            query_rows := ai_agents._run_report_query(query.sql, org, from_ts, to_ts);
            results := results || jsonb_build_object(query.key, query_rows);
        END LOOP;
        running := NULL;
        RAISE EXCEPTION 'report queries done' USING ERRCODE = 'AIQ00';
    -- A query cut off by its timeout fails its report like any other error.
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        IF SQLSTATE <> 'AIQ00' THEN
            RAISE EXCEPTION 'report template "%": query "%" failed: %', template_name, running, SQLERRM
                USING ERRCODE = SQLSTATE,
                      HINT = 'Template queries are read-only SELECTs run as ai_agents_report_reader, which reads the report organization''s rows of the ai_agents tables; search_path is pg_catalog, so qualify table names.';
        END IF;
    END;
    RETURN results;
END
$$;

-- The budgets of a report's scope (docs/budgets.md): an organization's report shows every
-- budget of the organization, an agent's its own and its organization's. Each with what the
-- window [from_ts, to_ts) allows (the limit pro rata: a month's budget in a month's report is
-- its limit, a day's budget in a week's report seven times it) and what its scope (the
-- organization, or the agent) spent in the window.
CREATE OR REPLACE FUNCTION ai_agents._report_budgets(org uuid, agent uuid, from_ts timestamptz, to_ts timestamptz)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b record;
    spent numeric;
    budgets jsonb := '[]';
BEGIN
    -- The spend of each is asked in a statement of its own: called from a query over the
    -- budgets, Citus would run the call on the budgets' shard.
    FOR b IN
        SELECT bb.id, bb.agent_id, a.name, bb.period, bb.limit_usd,
               round(bb.limit_usd * extract(epoch FROM to_ts - from_ts)
                     / extract(epoch FROM (s.start AT TIME ZONE bb.timezone + ('1 ' || bb.period)::interval)
                                          AT TIME ZONE bb.timezone - s.start), 12) AS allowance
          FROM ai_agents.ai_agent_budgets bb
          LEFT JOIN ai_agents.ai_agents a ON a.organization_id = bb.organization_id AND a.id = bb.agent_id
         CROSS JOIN LATERAL (SELECT date_trunc(bb.period, from_ts, bb.timezone) AS start) s
         WHERE bb.organization_id = org AND (agent IS NULL OR bb.agent_id IS NULL OR bb.agent_id = agent)
         ORDER BY bb.agent_id NULLS FIRST, a.name
    LOOP
        SELECT coalesce(sum(r.cost_usd), 0) INTO spent
          FROM ai_agents._report_usage(org, b.agent_id, from_ts, to_ts) r;
        budgets := budgets || jsonb_build_array(jsonb_build_object(
            'budget_id', b.id, 'agent_id', b.agent_id, 'name', b.name, 'period', b.period,
            'limit_usd', b.limit_usd, 'allowance_usd', b.allowance, 'spent_usd', spent,
            'share', round(spent / nullif(b.allowance, 0), 4)));
    END LOOP;
    RETURN budgets;
END
$$;

-- Of those, the one of the report's own scope: the agent's, else its organization's (NULL:
-- none).
CREATE OR REPLACE FUNCTION ai_agents._report_scope_budget(org uuid, agent uuid, from_ts timestamptz, to_ts timestamptz)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT b.e
      FROM jsonb_array_elements(ai_agents._report_budgets(org, agent, from_ts, to_ts)) b(e)
     WHERE (b.e ->> 'agent_id') IS NULL OR (b.e ->> 'agent_id') = agent::text
     ORDER BY (b.e ->> 'agent_id') IS NULL
     LIMIT 1
$$;

-- The report's figures, section by section, as JSON; the Markdown is rendered from it.
CREATE OR REPLACE FUNCTION ai_agents._report_data(t ai_agents.ai_agent_report_templates, org uuid, agent uuid,
                                      owner ai_agents.ai_agents, from_ts timestamptz, to_ts timestamptz)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tz text := t.timezone;
    first_day date := (from_ts AT TIME ZONE tz)::date;
    last_day date := ((to_ts AT TIME ZONE tz) - interval '1 microsecond')::date;
    label text;
    previous_start timestamptz;
    trend jsonb;
    counted jsonb;
    agents jsonb;
    data jsonb;
BEGIN
    label := CASE
        WHEN t.period = 'month' AND from_ts = date_trunc('month', from_ts, tz)
             AND to_ts = ((from_ts AT TIME ZONE tz) + interval '1 month') AT TIME ZONE tz
            THEN to_char(from_ts AT TIME ZONE tz, 'FMMonth YYYY')
        WHEN t.period = 'week' AND last_day = first_day + 6 THEN 'week of ' || first_day
        ELSE first_day || ' to ' || last_day END;
    data := jsonb_build_object(
        'title', t.name || ' - ' || label,
        'template', t.name, 'report_type', t.report_type, 'scope', t.scope,
        'sections', to_jsonb(t.sections), 'organization_id', org,
        'agent', CASE WHEN owner.id IS NOT NULL THEN
                     jsonb_build_object('id', owner.id, 'name', owner.name, 'agent_type', owner.agent_type) END,
        'period', jsonb_build_object('kind', t.period, 'label', label, 'start', from_ts, 'end', to_ts,
                                     'timezone', tz, 'first_day', first_day, 'last_day', last_day),
        'summary', ai_agents._report_window(org, agent, from_ts, to_ts),
        'usage', ai_agents._report_usage_totals(org, agent, from_ts, to_ts));
    IF 'tasks_by_status' = ANY (t.sections) THEN
        SELECT coalesce(jsonb_object_agg(n.status, n.tasks), '{}') INTO counted
          FROM (SELECT tk.status, count(*) AS tasks FROM ai_agents.ai_agent_tasks tk
                 WHERE tk.organization_id = org AND (agent IS NULL OR tk.agent_id = agent)
                   AND tk.created_at >= from_ts AND tk.created_at < to_ts
                 GROUP BY tk.status) n;
        data := data || jsonb_build_object('tasks_by_status', (
            SELECT jsonb_object_agg(s.status, coalesce(counted -> s.status, '0'))
              FROM unnest(ARRAY['pending', 'queued', 'running', 'completed', 'failed', 'cancelled']) s(status)));
    END IF;
    IF 'conversations' = ANY (t.sections) THEN
        data := data || jsonb_build_object('conversations', (
            SELECT jsonb_build_object('conversations', count(DISTINCT m.conversation_id),
                                      'user_messages', count(*) FILTER (WHERE m.role = 'user'),
                                      'assistant_messages', count(*) FILTER (WHERE m.role = 'assistant'))
              FROM ai_agents.ai_agent_messages m
              JOIN ai_agents.ai_agent_conversations c
                ON c.organization_id = m.organization_id AND c.id = m.conversation_id
             WHERE m.organization_id = org AND (agent IS NULL OR c.agent_id = agent)
               AND m.created_at >= from_ts AND m.created_at < to_ts));
    END IF;
    IF 'failures' = ANY (t.sections) THEN
        data := data || jsonb_build_object('failures', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('error', f.error, 'count', f.n) ORDER BY f.n DESC, f.error), '[]')
              FROM (SELECT left(coalesce(a.error, '(no message)'), 200) AS error, count(*) AS n
                      FROM ai_agents.ai_agent_activity_log a
                     WHERE a.organization_id = org AND (agent IS NULL OR a.agent_id = agent)
                       AND a.created_at >= from_ts AND a.created_at < to_ts AND a.action_type = 'task_failed'
                     GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5) f));
    END IF;
    IF 'per_agent' = ANY (t.sections) THEN
        -- The agents first, by id: a join of the usage function with the agents would run on
        -- the agents' shard under Citus, and the function's own queries cannot run there.
        SELECT coalesce(jsonb_object_agg(a.id, jsonb_build_object('name', a.name, 'agent_type', a.agent_type)), '{}')
          INTO agents
          FROM ai_agents.ai_agents a WHERE a.organization_id = org;
        data := data || jsonb_build_object('per_agent', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('agent_id', u.agent_id,
                                                         'name', coalesce(agents -> u.agent_id::text ->> 'name', '(deleted agent)'),
                                                         'agent_type', agents -> u.agent_id::text ->> 'agent_type',
                                                         'attempts', u.attempts, 'succeeded', u.succeeded,
                                                         'tokens', u.tokens, 'cost_usd', u.cost_usd)
                                      ORDER BY u.cost_usd DESC, u.tokens DESC, agents -> u.agent_id::text ->> 'name'), '[]')
              FROM (SELECT r.agent_id, sum(r.attempts) AS attempts, sum(r.succeeded) AS succeeded,
                           sum(r.tokens) AS tokens, sum(r.cost_usd) AS cost_usd
                      FROM ai_agents._report_usage(org, agent, from_ts, to_ts) r GROUP BY 1) u));
    END IF;
    IF 'per_model' = ANY (t.sections) THEN
        data := data || jsonb_build_object('per_model', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('provider', u.provider, 'model', u.model, 'attempts', u.attempts,
                                                         'tokens', u.tokens, 'cost_usd', u.cost_usd)
                                      ORDER BY u.cost_usd DESC, u.tokens DESC, u.provider, u.model), '[]')
              FROM (SELECT r.provider, r.model, sum(r.attempts) AS attempts, sum(r.tokens) AS tokens,
                           sum(r.cost_usd) AS cost_usd
                      FROM ai_agents._report_usage(org, agent, from_ts, to_ts) r GROUP BY 1, 2) u));
    END IF;
    IF 'previous_period' = ANY (t.sections) THEN
        previous_start := CASE WHEN t.period = 'month'
                               THEN ((from_ts AT TIME ZONE tz) - interval '1 month') AT TIME ZONE tz
                               ELSE from_ts - (to_ts - from_ts) END;
        data := data || jsonb_build_object('previous_period', jsonb_build_object(
            'start', previous_start, 'end', from_ts,
            'summary', ai_agents._report_window(org, agent, previous_start, from_ts),
            'usage', ai_agents._report_usage_totals(org, agent, previous_start, from_ts)));
    END IF;
    IF t.sections && ARRAY['trend', 'forecast'] THEN
        -- The report's own period and the five before it, oldest first.
        SELECT jsonb_agg(jsonb_build_object('start', p.period_start, 'end', p.period_end,
                                            'label', CASE WHEN t.period = 'month'
                                                          THEN to_char(p.period_start AT TIME ZONE tz, 'FMMonth YYYY')
                                                          ELSE 'week of ' || (p.period_start AT TIME ZONE tz)::date END)
                         || ai_agents._report_usage_totals(org, agent, p.period_start, p.period_end)
                         ORDER BY p.period_start)
          INTO trend
          FROM ai_agents._report_periods(t.period, tz, from_ts, 5) p;
        IF 'trend' = ANY (t.sections) THEN
            data := data || jsonb_build_object('trend', trend);
        END IF;
        IF 'forecast' = ANY (t.sections) THEN
            -- Weighed against the scope's own budget (an agent's, else its organization's):
            -- this period's spend, and the forecast against what it allows next period.
            data := data || jsonb_build_object('forecast', ai_agents._forecast_spend(
                ARRAY(SELECT (x.e ->> 'cost_usd')::float8
                        FROM jsonb_array_elements(trend) WITH ORDINALITY x(e, i) ORDER BY x.i), t.period)
                || jsonb_strip_nulls(jsonb_build_object(
                       'budget', ai_agents._report_scope_budget(org, agent, from_ts, to_ts),
                       'budget_usd', ai_agents._report_scope_budget(org, agent, to_ts,
                                         CASE WHEN t.period = 'month'
                                              THEN ((to_ts AT TIME ZONE tz) + interval '1 month') AT TIME ZONE tz
                                              ELSE to_ts + (to_ts - from_ts) END) -> 'allowance_usd')));
        END IF;
    END IF;
    IF 'budget' = ANY (t.sections) THEN
        data := data || jsonb_build_object('budget', ai_agents._report_budgets(org, agent, from_ts, to_ts));
    END IF;
    IF t.queries <> '{}' THEN
        data := data || jsonb_build_object('queries', ai_agents._run_report_queries(t.name, t.queries, org, from_ts, to_ts));
    END IF;
    RETURN data;
END
$$;

-- Builds (or rebuilds: one report per template, organization, agent and period) a report and,
-- when the template has a narrative prompt, asks the agent's LLM for its narrative through
-- the task queue. `template` is a template's name or id; the organization's own template of
-- that name wins over the built-in one. With agent_id the report belongs to that agent and,
-- for a template of scope 'agent', covers only it.
CREATE OR REPLACE FUNCTION ai_agents.build_report(template text, organization_id uuid, period_start timestamptz,
                                       period_end timestamptz, agent_id uuid DEFAULT NULL)
RETURNS ai_agents.ai_agent_reports
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    org uuid := organization_id;
    t ai_agents.ai_agent_report_templates;
    owner ai_agents.ai_agents;
    narrator ai_agents.ai_agents;
    data jsonb;
    previous_task uuid;
    r ai_agents.ai_agent_reports;
    -- A value, not a call: Citus takes only immutable functions in ON CONFLICT DO UPDATE.
    built_at constant timestamptz := now();
BEGIN
    IF template IS NULL OR org IS NULL OR period_start IS NULL OR period_end IS NULL THEN
        RAISE EXCEPTION 'build_report needs a template, an organization_id, a period_start and a period_end'
            USING ERRCODE = '22004';
    END IF;
    IF period_end <= period_start THEN
        RAISE EXCEPTION 'period_end (%) must be after period_start (%)', period_end, period_start
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO t FROM ai_agents.ai_agent_report_templates tt
     WHERE (tt.name = template OR tt.id::text = lower(template))
       AND (tt.organization_id IS NULL OR tt.organization_id = org)
     ORDER BY tt.organization_id NULLS LAST
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'report template "%" does not exist for organization %', template, org
            USING ERRCODE = '42704';
    END IF;
    IF agent_id IS NOT NULL THEN
        SELECT * INTO owner FROM ai_agents.ai_agents a WHERE a.id = agent_id AND a.organization_id = org;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'agent % does not exist in organization %', agent_id, org USING ERRCODE = '22023';
        END IF;
        narrator := owner;
    ELSE
        SELECT * INTO narrator FROM ai_agents.ai_agents a
         WHERE a.organization_id = org AND a.is_active AND (t.agent_type IS NULL OR a.agent_type = t.agent_type)
         ORDER BY a.created_at, a.id
         LIMIT 1;
    END IF;
    data := ai_agents._report_data(t, org, CASE WHEN t.scope = 'agent' THEN agent_id END, owner,
                                  period_start, period_end);
    SELECT rr.narrative_task_id INTO previous_task FROM ai_agents.ai_agent_reports rr
     WHERE rr.template_id = t.id AND rr.organization_id = org AND rr.agent_id IS NOT DISTINCT FROM build_report.agent_id
       AND rr.period_start = build_report.period_start AND rr.period_end = build_report.period_end;
    INSERT INTO ai_agents.ai_agent_reports AS rr
        (organization_id, agent_id, template_id, report_type, title, period_start, period_end, data,
         narrative_status)
    VALUES (org, agent_id, t.id, t.report_type, data ->> 'title', period_start, period_end, data,
            CASE WHEN t.narrative_prompt IS NULL THEN 'not_requested' ELSE 'pending' END)
    ON CONFLICT ON CONSTRAINT ai_agent_reports_period_key DO UPDATE
       SET report_type = excluded.report_type, title = excluded.title, data = excluded.data,
           narrative = NULL, narrative_status = excluded.narrative_status, narrative_error = NULL,
           narrative_task_id = NULL, status = 'ready', error = NULL, updated_at = built_at
    RETURNING * INTO r;
    -- The narrative of the replaced build would describe old figures.
    IF EXISTS (SELECT FROM ai_agents.ai_agent_tasks tk
                WHERE tk.organization_id = org AND tk.id = previous_task
                  AND tk.status IN ('pending', 'queued', 'running')) THEN
        PERFORM ai_agents.cancel_task(previous_task, 'report rebuilt');
    END IF;
    IF t.narrative_prompt IS NOT NULL THEN
        IF narrator.id IS NULL THEN
            r.narrative_status := 'missing';
            r.narrative_error := 'no active ' || coalesce(t.agent_type || ' ', '') || 'agent in the organization to write it';
        ELSE
            BEGIN
                r.narrative_task_id := (ai_agents.enqueue_task(narrator.id, 'Narrative of the report ' || r.title,
                    description => t.narrative_prompt || E'\n\n'
                                   || ai_agents._render_report_markdown(data, NULL, 'not_requested', NULL),
                    input => jsonb_build_object('report_id', r.id),
                    task_type => 'report')).id;
            EXCEPTION WHEN OTHERS THEN
                r.narrative_status := 'missing';
                r.narrative_error := 'the narrative could not be requested: ' || SQLERRM;
            END;
        END IF;
    END IF;
    r.markdown := ai_agents._render_report_markdown(r.data, NULL, r.narrative_status, r.narrative_error);
    UPDATE ai_agents.ai_agent_reports rr
       SET markdown = r.markdown, narrative_status = r.narrative_status, narrative_error = r.narrative_error,
           narrative_task_id = r.narrative_task_id
     WHERE rr.organization_id = org AND rr.id = r.id
    RETURNING * INTO r;
    RETURN r;
END
$$;

-- The narrative task's outcome goes into its report: the text when it completed, the reason
-- when it failed for good or was cancelled - the report keeps its figures either way.
CREATE OR REPLACE FUNCTION ai_agents._store_report_narrative() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    text_written text := CASE WHEN NEW.status = 'completed' THEN NEW.output END;
    state text := CASE WHEN NEW.status = 'completed' THEN 'written' ELSE 'missing' END;
    reason text := CASE NEW.status
        WHEN 'completed' THEN NULL
        WHEN 'cancelled' THEN 'the narrative task was cancelled'
        ELSE 'the LLM call failed: ' || coalesce(NEW.error_message, 'no error message') END;
BEGIN
    UPDATE ai_agents.ai_agent_reports r
       SET narrative = text_written, narrative_status = state, narrative_error = reason,
           markdown = ai_agents._render_report_markdown(r.data, text_written, state, reason),
           updated_at = now()
     WHERE r.organization_id = NEW.organization_id AND r.narrative_task_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_tasks_report_narrative
    AFTER UPDATE OF status ON ai_agents.ai_agent_tasks
    FOR EACH ROW
    WHEN (NEW.task_type = 'report' AND NEW.status IN ('completed', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION ai_agents._store_report_narrative();

-- Scheduled generation, called by the worker: every finished period of a scheduled template
-- whose build time (the first fire of its cron at or after the period's end) has come gets
-- its report, once, for each agent of the template's agent_type (scope 'agent') or once per
-- organization, owned by its first such agent (scope 'organization'). The reports themselves
-- are the record of what was built, so a restart or a missed period (up to twelve back) only
-- builds what is missing, and periods that ended before the schedule or the agent existed are
-- not back-filled. A failed build is stored as a failed report (with its error) and logged.
-- At most max_reports are built (NULL: all), the oldest periods first. Returns when the next
-- build falls due (NULL: no schedule; `now` when more are due than were built).
CREATE OR REPLACE FUNCTION ai_agents.build_due_reports(now timestamptz DEFAULT now(), max_reports integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    due record;
    next_due timestamptz;
    built integer := 0;
BEGIN
    IF max_reports < 1 THEN
        RAISE EXCEPTION 'max_reports must be at least 1, got %', max_reports USING ERRCODE = '22023';
    END IF;
    -- Under Citus the coordinator builds every organization's reports (its queries reach every
    -- node), so that no two nodes' workers build the same report at once; the others build none.
    IF ai_agents._on_citus_worker() THEN
        RETURN NULL;
    END IF;
    FOR due IN
        WITH scheduled AS (
            SELECT * FROM ai_agents.ai_agent_report_templates t
             WHERE t.is_active AND t.schedule_cron IS NOT NULL
        ), periods AS (
            SELECT t.id AS template_id, p.period_start, p.period_end
              FROM scheduled t, ai_agents._report_periods(t.period, t.timezone, now, 12) p
             WHERE p.periods_back > 0 AND p.period_end > t.schedule_starts_at
               AND ai_agents.next_run_time(t.schedule_cron, t.timezone, p.period_end - interval '1 microsecond') <= now
        ), subjects AS (
            SELECT DISTINCT ON (t.id, a.organization_id, CASE WHEN t.scope = 'agent' THEN a.id END)
                   t.id AS template_id, t.name, a.organization_id, a.id AS agent_id, a.created_at
              FROM scheduled t
              JOIN ai_agents.ai_agents a
                ON a.is_active AND (t.agent_type IS NULL OR a.agent_type = t.agent_type)
               AND (t.organization_id IS NULL OR a.organization_id = t.organization_id)
             ORDER BY t.id, a.organization_id, CASE WHEN t.scope = 'agent' THEN a.id END, a.created_at, a.id
        )
        SELECT s.template_id, s.name, s.organization_id, s.agent_id, p.period_start, p.period_end
          FROM subjects s JOIN periods p ON p.template_id = s.template_id AND p.period_end > s.created_at
         WHERE NOT EXISTS (SELECT FROM ai_agents.ai_agent_reports r
                            WHERE r.template_id = s.template_id AND r.organization_id = s.organization_id
                              AND r.agent_id = s.agent_id AND r.period_start = p.period_start
                              AND r.period_end = p.period_end)
         ORDER BY p.period_start, s.organization_id, s.agent_id
    LOOP
        -- A batch at a time (the worker's turn): more are due, so the next build is now.
        IF built >= max_reports THEN
            RETURN now;
        END IF;
        built := built + 1;
        BEGIN
            PERFORM ai_agents.build_report(due.template_id::text, due.organization_id, due.period_start,
                                           due.period_end, due.agent_id);
        -- A template query cut off by its timeout fails that report only.
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            INSERT INTO ai_agents.ai_agent_reports
                (organization_id, agent_id, template_id, report_type, title, period_start, period_end,
                 status, error, markdown)
            SELECT due.organization_id, due.agent_id, t.id, t.report_type, t.name || ' (failed)',
                   due.period_start, due.period_end, 'failed', SQLERRM,
                   '# ' || t.name || E'\n\nThis report could not be built: ' || SQLERRM
              FROM ai_agents.ai_agent_report_templates t WHERE t.id = due.template_id;
            INSERT INTO ai_agents.ai_agent_activity_log
                (organization_id, agent_id, action_type, success, error, details)
            VALUES (due.organization_id, due.agent_id, 'report_failed', false, SQLERRM,
                    jsonb_build_object('template', due.name, 'period_start', due.period_start,
                                       'period_end', due.period_end, 'sqlstate', SQLSTATE));
        END;
    END LOOP;
    -- The next build: of the period that ended last, if its build time is still ahead, or of
    -- the period running now.
    SELECT min(fire) INTO next_due
      FROM (SELECT ai_agents.next_run_time(t.schedule_cron, t.timezone, p.period_end - interval '1 microsecond') AS fire
              FROM ai_agents.ai_agent_report_templates t, ai_agents._report_periods(t.period, t.timezone, now, 1) p
             WHERE t.is_active AND t.schedule_cron IS NOT NULL) f
     WHERE fire > now;
    RETURN next_due;
END
$$;

-- The newest report of an agent (by the period it covers), optionally of one type, as the
-- deployment guide names it.
CREATE OR REPLACE FUNCTION ai_agents.get_latest_agent_report(agent_id uuid, report_type text DEFAULT NULL)
RETURNS ai_agents.ai_agent_reports
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    latest ai_agents.ai_agent_reports;
BEGIN
    SELECT r.* INTO latest FROM ai_agents.ai_agent_reports r
     WHERE r.agent_id = get_latest_agent_report.agent_id
       AND (get_latest_agent_report.report_type IS NULL OR r.report_type = get_latest_agent_report.report_type)
     ORDER BY r.period_end DESC, r.created_at DESC, r.id DESC
     LIMIT 1;
    RETURN latest;
END
$$;

REVOKE ALL ON FUNCTION ai_agents.build_due_reports(timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ai_agents._run_report_queries(text, jsonb, uuid, timestamptz, timestamptz) FROM PUBLIC;
