//! Taking in: the alerts the triggers reported into `alert_inbox` become
//! alerts of the outbox, each once, on a connection of its own; and the
//! inbox is vacuumed after a burst.

use anyhow::Context;
use deadpool_postgres::Pool;

use crate::db;

/// Session settings of the connection that takes reported alerts in (see
/// [`take_in`]).
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
pub const INTAKE_SETTINGS: [(&str, &str); 3] = [
    ("synchronous_commit", "off"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
];

/// The connection that takes reported alerts in, with [`INTAKE_SETTINGS`].
pub fn intake_pool(config: &tokio_postgres::Config) -> anyhow::Result<Pool> {
    db::pool_with_settings(config, &INTAKE_SETTINGS, 1)
}

/// Alerts the triggers reported, taken from `alert_inbox` into the outbox:
/// up to `$1` inbox rows, skipping those another copy is taking in. A record
/// reported twice becomes one alert, and one already in the outbox none.
/// Returns (inbox rows taken, alerts added).
pub const TAKE_IN: &str = "
    WITH reported AS (
        DELETE FROM alert_inbox
         WHERE ctid = ANY(ARRAY(SELECT ctid FROM alert_inbox LIMIT $1 FOR UPDATE SKIP LOCKED))
     RETURNING table_name, record_id, verdict, reported_at
    ), added AS (
        INSERT INTO email_sent_log (table_name, record_id, verdict, created_at, next_attempt_at)
        SELECT table_name, record_id, verdict, min(reported_at), min(reported_at)
          FROM reported
         GROUP BY table_name, record_id, verdict
        ON CONFLICT (table_name, record_id, verdict) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM reported), (SELECT count(*) FROM added)";

/// Inbox rows taken in by one statement at most, so that a burst is taken
/// in by several short transactions while delivery claims what is in.
pub const TAKE_IN_BATCH: i64 = 5000;

/// Takes up to [`TAKE_IN_BATCH`] reported alerts into the outbox; returns
/// (inbox rows taken, alerts added). Fewer rows than a batch taken means the
/// inbox held no more, as of the statement's start.
pub async fn take_in(pool: &Pool) -> anyhow::Result<(u64, u64)> {
    let client = db::client(pool).await?;
    let take_in = client
        .prepare_cached(TAKE_IN)
        .await
        .context("Failed to prepare taking in reported alerts")?;
    let row = client
        .query_one(&take_in, &[&TAKE_IN_BATCH])
        .await
        .context("Failed to take in reported alerts")?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

/// Vacuums the inbox, unless another session is vacuuming it. After a burst
/// the inbox holds as many dead rows as it took in until autovacuum comes
/// (up to a minute), and every taking in reads them all: 1 to 4 ms after
/// 100,000, against a fraction of a millisecond once vacuumed.
pub async fn vacuum_inbox(pool: &Pool) -> anyhow::Result<()> {
    let client = db::client(pool).await?;
    client
        .batch_execute("VACUUM (SKIP_LOCKED) alert_inbox")
        .await
        .context("Failed to vacuum the inbox")
}
