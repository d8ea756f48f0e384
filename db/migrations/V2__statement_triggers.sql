-- Inserts are reported once per statement, not once per row.
--
-- A row trigger that writes an alert for every flagged row costs the writer
-- several times the insert itself when rows come in bulk. Now a BEFORE row
-- trigger, whose WHEN clause passes only the first flagged row of a statement,
-- sets a transaction-local flag; a statement trigger, which runs only when the
-- flag is set, records the statement's flagged rows as one row of
-- alert_batches and notifies. The service turns batches into alerts
-- (email_sent_log rows) at once. Verdict updates, one row at a time in
-- practice, still write their alert directly.

-- Flagged rows of one statement, waiting to become alerts.
CREATE TABLE alert_batches (
    id         bigserial PRIMARY KEY,
    table_name text NOT NULL,
    record_ids text[] NOT NULL,
    verdicts   text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION audit_alert_install_trigger(
    p_relation regclass, p_table_name text, p_id_column text, p_verdict_column text,
    p_verdicts text[]
) RETURNS text LANGUAGE plpgsql AS $install$
DECLARE
    suffix text := p_relation::oid::text;
    row_fn text := format('%I', 'audit_alert_enqueue_' || suffix);
    flag_fn text := format('%I', 'audit_alert_flag_' || suffix);
    batch_fn text := format('%I', 'audit_alert_batch_' || suffix);
    -- Custom settings need a dotted name; one per table, so that statements
    -- writing several watched tables keep their flags apart.
    flag text := 'audit_alert.flagged_' || suffix;
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

    -- The payload is the same for every statement, so PostgreSQL folds a
    -- transaction's notifications into one: NOTIFY is only a wake-up.
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER AS $body$
        BEGIN
            INSERT INTO %I.email_sent_log (table_name, record_id, verdict)
            VALUES (%L, NEW.%I::text, NEW.%I::text)
            ON CONFLICT (table_name, record_id, verdict) DO NOTHING;
            PERFORM pg_notify('audit_alert', '');
            RETURN NULL;
        END
        $body$
    $fn$, row_fn, current_schema(), p_table_name, p_id_column, p_verdict_column);

    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            PERFORM set_config(%L, 'on', true);
            RETURN NEW;
        END
        $body$
    $fn$, flag_fn, flag);

    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER AS $body$
        BEGIN
            PERFORM set_config(%L, 'off', true);
            INSERT INTO %I.alert_batches (table_name, record_ids, verdicts)
            SELECT %L, array_agg(n.%I::text), array_agg(n.%I::text)
              FROM audit_alert_new n
             WHERE n.%I::text = ANY (%L::text[])
            HAVING count(*) > 0;
            IF FOUND THEN
                PERFORM pg_notify('audit_alert', '');
            END IF;
            RETURN NULL;
        END
        $body$
    $fn$, batch_fn, flag, current_schema(), p_table_name, p_id_column, p_verdict_column,
        p_verdict_column, p_verdicts);

    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_insert ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_update ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS zz_audit_alert_flag ON %s', p_relation);
    -- BEFORE triggers run in name order: this one comes last, so it sees the
    -- row as the table's own triggers leave it.
    EXECUTE format(
        'CREATE TRIGGER zz_audit_alert_flag BEFORE INSERT ON %s FOR EACH ROW '
        'WHEN (NEW.%I::text = ANY (%L::text[]) '
        'AND current_setting(%L, true) IS DISTINCT FROM ''on'') EXECUTE FUNCTION %s()',
        p_relation, p_verdict_column, p_verdicts, flag, flag_fn);
    EXECUTE format(
        'CREATE TRIGGER audit_alert_insert AFTER INSERT ON %s '
        'REFERENCING NEW TABLE AS audit_alert_new FOR EACH STATEMENT '
        'WHEN (current_setting(%L, true) = ''on'') EXECUTE FUNCTION %s()',
        p_relation, flag, batch_fn);
    EXECUTE format(
        'CREATE TRIGGER audit_alert_update AFTER UPDATE OF %I ON %s FOR EACH ROW '
        'WHEN (NEW.%I::text = ANY (%L::text[]) AND NEW.%I IS DISTINCT FROM OLD.%I) '
        'EXECUTE FUNCTION %s()',
        p_verdict_column, p_relation, p_verdict_column, p_verdicts,
        p_verdict_column, p_verdict_column, row_fn);
    RETURN id_type;
END
$install$;

CREATE OR REPLACE FUNCTION audit_alert_remove_trigger(p_relation regclass) RETURNS void
LANGUAGE plpgsql AS $remove$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_insert ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_update ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS zz_audit_alert_flag ON %s', p_relation);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_enqueue_' || p_relation::oid);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_flag_' || p_relation::oid);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_batch_' || p_relation::oid);
END
$remove$;

-- Re-install on every watched table. Creating the triggers locks out writers,
-- so no insert falls between the old triggers and the new ones.
SELECT audit_alert_install_trigger(relation, table_name, id_column, verdict_column,
                                   alert_verdicts)
  FROM watched_tables;
