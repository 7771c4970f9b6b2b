-- Agents that act (docs/tools.md): a gym application's own tables under row-level security,
-- three tools over them, the Customer Care agent answering a member's freeze question through
-- them, and the Finance agent's structured forecast. Against the LLM stub, scripts/run queues
-- the replies of scripts/demo-stub.json; with an API key the model decides.
\set ON_ERROR_STOP 1
SET search_path = ai_agents, public;
\pset footer off

\echo '-- 8. The gym app''s tables (members, plans, classes), under row-level security by organization'
CREATE SCHEMA gym;
CREATE TABLE gym.plans (organization_id uuid NOT NULL, name text NOT NULL, monthly_usd numeric NOT NULL,
                        freeze_months_per_year integer NOT NULL, PRIMARY KEY (organization_id, name));
CREATE TABLE gym.members (organization_id uuid NOT NULL, email text NOT NULL, name text NOT NULL,
                          plan text NOT NULL, frozen_until date, PRIMARY KEY (organization_id, email));
CREATE TABLE gym.classes (organization_id uuid NOT NULL, day text NOT NULL, starts_at time NOT NULL,
                          name text NOT NULL, coach text NOT NULL);
CREATE TABLE gym.freezes (organization_id uuid NOT NULL, email text NOT NULL, months integer NOT NULL,
                          tool_call_id text NOT NULL UNIQUE, created_at timestamptz NOT NULL DEFAULT now());
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['plans', 'members', 'classes', 'freezes'] LOOP
        EXECUTE format('ALTER TABLE gym.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY by_organization ON gym.%I USING (organization_id =
                           (current_setting('request.jwt.claims', true)::jsonb ->> 'organization_id')::uuid)$p$, t);
    END LOOP;
END
$$;
GRANT USAGE ON SCHEMA gym TO ai_agents_tool_runner;
GRANT SELECT ON gym.plans, gym.members, gym.classes TO ai_agents_tool_runner;
GRANT UPDATE (frozen_until) ON gym.members TO ai_agents_tool_runner;
GRANT SELECT, INSERT ON gym.freezes TO ai_agents_tool_runner;

-- A member and her plan's freeze rules, by e-mail.
CREATE FUNCTION gym.member_lookup(args jsonb) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT coalesce((SELECT jsonb_build_object('name', m.name, 'plan', m.plan, 'monthly_usd', p.monthly_usd,
                                               'freeze_months_left', p.freeze_months_per_year
                                                   - coalesce((SELECT sum(f.months) FROM gym.freezes f
                                                                WHERE f.email = m.email
                                                                  AND f.created_at > now() - interval '1 year'), 0),
                                               'frozen', m.frozen_until IS NOT NULL)
                       FROM gym.members m JOIN gym.plans p USING (organization_id)
                      WHERE p.name = m.plan AND m.email = args ->> 'email'),
                    jsonb_build_object('error', 'no member with that e-mail'))
$$;
-- The classes of a day.
CREATE FUNCTION gym.class_schedule(args jsonb) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('starts_at', c.starts_at, 'class', c.name, 'coach', c.coach)
                              ORDER BY c.starts_at), '[]')
      FROM gym.classes c WHERE c.day = lower(args ->> 'day')
