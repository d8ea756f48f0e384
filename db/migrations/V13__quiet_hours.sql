-- Quiet hours: a recipient or a channel may take alerts only in weekly
-- windows of a time zone (`{"time_zone": …, "windows": [{"days": […],
-- "start": "HH:MM", "end": "HH:MM"}]}`; NULL: at any time).
ALTER TABLE recipients_config ADD COLUMN schedule jsonb;
ALTER TABLE notification_channels ADD COLUMN schedule jsonb;

-- What an alert's last attempt held back for quiet hours: destination →
-- {"until": when its window opens} (plus "dropped": why, when the alert was
-- acknowledged or escalated before the window opened, so it never goes).
ALTER TABLE email_sent_log ADD COLUMN held jsonb NOT NULL DEFAULT '{}';
