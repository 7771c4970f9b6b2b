-- Extension tables may not lose columns, constraints or triggers by hand: the deployment
-- guide's rollback ("ALTER TABLE ai_agent_tasks DROP COLUMN ...") would leave the extension
-- half-installed. Dropping a whole table is already refused by its extension membership;
-- this guard covers what membership does not. The way out is DROP EXTENSION ai_agents; the
-- extension's own scripts (install and upgrade) may drop what they replace.

-- Whether an extension script runs in this session (src/guard.rs).
CREATE OR REPLACE FUNCTION ai_agents._in_extension_script() RETURNS boolean
LANGUAGE c
AS 'MODULE_PATHNAME', 'in_extension_script_wrapper';

CREATE OR REPLACE FUNCTION ai_agents._guard_extension_objects() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped record;
BEGIN
    IF tg_tag IN ('DROP EXTENSION', 'ALTER EXTENSION')
       OR EXISTS (SELECT FROM pg_event_trigger_dropped_objects() d
                   WHERE d.object_type = 'extension' AND d.object_identity = 'ai_agents') THEN
        RETURN;
    END IF;
    FOR dropped IN
        SELECT d.object_type, d.object_identity FROM pg_event_trigger_dropped_objects() d
         WHERE d.schema_name = 'ai_agents' AND NOT d.is_temporary
         LIMIT 1
    LOOP
        -- Asked only now: the guard runs on every drop in the database, by any role.
        IF ai_agents._in_extension_script() THEN
            RETURN;
        END IF;
        -- On a Citus worker, a command the coordinator sends on (its internal connections name
        -- themselves so) passed the coordinator's guard already (docs/distributed.md).
        IF current_setting('application_name') LIKE 'citus\_internal gpid=%' THEN
            RETURN;
        END IF;
        RAISE EXCEPTION '% % belongs to extension ai_agents and cannot be dropped on its own',
            dropped.object_type, dropped.object_identity
            USING ERRCODE = '2BP01',
                  HINT = 'Use DROP EXTENSION ai_agents to remove the extension.';
    END LOOP;
END
$$;

-- An event trigger has no CREATE OR REPLACE: created once, it follows the function above.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'ai_agents_guard_extension_objects') THEN
        CREATE EVENT TRIGGER ai_agents_guard_extension_objects ON sql_drop
            EXECUTE FUNCTION ai_agents._guard_extension_objects();
    END IF;
END
$$;

-- DROP EXTENSION ai_agents on a Citus coordinator hands the tables back from Citus before it
-- drops them (src/guard.rs, distribute.sql's _release_from_citus).
CREATE OR REPLACE FUNCTION ai_agents._before_drop_extension() RETURNS event_trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'before_drop_extension';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'ai_agents_before_drop_extension') THEN
        CREATE EVENT TRIGGER ai_agents_before_drop_extension ON ddl_command_start
            WHEN TAG IN ('DROP EXTENSION')
            EXECUTE FUNCTION ai_agents._before_drop_extension();
    END IF;
END
$$;
