//! The alert outbox (`email_sent_log`): claiming due alerts, recording what
//! happened, and the look-ups the dispatcher needs. Every statement is short;
//! no transaction stays open while mail is being sent.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::{Map, Value};

use super::control::WatchedTable;
use crate::db::quote_ident;
use crate::mail::transport::FailureKind;

/// An alert this worker holds the lease on.
#[derive(Clone, Debug)]
pub struct ClaimedAlert {
    pub id: i64,
    pub table_name: String,
    pub record_id: String,
    pub verdict: String,
    /// Attempts made, this one included.
    pub attempts: i32,
    /// Recipients that already have it (from an earlier, partly failed attempt).
    pub delivered_to: Vec<String>,
    /// Recipients that refused it for good.
    pub refused_by: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// What became of the alerts of one digest (they share their fate).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ids: Vec<i64>,
    /// `sent`, `failed` or `pending` (to be retried).
    pub status: &'static str,
    pub delivered_to: Vec<String>,
    /// Recipient → permanent error, added to what was recorded before.
    pub refused: Value,
    pub last_error: Option<String>,
    /// For `pending`: wait before the next attempt.
    pub retry_in_ms: i64,
    pub message_id: Option<String>,
    /// This attempt's SMTP failures, one per recipient it failed for:
    /// (kind, permanent).
    pub smtp_errors: Vec<(FailureKind, bool)>,
    /// When each alert was recorded (the writing transaction's time).
    pub created_at: Vec<DateTime<Utc>>,
}

