-- Distributing the tables over a Citus cluster, by organization (docs/distributed.md).

-- Whether Citus distributes `tbl` (as a distributed or a reference table); false without Citus.
CREATE OR REPLACE FUNCTION ai_agents._is_distributed(tbl regclass) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found boolean := false;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)'
            INTO found USING tbl;
    END IF;
    RETURN found;
END
$$;

-- Whether this node is a Citus worker (false on a coordinator, and without Citus): what the
-- coordinator alone does (distributing, releasing, the scheduled reports), a worker does not.
CREATE OR REPLACE FUNCTION ai_agents._on_citus_worker() RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    worker boolean := false;
BEGIN
    IF to_regproc('pg_catalog.citus_is_coordinator') IS NOT NULL THEN
        EXECUTE 'SELECT NOT pg_catalog.citus_is_coordinator()' INTO worker;
    END IF;
    RETURN worker;
END
$$;

-- Runs `command` on every Citus worker, each in a transaction of its own, and fails naming the
-- first worker where it failed; does nothing without Citus.
CREATE OR REPLACE FUNCTION ai_agents._run_on_workers(command text, doing text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    node record;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_node') IS NULL THEN
        RETURN;
    END IF;
    FOR node IN EXECUTE 'SELECT * FROM pg_catalog.run_command_on_workers($1)' USING command LOOP
        IF NOT node.success THEN
            RAISE EXCEPTION '% worker %:% failed: %', doing, node.nodename, node.nodeport, node.result
                USING ERRCODE = '55000';
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._run_on_workers(text, text) FROM PUBLIC;

-- What every node's copy of the tables needs before Citus distributes them, run on the
-- coordinator in distribute()'s transaction and on each worker through
-- run_command_on_workers (each worker holds the extension's tables, which become the shells of
-- the distributed ones). Written to be run again: a worker done before a failed distribute()
-- stays done. Returns the statements that create again what it dropped, for the coordinator to
-- run once the tables are distributed.
--
-- The node's own worker runs meanwhile, and its transactions hold one table while asking for
-- another (a fresh node's start-up prunes and rescues across several). So every table is locked
-- first, all in one statement in name order, and a deadlock that still happens (a transaction
-- holding a later table and asking for an earlier one) undoes only this attempt, which waits and
-- starts again, instead of failing distribute().
CREATE OR REPLACE FUNCTION ai_agents._prepare_distribution() RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    attempts CONSTANT integer := 10;
BEGIN
    FOR attempt IN 1 .. attempts LOOP
        BEGIN
            EXECUTE (SELECT 'LOCK TABLE ' || string_agg(c.oid::regclass::text, ', ' ORDER BY c.relname)
                            || ' IN ACCESS EXCLUSIVE MODE'
                       FROM pg_class c
                      WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relkind = 'r');
            RETURN ai_agents._prepare_locked_tables();
        EXCEPTION WHEN deadlock_detected THEN
            IF attempt = attempts THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.1 * attempt);
        END;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._prepare_distribution() FROM PUBLIC;

-- _prepare_distribution's work, once it holds every table.
CREATE OR REPLACE FUNCTION ai_agents._prepare_locked_tables() RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key record;
    restore text[] := '{}';
    guarded boolean := EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'ai_agents_guard_extension_objects');
