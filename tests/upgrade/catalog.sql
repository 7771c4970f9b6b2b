-- Every object of the extension, one row each: (kind, name, definition). Two databases whose
-- rows are equal hold the same extension, object by object. Names and definitions are text
-- (no oids), so that they compare across databases; privileges are sorted, since the order of
-- an ACL's entries (the order the grants were made in) means nothing.
WITH ext AS (
    SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'ai_agents'
), ns AS (
    SELECT 'ai_agents'::regnamespace AS oid
)
SELECT kind, name, definition FROM (
    SELECT 'extension' AS kind, e.extname::text AS name,
           concat_ws(' ', e.extversion, e.extrelocatable, n.nspname,
                     (SELECT string_agg(c::regclass::text || coalesce(' ' || w, ''), ', ' ORDER BY c::regclass::text)
                        FROM unnest(e.extconfig, e.extcondition) AS x(c, w))) AS definition
      FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'ai_agents'
    UNION ALL
    SELECT 'member', pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), ''
      FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    SELECT 'relation', c.relname::text,
           concat_ws(' ', c.relkind::text, c.relpersistence::text, c.relrowsecurity, c.relforcerowsecurity,
                     c.reloptions::text, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(c.relacl) x)::text, pg_catalog.pg_get_userbyid(c.relowner))
      FROM pg_catalog.pg_class c, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT 'column', c.relname || '.' || a.attname,
           concat_ws(' ', a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                     a.attidentity::text, a.attgenerated::text, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) x)::text,
                     pg_catalog.pg_get_expr(ad.adbin, ad.adrelid))
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
      JOIN ns ON c.relnamespace = ns.oid
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm', 'c', 'f', 'p')
    UNION ALL
    SELECT 'constraint', co.conrelid::regclass::text || '.' || co.conname,
           pg_catalog.pg_get_constraintdef(co.oid)
      FROM pg_catalog.pg_constraint co, ns WHERE co.connamespace = ns.oid
    UNION ALL
    SELECT 'index', i.indexrelid::regclass::text, pg_catalog.pg_get_indexdef(i.indexrelid)
      FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid, ns
     WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT 'sequence', s.seqrelid::regclass::text,
           concat_ws(' ', s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle)
      FROM pg_catalog.pg_sequence s JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid, ns
     WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT 'view', c.relname::text, pg_catalog.pg_get_viewdef(c.oid)
      FROM pg_catalog.pg_class c, ns WHERE c.relnamespace = ns.oid AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text,
           concat_ws(E'\n', pg_catalog.pg_get_functiondef(p.oid), 'acl: ' || (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(p.proacl) x)::text,
                     'owner: ' || pg_catalog.pg_get_userbyid(p.proowner))
      FROM pg_catalog.pg_proc p, ns WHERE p.pronamespace = ns.oid AND p.prokind IN ('f', 'p', 'w')
    UNION ALL
    SELECT 'trigger', t.tgrelid::regclass::text || '.' || t.tgname,
           pg_catalog.pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid, ns
     WHERE c.relnamespace = ns.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT 'policy', p.tablename || '.' || p.policyname,
           concat_ws(' ', p.permissive, p.roles::text, p.cmd, p.qual, p.with_check)
      FROM pg_catalog.pg_policies p WHERE p.schemaname = 'ai_agents'
    UNION ALL
    SELECT 'event trigger', e.evtname::text,
           concat_ws(' ', e.evtevent, e.evtfoid::regprocedure, e.evtenabled::text, e.evttags::text)
      FROM pg_catalog.pg_event_trigger e
     WHERE e.evtfoid IN (SELECT p.oid FROM pg_catalog.pg_proc p, ns WHERE p.pronamespace = ns.oid)
    UNION ALL
    SELECT 'type', t.typname::text, concat_ws(' ', t.typtype::text, t.typrelid::regclass)
      FROM pg_catalog.pg_type t, ns WHERE t.typnamespace = ns.oid
    UNION ALL
    SELECT 'schema', n.nspname::text, concat_ws(' ', (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(n.nspacl) x)::text, pg_catalog.pg_get_userbyid(n.nspowner))
      FROM pg_catalog.pg_namespace n, ns WHERE n.oid = ns.oid
    UNION ALL
    SELECT 'comment', pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
      FROM pg_catalog.pg_description d
     WHERE (d.classoid, d.objoid) IN (SELECT dd.classid, dd.objid FROM pg_catalog.pg_depend dd, ext
                                       WHERE dd.refobjid = ext.oid AND dd.deptype = 'e')
) catalog
ORDER BY kind, name, definition