$$;
-- Freezes a membership for some months, once per tool call.
CREATE FUNCTION gym.freeze_membership(args jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    org uuid := (current_setting('request.jwt.claims')::jsonb ->> 'organization_id')::uuid;
    n_months integer := (args ->> 'months')::integer;
    until date;
BEGIN
    INSERT INTO gym.freezes (organization_id, email, months, tool_call_id)
    VALUES (org, args ->> 'email', n_months, current_setting('ai_agents.tool_call_id'))
    ON CONFLICT (tool_call_id) DO NOTHING;
    UPDATE gym.members SET frozen_until = (current_date + make_interval(months => n_months))::date
     WHERE email = args ->> 'email'
    RETURNING frozen_until INTO until;
    IF until IS NULL THEN
        RAISE EXCEPTION 'no member with e-mail %', args ->> 'email';
    END IF;
    RETURN jsonb_build_object('email', args ->> 'email', 'frozen_until', until);
END
$$;

\echo '-- 9. Two gyms with a member Ana each; the first registers the three tools'
SELECT gen_random_uuid() AS gym, gen_random_uuid() AS other_gym \gset
INSERT INTO gym.plans VALUES (:'gym', 'gold', 59, 2), (:'other_gym', 'basic', 29, 0);
INSERT INTO gym.members VALUES (:'gym', 'ana@example.com', 'Ana', 'gold', NULL),
                               (:'other_gym', 'ana@example.com', 'Ana (another gym)', 'basic', NULL);
INSERT INTO gym.classes VALUES (:'gym', 'monday', '07:00', 'Spin', 'Lee'), (:'gym', 'monday', '18:00', 'Yoga', 'Sam');
INSERT INTO ai_agent_tools (organization_id, name, description, parameters, function, read_only) VALUES
  (:'gym', 'member_lookup', 'Looks a member up by e-mail: plan, price, how many months of freeze are left.',
   '{"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"], "additionalProperties": false}',
   'gym.member_lookup(jsonb)', true),
  (:'gym', 'class_schedule', 'The classes of a day of the week.',
   '{"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"], "additionalProperties": false}',
   'gym.class_schedule(jsonb)', true),
  (:'gym', 'freeze_membership', 'Freezes a member''s membership for a number of months.',
   '{"type": "object", "properties": {"email": {"type": "string"}, "months": {"type": "integer", "minimum": 1, "maximum": 3}}, "required": ["email", "months"], "additionalProperties": false}',
   'gym.freeze_membership(jsonb)', false);
INSERT INTO ai_agents (organization_id, name, agent_type, system_prompt, model, tools) VALUES
  (:'gym', 'Customer Care', 'customer_care',
   'You answer gym members kindly and briefly. Look members up before answering; freeze a membership only when the member asks and has months left.',
   'gpt-4o-mini', ARRAY['member_lookup', 'class_schedule', 'freeze_membership']);
INSERT INTO ai_agents (organization_id, name, agent_type, system_prompt, model, output_schema) VALUES
  (:'gym', 'Financial Manager', 'finance', 'You forecast the gym''s revenue from its members and plans.', 'gpt-4o-mini',
   '{"type": "object", "additionalProperties": false, "required": ["month", "revenue_usd", "members", "reasoning"],
     "properties": {"month": {"type": "string"}, "revenue_usd": {"type": "number"},
                    "members": {"type": "integer"}, "reasoning": {"type": "string"}}}');
SELECT id AS care FROM ai_agents WHERE organization_id = :'gym' AND name = 'Customer Care' \gset
SELECT id AS finance FROM ai_agents WHERE organization_id = :'gym' AND name = 'Financial Manager' \gset

\echo '-- 10. A member asks Customer Care; the agent looks her up, freezes, answers (one step a row)'
SELECT id AS question FROM enqueue_task(:'care', 'Can I freeze my membership for a month?',
    input => '{"member_email": "ana@example.com", "message": "I am travelling in January. Can I freeze my membership for a month?"}') \gset
SELECT id AS forecast FROM enqueue_task(:'finance', 'Forecast next month''s revenue',
    input => '{"members": 1, "plans": {"gold": 59}}') \gset
SELECT set_config('demo.gym', :'gym', false) \g /dev/null
DO $$
BEGIN
    FOR i IN 1..400 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM ai_agent_tasks WHERE organization_id = current_setting('demo.gym')::uuid
                                AND status NOT IN ('completed', 'failed'));
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SELECT step_number, kind, coalesce(tool_name, '') AS tool, coalesce(arguments::text, '') AS arguments,
       left(coalesce(result::text, error, content, ''), 70) AS outcome
  FROM ai_agent_task_steps WHERE task_id = :'question' ORDER BY step_number;
SELECT status, attempts, tokens_used, cost_usd, left(regexp_replace(output, '\s+', ' ', 'g'), 70) AS answer
  FROM ai_agent_tasks WHERE id = :'question';
SELECT organization_id = :'gym' AS this_gym, name, frozen_until IS NOT NULL AS frozen FROM gym.members ORDER BY name;

\echo '-- 11. The Finance agent''s structured forecast, checked against its output schema'
SELECT status, jsonb_pretty(result) AS result FROM ai_agent_tasks WHERE id = :'forecast';
