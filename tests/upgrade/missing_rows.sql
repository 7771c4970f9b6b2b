-- The rows of upgrade_check.rows that no row of the same table or sequence now contains (a
-- row may have gained columns, so containment, not equality).
CREATE FUNCTION pg_temp.missing_rows() RETURNS TABLE (relation text, data jsonb)
LANGUAGE sql AS $$
    SELECT u.relation, u.data
      FROM upgrade_check.rows u
     WHERE NOT EXISTS (SELECT FROM upgrade_check.rows_of(u.relation) AS now_rows(data)
                        WHERE now_rows.data @> u.data)
$$;
