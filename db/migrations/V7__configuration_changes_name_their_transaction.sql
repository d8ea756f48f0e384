-- A configuration change names its transaction in the notification
-- (`<table>:<transaction id>`). A copy whose configuration was read after
-- that transaction committed (the copy that made the change through the API
-- reloads at once) knows it has the change already and does not read it again.
CREATE OR REPLACE FUNCTION audit_alert_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('audit_alert_control', TG_TABLE_NAME || ':' || pg_current_xact_id());
    RETURN NULL;
END
$$;
