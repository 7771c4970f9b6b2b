-- Budgets (docs/budgets.md): USD per calendar day or month, per organization or agent. A
-- claim reserves each call's most expensive outcome against every budget that applies
-- (src/fair_claim asks _budget_room, then _budget_reserve); the call's end settles it to the
-- recorded cost (_budget_settle, from a trigger on the task row). So the settled spend of a
-- period never exceeds its budget, and what does not fit stays due until the next period or
-- a raised budget.

-- The time zone must be one PostgreSQL knows, or every claim of the organization would fail.
CREATE OR REPLACE FUNCTION ai_agents._validate_budget() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    BEGIN
        PERFORM now() AT TIME ZONE NEW.timezone;
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'unknown time zone %', quote_literal(NEW.timezone) USING ERRCODE = '22023';
    END;
    NEW.thresholds := ARRAY(SELECT DISTINCT t FROM unnest(NEW.thresholds) t ORDER BY t);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_budgets_validate
    BEFORE INSERT OR UPDATE OF timezone, thresholds ON ai_agents.ai_agent_budgets
    FOR EACH ROW EXECUTE FUNCTION ai_agents._validate_budget();

CREATE OR REPLACE TRIGGER ai_agent_budgets_touch
    BEFORE UPDATE ON ai_agents.ai_agent_budgets
    FOR EACH ROW EXECUTE FUNCTION ai_agents._touch_updated_at();

-- A new or raised budget releases what it held back at once: the worker looks again.
CREATE OR REPLACE FUNCTION ai_agents._budget_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ai_agents._wake_worker_at_commit();
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_budgets_wake_worker
    AFTER INSERT OR UPDATE OR DELETE ON ai_agents.ai_agent_budgets
    FOR EACH STATEMENT EXECUTE FUNCTION ai_agents._budget_changed();

-- The budgets of an agent's calls (its organization's and its own) with their periods at
-- `at`: the calendar day or month in the budget's time zone.
CREATE OR REPLACE FUNCTION ai_agents._budgets_of(organization_id uuid, agent_id uuid, at timestamptz)
RETURNS TABLE (budget_id uuid, budget_agent_id uuid, limit_usd numeric, thresholds numeric[],
               period_start timestamptz, period_end timestamptz)
LANGUAGE plpgsql STABLE -- not sql: Citus plans no SQL function with parameters
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT b.id, b.agent_id, b.limit_usd, b.thresholds, s.start,
           (s.start AT TIME ZONE b.timezone + ('1 ' || b.period)::interval) AT TIME ZONE b.timezone
      FROM ai_agents.ai_agent_budgets b
     CROSS JOIN LATERAL (SELECT date_trunc(b.period, $3, b.timezone) AS start) s
     WHERE b.organization_id = $1 AND (b.agent_id IS NULL OR b.agent_id = $2);
END
$$;

