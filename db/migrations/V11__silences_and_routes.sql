-- Silences: an operator says, with a reason, that alerts matching some
-- conditions are not to be sent for a while. A silenced alert is recorded
-- with status 'silenced' and the silence that held it; it is not sent when
-- the silence ends (that was decided), but can be re-sent.
CREATE TABLE silences (
    id          serial PRIMARY KEY,
    -- NULL: every watched table.
    table_name  text,
    -- NULL: every verdict.
    verdicts    text[],
    -- Conditions on the row's columns, all of which must hold:
    -- [{"column": "...", "op": "equals" | "in" | "prefix", "values": ["..."]}]
    conditions  jsonb NOT NULL DEFAULT '[]',
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    comment     text NOT NULL CHECK (btrim(comment) <> ''),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Who ended it early, if anyone.
    expired_by  text,
    CHECK (ends_at > starts_at)
);
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON silences FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();

ALTER TABLE email_sent_log ADD COLUMN silenced_by integer;
ALTER TABLE email_sent_log DROP CONSTRAINT email_sent_log_status;
ALTER TABLE email_sent_log ADD CONSTRAINT email_sent_log_status
    CHECK (status::text = ANY ('{pending,sending,sent,failed,suppressed,baseline,silenced}'::text[]));

-- Routes: a recipient or a channel may take only some verdicts (NULL: all)
-- and only rows meeting conditions on their columns (same shape as a
-- silence's). By default, everything of its table.
ALTER TABLE recipients_config ADD COLUMN verdicts text[];
ALTER TABLE recipients_config ADD COLUMN conditions jsonb NOT NULL DEFAULT '[]';
ALTER TABLE notification_channels ADD COLUMN verdicts text[];
ALTER TABLE notification_channels ADD COLUMN conditions jsonb NOT NULL DEFAULT '[]';
