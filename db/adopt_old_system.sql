-- Makes a database of the old Python smtp-alert (tables as its
-- database/init.sql creates them) ready for migration 1. It runs before the
-- first migration only, in one transaction with the migrations' lock held;
-- each part looks for the old shape of its table and leaves any other alone,
-- so on an empty database it does nothing.
--
-- The old tables and their names are kept; what changes:
--   smtp_config       server, port, password become smtp_server, smtp_port,
--                     sender_password (encrypted at the first start with
--                     SECRET_KEY); username, the old login and sender address,
--                     also becomes sender_email; only the newest active
--                     configuration stays active (the old code sent with it).
--   recipients_config is_active NULL (never mailed by the old code) is false;
--                     of an address listed twice for a table, the active
--                     entry is kept.
--   email_sent_log    every entry is a mail that went out: status 'sent', its
--                     comma-separated recipients become delivered_to.
-- old_system_upgrade records that this happened and when the old system last
-- mailed, for the migrations that follow.
DO $adopt$
DECLARE
    old_smtp boolean := EXISTS (
        SELECT 1 FROM pg_attribute
         WHERE attrelid = to_regclass('smtp_config') AND attname = 'server' AND NOT attisdropped);
    old_log boolean := to_regclass('email_sent_log') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute
         WHERE attrelid = to_regclass('email_sent_log') AND attname = 'status' AND NOT attisdropped);
    old_recipients boolean := EXISTS (
        SELECT 1 FROM pg_attribute
         WHERE attrelid = to_regclass('recipients_config') AND attname = 'is_active'
           AND NOT attnotnull AND NOT attisdropped);
BEGIN
    IF NOT (old_smtp OR old_log OR old_recipients) THEN
        RETURN;
    END IF;
    CREATE TABLE old_system_upgrade (
        upgraded_at timestamptz NOT NULL DEFAULT now(),
        -- The old system's last mail: flagged rows after it, it never reached.
        last_send   timestamptz
    );
    INSERT INTO old_system_upgrade (last_send) VALUES (NULL);

    IF old_smtp THEN
        ALTER TABLE smtp_config RENAME COLUMN server TO smtp_server;
        ALTER TABLE smtp_config RENAME COLUMN port TO smtp_port;
        ALTER TABLE smtp_config RENAME COLUMN password TO sender_password;
        ALTER TABLE smtp_config ALTER COLUMN sender_password DROP NOT NULL;
        ALTER TABLE smtp_config ADD COLUMN sender_email varchar(255);
        UPDATE smtp_config SET sender_email = username;
        ALTER TABLE smtp_config ALTER COLUMN sender_email SET NOT NULL;
        ALTER TABLE smtp_config ALTER COLUMN username DROP NOT NULL;
        ALTER TABLE smtp_config ADD COLUMN sender_name varchar(255);
        UPDATE smtp_config
           SET is_active = coalesce(id = (SELECT id FROM smtp_config WHERE is_active
                                           ORDER BY created_at DESC NULLS LAST, id DESC
                                           LIMIT 1), false);
        ALTER TABLE smtp_config ALTER COLUMN is_active SET NOT NULL;
        ALTER TABLE smtp_config ALTER COLUMN is_active SET DEFAULT false;
        UPDATE smtp_config SET created_at = coalesce(created_at, updated_at, now()),
                               updated_at = coalesce(updated_at, created_at, now())
         WHERE created_at IS NULL OR updated_at IS NULL;
        ALTER TABLE smtp_config ALTER COLUMN created_at SET NOT NULL;
        ALTER TABLE smtp_config ALTER COLUMN updated_at SET NOT NULL;
    END IF;

    IF old_recipients THEN
        UPDATE recipients_config SET is_active = false WHERE is_active IS NULL;
        DELETE FROM recipients_config r
         USING recipients_config k
         WHERE r.table_name = k.table_name AND lower(r.email) = lower(k.email) AND r.id <> k.id
           AND (k.is_active, -k.id) > (r.is_active, -r.id);
        ALTER TABLE recipients_config ALTER COLUMN is_active SET NOT NULL;
        ALTER TABLE recipients_config ALTER COLUMN table_name TYPE varchar(255);
        UPDATE recipients_config SET created_at = coalesce(created_at, updated_at, now()),
                                     updated_at = coalesce(updated_at, created_at, now())
         WHERE created_at IS NULL OR updated_at IS NULL;
        ALTER TABLE recipients_config ALTER COLUMN created_at SET NOT NULL;
        ALTER TABLE recipients_config ALTER COLUMN updated_at SET NOT NULL;
    END IF;

    IF old_log THEN
        -- Naive times are read in this session's time zone, the server's
        -- default, as the old code's CURRENT_TIMESTAMP wrote them.
        UPDATE old_system_upgrade SET last_send = (SELECT max(sent_at) FROM email_sent_log);
        -- An entry without table or record names nothing to keep.
        DELETE FROM email_sent_log WHERE table_name IS NULL OR record_id IS NULL;
        ALTER TABLE email_sent_log ALTER COLUMN table_name TYPE varchar(255);
        ALTER TABLE email_sent_log ALTER COLUMN table_name SET NOT NULL;
        ALTER TABLE email_sent_log ALTER COLUMN record_id SET NOT NULL;
        IF EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'email_sent_log'::regclass AND attname = 'verdict'
                      AND NOT attisdropped) THEN
            ALTER TABLE email_sent_log ALTER COLUMN verdict TYPE text;
        END IF;
        IF pg_get_serial_sequence('email_sent_log', 'id') IS NOT NULL THEN
            EXECUTE format('ALTER SEQUENCE %s AS bigint',
                           pg_get_serial_sequence('email_sent_log', 'id'));
        END IF;
        ALTER TABLE email_sent_log ADD COLUMN status varchar(20) NOT NULL DEFAULT 'sent';
        ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS error_message text;
        ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS delivered_to text[] NOT NULL DEFAULT '{}';
        UPDATE email_sent_log
           SET delivered_to = ARRAY(SELECT btrim(a) FROM unnest(string_to_array(recipients, ',')) a
                                     WHERE btrim(a) <> '')
         WHERE recipients IS NOT NULL;
        ALTER TABLE email_sent_log ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
        UPDATE email_sent_log SET attempts = 1;
    END IF;
END
$adopt$;
