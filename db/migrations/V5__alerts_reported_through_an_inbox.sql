-- The writer's part of an alert made smaller: the trigger appends the alert
-- to an inbox without indexes, and the service moves what arrives there into
-- the outbox (`email_sent_log`) in its own transactions, where the dedup key,
-- the due index and the rest are maintained.
--
-- An outbox row costs its writer the sequence, four indexes and the
-- speculative insertion of ON CONFLICT; an inbox row is one heap tuple. In a
-- single-row transaction the alert's cost to the writer about halves, in a
-- 1,000-row statement it falls to about a fifth (README, Performance).
--
-- The inbox is as durable as the outbox: a row in it is an alert the service
-- has not taken in yet, and taking it in deletes it in the transaction that
-- records the alert. The sweep counts a flagged row as reported when either
-- table holds it.
CREATE TABLE alert_inbox (
    table_name  text NOT NULL,
    record_id   text NOT NULL,
    verdict     text NOT NULL,
    -- The writing transaction's time: the alert's created_at in the outbox.
    reported_at timestamptz NOT NULL DEFAULT now()
) WITH (
    -- Rows stay for milliseconds; vacuum it often, so that taking in reads
    -- few dead rows.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000
);

CREATE OR REPLACE FUNCTION audit_alert_install_trigger(
    p_relation regclass, p_table_name text, p_id_column text, p_verdict_column text,
    p_verdicts text[]
) RETURNS text LANGUAGE plpgsql AS $install$
DECLARE
    fn text := format('%I', 'audit_alert_enqueue_' || p_relation::oid);
    id_type text;
    verdict_type text;
BEGIN
    SELECT format_type(atttypid, atttypmod) INTO id_type
      FROM pg_attribute WHERE attrelid = p_relation AND attname = p_id_column
       AND attnum > 0 AND NOT attisdropped;
    IF id_type IS NULL THEN
        RAISE EXCEPTION 'column "%" does not exist in table %', p_id_column, p_relation
            USING ERRCODE = 'undefined_column';
    END IF;
    IF id_type NOT IN ('integer', 'bigint', 'smallint', 'uuid', 'text')
       AND id_type NOT LIKE 'character varying%' THEN
        RAISE EXCEPTION 'id column "%" has type %, expected integer, bigint, uuid or text',
            p_id_column, id_type USING ERRCODE = 'datatype_mismatch';
    END IF;
    SELECT format_type(atttypid, NULL) INTO verdict_type
      FROM pg_attribute WHERE attrelid = p_relation AND attname = p_verdict_column
       AND attnum > 0 AND NOT attisdropped;
    IF verdict_type IS NULL THEN
        RAISE EXCEPTION 'column "%" does not exist in table %', p_verdict_column, p_relation
            USING ERRCODE = 'undefined_column';
    END IF;

    -- The payload is the same for every row, so PostgreSQL folds a
    -- transaction's notifications into one: NOTIFY is only a wake-up.
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER AS $body$
        BEGIN
            INSERT INTO %I.alert_inbox (table_name, record_id, verdict)
            VALUES (%L, NEW.%I::text, NEW.%I::text);
            NOTIFY audit_alert;
            RETURN NULL;
        END
        $body$
    $fn$, fn, current_schema(), p_table_name, p_id_column, p_verdict_column);

    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_insert ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_update ON %s', p_relation);
    EXECUTE format(
        'CREATE TRIGGER audit_alert_insert AFTER INSERT ON %s FOR EACH ROW '
        'WHEN (NEW.%I::text = ANY (%L::text[])) EXECUTE FUNCTION %s()',
        p_relation, p_verdict_column, p_verdicts, fn);
    EXECUTE format(
        'CREATE TRIGGER audit_alert_update AFTER UPDATE OF %I ON %s FOR EACH ROW '
        'WHEN (NEW.%I::text = ANY (%L::text[]) AND NEW.%I IS DISTINCT FROM OLD.%I) '
        'EXECUTE FUNCTION %s()',
        p_verdict_column, p_relation, p_verdict_column, p_verdicts,
        p_verdict_column, p_verdict_column, fn);
    RETURN id_type;
END
$install$;

-- Re-install the triggers of every watched table with the new function body,
-- as migration 3 did: a table whose columns changed since it was watched keeps
-- its triggers (they still record into the outbox) and is named in a warning.
DO $reinstall$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT * FROM watched_tables t
              WHERE EXISTS (SELECT 1 FROM pg_trigger g
                             WHERE g.tgrelid = t.relation AND g.tgname = 'audit_alert_insert')
    LOOP
        BEGIN
            PERFORM audit_alert_install_trigger(w.relation, w.table_name, w.id_column,
                                                w.verdict_column, w.alert_verdicts);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'triggers of watched table % kept as they were: %',
                w.table_name, SQLERRM;
        END;
    END LOOP;
END
$reinstall$;
