-- Work to do, by table. Delivery looks only at tables it can deliver (watched,
-- with recipients); the alerts of a table without recipients stay pending.
-- With the due time alone as key, every claim for the other tables walked past
-- all of those first. Keyed by table, a claim reads each table's due alerts
-- in order and nothing else. The index holds only pending and sending alerts.
DROP INDEX email_sent_log_due;
CREATE INDEX email_sent_log_due ON email_sent_log (table_name, next_attempt_at)
    WHERE status IN ('pending', 'sending');
