-- Resolution notices (per table, off by default): when a row the review
-- left `不确定` is re-reviewed to a verdict that does not alert, those who got
-- its alert are told it was cleared. The row is reported through the table's
-- own reporting function, with its new verdict; the outbox row it becomes
-- (a verdict the table does not alert on) is the notice.
ALTER TABLE watched_tables ADD COLUMN resolution_notice boolean NOT NULL DEFAULT false;

CREATE FUNCTION audit_alert_install_resolution(p_relation regclass, p_verdict_column text,
                                               p_verdicts text[], p_enabled boolean)
RETURNS void LANGUAGE plpgsql AS $install$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_resolved ON %s', p_relation);
    IF p_enabled THEN
        EXECUTE format(
            'CREATE TRIGGER audit_alert_resolved AFTER UPDATE OF %I ON %s FOR EACH ROW '
            'WHEN (OLD.%I::text = %L AND NEW.%I IS NOT NULL '
            'AND NOT (NEW.%I::text = ANY (%L::text[]))) EXECUTE FUNCTION %I()',
            p_verdict_column, p_relation, p_verdict_column, '不确定', p_verdict_column,
            p_verdict_column, p_verdicts, 'audit_alert_enqueue_' || p_relation::oid);
    END IF;
END
$install$;

CREATE OR REPLACE FUNCTION audit_alert_remove_trigger(p_relation regclass) RETURNS void
LANGUAGE plpgsql AS $remove$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_insert ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_update ON %s', p_relation);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_alert_resolved ON %s', p_relation);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'audit_alert_enqueue_' || p_relation::oid);
END
$remove$;
