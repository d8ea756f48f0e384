//! Taking in: the alerts the triggers reported into `alert_inbox`, one row
//! each, and the ranges of ids they reported into `alert_inbox_ranges` for
//! bulk writes, become alerts of the outbox, each once, on a connection of
//! its own; and the inbox is vacuumed after a burst.

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::snapshot::WatchedTable;
use crate::db::{self, quote_ident};

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
/// as on delivery's connections. A range of ids is read from its table's
/// index for that range alone, whatever the planner expects of the ranges:
/// hash and merge joins are off too.
pub const INTAKE_SETTINGS: [(&str, &str); 5] = [
    ("synchronous_commit", "off"),
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("jit", "off"),
];

/// The connection that takes reported alerts in, with [`INTAKE_SETTINGS`].
pub fn intake_pool(config: &tokio_postgres::Config) -> anyhow::Result<Pool> {
    db::pool_with_settings(config, &INTAKE_SETTINGS, 1)
}

/// Inbox rows taken in by one statement at most, so that a burst is taken
/// in by several short transactions while delivery claims what is in.
pub const TAKE_IN_BATCH: i64 = 5000;

/// Ranges of ids taken in by one statement at most. A range covers at most
/// [`RANGE_WIDTH`] ids; one from a 1,000-row statement holds 1,000 alerts.
pub const TAKE_IN_RANGES: i64 = 5;

/// The most ids one reported range covers (migration 16: a flagged row
/// further on opens the next range). A range that was never closed at commit
/// (its closing trigger disabled) is read that far.
pub const RANGE_WIDTH: i64 = 10_000;

/// What one taking in took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakenIn {
    /// Inbox rows: each one reported alert.
    pub reports: u64,
    /// Ranges of ids a statement reported (see [`RANGE_WIDTH`]).
    pub ranges: u64,
    /// Alerts added to the outbox.
    pub added: u64,
}

impl TakenIn {
    /// A full batch was taken: there may be more.
    pub fn more(&self) -> bool {
        self.reports >= TAKE_IN_BATCH as u64 || self.ranges >= TAKE_IN_RANGES as u64
    }
}

/// The statement that takes in what the triggers reported, for these
/// tables: up to `$1` inbox rows and `$2` ranges of ids, skipping those
/// another copy is taking in. A range is read from its table: the rows
/// within it whose verdict alerts. A record reported twice becomes one
/// alert, and one already in the outbox none. Returns (inbox rows, ranges,
/// alerts added).
///
/// Only ranges of the tables named here are taken: one reported by a table
/// whose watching this copy has not loaded yet waits for it. `$3` names the
/// tables with ranges; then each table's verdicts, in order.
pub fn take_in_statement(tables: &[WatchedTable]) -> String {
    let ranged: Vec<&WatchedTable> = tables.iter().filter(|t| t.has_integer_ids()).collect();
    let found: String = ranged
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "
        UNION ALL
        SELECT r.table_name, f.record_id, f.verdict, r.reported_at
          FROM ranges r, LATERAL ({rows}) f
         WHERE r.table_name = ($3::text[])[{n}]",
                rows = range_rows(t, "r.from_id", "r.through_id", &format!("${}", i + 4)),
                n = i + 1,
            )
        })
        .collect();
    format!(
        "
    WITH reported AS (
        DELETE FROM alert_inbox
         WHERE ctid = ANY(ARRAY(SELECT ctid FROM alert_inbox LIMIT $1 FOR UPDATE SKIP LOCKED))
     RETURNING table_name, record_id, verdict, reported_at
    ), ranges AS (
        DELETE FROM alert_inbox_ranges
         WHERE ctid = ANY(ARRAY(SELECT ctid FROM alert_inbox_ranges
                                 WHERE table_name = ANY($3::text[])
                                 LIMIT $2 FOR UPDATE SKIP LOCKED))
     RETURNING table_name, from_id, coalesce(through_id, from_id + {width}) AS through_id,
               reported_at
    ), found AS (
        SELECT table_name, record_id, verdict, reported_at FROM reported{found}
    ), added AS (
        INSERT INTO email_sent_log (table_name, record_id, verdict, created_at, next_attempt_at)
        SELECT table_name, record_id, verdict, min(reported_at), min(reported_at)
          FROM found
         GROUP BY table_name, record_id, verdict
        ON CONFLICT (table_name, record_id, verdict) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM reported), (SELECT count(*) FROM ranges),
           (SELECT count(*) FROM added)",
        width = RANGE_WIDTH - 1,
    )
}

/// The flagged rows of `table` with ids from `from` through `through`, as
/// (record_id, verdict), its verdicts in the parameter `verdicts`.
fn range_rows(table: &WatchedTable, from: &str, through: &str, verdicts: &str) -> String {
    let (id, verdict) = (
        quote_ident(&table.id_column),
        quote_ident(&table.verdict_column),
    );
    format!(
        "SELECT t.{id}::text AS record_id, t.{verdict}::text AS verdict FROM {rel} t
          WHERE t.{id} BETWEEN {from} AND {through} AND t.{verdict}::text = ANY({verdicts}::text[])",
        rel = table.relation
    )
}

/// The parameters of [`take_in_statement`] for the same tables.
pub fn take_in_params(tables: &[WatchedTable]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    let ranged: Vec<&WatchedTable> = tables.iter().filter(|t| t.has_integer_ids()).collect();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(TAKE_IN_BATCH),
        Box::new(TAKE_IN_RANGES),
        Box::new(ranged.iter().map(|t| t.name.clone()).collect::<Vec<_>>()),
    ];
    params.extend(
        ranged
            .iter()
            .map(|t| Box::new(t.verdicts.clone()) as Box<dyn ToSql + Sync + Send>),
    );
    params
}

/// Takes up to [`TAKE_IN_BATCH`] reported alerts and [`TAKE_IN_RANGES`]
/// reported ranges of `tables` into the outbox. A batch not full
/// ([`TakenIn::more`]) means there was no more, as of the statement's start.
///
/// A table whose ranges cannot be read (a column renamed or dropped since it
/// was watched: the sweep names it) is left out, so that it does not hold
/// back the others; its ranges wait.
pub async fn take_in(pool: &Pool, tables: &[WatchedTable]) -> anyhow::Result<TakenIn> {
    let client = db::client(pool).await?;
    let mut readable = Vec::new();
    for table in tables.iter().filter(|t| t.has_integer_ids()) {
        // Prepared once per table while it can be read.
        match client
            .prepare_cached(&range_rows(table, "$1", "$2", "$3"))
            .await
        {
            Ok(_) => readable.push(table.clone()),
            Err(e) => tracing::debug!(table = %table.name, error = %e, "ranges not readable"),
        }
    }
    let take_in = client
        .prepare_cached(&take_in_statement(&readable))
        .await
        .context("Failed to prepare taking in reported alerts")?;
    let params = take_in_params(&readable);
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let row = client
        .query_one(&take_in, &params)
        .await
        .context("Failed to take in reported alerts")?;
    Ok(TakenIn {
        reports: row.get::<_, i64>(0) as u64,
        ranges: row.get::<_, i64>(1) as u64,
        added: row.get::<_, i64>(2) as u64,
    })
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
