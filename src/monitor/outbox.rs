//! The alert outbox (`email_sent_log`): an alert's states, claiming due
//! alerts under a lease, recording what happened, re-sending, and the
//! look-ups delivery needs. Every statement is short; no transaction stays
//! open while mail is being sent.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde_json::Value;

use crate::db;
use crate::mail::transport::FailureKind;

/// Where an alert is in its life: the outbox's `status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertStatus {
    /// Waiting: due now, retrying later, or held (paused, nothing to send with).
    Pending,
    /// Claimed by a worker, under a lease.
    Sending,
    Sent,
    /// Attempts exhausted, or refused by every recipient.
    Failed,
    /// Arrived while e-mail was switched off: recorded, not sent.
    Suppressed,
    /// Present when its table started being watched: not mailed.
    Baseline,
    /// Held by a silence (`silenced_by`): not sent.
    Silenced,
}

impl AlertStatus {
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Suppressed,
        Self::Baseline,
        Self::Silenced,
    ];

    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Suppressed => "suppressed",
            Self::Baseline => "baseline",
            Self::Silenced => "silenced",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

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
    /// Sent, unacknowledged past its table's delay: this attempt goes to the
    /// table's escalation group.
    pub escalating: bool,
    /// Acknowledged (`"acknowledged"`) or escalated (`"escalated"`) already:
    /// what quiet hours held back for it no longer goes.
    pub settled: Option<&'static str>,
    /// A resolution notice: its verdict is one its table does not alert on,
    /// reported when the row left `不确定` (set by delivery).
    pub notice: bool,
}

impl ClaimedAlert {
    /// Its destinations done already, in lower case: delivered or refused
    /// for good.
    pub fn done(&self) -> std::collections::HashSet<String> {
        self.delivered_to
            .iter()
            .chain(&self.refused_by)
            .map(|e| e.to_lowercase())
            .collect()
    }

    /// Whether `destination` (in lower case) is done already.
    pub fn is_done(&self, destination: &str) -> bool {
        self.delivered_to
            .iter()
            .chain(&self.refused_by)
            .any(|e| e.eq_ignore_ascii_case(destination))
    }
}

/// What became of the alerts of one digest (they share their fate).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ids: Vec<i64>,
    /// `Sent`, `Failed` or `Pending` (to be retried).
    pub status: AlertStatus,
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
    /// Nothing was attempted, destinations only wait (a bot's send limit):
    /// the claim's attempt is given back.
    pub uncounted: bool,
    /// Channel id → what the channel did (`channel_outcomes`, merged).
    pub channels: Value,
    /// For `sent`: when to escalate it unless acknowledged (its table's
    /// delay, in milliseconds); for a sent escalation, `None`.
    pub escalate_in_ms: Option<i64>,
    /// Destinations held back by their quiet hours (`held`): destination →
    /// `{"until": …}`, plus `"dropped"` once the alert is settled.
    pub held: Value,
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

