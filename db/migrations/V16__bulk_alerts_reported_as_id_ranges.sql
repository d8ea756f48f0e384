-- A statement that writes many flagged rows reports them as one range of
-- ids instead of one inbox row each.
--
-- An inbox row costs its writer an insert, and PostgreSQL sets up the
-- executor anew for each: in a 1,000-row statement of flagged rows that cost
-- several times what calling a row trigger at all costs. Now, in a table
-- with integer ids and a btree index that starts with the id column:
--
-- * A transaction's first flagged row is reported on its own, as before, with
--   the wake-up. So is every row of a single-row transaction, the usual
--   shape, whose cost does not change.
-- * A later flagged row with a higher id opens a range at its id: one row in
--   `alert_inbox_ranges`. Its id is kept in a transaction-local setting, and
--   every flagged row of the same transaction whose id lies within 10,000
--   ids from it is then covered: its trigger only compares.
--   A flagged row below the range or past its width is reported on its own,
--   or opens the next range.
-- * At commit (a deferred constraint trigger on the range row), the range is
--   closed at the table's highest id, at most `from_id + 9,999`, and the
--   setting cleared. Under SET CONSTRAINTS ALL IMMEDIATE it is closed at the
--   end of the statement that opened it, so each covered statement opens its
--   own: slower, still exact.
--
-- The service takes a range in by reading the table's flagged rows within
-- it (the index, by id); rows in it that another transaction wrote, or that
-- have their alert already, become nothing new, exactly as a row reported
-- twice. What a range holds is read when it is taken in, milliseconds after
-- the commit: a row re-reviewed in between alerts on its verdict at that
-- time, as the sweep would find it.
--
-- UPDATEs and resolution notices are reported one row at a time, as before.
CREATE TABLE alert_inbox_ranges (
    table_name  text NOT NULL,
    from_id     bigint NOT NULL,
    -- Set at commit; NULL only if the closing trigger did not run.
    through_id  bigint,
    reported_at timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000
);

CREATE OR REPLACE FUNCTION audit_alert_install_trigger(
    p_relation regclass, p_table_name text, p_id_column text, p_verdict_column text,
    p_verdicts text[]
) RETURNS text LANGUAGE plpgsql AS $install$
DECLARE
    oid_text text := p_relation::oid::text;
    fn text := format('%I', 'audit_alert_enqueue_' || oid_text);
    insert_fn text := format('%I', 'audit_alert_insert_' || oid_text);
    close_fn text := format('%I', 'audit_alert_close_' || oid_text);
    -- Transaction-local settings: where the open range starts, and the id
    -- last reported on its own.
    range_setting text := 'audit_alert.range_' || oid_text;
    reported_setting text := 'audit_alert.reported_' || oid_text;
    id_attnum smallint;
    id_type text;
    verdict_type text;
    ranged boolean;