BEGIN
    IF guarded THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
    END IF;
    -- Foreign keys from tenant tables to global ones, added again once both are distributed:
    -- Citus would turn a local table pointing at a new reference table into a table of its
    -- own, beside the one the extension created on every node.
    FOR key IN
        SELECT k.conrelid::regclass AS tbl, k.conname, pg_get_constraintdef(k.oid) AS definition
          FROM pg_constraint k
         WHERE k.contype = 'f' AND k.connamespace = 'ai_agents'::regnamespace
           AND (SELECT relname FROM pg_class WHERE oid = k.confrelid) = ANY (ai_agents._global_tables())
    LOOP
        restore := restore || format('ALTER TABLE %s ADD CONSTRAINT %I %s', key.tbl, key.conname, key.definition);
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', key.tbl, key.conname);
    END LOOP;
    -- A unique index without the distribution column cannot be enforced across shards: the
    -- ids stay unique as random uuids, and are still found by index.
    FOR key IN
        SELECT k.conrelid::regclass AS tbl, k.conname, c.relname
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE c.relnamespace = 'ai_agents'::regnamespace
           AND k.contype = 'u' AND k.conname = c.relname || '_id_key'
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', key.tbl, key.conname);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s (id)', key.relname || '_id_idx', key.tbl);
    END LOOP;
    -- Triggers, created again once the tables are distributed: Citus copies the rows into the
    -- shards, which would run them again, each one a distributed query from a shard.
    FOR key IN
        SELECT t.tgname, t.tgrelid::regclass AS tbl, pg_get_triggerdef(t.oid) AS definition
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'ai_agents'::regnamespace AND NOT t.tgisinternal
         ORDER BY c.relname, t.tgname
    LOOP
        restore := restore || key.definition;
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', key.tgname, key.tbl);
    END LOOP;
    -- Policies without subqueries, which Citus refuses (see _write_organization_policies).
    PERFORM ai_agents._write_organization_policies();
    -- Custom plans, which Citus can distribute (see _plan_generically), where Citus came after
    -- the extension.
    PERFORM ai_agents._plan_generically(ARRAY(
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'ai_agents'::regnamespace
           AND 'plan_cache_mode=force_generic_plan' = ANY (p.proconfig)));
    IF guarded THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects ENABLE;
    END IF;
    RETURN restore;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._prepare_locked_tables() FROM PUBLIC;

-- The tables without an organization: global data, reference tables under Citus (keys.rs
-- checks that every other table has an organization).
CREATE OR REPLACE FUNCTION ai_agents._global_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['ai_agent_model_prices', 'ai_agent_builtin_tools', 'ai_agent_report_templates']
$$;