/// The connections of delivery: every statement of this module, and the
/// reading of claimed alerts' rows, go through them. Their sessions carry
/// [`PLANNER_SETTINGS`] from the start, so a statement costs one round trip.
pub fn delivery_pool(config: &tokio_postgres::Config, size: usize) -> anyhow::Result<Pool> {
    db::pool_with_settings(config, &PLANNER_SETTINGS, size)
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
           e.created_at, e.escalating,
           CASE WHEN e.acknowledged_at IS NOT NULL THEN 'acknowledged'
                WHEN e.escalated_at IS NOT NULL THEN 'escalated' END";

/// Records one digest's outcome: `$1` worker, `$2` ids, `$3` status,
/// `$4` delivered to, `$5` refused by, `$6` error, `$7` message id,
/// `$8` retry in milliseconds, `$9` the attempt given back, `$10` what the
/// channels did, `$11` escalate in milliseconds once sent (an escalation that
/// went out is recorded as escalated instead), `$12` what quiet hours held
/// back (an escalation keeps what was held before it, dropped once it went).
///
/// The escalation moment is set when the alert first reaches someone: once
/// sent, or while destinations in quiet hours still wait for it.
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
           attempt_errors = CASE WHEN $6::text IS NULL THEN e.attempt_errors
                                 ELSE e.attempt_errors || jsonb_build_array(jsonb_build_object(
                                          'attempt', e.attempts, 'at', now(), 'error', $6::text))
                            END,
           message_id = COALESCE($7::text, e.message_id),
           sent_at = CASE WHEN $3::text = 'sent' THEN now() ELSE e.sent_at END,
           next_attempt_at = now() + make_interval(secs => $8::bigint / 1000.0),
           locked_by = NULL,
           recipients = array_to_string($4::text[], ','),
           attempts = e.attempts - CASE WHEN $9::bool THEN 1 ELSE 0 END,
           channel_outcomes = CASE WHEN $10::jsonb = '{}' THEN e.channel_outcomes
                                   ELSE channel_outcomes_merge(e.channel_outcomes, $10::jsonb) END,
           escalated_at = CASE WHEN e.escalating AND $3::text = 'sent' THEN now()
                               ELSE e.escalated_at END,
           escalating = e.escalating AND $3::text <> 'sent',
           escalate_at = CASE WHEN ($3::text = 'sent' OR cardinality($4::text[]) > 0)
                                   AND NOT e.escalating AND $11::bigint IS NOT NULL
                                   AND e.escalate_at IS NULL
                              THEN now() + make_interval(secs => $11::bigint / 1000.0)
                              ELSE e.escalate_at END,
           held = CASE WHEN NOT e.escalating THEN $12::jsonb
                       WHEN $3::text = 'sent' AND e.held <> '{}' THEN
                            (SELECT jsonb_object_agg(h.key, h.value || jsonb_build_object('dropped', 'escalated'))
                               FROM jsonb_each(e.held) AS h)
                       ELSE e.held END,
           updated_at = now()
     WHERE e.id = ANY($2::bigint[]) AND e.locked_by = $1::text";

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

/// Alerts by status ([`COUNT_BY_STATUS`]); a status no alert has is absent.
pub async fn count_by_status(pool: &Pool) -> anyhow::Result<HashMap<AlertStatus, i64>> {
    let mut counts = HashMap::new();
    for r in db::client(pool)
        .await?
        .query(COUNT_BY_STATUS, &[])
        .await
        .context("Failed to count alerts")?
    {
        if let Some(status) = AlertStatus::parse(r.get(0)) {
            *counts.entry(status).or_default() += r.get::<_, i64>(1);
        }
    }
    Ok(counts)
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
    let client = db::client(pool).await?;
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
            escalating: r.get(8),
            settled: match r.get::<_, Option<&str>>(9) {
                Some("acknowledged") => Some("acknowledged"),
                Some(_) => Some("escalated"),
                None => None,
            },
            notice: false,
        })
        .collect();
    alerts.sort_by_key(|a| a.id);
    Ok(alerts)
}

/// With e-mail switched off: due alerts are recorded as suppressed, not sent.
pub async fn suppress_due(pool: &Pool, limit: i64) -> anyhow::Result<u64> {
    let client = db::client(pool).await?;
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
    give_back(pool, worker, ids, suppress, Duration::ZERO).await
}

/// Gives claimed alerts back, without an attempt counted, to be looked at
/// again after `delay`.
pub async fn postpone(
    pool: &Pool,
    worker: &str,
    ids: &[i64],
    delay: Duration,
) -> anyhow::Result<u64> {
    give_back(pool, worker, ids, false, delay).await
}

/// The one statement behind [`unclaim`] and [`postpone`]: the worker's
/// lease on `ids` ends, the attempt its claim counted is taken back, and
/// they are due again after `delay` (or suppressed).
async fn give_back(
    pool: &Pool,
    worker: &str,
    ids: &[i64],
    suppress: bool,
    delay: Duration,
) -> anyhow::Result<u64> {
    let client = db::client(pool).await?;
    client
        .execute(
            "UPDATE email_sent_log
                SET status = CASE WHEN $3 THEN 'suppressed' ELSE 'pending' END,
                    attempts = attempts - 1, locked_by = NULL,
                    next_attempt_at = now() + make_interval(secs => $4), updated_at = now()
              WHERE id = ANY($2) AND locked_by = $1",
            &[&worker, &ids, &suppress, &delay.as_secs_f64()],
        )
        .await
        .context("Failed to give back claimed alerts")
}

