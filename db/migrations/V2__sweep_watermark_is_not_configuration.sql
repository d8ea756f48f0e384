-- The sweep moves its watermark after every run. That is not a configuration
-- change: no copy needs to reload its configuration for it.
DROP TRIGGER audit_alert_config_changed ON watched_tables;
CREATE TRIGGER audit_alert_config_changed
    AFTER INSERT OR DELETE OR TRUNCATE
       OR UPDATE OF table_name, relation, id_column, id_type, verdict_column, alert_verdicts, enabled
    ON watched_tables FOR EACH STATEMENT EXECUTE FUNCTION audit_alert_config_changed();
