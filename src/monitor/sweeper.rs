//! The fallback sweep: finds flagged rows that have no alert yet (triggers
//! bypassed, rows written while no trigger existed) and records them. What
//! the triggers reported into the inbox is taken in first, so that such rows
//! have their alert by then.
//!
//! Tables with integer ids are swept incrementally above a watermark, so a
//! sweep with nothing to do costs two index look-ups however large the table.
//! Other tables, and the first sweep after start, compare every flagged row.

use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;

use super::intake;
use super::snapshot::WatchedTable;
use crate::db::quote_ident;

/// Advisory lock class for sweeping a table; the second key is the table id.
const SWEEP_LOCK: i32 = 0x5357;
/// How long a sweep goes on taking in reported alerts before it reads the
/// tables anyway (a backlog left while no copy ran is taken in at about
/// 100,000 alerts a second).
const TAKE_IN_FOR: Duration = Duration::from_secs(30);

/// What one sweep did.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Alerts created for rows no trigger had reported.
    pub found: u64,
    pub tables: usize,
    /// Tables skipped because another copy was sweeping them.
    pub skipped: usize,
    /// Tables that could not be swept (a column renamed or dropped since the
    /// table was watched, say), with the reason; the others still were.
    pub failed: Vec<(String, String)>,
    pub duration: Duration,
}

/// Sweeps every table; `full` compares every flagged row, not only new ones.
/// One table that cannot be swept does not hold back the others; the sweep
/// fails only when no table could be swept. Reported alerts are taken in
/// first, through `intake` ([`intake::intake_pool`]).
pub async fn sweep(
    pool: &Pool,
    intake: &Pool,
    tables: &[WatchedTable],
    full: bool,
) -> anyhow::Result<SweepReport> {
    let started = Instant::now();
    take_in_reported(intake, tables).await?;
    let mut report = SweepReport::default();
    let mut first_error = None;
    for table in tables {
        match sweep_table(pool, table, full).await {
            Ok(Some(found)) => {
                report.found += found;
                report.tables += 1;
            }
            Ok(None) => report.skipped += 1,
            Err(e) => {
                tracing::error!(table = %table.name, error = format!("{e:#}"), "table not swept");
                report.failed.push((table.name.clone(), format!("{e:#}")));
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error.filter(|_| report.tables + report.skipped == 0) {
        return Err(e);
    }
    report.duration = started.elapsed();
    Ok(report)
}

/// Takes in what the triggers reported, so that the sweep records only rows
/// no trigger reported. The sweep does not look for its rows in the inbox:
/// the inbox has no index, and a planner that expects a few new rows would
/// read it whole for each of them. For at most [`TAKE_IN_FOR`]; what is
/// reported after that (or after the last statement started) and not yet
/// taken in when the sweep reads the table is recorded by the sweep, still
/// once, and not counted as found.
async fn take_in_reported(intake: &Pool, tables: &[WatchedTable]) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < TAKE_IN_FOR {
        if !intake::take_in(intake, tables).await?.more() {
            break;
        }
    }
    Ok(())
}

/// `None` when another copy holds the table's sweep lock.
async fn sweep_table(pool: &Pool, table: &WatchedTable, full: bool) -> anyhow::Result<Option<u64>> {
    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start a sweep")?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1, $2)",
            &[&SWEEP_LOCK, &table.id],
        )
        .await
        .context("Failed to take the sweep lock")?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let col = quote_ident(&table.id_column);
    let verdict = quote_ident(&table.verdict_column);
    // Records every flagged row without an alert; counts as found only those
    // no trigger reported either: a row reported after the sweep took in and
    // before it read the table is recorded here too (its report is then
    // taken in as nothing new), but it was not missed. The inbox (and the
    // ranges, for integer ids) is read only for the rows recorded here,
    // mostly none.
    let in_ranges = if table.has_integer_ids() {
        format!(
            "AND NOT EXISTS (SELECT 1 FROM alert_inbox_ranges g
                              WHERE g.table_name = $1::text
                                AND r.record_id::bigint BETWEEN g.from_id
                                    AND coalesce(g.through_id, g.from_id + {}))",
            intake::RANGE_WIDTH - 1
        )
    } else {
        String::new()
    };
    let insert = |range: &str| {
        format!(
            "WITH recorded AS (
                 INSERT INTO email_sent_log (table_name, record_id, verdict)
                 SELECT $1::text, t.{col}::text, t.{verdict}::text FROM {rel} t
                  WHERE t.{verdict}::text = ANY($2) {range}
                    AND NOT EXISTS (SELECT 1 FROM email_sent_log e
                                     WHERE e.table_name = $1::text AND e.record_id = t.{col}::text
                                       AND e.verdict = t.{verdict}::text)
                 ON CONFLICT (table_name, record_id, verdict) DO NOTHING
                 RETURNING record_id, verdict)
             SELECT count(*) FROM recorded r
              WHERE NOT EXISTS (SELECT 1 FROM alert_inbox i
                                 WHERE i.table_name = $1::text AND i.record_id = r.record_id
                                   AND i.verdict = r.verdict) {in_ranges}",
            rel = table.relation
        )
    };
    let count = |row: tokio_postgres::Row| row.get::<_, i64>(0) as u64;
    let found = if table.has_integer_ids() {
        let row = tx
            .query_one(
                "SELECT sweep_watermark, sweep_horizon FROM watched_tables WHERE id = $1 FOR UPDATE",
                &[&table.id],
            )
            .await
            .context("Failed to read the sweep watermark")?;
        let (watermark, horizon): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        let max: Option<i64> = tx
            .query_one(
                &format!("SELECT max({col})::bigint FROM {}", table.relation),
                &[],
            )
            .await
            .with_context(|| format!("Failed to read the newest id of {}", table.name))?
            .get(0);
        let from = if full { None } else { watermark };
        let found = tx
            .query_one(
                &insert(&format!("AND t.{col} > $3::bigint")),
                &[&table.name, &table.verdicts, &from.unwrap_or(i64::MIN)],
            )
            .await
            .map(count)
            .with_context(|| format!("Failed to sweep {}", table.name))?;
        // Next time, start at what the previous sweep saw as newest: a row
        // with a smaller id committed after this sweep is still looked at.
        tx.execute(
            "UPDATE watched_tables SET sweep_watermark = $2, sweep_horizon = $3 WHERE id = $1",
            &[&table.id, &horizon, &max],
        )
        .await
        .context("Failed to move the sweep watermark")?;
        found
    } else {
        tx.query_one(&insert(""), &[&table.name, &table.verdicts])
            .await
            .map(count)
            .with_context(|| format!("Failed to sweep {}", table.name))?
    };
    tx.commit().await.context("Failed to finish a sweep")?;
    if found > 0 {
        tracing::warn!(table = %table.name, found, "sweep found flagged rows no trigger reported");
    }
    Ok(Some(found))
}
