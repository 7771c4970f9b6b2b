-- Every row of every table and sequence of the extension, as jsonb, into upgrade_check.rows
-- (a schema of the test's own, outside the extension).
CREATE SCHEMA upgrade_check;

-- The rows of one table, or the state of one sequence, as jsonb.
CREATE FUNCTION upgrade_check.rows_of(relation name) RETURNS SETOF jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relname = relation) = 'S' THEN
        RETURN QUERY EXECUTE format(
            'SELECT jsonb_build_object(''last_value'', last_value, ''is_called'', is_called) FROM ai_agents.%I',
            relation);
    ELSE
        RETURN QUERY EXECUTE format('SELECT to_jsonb(t) FROM ai_agents.%I t', relation);
    END IF;
END
$$;

CREATE TABLE upgrade_check.rows AS
SELECT c.relname::text AS relation, r.data
  FROM pg_catalog.pg_class c, upgrade_check.rows_of(c.relname) AS r(data)
 WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relkind IN ('r', 'S');