-- Run once on the coordinator, after CREATE EXTENSION citus and citus_add_node for the workers:
-- the global tables become reference tables, and every tenant table a distributed table by
-- organization_id, all co-located with ai_agents. Returns what it did, table by table. Once
-- done, a second call does nothing.
CREATE OR REPLACE FUNCTION ai_agents.distribute(shard_count integer DEFAULT 32)
RETURNS TABLE (table_name text, distribution text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant_tables text[];
    ready text[];
    tbl text;
    restore text[];
    guarded boolean := EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'ai_agents_guard_extension_objects');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'ai_agents.distribute() needs Citus, which database % does not have', current_database()
            USING ERRCODE = '0A000',
                  HINT = 'Install Citus on every node, run CREATE EXTENSION citus and citus_add_node on the coordinator, then call ai_agents.distribute() there (docs/distributed.md).';
    END IF;
    IF shard_count IS NULL OR shard_count NOT BETWEEN 1 AND 64000 THEN
        RAISE EXCEPTION 'shard_count must be between 1 and 64000, not %', shard_count
            USING ERRCODE = '22023';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'ai_agents.distribute() runs on the coordinator'
            USING ERRCODE = '55000';
    END IF;
    IF ai_agents._is_distributed('ai_agents.ai_agents') THEN
        RETURN;
    END IF;

    -- What it drops is created again at the end.
    restore := ai_agents._prepare_distribution();
    PERFORM ai_agents._run_on_workers('SELECT ai_agents._prepare_distribution()', 'preparing');

    -- Citus replaces the tables' constraints and indexes with its own while it distributes;
    -- the drop guard is for hands, not for this. Triggers run on the shards: each one reads
    -- and writes only the row's own organization, which lives on the same node.
    IF guarded THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
    END IF;
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);

    FOREACH tbl IN ARRAY ai_agents._global_tables() LOOP
        PERFORM create_reference_table(format('ai_agents.%I', tbl));
        table_name := tbl;
        distribution := 'reference';
        RETURN NEXT;
    END LOOP;

    -- ai_agents first, holding the shard count; every other table co-located with it, after
    -- the tables its foreign keys point at.
    SELECT array_agg(c.relname::text ORDER BY c.relname) INTO tenant_tables
      FROM pg_class c
     WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relkind = 'r'
       AND c.relname <> ALL (ai_agents._global_tables());
    WHILE cardinality(tenant_tables) > 0 LOOP
        IF 'ai_agents' = ANY (tenant_tables) THEN
            ready := ARRAY['ai_agents'];
        ELSE
            SELECT coalesce(array_agg(t ORDER BY t), '{}') INTO ready
              FROM unnest(tenant_tables) t
             WHERE NOT EXISTS (
                   SELECT FROM pg_constraint k
                    WHERE k.conrelid = format('ai_agents.%I', t)::regclass AND k.contype = 'f'
                      AND k.confrelid <> k.conrelid
                      AND (SELECT relname FROM pg_class WHERE oid = k.confrelid) = ANY (tenant_tables));
        END IF;
        IF cardinality(ready) = 0 THEN
            RAISE EXCEPTION 'the foreign keys among % form a cycle', tenant_tables USING ERRCODE = '55000';
        END IF;
        FOREACH tbl IN ARRAY ready LOOP
            IF tbl = 'ai_agents' THEN
                PERFORM create_distributed_table('ai_agents.ai_agents', 'organization_id',
                                                 shard_count => distribute.shard_count, colocate_with => 'none');
            ELSE
                PERFORM create_distributed_table(format('ai_agents.%I', tbl), 'organization_id',
                                                 colocate_with => 'ai_agents.ai_agents');
            END IF;
            table_name := tbl;
            distribution := 'distributed by organization_id';
            RETURN NEXT;
        END LOOP;
        tenant_tables := ARRAY(SELECT t FROM unnest(tenant_tables) t WHERE t <> ALL (ready));
    END LOOP;

    FOREACH tbl IN ARRAY restore LOOP
        EXECUTE tbl;
    END LOOP;
    -- The coordinator's own copies of the rows, copied to the shards and no longer read.
    FOR tbl IN SELECT c.relname FROM pg_class c
                WHERE c.relnamespace = 'ai_agents'::regnamespace AND c.relkind = 'r'
                  AND ai_agents._is_distributed(c.oid) LOOP
        PERFORM truncate_local_data_after_distributing_table(format('ai_agents.%I', tbl));
    END LOOP;
    IF guarded THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects ENABLE;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION ai_agents.distribute(integer) FROM PUBLIC;

-- Called before DROP EXTENSION ai_agents drops the tables (guard.sql). Citus drops no shards of
-- tables that an extension takes with it (13.2.2: they stay behind on the workers, orphaned),
-- and the coordinator's copies of the reference tables carry triggers and policies naming the
-- extension's functions, which stop the drop. So the tables leave Citus first, as Citus's own
-- DROP TABLE would make them: shards dropped on every node, metadata removed from every node.
-- Then the drop runs as on one server, on the coordinator and, sent on by Citus, on each worker.
CREATE OR REPLACE FUNCTION ai_agents._release_from_citus() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl record;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL OR ai_agents._on_citus_worker() THEN
        RETURN;
    END IF;
    -- The coordinator drops its own copies of the reference tables: they are Citus's.
    IF EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'ai_agents_guard_extension_objects') THEN
        ALTER EVENT TRIGGER ai_agents_guard_extension_objects DISABLE;
    END IF;
    FOR tbl IN
        SELECT p.logicalrelid::oid AS id, c.relname AS name
          FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
         WHERE c.relnamespace = 'ai_agents'::regnamespace
    LOOP
        PERFORM master_remove_distributed_table_metadata_from_workers(tbl.id, 'ai_agents', tbl.name);
        PERFORM citus_drop_all_shards(tbl.id, 'ai_agents', tbl.name, false);
        PERFORM master_remove_partition_metadata(tbl.id, 'ai_agents', tbl.name);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ai_agents._release_from_citus() FROM PUBLIC;