-- The room an agent's next calls have under its budgets, locked for this claim: in
-- pico-dollars (10^-12 USD), the least any budget has left (NULL: no budget applies); the
-- budget with the least, whose agent (NULL: the organization's) it holds back, and the
-- seconds until its period ends. busy: another claimer holds a budget; look again soon.
CREATE OR REPLACE FUNCTION ai_agents._budget_room(organization_id uuid, agent_id uuid,
    OUT room_pico bigint, OUT budget_agent_id uuid, OUT seconds_left float8, OUT busy boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    b record;
    p ai_agents.ai_agent_budget_periods;
    left_pico bigint;
BEGIN
    busy := false;
    FOR b IN SELECT * FROM ai_agents._budgets_of(_budget_room.organization_id, _budget_room.agent_id, now()) LOOP
        INSERT INTO ai_agents.ai_agent_budget_periods (organization_id, budget_id, period_start, period_end)
        VALUES (_budget_room.organization_id, b.budget_id, b.period_start, b.period_end)
        ON CONFLICT DO NOTHING;
        SELECT * INTO p FROM ai_agents.ai_agent_budget_periods pp
         WHERE pp.organization_id = _budget_room.organization_id AND pp.budget_id = b.budget_id
           AND pp.period_start = b.period_start
           FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            busy := true;
            RETURN;
        END IF;
        left_pico := floor(least(greatest(b.limit_usd - p.spent_usd - p.reserved_usd, 0), 9000000) * 1e12)::bigint;
        IF room_pico IS NULL OR left_pico < room_pico THEN
            room_pico := left_pico;
            budget_agent_id := b.budget_agent_id;
            seconds_left := extract(epoch FROM b.period_end - now());
        END IF;
    END LOOP;
END
$$;

-- Reserves `pico` pico-dollars against an agent's budgets (locked by _budget_room in this
-- transaction). `next_pico`: the cost of the first call that did not fit (NULL: all did);
-- a budget with less room than that is marked held, the others not.
CREATE OR REPLACE FUNCTION ai_agents._budget_reserve(organization_id uuid, agent_id uuid, pico bigint, next_pico bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    b record;
    -- A value, not now() inside the UPDATE: Citus takes no volatile or stable function in a
    -- CASE of an UPDATE (docs/distributed.md#claiming); for the same reason one UPDATE per
    -- budget rather than one joined with _budgets_of.
    at timestamptz := now();
BEGIN
    FOR b IN SELECT * FROM ai_agents._budgets_of(_budget_reserve.organization_id, _budget_reserve.agent_id, at) LOOP
        UPDATE ai_agents.ai_agent_budget_periods p
           SET reserved_usd = p.reserved_usd + _budget_reserve.pico / 1e12,
               held_since = CASE WHEN _budget_reserve.next_pico IS NOT NULL
                                  AND (b.limit_usd - p.spent_usd - p.reserved_usd - _budget_reserve.pico / 1e12)
                                      < _budget_reserve.next_pico / 1e12
                                 THEN coalesce(p.held_since, at) END
         WHERE p.organization_id = _budget_reserve.organization_id AND p.budget_id = b.budget_id
           AND p.period_start = b.period_start;
    END LOOP;
END
$$;

-- Settles a call's reservation, made when its run started (`at`): the period it was made in
-- gives it back and counts `cost_usd` instead. A threshold the spend reaches for the first
-- time in the period writes one budget_threshold activity row and one notification on the
-- channel ai_agents_budget.
CREATE OR REPLACE FUNCTION ai_agents._budget_settle(organization_id uuid, agent_id uuid, at timestamptz,
                                         reserved_usd numeric, cost_usd numeric)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    b record;
    p ai_agents.ai_agent_budget_periods;
    threshold numeric;
    details jsonb;
BEGIN
    FOR b IN SELECT * FROM ai_agents._budgets_of(_budget_settle.organization_id, _budget_settle.agent_id, _budget_settle.at) LOOP
        UPDATE ai_agents.ai_agent_budget_periods pp
           SET reserved_usd = greatest(pp.reserved_usd - _budget_settle.reserved_usd, 0),
               spent_usd = pp.spent_usd + _budget_settle.cost_usd
         WHERE pp.organization_id = _budget_settle.organization_id AND pp.budget_id = b.budget_id
           AND pp.period_start = b.period_start
        RETURNING pp.* INTO p;
        CONTINUE WHEN NOT FOUND OR _budget_settle.cost_usd <= 0;
        FOR threshold IN SELECT t FROM unnest(b.thresholds) t
                          WHERE p.spent_usd >= t * b.limit_usd AND t <> ALL (p.alerted) ORDER BY t LOOP
            UPDATE ai_agents.ai_agent_budget_periods pp SET alerted = pp.alerted || threshold
             WHERE pp.organization_id = p.organization_id AND pp.budget_id = p.budget_id
               AND pp.period_start = p.period_start;
            details := jsonb_build_object('budget_id', b.budget_id, 'threshold', threshold,
                                          'spent_usd', p.spent_usd, 'limit_usd', b.limit_usd,
                                          'period_start', p.period_start, 'period_end', p.period_end);
            INSERT INTO ai_agents.ai_agent_activity_log
                (organization_id, agent_id, action_type, success, error, details)
            VALUES (_budget_settle.organization_id, b.budget_agent_id, 'budget_threshold', true,
                    format('%s%% of the budget of %s USD spent', round(threshold * 100, 1), b.limit_usd::float8),
                    details);
            PERFORM pg_notify('ai_agents_budget',
                              (details || jsonb_build_object('organization_id', _budget_settle.organization_id,
                                                             'agent_id', b.budget_agent_id))::text);
        END LOOP;
    END LOOP;
END
$$;

-- A run that ends (completed, failed, retried, cancelled, rescued, deleted) settles what its
-- claim reserved: a completion at its recorded cost, anything else at nothing.
CREATE OR REPLACE FUNCTION ai_agents._budget_run_ended() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.status = 'running' THEN
            PERFORM ai_agents._budget_settle(OLD.organization_id, OLD.agent_id, OLD.execution_started_at,
                                             OLD.budget_reserved_usd, 0);
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.status = 'running' AND (NEW.status <> 'running' OR NEW.fencing_token IS DISTINCT FROM OLD.fencing_token) THEN
        PERFORM ai_agents._budget_settle(OLD.organization_id, OLD.agent_id, OLD.execution_started_at,
                                         OLD.budget_reserved_usd,
                                         CASE WHEN NEW.status = 'completed' THEN coalesce(NEW.cost_usd, 0) ELSE 0 END);
        -- A new claim of the task brings its own reservation.
        IF NEW.fencing_token IS NOT DISTINCT FROM OLD.fencing_token THEN
            NEW.budget_reserved_usd := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ai_agent_tasks_budget_run_ended
    BEFORE UPDATE OR DELETE ON ai_agents.ai_agent_tasks
    FOR EACH ROW WHEN (OLD.budget_reserved_usd IS NOT NULL)
    EXECUTE FUNCTION ai_agents._budget_run_ended();

-- Each budget in its current period: the limit, what calls settled and what calls in flight
-- reserved, what is left, the thresholds reached, and since when it holds calls back.
CREATE OR REPLACE VIEW ai_agents.budget_usage WITH (security_invoker = true) AS
    SELECT b.organization_id, b.agent_id, b.id AS budget_id, b.period, b.timezone,
           s.period_start, (s.period_start AT TIME ZONE b.timezone + ('1 ' || b.period)::interval) AT TIME ZONE b.timezone AS period_end,
           b.limit_usd, coalesce(p.spent_usd, 0) AS spent_usd, coalesce(p.reserved_usd, 0) AS reserved_usd,
           greatest(b.limit_usd - coalesce(p.spent_usd, 0) - coalesce(p.reserved_usd, 0), 0) AS remaining_usd,
           coalesce(p.alerted, '{}') AS thresholds_reached, p.held_since
      FROM ai_agents.ai_agent_budgets b
      -- The period in a subquery over the budgets, not a lateral one of its own: Citus pushes
      -- down no subquery without FROM that calls now().
      JOIN (SELECT bb.organization_id, bb.id, date_trunc(bb.period, now(), bb.timezone) AS period_start
              FROM ai_agents.ai_agent_budgets bb) s
        ON s.organization_id = b.organization_id AND s.id = b.id
      LEFT JOIN ai_agents.ai_agent_budget_periods p
        ON p.organization_id = b.organization_id AND p.budget_id = b.id AND p.period_start = s.period_start;

-- Per agent, each budget that applies to it (its organization's and its own) and whether it
-- holds the agent's calls back now, until when.
CREATE OR REPLACE VIEW ai_agents.agent_budget_state WITH (security_invoker = true) AS
    SELECT a.organization_id, a.id AS agent_id, u.budget_id, u.agent_id IS NULL AS organization_budget,
           u.limit_usd, u.spent_usd, u.reserved_usd, u.remaining_usd,
           u.held_since IS NOT NULL AS held, u.held_since,
           CASE WHEN u.held_since IS NOT NULL THEN u.period_end END AS held_until
      FROM ai_agents.ai_agents a
      JOIN ai_agents.budget_usage u
        ON u.organization_id = a.organization_id AND (u.agent_id IS NULL OR u.agent_id = a.id);

