-- Acknowledgement: someone on call says they have taken an alert, from the
-- link in its message or through the API. Once, with who and when.
ALTER TABLE email_sent_log ADD COLUMN acknowledged_at timestamptz;
ALTER TABLE email_sent_log ADD COLUMN acknowledged_by text;