/// Planner settings of the connections delivery uses for the outbox (see
/// [`delivery_pool`]). Right after a burst the statistics still describe the
/// tables as they were before (autovacuum analyzes later). The planner then
/// expects a handful of due alerts: it collected and sorted all of them for
/// every claim, and combined the whole due index with the primary key to
/// record each outcome, so that draining n alerts cost O(n²). Reading each
/// table's part of `email_sent_log_due` in order, and rows by their key, is
/// the right plan at any size.
///
/// Where a plan cannot do without a switched-off step (the claim's final sort
/// of a few rows, a watched table without an index on its id), its cost
/// estimate becomes huge, and PostgreSQL would compile it with JIT: 200 ms
/// for a statement that runs in one. JIT is off on these connections.
pub const PLANNER_SETTINGS: [(&str, &str); 4] = [
    ("enable_sort", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
];

/// The connections of delivery: every statement of this module but the
/// template preview's row look-up goes through them. Their sessions carry
/// [`PLANNER_SETTINGS`] from the start, so a statement costs one round trip.
pub fn delivery_pool(config: &tokio_postgres::Config, size: usize) -> anyhow::Result<Pool> {
    crate::db::pool(&with_settings(config, &PLANNER_SETTINGS), size)
}

/// Session settings of the connection that takes reported alerts in (see
/// [`admit_reported`]).
///
/// Taking in need not wait for its commit to reach the disk: the inbox rows
/// it deletes and the outbox rows it adds are one transaction, so a database
/// crash keeps either both, or neither and they are taken in again. And no
/// mail goes out before a claim commits, which writes everything before it
/// to the disk with it.
///
/// The inbox has no index: its rows are found by reading it whole, and those
/// taken are deleted by their place (`ctid`). Its statistics are stale most
/// of the time (it fills and empties between two analyses), and when they
/// say it is empty the planner reads it whole again for the delete, testing
/// every row against every place taken: sequential scans are off, with JIT,
/// as on delivery's connections.
pub const ADMIT_SETTINGS: [(&str, &str); 3] = [
    ("synchronous_commit", "off"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
];

/// The connection that takes reported alerts in, with [`ADMIT_SETTINGS`].
pub fn admit_pool(config: &tokio_postgres::Config) -> anyhow::Result<Pool> {
    crate::db::pool(&with_settings(config, &ADMIT_SETTINGS), 1)
}

/// `config` with `settings` added to whatever options it has.
fn with_settings(
    config: &tokio_postgres::Config,
    settings: &[(&str, &str)],
) -> tokio_postgres::Config {
    let mut config = config.clone();
    let ours = settings
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ");
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    config.options(&options);
    config
}

/// The claim: `$1` tables, `$2` most alerts, `$3` worker, `$4` lease in
/// seconds. Each table's earliest due alerts, read in order from its part of
/// `email_sent_log_due`; of those, the earliest `$2`. The few rows locked
/// beyond them are released at commit, untouched.
pub const CLAIM: &str = "
    UPDATE email_sent_log e
       SET status = 'sending', attempts = e.attempts + 1, locked_by = $3,
           next_attempt_at = now() + make_interval(secs => $4), updated_at = now()
     WHERE e.id = ANY(ARRAY(
           SELECT d.id
             FROM unnest($1::text[]) AS t(name)
            CROSS JOIN LATERAL (
                  SELECT id, next_attempt_at FROM email_sent_log
                   WHERE table_name = t.name AND status IN ('pending', 'sending')
                     AND next_attempt_at <= now()
                   ORDER BY next_attempt_at
                   LIMIT $2
                   FOR UPDATE SKIP LOCKED) d
            ORDER BY d.next_attempt_at
            LIMIT $2))
 RETURNING e.id, e.table_name, e.record_id, e.verdict, e.attempts, e.delivered_to,
           CASE WHEN e.failed_recipients = '{}' THEN '{}'::text[]
                ELSE ARRAY(SELECT jsonb_object_keys(e.failed_recipients)) END,
           e.created_at";

/// Records one digest's outcome: `$1` worker, `$2` ids, `$3` status,
/// `$4` delivered to, `$5` refused by, `$6` error, `$7` message id,
/// `$8` retry in milliseconds.
///
/// Only the claim sets `locked_by` (with status `sending`), and every later
/// change of the row clears it, so `locked_by` alone says the lease is still
/// this worker's. A condition on the status would let the planner read the
/// whole due index instead of the primary key.
pub const RECORD_OUTCOME: &str = "
    UPDATE email_sent_log e
       SET status = $3::text,
           delivered_to = $4::text[],
           failed_recipients = CASE WHEN $5::jsonb = '{}' THEN e.failed_recipients
                                    ELSE e.failed_recipients || $5::jsonb END,
           error_message = COALESCE($6::text, e.error_message),
           message_id = COALESCE($7::text, e.message_id),
           sent_at = CASE WHEN $3::text = 'sent' THEN now() ELSE e.sent_at END,
           next_attempt_at = now() + make_interval(secs => $8::bigint / 1000.0),
           locked_by = NULL,
           recipients = array_to_string($4::text[], ','),
           updated_at = now()
     WHERE e.id = ANY($2::bigint[]) AND e.locked_by = $1::text";

/// Alerts the triggers reported, taken from `alert_inbox` into the outbox:
/// up to `$1` inbox rows, skipping those another copy is taking in. A record
/// reported twice becomes one alert, and one already in the outbox none.
/// Returns (inbox rows taken, alerts added).
pub const ADMIT: &str = "
    WITH reported AS (
        DELETE FROM alert_inbox
         WHERE ctid = ANY(ARRAY(SELECT ctid FROM alert_inbox LIMIT $1 FOR UPDATE SKIP LOCKED))
     RETURNING table_name, record_id, verdict, reported_at
    ), admitted AS (
        INSERT INTO email_sent_log (table_name, record_id, verdict, created_at, next_attempt_at)
        SELECT table_name, record_id, verdict, min(reported_at), min(reported_at)
          FROM reported
         GROUP BY table_name, record_id, verdict
        ON CONFLICT (table_name, record_id, verdict) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM reported), (SELECT count(*) FROM admitted)";

/// Alerts by status, those reported and not yet taken in counted as
/// pending: (status, count) rows, a status possibly twice (see
/// [`count_by_status`]). An alert reported twice, or reported and recorded
/// by the sweep already (reported after the sweep took in and before it read
/// the table), is counted once.
pub const COUNT_BY_STATUS: &str = "
    SELECT status::text, count(*) FROM email_sent_log GROUP BY status
     UNION ALL
    SELECT 'pending', count(DISTINCT (i.table_name, i.record_id, i.verdict)) FROM alert_inbox i
     WHERE NOT EXISTS (SELECT 1 FROM email_sent_log e
                        WHERE e.table_name = i.table_name AND e.record_id = i.record_id
                          AND e.verdict = i.verdict)";

/// Vacuums the inbox, unless another session is vacuuming it. After a burst
/// the inbox holds as many dead rows as it took in until autovacuum comes
/// (up to a minute), and every taking in reads them all: 1 to 4 ms after
/// 100,000, against a fraction of a millisecond once vacuumed.
pub async fn vacuum_inbox(pool: &Pool) -> anyhow::Result<()> {
    let client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    client
        .batch_execute("VACUUM (SKIP_LOCKED) alert_inbox")
        .await
        .context("Failed to vacuum the inbox")
}

/// Alerts by status ([`COUNT_BY_STATUS`]).
pub async fn count_by_status(
    client: &tokio_postgres::Client,
) -> Result<std::collections::HashMap<String, i64>, tokio_postgres::Error> {
    let mut counts = std::collections::HashMap::new();
    for r in client.query(COUNT_BY_STATUS, &[]).await? {
        *counts.entry(r.get(0)).or_default() += r.get::<_, i64>(1);
    }
    Ok(counts)
}

/// Inbox rows taken in by one statement at most, so that a burst is taken
/// in by several short transactions while delivery claims what is in.
pub const ADMIT_BATCH: i64 = 5000;

/// Takes up to [`ADMIT_BATCH`] reported alerts into the outbox; returns
/// (inbox rows taken, alerts added). Fewer rows than a batch taken means the
/// inbox held no more, as of the statement's start.
pub async fn admit_reported(pool: &Pool) -> anyhow::Result<(u64, u64)> {
    let client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    let admit = client
        .prepare_cached(ADMIT)
        .await
        .context("Failed to prepare taking in reported alerts")?;
    let row = client
        .query_one(&admit, &[&ADMIT_BATCH])
        .await
        .context("Failed to take in reported alerts")?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

/// Takes up to `limit` due alerts of `tables` (pending ones whose time has
/// come, and sending ones whose lease ran out), skipping rows another copy holds.
pub async fn claim(
    pool: &Pool,
    tables: &[String],
    limit: i64,
    worker: &str,
    lease: Duration,
) -> anyhow::Result<Vec<ClaimedAlert>> {
    let client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    let statement = client
        .prepare_cached(CLAIM)
        .await
        .context("Failed to prepare the claim")?;
    let rows = client
        .query(
            &statement,
            &[&tables, &limit, &worker, &lease.as_secs_f64()],
        )
        .await
        .context("Failed to claim due alerts")?;
    let mut alerts: Vec<ClaimedAlert> = rows
        .iter()
        .map(|r| ClaimedAlert {
            id: r.get(0),
            table_name: r.get(1),
            record_id: r.get(2),
            verdict: r.get(3),
            attempts: r.get(4),
            delivered_to: r.get(5),
            refused_by: r.get(6),
            created_at: r.get(7),
        })
        .collect();
    alerts.sort_by_key(|a| a.id);
    Ok(alerts)
}

/// With e-mail switched off: due alerts are recorded as suppressed, not sent.
pub async fn suppress_due(pool: &Pool, limit: i64) -> anyhow::Result<u64> {
    let client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    client
        .execute(
            "UPDATE email_sent_log SET status = 'suppressed', updated_at = now()
              WHERE id = ANY(ARRAY(
                    SELECT id FROM email_sent_log
                     WHERE status = 'pending' AND next_attempt_at <= now()
                     LIMIT $1 FOR UPDATE SKIP LOCKED))",
            &[&limit],
        )
        .await
        .context("Failed to suppress due alerts")
}

/// Gives claimed alerts back without an attempt counted (delivery was paused
/// meanwhile), or records them as suppressed (e-mail was switched off).
pub async fn unclaim(
    pool: &Pool,
    worker: &str,
    ids: &[i64],
    suppress: bool,
) -> anyhow::Result<u64> {
    let client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    client
        .execute(
            "UPDATE email_sent_log
                SET status = CASE WHEN $3 THEN 'suppressed' ELSE 'pending' END,
                    attempts = attempts - 1, next_attempt_at = now(), locked_by = NULL,
                    updated_at = now()
              WHERE id = ANY($2) AND locked_by = $1",
            &[&worker, &ids, &suppress],
        )
        .await
        .context("Failed to give back claimed alerts")
}

/// Records outcomes, only for alerts this worker still holds.
pub async fn complete(pool: &Pool, worker: &str, outcomes: &[Outcome]) -> anyhow::Result<u64> {
    if outcomes.is_empty() {
        return Ok(0);
    }
    let mut client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    // One transaction, one commit for all of a batch's outcomes.
    let tx = client
        .transaction()
        .await
        .context("Failed to record delivery outcomes")?;
    let statement = tx
        .prepare_cached(RECORD_OUTCOME)
        .await
        .context("Failed to prepare the outcome update")?;
    let mut recorded = 0;
    for o in outcomes {
        recorded += tx
            .execute(
                &statement,
                &[
                    &worker,
                    &o.ids,
                    &o.status,
                    &o.delivered_to,
                    &o.refused,
                    &o.last_error,
                    &o.message_id,
                    &o.retry_in_ms,
                ],
            )
            .await
            .context("Failed to record delivery outcomes")?;
    }
    tx.commit()
        .await
        .context("Failed to record delivery outcomes")?;
    Ok(recorded)
}

/// When the next alert of `tables` falls due, if any is waiting.
pub async fn next_due(pool: &Pool, tables: &[String]) -> anyhow::Result<Option<DateTime<Utc>>> {
    let client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    let statement = client
        .prepare_cached(
            "SELECT min(d.next_attempt_at)
               FROM unnest($1::text[]) AS t(name)
              CROSS JOIN LATERAL (
                    SELECT next_attempt_at FROM email_sent_log
                     WHERE table_name = t.name AND status IN ('pending', 'sending')
                     ORDER BY next_attempt_at
                     LIMIT 1) d",
        )
        .await
        .context("Failed to prepare the look-up of the next due alert")?;
    let row = client
        .query_one(&statement, &[&tables])
        .await
        .context("Failed to look up the next due alert")?;
    Ok(row.get(0))
}

/// The current rows behind `record_ids`, by id (deleted rows are absent).
pub async fn fetch_rows(
    pool: &Pool,
    table: &WatchedTable,
    record_ids: &[&str],
) -> anyhow::Result<std::collections::HashMap<String, Map<String, Value>>> {
    // The relation comes from regclass output and the type from format_type,
    // both already valid SQL; the column is quoted here.
    let sql = format!(
        "SELECT t.{col}::text, row_to_json(t) FROM {rel} t WHERE t.{col} = ANY($1::text[]::{ty}[])",
        col = quote_ident(&table.id_column),
        rel = table.relation,
        ty = table.id_type,
    );
    let client = pool
        .get()
        .await
        .context("Failed to get a database connection")?;
    let rows = client
        .query(&sql, &[&record_ids])
        .await
        .with_context(|| format!("Failed to read rows of {}", table.name))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let id: String = r.get(0);
            match r.get::<_, Value>(1) {
                Value::Object(map) => Some((id, map)),
                _ => None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn planner_settings_join_the_options_of_the_database_url() {
        let plain: tokio_postgres::Config = "postgres://u@h/db".parse().unwrap();
        let options =
            "-c enable_sort=off -c enable_bitmapscan=off -c enable_seqscan=off -c jit=off";
        assert_eq!(
            super::with_settings(&plain, &super::PLANNER_SETTINGS).get_options(),
            Some(options)
        );
        let theirs: tokio_postgres::Config = "postgres://u@h/db?options=-c%20search_path%3Dmod"
            .parse()
            .unwrap();
        assert_eq!(
            super::with_settings(&theirs, &super::PLANNER_SETTINGS).get_options(),
            Some(format!("-c search_path=mod {options}").as_str())
        );
    }
}
