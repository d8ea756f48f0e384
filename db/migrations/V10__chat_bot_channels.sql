-- Chat-bot channels beside e-mail. A channel belongs to a watched table like
-- a recipient; its webhook URL and signing secret are sealed with SECRET_KEY
-- (never stored or returned in clear).
CREATE TABLE notification_channels (
    id          serial PRIMARY KEY,
    table_name  text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('dingtalk', 'wecom', 'feishu', 'webhook')),
    name        text,
    webhook_url_encrypted text NOT NULL,
    -- The URL's host, shown (the URL itself is a secret).
    webhook_host text NOT NULL,
    -- SHA-256 of the webhook URL: the bot, whichever channels name it; its
    -- send limit is shared by all of them and by every copy.
    bot         text NOT NULL,
    secret_encrypted text,
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_channels_table ON notification_channels (table_name);
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON notification_channels FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();

-- A table's own block for each alert in a bot's message (handlebars; the
-- built-in one when absent).
CREATE TABLE channel_templates (
    table_name text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('dingtalk', 'wecom', 'feishu')),
    block      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, kind)
);
CREATE TRIGGER audit_alert_config_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON channel_templates FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();

-- Each bot's recent sends, newest last, for its send limits (a sliding
-- window: at most N sends in any window of the limit's length). Taken under
-- the row's lock, so every copy sees every other's sends.
CREATE TABLE channel_sends (
    bot     text PRIMARY KEY,
    sent_at timestamptz[] NOT NULL DEFAULT '{}'
);

-- Takes one send of `p_bot` under limits (`p_counts[i]` sends per
-- `p_windows_ms[i]` milliseconds): NULL when the send may go now (and it is
-- recorded), otherwise the moment the next one may.
CREATE FUNCTION channel_take_send(p_bot text, p_counts int[], p_windows_ms bigint[])
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    now_at  timestamptz := clock_timestamp();
    longest interval := make_interval(secs => coalesce((SELECT max(w) FROM unnest(p_windows_ms) w), 0) / 1000.0);
    recent  timestamptz[];
    wait_to timestamptz;
    i int;
    within timestamptz[];
BEGIN
    INSERT INTO channel_sends (bot) VALUES (p_bot) ON CONFLICT (bot) DO NOTHING;
    PERFORM 1 FROM channel_sends WHERE bot = p_bot FOR UPDATE;
    now_at := clock_timestamp();
    SELECT coalesce(array_agg(t ORDER BY t), '{}') INTO recent
      FROM channel_sends s, unnest(s.sent_at) t
     WHERE s.bot = p_bot AND t > now_at - longest;
    FOR i IN 1 .. coalesce(array_length(p_counts, 1), 0) LOOP
        within := ARRAY(SELECT t FROM unnest(recent) t
                         WHERE t > now_at - make_interval(secs => p_windows_ms[i] / 1000.0)
                         ORDER BY t);
        IF coalesce(array_length(within, 1), 0) >= p_counts[i] THEN
            -- The window frees when the oldest send that fills it leaves it.
            wait_to := greatest(wait_to,
                within[array_length(within, 1) - p_counts[i] + 1]
                + make_interval(secs => p_windows_ms[i] / 1000.0));
        END IF;
    END LOOP;
    IF wait_to IS NOT NULL THEN
        UPDATE channel_sends SET sent_at = recent WHERE bot = p_bot;
        RETURN wait_to;
    END IF;
    UPDATE channel_sends SET sent_at = recent || now_at WHERE bot = p_bot;
    RETURN NULL;
END
$$;

-- What each channel did with an alert: {"<channel id>": {"kind", "name",
-- "attempts", "waits", "class", "code", "message", "delivered_at",
-- "waiting_until"}}. Attempts and waits add up over the alert's attempts.
ALTER TABLE email_sent_log ADD COLUMN channel_outcomes jsonb NOT NULL DEFAULT '{}';

CREATE FUNCTION channel_outcomes_merge(old jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT old || coalesce((
        SELECT jsonb_object_agg(k, coalesce(old -> k, '{}') || v || jsonb_build_object(
                   'attempts', coalesce((old -> k ->> 'attempts')::int, 0)
                               + coalesce((v ->> 'attempts')::int, 0),
                   'waits', coalesce((old -> k ->> 'waits')::int, 0)
                            + coalesce((v ->> 'waits')::int, 0)))
          FROM jsonb_each(new) AS n(k, v)), '{}')
$$;