BEGIN
    SELECT attnum, format_type(atttypid, atttypmod) INTO id_attnum, id_type
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
    -- Ranges need integer ids and an index to read them by (and to close
    -- them at the highest id).
    ranged := id_type IN ('integer', 'bigint', 'smallint') AND EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                                 JOIN pg_am a ON a.oid = c.relam
         WHERE i.indrelid = p_relation AND i.indkey[0] = id_attnum AND i.indisvalid
           AND i.indpred IS NULL AND a.amname = 'btree');

    -- One row at a time: UPDATEs, resolution notices, and INSERTs where
    -- there are no ranges. The payload is the same for every row, so
    -- PostgreSQL folds a transaction's notifications into one: NOTIFY is only
    -- a wake-up.
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
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.alert_inbox_ranges',
                   'audit_alert_close_' || oid_text, current_schema());
    IF ranged THEN
        -- Covered rows cost a comparison: the body runs no statement for
        -- them. 9,223,372,036,854,765,807 is the highest id a range can start
        -- at without its end overflowing.
        EXECUTE format($fn$
            CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger LANGUAGE plpgsql
            SECURITY DEFINER AS $body$
            DECLARE
                open_from bigint := nullif(current_setting(%2$L, true), '')::bigint;
                done text;
            BEGIN
                IF NEW.%5$I BETWEEN open_from AND open_from + 9999 THEN
                    RETURN NULL;
                END IF;
                IF NEW.%5$I > coalesce(open_from, nullif(current_setting(%3$L, true), '')::bigint)
                   AND NEW.%5$I <= 9223372036854765807 THEN
                    -- Opened before the row is written: a closing trigger
                    -- that runs at once (constraints set immediate) clears it.
                    done := set_config(%2$L, NEW.%5$I::text, true);
                    INSERT INTO %4$I.alert_inbox_ranges (table_name, from_id)
                    VALUES (%6$L, NEW.%5$I);
                    RETURN NULL;
                END IF;
                INSERT INTO %4$I.alert_inbox (table_name, record_id, verdict)
                VALUES (%6$L, NEW.%5$I::text, NEW.%7$I::text);
                NOTIFY audit_alert;
                done := set_config(%3$L, NEW.%5$I::text, true);
                RETURN NULL;
            END
            $body$
        $fn$, insert_fn, range_setting, reported_setting, current_schema(), p_id_column,
              p_table_name, p_verdict_column);
        EXECUTE format($fn$
            CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger LANGUAGE plpgsql
            SECURITY DEFINER AS $body$
            DECLARE
                done text;
            BEGIN
                UPDATE %2$I.alert_inbox_ranges
                   SET through_id = least(NEW.from_id + 9999, (SELECT max(%3$I) FROM %4$s))
                 WHERE ctid = NEW.ctid;
                done := set_config(%5$L, '', true);
                RETURN NULL;
            END
            $body$
        $fn$, close_fn, current_schema(), p_id_column, p_relation, range_setting);
        EXECUTE format(
            'CREATE CONSTRAINT TRIGGER %I AFTER INSERT ON %I.alert_inbox_ranges '
            'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.table_name = %L) '
            'EXECUTE FUNCTION %s()',
            'audit_alert_close_' || oid_text, current_schema(), p_table_name, close_fn);
    ELSE
        EXECUTE format('DROP FUNCTION IF EXISTS %s()', insert_fn);
        EXECUTE format('DROP FUNCTION IF EXISTS %s()', close_fn);
    END IF;
    EXECUTE format(
        'CREATE TRIGGER audit_alert_insert AFTER INSERT ON %s FOR EACH ROW '
        'WHEN (NEW.%I::text = ANY (%L::text[])) EXECUTE FUNCTION %s()',
        p_relation, p_verdict_column, p_verdicts, CASE WHEN ranged THEN insert_fn ELSE fn END);
    EXECUTE format(
        'CREATE TRIGGER audit_alert_update AFTER UPDATE OF %I ON %s FOR EACH ROW '
        'WHEN (NEW.%I::text = ANY (%L::text[]) AND NEW.%I IS DISTINCT FROM OLD.%I) '
        'EXECUTE FUNCTION %s()',
        p_verdict_column, p_relation, p_verdict_column, p_verdicts,
        p_verdict_column, p_verdict_column, fn);
    RETURN id_type;
END
$install$;

-- Unwatching drops the table's triggers and functions, and the ranges it
-- reported that no copy took in (the table's row in watched_tables is gone
-- by then): nobody takes those in any more.
CREATE OR REPLACE FUNCTION audit_alert_remove_trigger(p_relation regclass) RETURNS void
LANGUAGE plpgsql AS $remove$
DECLARE
    oid_text text := p_relation::oid::text;
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_insert ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_update ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_resolved ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON alert_inbox_ranges', 'audit_alert_close_' || oid_text);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_enqueue_' || oid_text);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_insert_' || oid_text);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_close_' || oid_text);
    DELETE FROM alert_inbox_ranges r
     WHERE NOT EXISTS (SELECT 1 FROM watched_tables w WHERE w.table_name = r.table_name);
END
$remove$;

-- Re-install the triggers of every watched table, as migration 5 did: a
-- table whose columns changed since it was watched keeps its triggers and is
-- named in a warning.
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
