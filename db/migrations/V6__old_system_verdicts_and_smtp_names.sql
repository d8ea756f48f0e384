-- Two things the old Python smtp-alert had that this service keeps.
--
-- 1. SMTP configurations carry a label, `name`, unique, as the old ones did
--    (a database the old system created has the column already). The API
--    names every configuration it creates; one without a name (written by
--    an earlier version, or straight into the table) is shown as
--    "<sender> @ <server>:<port>".
ALTER TABLE smtp_config ADD COLUMN IF NOT EXISTS name varchar(100);
ALTER TABLE smtp_config ALTER COLUMN name DROP NOT NULL;
-- The old table's own constraint has this name, so it is not made twice.
CREATE UNIQUE INDEX IF NOT EXISTS smtp_config_name_key ON smtp_config (name);

-- 2. The old code alerted on the verdict 不合规 (its queries read
--    IN ('不合规')). On a database it ran (adopt_old_system.sql left
--    old_system_upgrade behind), a built-in table that holds 不合规 rows keeps
--    alerting on them: the verdict joins the table's alerting verdicts. Its
--    rows already in the old sent log stay sent; rows after the old system's
--    last mail are pending (it never reached them); older ones are baseline.
DO $verdicts$
DECLARE
    w record;
    last_send timestamptz;
    n bigint;
    joined text[] := '{}';
BEGIN
    IF to_regclass('old_system_upgrade') IS NULL THEN
        RETURN;
    END IF;
    SELECT u.last_send INTO last_send FROM old_system_upgrade u;
    FOR w IN SELECT * FROM watched_tables
              WHERE table_name IN ('audit_results', 'image_audit_results')
                AND NOT ('不合规' = ANY (alert_verdicts))
              ORDER BY table_name
    LOOP
        EXECUTE format('SELECT count(*) FROM %s WHERE %I::text = %L',
                       w.relation, w.verdict_column, '不合规') INTO n;
        CONTINUE WHEN n = 0;
        EXECUTE format(
            'INSERT INTO email_sent_log (table_name, record_id, verdict, status)
             SELECT %L, s.%I::text, s.%I::text,
                    CASE WHEN $1 IS NOT NULL AND s.created_at > $1
                         THEN ''pending'' ELSE ''baseline'' END
               FROM %s s WHERE s.%I::text = %L
             ON CONFLICT (table_name, record_id, verdict) DO NOTHING',
            w.table_name, w.id_column, w.verdict_column, w.relation, w.verdict_column, '不合规')
        USING last_send;
        UPDATE watched_tables SET alert_verdicts = alert_verdicts || '{不合规}'::text[],
                                  updated_at = now()
         WHERE id = w.id;
        PERFORM audit_alert_install_trigger(w.relation, w.table_name, w.id_column,
                                            w.verdict_column, w.alert_verdicts || '{不合规}'::text[]);
        joined := joined || format('%s now alerts on %s (%s rows hold 不合规)', w.table_name,
                                   array_to_string(w.alert_verdicts || '{不合规}'::text[], ', '), n);
    END LOOP;
    IF cardinality(joined) > 0 THEN
        RAISE WARNING 'upgraded from the old system, which alerted on the verdict 不合规: %',
            array_to_string(joined, '; ');
    END IF;
END
$verdicts$;
