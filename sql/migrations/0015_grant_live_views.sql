-- kb_<name>_live views created before kbrefresh granted them: let the reader role read them
-- (views created from now on are granted when they are created or repointed).
DO $$
DECLARE
    v record;
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_reader') THEN
        FOR v IN SELECT viewname FROM pg_views
                 WHERE schemaname = current_schema() AND viewname LIKE 'kb\_%\_live'
        LOOP
            EXECUTE format('GRANT SELECT ON %I TO kbrefresh_reader', v.viewname);
        END LOOP;
    END IF;
END
$$;
