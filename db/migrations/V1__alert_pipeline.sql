-- The alert pipeline: configuration tables, the alert outbox, the watched
-- tables and their triggers.
--
-- Every statement tolerates a database created by the old polling system
-- (tables smtp_config, recipients_config, system_config and email_sent_log in
-- public): tables are created only when absent and then grown column by column,
-- keeping the old table and column names.

-- ---------------------------------------------------------------------------
-- Watched source tables, created when the moderation pipeline has not yet.
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS audit_results (
    id         bigserial PRIMARY KEY,
    verdict    text,
    created_at timestamptz NOT NULL DEFAULT now(),
    url        text,
    reason     text
);

CREATE TABLE IF NOT EXISTS image_audit_results (
    id           bigserial PRIMARY KEY,
    audit_result text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    ip_address   text,
    mac_address  text,
    reasons      text
);

-- ---------------------------------------------------------------------------
-- Configuration (old names kept).
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS smtp_config (
    id              serial PRIMARY KEY,
    smtp_server     varchar(255) NOT NULL,
    smtp_port       integer NOT NULL DEFAULT 587,
    sender_email    varchar(255) NOT NULL,
    sender_password varchar(255),
    sender_name     varchar(255),
    is_active       boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- 'starttls', 'tls' or 'none'; NULL means: 465 is 'tls', any other port 'starttls'.
ALTER TABLE smtp_config ADD COLUMN IF NOT EXISTS security text
    CHECK (security IN ('starttls', 'tls', 'none'));
-- Login name when it differs from sender_email.
ALTER TABLE smtp_config ADD COLUMN IF NOT EXISTS username varchar(255);
ALTER TABLE smtp_config ADD COLUMN IF NOT EXISTS timeout_seconds integer NOT NULL DEFAULT 30;
-- The password encrypted with SECRET_KEY; sender_password keeps only what the
-- old system stored in clear, until it is re-saved.
ALTER TABLE smtp_config ADD COLUMN IF NOT EXISTS password_encrypted text;
ALTER TABLE smtp_config ALTER COLUMN created_at TYPE timestamptz;
ALTER TABLE smtp_config ALTER COLUMN updated_at TYPE timestamptz;

CREATE TABLE IF NOT EXISTS recipients_config (
    id         serial PRIMARY KEY,
    table_name varchar(255) NOT NULL,
    email      varchar(255) NOT NULL,
    name       varchar(255),
    is_active  boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE recipients_config ALTER COLUMN created_at TYPE timestamptz;
ALTER TABLE recipients_config ALTER COLUMN updated_at TYPE timestamptz;
-- The old system allowed the same address twice for a table; keep the first.
DELETE FROM recipients_config r
 USING recipients_config k
 WHERE r.table_name = k.table_name AND lower(r.email) = lower(k.email) AND r.id > k.id;
CREATE UNIQUE INDEX IF NOT EXISTS recipients_config_table_email
    ON recipients_config (table_name, lower(email));

CREATE TABLE IF NOT EXISTS system_config (
    id           serial PRIMARY KEY,
    config_key   varchar(100) NOT NULL UNIQUE,
    config_value text NOT NULL,
    description  text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE system_config ALTER COLUMN updated_at TYPE timestamptz;

-- Defaults; values the old system stored are kept.
INSERT INTO system_config (config_key, config_value, description) VALUES
    ('monitor_enabled', 'true', 'Deliver alerts (false pauses delivery on every copy; alerts wait)'),
    ('email_enabled', 'true', 'Send e-mail (false records new alerts as suppressed)'),
    ('check_interval', '5', 'Minutes between fallback sweeps (1-60)'),
    ('digest_max_records', '200', 'Most records one digest e-mail carries'),
    ('retry_max_attempts', '8', 'Delivery attempts before an alert is marked failed'),
    ('retry_base_ms', '2000', 'First retry delay in milliseconds; doubles per attempt'),
    ('retry_max_ms', '600000', 'Longest retry delay in milliseconds'),
    ('sending_lease_seconds', '300', 'Seconds after which an unfinished send is taken over by another worker'),
    ('audit_retention_days', '180', 'Days the operation audit log is kept (180-3650)')
ON CONFLICT (config_key) DO NOTHING;

-- ---------------------------------------------------------------------------
-- The alert outbox: the old sent log, grown into durable delivery state.
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS email_sent_log (
    id         bigserial PRIMARY KEY,
    table_name varchar(255) NOT NULL,
    record_id  text NOT NULL,
    sent_at    timestamptz,
    recipients text,
    status     varchar(20) NOT NULL DEFAULT 'pending',
    error_message text
);
ALTER TABLE email_sent_log ALTER COLUMN id TYPE bigint;
ALTER TABLE email_sent_log ALTER COLUMN record_id TYPE text USING record_id::text;
ALTER TABLE email_sent_log ALTER COLUMN sent_at TYPE timestamptz;
ALTER TABLE email_sent_log ALTER COLUMN status TYPE varchar(20);
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS verdict text;
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
-- When a pending alert is due, or when the lease of a sending one runs out.
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS locked_by text;
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS delivered_to text[] NOT NULL DEFAULT '{}';
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS failed_recipients jsonb NOT NULL DEFAULT '{}';
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS message_id text;
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

-- Records the old system logged: they carry the verdict the record has now, and
-- their old outcome ('success' becomes sent). Nothing the old log names is sent again.
UPDATE email_sent_log e SET verdict = a.verdict
  FROM audit_results a
 WHERE e.verdict IS NULL AND e.table_name = 'audit_results' AND e.record_id = a.id::text;
UPDATE email_sent_log e SET verdict = a.audit_result
  FROM image_audit_results a
 WHERE e.verdict IS NULL AND e.table_name = 'image_audit_results' AND e.record_id = a.id::text;
UPDATE email_sent_log SET verdict = '' WHERE verdict IS NULL;
UPDATE email_sent_log SET status = 'sent'
 WHERE status NOT IN ('pending', 'sending', 'sent', 'failed', 'suppressed', 'baseline');
ALTER TABLE email_sent_log ALTER COLUMN status SET DEFAULT 'pending';
ALTER TABLE email_sent_log ALTER COLUMN sent_at DROP DEFAULT;
ALTER TABLE email_sent_log ALTER COLUMN sent_at DROP NOT NULL;
ALTER TABLE email_sent_log ALTER COLUMN recipients DROP NOT NULL;
UPDATE email_sent_log SET created_at = sent_at WHERE sent_at IS NOT NULL AND created_at > sent_at;
ALTER TABLE email_sent_log ALTER COLUMN verdict SET NOT NULL;
-- The old log could name one record several times; keep the newest entry.
DELETE FROM email_sent_log e
 USING email_sent_log k
 WHERE e.table_name = k.table_name AND e.record_id = k.record_id AND e.verdict = k.verdict
   AND e.id < k.id;
ALTER TABLE email_sent_log ADD CONSTRAINT email_sent_log_status
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'suppressed', 'baseline'));
CREATE UNIQUE INDEX email_sent_log_dedup ON email_sent_log (table_name, record_id, verdict);
-- Work to do: small, so the claim and the "next due" look-ups stay cheap.
CREATE INDEX email_sent_log_due ON email_sent_log (next_attempt_at)
    WHERE status IN ('pending', 'sending');
-- BRIN: alert history is filtered by time; rows arrive in time order.
CREATE INDEX email_sent_log_created ON email_sent_log USING brin (created_at);

-- ---------------------------------------------------------------------------
-- Watched tables and their triggers.
-- ---------------------------------------------------------------------------
CREATE TABLE watched_tables (
    id              serial PRIMARY KEY,
    -- The name alerts and recipients use: the table name, schema-qualified
    -- outside public.
    table_name      text NOT NULL UNIQUE,
    relation        regclass NOT NULL UNIQUE,
    id_column       text NOT NULL,
    id_type         text NOT NULL,
    verdict_column  text NOT NULL,
    alert_verdicts  text[] NOT NULL DEFAULT '{不合格,不确定}',
    enabled         boolean NOT NULL DEFAULT true,
    -- Integer ids only: the sweep looks at ids above sweep_watermark; the
    -- horizon is the largest id the previous sweep saw, so a row committed late
    -- by a long transaction is still examined by the next sweep.
    sweep_watermark bigint,
    sweep_horizon   bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Bearer tokens for the API, stored only as SHA-256 digests.
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    token_hash   bytea NOT NULL UNIQUE,
    operator_id  text NOT NULL,
    org_id       text,
    role         text NOT NULL CHECK (role IN ('viewer', 'operator', 'auditor', 'admin')),
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Templates replacing the built-in ones for one table (handlebars).
CREATE TABLE alert_templates (
    table_name text PRIMARY KEY REFERENCES watched_tables (table_name)
        ON DELETE CASCADE ON UPDATE CASCADE,
    subject    text NOT NULL,
    html       text NOT NULL,
    text       text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Installs (or re-installs) the alert triggers on a table. Every name is
-- quoted with format('%I'); nothing is spliced. Returns the id type.
CREATE FUNCTION audit_alert_install_trigger(
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
            INSERT INTO %I.email_sent_log (table_name, record_id, verdict)
            VALUES (%L, NEW.%I::text, NEW.%I::text)
            ON CONFLICT (table_name, record_id, verdict) DO NOTHING;
            PERFORM pg_notify('audit_alert', '');
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

CREATE FUNCTION audit_alert_remove_trigger(p_relation regclass) RETURNS void
LANGUAGE plpgsql AS $remove$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_insert ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_update ON %s', p_relation);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_enqueue_' || p_relation::oid);
END
$remove$;

-- Configuration changes wake every running copy, whoever made them.
CREATE FUNCTION audit_alert_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('audit_alert_control', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON system_config FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON smtp_config FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON recipients_config FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON watched_tables FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON alert_templates FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();
-- A revoked token stops working on every copy at once.
CREATE TRIGGER audit_alert_config_changed AFTER UPDATE OF revoked_at OR DELETE
    ON api_tokens FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();

-- Watch the two built-in tables. Flagged rows already present become baseline
-- (not mailed), except, on a database the old system ran, rows newer than its
-- last sent entry: those it had not reached yet, and they are sent.
DO $watch$
DECLARE
    t record;
    last_legacy_send timestamptz := (SELECT max(sent_at) FROM email_sent_log);
    id_type text;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('audit_results', 'id', 'verdict'),
        ('image_audit_results', 'id', 'audit_result')) AS v(name, id_col, verdict_col)
    LOOP
        id_type := audit_alert_install_trigger(t.name::regclass, t.name, t.id_col,
                                               t.verdict_col, '{不合格,不确定}');
        EXECUTE format(
            'INSERT INTO email_sent_log (table_name, record_id, verdict, status)
             SELECT %L, s.%I::text, s.%I::text,
                    CASE WHEN %L::timestamptz IS NOT NULL AND s.created_at > %L::timestamptz
                         THEN ''pending'' ELSE ''baseline'' END
               FROM %I s WHERE s.%I::text = ANY (''{不合格,不确定}'')
             ON CONFLICT (table_name, record_id, verdict) DO NOTHING',
            t.name, t.id_col, t.verdict_col, last_legacy_send, last_legacy_send,
            t.name, t.verdict_col);
        INSERT INTO watched_tables (table_name, relation, id_column, id_type, verdict_column)
        VALUES (t.name, t.name::regclass, t.id_col, id_type, t.verdict_col);
        IF id_type IN ('integer', 'bigint', 'smallint') THEN
            EXECUTE format(
                'UPDATE watched_tables SET sweep_watermark = m, sweep_horizon = m
                   FROM (SELECT max(%I) AS m FROM %I) s WHERE table_name = %L',
                t.id_col, t.name, t.name);
        END IF;
    END LOOP;
END
$watch$;

-- ---------------------------------------------------------------------------
-- The operation audit log: append-only; only the retention purge deletes.
-- ---------------------------------------------------------------------------
CREATE TABLE audit_log (
    audit_id          char(32) PRIMARY KEY,
    operation_time    timestamptz NOT NULL,
    operation_ip      text,
    operator_id       text,
    operator_org_id   text,
    role_id           text,
    request_params    jsonb,
    response_result   jsonb,
    operation_url     text NOT NULL,
    operation_method  text NOT NULL,
    operation_desc    text NOT NULL,
    operation_result  char(1) NOT NULL CHECK (operation_result IN ('0', '1')),
    error_msg         text,
    duration_ms       integer NOT NULL
);
-- Few indexes, each cheap to maintain, since every API call adds a row: the
-- rows arrive in time order (BRIN fits), and audit ids sort by time too, so
-- "newest first" walks the primary key backwards.
CREATE INDEX audit_log_time ON audit_log USING brin (operation_time);
CREATE INDEX audit_log_operator ON audit_log (operator_id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('audit_alert.retention_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