/// Records claimed alerts as held by silences: (alert id, silence id).
pub async fn silence(pool: &Pool, worker: &str, held: &[(i64, i32)]) -> anyhow::Result<u64> {
    let (ids, silences): (Vec<i64>, Vec<i32>) = held.iter().copied().unzip();
    let client = db::client(pool).await?;
    client
        .execute(
            "UPDATE email_sent_log e
                SET status = 'silenced', silenced_by = h.silence, locked_by = NULL,
                    attempts = e.attempts - 1, updated_at = now()
               FROM unnest($2::bigint[], $3::int[]) AS h(id, silence)
              WHERE e.id = h.id AND e.locked_by = $1",
            &[&worker, &ids, &silences],
        )
        .await
        .context("Failed to record silenced alerts")
}

/// Records outcomes, only for alerts this worker still holds.
pub async fn complete(pool: &Pool, worker: &str, outcomes: &[Outcome]) -> anyhow::Result<u64> {
    if outcomes.is_empty() {
        return Ok(0);
    }
    let mut client = db::client(pool).await?;
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
                    &o.status.as_str(),
                    &o.delivered_to,
                    &o.refused,
                    &o.last_error,
                    &o.message_id,
                    &o.retry_in_ms,
                    &o.uncounted,
                    &o.channels,
                    &o.escalate_in_ms,
                    &o.held,
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
    let client = db::client(pool).await?;
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

/// Puts back in line, for their escalation group, the alerts whose
/// escalation moment passed unacknowledged (sent, or sent but to those in
/// quiet hours); how many.
pub async fn escalate_due(pool: &Pool) -> anyhow::Result<u64> {
    let client = db::client(pool).await?;
    client
        .execute(
            "UPDATE email_sent_log
                SET status = 'pending', escalating = true, attempts = 0, next_attempt_at = now(),
                    updated_at = now()
              WHERE escalate_at <= now() AND escalate_at IS NOT NULL AND escalated_at IS NULL
                AND NOT escalating AND acknowledged_at IS NULL
                AND (status = 'sent' OR (status = 'pending' AND held <> '{}'))",
            &[],
        )
        .await
        .context("Failed to escalate alerts")
}

/// When the next sent alert is to be escalated, if any is waiting.
pub async fn next_escalation(pool: &Pool) -> anyhow::Result<Option<DateTime<Utc>>> {
    let client = db::client(pool).await?;
    let row = client
        .query_one(
            "SELECT min(escalate_at) FROM email_sent_log
              WHERE escalate_at IS NOT NULL AND escalated_at IS NULL
                AND NOT escalating AND acknowledged_at IS NULL
                AND (status = 'sent' OR (status = 'pending' AND held <> '{}'))",
            &[],
        )
        .await
        .context("Failed to look up the next escalation")?;
    Ok(row.get(0))
}

/// Alerts waiting for destinations in quiet hours fall due now, to be
/// looked at again (a schedule or the clock changed); how many.
pub async fn recheck_holds(pool: &Pool) -> anyhow::Result<u64> {
    let client = db::client(pool).await?;
    client
        .execute(
            "UPDATE email_sent_log SET next_attempt_at = now()
              WHERE status = 'pending' AND next_attempt_at > now() AND held <> '{}'",
            &[],
        )
        .await
        .context("Failed to look again at alerts held for quiet hours")
}

/// Who got the uncertain alert each resolution notice clears: notice id →
/// the alert's `delivered_to`, and whether its delivery is over (not still
/// pending or being sent).
pub async fn told_of(
    pool: &Pool,
    notices: &[&ClaimedAlert],
) -> anyhow::Result<HashMap<i64, (Vec<String>, bool)>> {
    let ids: Vec<i64> = notices.iter().map(|a| a.id).collect();
    let tables: Vec<&str> = notices.iter().map(|a| a.table_name.as_str()).collect();
    let records: Vec<&str> = notices.iter().map(|a| a.record_id.as_str()).collect();
    let client = db::client(pool).await?;
    let rows = client
        .query(
            "SELECT n.id, e.delivered_to, e.status NOT IN ('pending', 'sending')
               FROM unnest($1::bigint[], $2::text[], $3::text[]) AS n(id, table_name, record_id)
               JOIN email_sent_log e ON e.table_name = n.table_name
                AND e.record_id = n.record_id AND e.verdict = $4",
            &[&ids, &tables, &records, &super::tables::UNCERTAIN],
        )
        .await
        .context("Failed to read whom the cleared alerts went to")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// What acknowledging found.
#[derive(Debug, PartialEq, Eq)]
pub enum Acknowledged {
    Now,
    /// Someone did already: who and when.
    Already {
        by: String,
        at: DateTime<Utc>,
    },
    Missing,
}

/// Marks an alert acknowledged by `by`, once. One waiting for destinations
/// in quiet hours falls due at once, so that they are dropped now.
pub async fn acknowledge(pool: &Pool, id: i64, by: &str) -> anyhow::Result<Acknowledged> {
    let client = db::client(pool).await?;
    let done = client
        .execute(
            "UPDATE email_sent_log SET acknowledged_at = now(), acknowledged_by = $2,
                    escalate_at = CASE WHEN escalated_at IS NULL THEN NULL ELSE escalate_at END,
                    next_attempt_at = CASE WHEN status = 'pending' AND held <> '{}' THEN now()
                                           ELSE next_attempt_at END,
                    updated_at = now()
              WHERE id = $1 AND acknowledged_at IS NULL",
            &[&id, &by],
        )
        .await
        .context("Failed to acknowledge an alert")?;
    if done > 0 {
        return Ok(Acknowledged::Now);
    }
    let row = client
        .query_opt(
            "SELECT acknowledged_by, acknowledged_at FROM email_sent_log WHERE id = $1",
            &[&id],
        )
        .await
        .context("Failed to read an alert")?;
    Ok(match row {
        None => Acknowledged::Missing,
        Some(r) => Acknowledged::Already {
            by: r.get::<_, Option<String>>(0).unwrap_or_default(),
            at: r.get::<_, Option<DateTime<Utc>>>(1).unwrap_or_default(),
        },
    })
}

/// What a re-send found.
#[derive(Debug, PartialEq, Eq)]
pub enum Resend {
    /// Back in line, as a new alert would be.
    Queued,
    Missing,
    /// Only failed, suppressed or silenced alerts are sent again.
    NotResendable(AlertStatus),
}

/// Puts a failed, suppressed or silenced alert back in line: attempts, recipients and
/// errors start over, and it goes to every active recipient of its table.
/// Within a transaction, no copy claims it before the transaction ends.
pub async fn resend(client: &impl GenericClient, id: i64) -> anyhow::Result<Resend> {
    let queued = client
        .execute(
            "UPDATE email_sent_log
                SET status = 'pending', attempts = 0, next_attempt_at = now(),
                    delivered_to = '{}', failed_recipients = '{}', error_message = NULL,
                    channel_outcomes = '{}', silenced_by = NULL, held = '{}', updated_at = now()
              WHERE id = $1 AND status IN ('failed', 'suppressed', 'silenced')",
            &[&id],
        )
        .await
        .context("Failed to re-send an alert")?;
    if queued > 0 {
        return Ok(Resend::Queued);
    }
    let current = client
        .query_opt("SELECT status FROM email_sent_log WHERE id = $1", &[&id])
        .await
        .context("Failed to read an alert")?;
    Ok(match current {
        None => Resend::Missing,
        Some(row) => {
            Resend::NotResendable(AlertStatus::parse(row.get(0)).unwrap_or(AlertStatus::Pending))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::AlertStatus;

    #[test]
    fn every_status_reads_back_as_itself() {
        for status in AlertStatus::ALL {
            assert_eq!(AlertStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(AlertStatus::parse("success"), None);
    }
}
