-- Acknowledgement: someone on call says they have taken an alert, from the
-- link in its message or through the API. Once, with who and when.
ALTER TABLE email_sent_log ADD COLUMN acknowledged_at timestamptz;
ALTER TABLE email_sent_log ADD COLUMN acknowledged_by text;

-- Escalation: a table may name people to tell when one of its alerts was
-- sent and nobody acknowledged it within a delay. The moment lives on the
-- alert (`escalate_at`, set when it is sent), so it survives restarts; when
-- it passes unacknowledged, the alert is put back in line for the
-- escalation group alone (`escalating`), once (`escalated_at`).
CREATE TABLE table_escalations (
    table_name    text PRIMARY KEY,
    emails        text[] NOT NULL CHECK (cardinality(emails) > 0),
    after_minutes integer NOT NULL CHECK (after_minutes BETWEEN 1 AND 10080),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON table_escalations FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();

ALTER TABLE email_sent_log ADD COLUMN escalate_at timestamptz;
ALTER TABLE email_sent_log ADD COLUMN escalating boolean NOT NULL DEFAULT false;
ALTER TABLE email_sent_log ADD COLUMN escalated_at timestamptz;
CREATE INDEX email_sent_log_escalate ON email_sent_log (escalate_at)
    WHERE escalate_at IS NOT NULL AND escalated_at IS NULL;
