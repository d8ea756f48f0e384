//! Watched tables: watching one (validating it, installing its triggers and
//! recording the flagged rows it already holds as `baseline`, or `pending`
//! when a backfill is asked for, all in one transaction), and reading the
//! rows behind alerts.

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;

use serde_json::{Map, Value};

use super::outbox::AlertStatus;
use super::snapshot::WatchedTable;
use crate::db::{self, quote_ident};

/// Verdicts that raise an alert unless a table says otherwise.
pub const DEFAULT_VERDICTS: [&str; 2] = ["不合格", "不确定"];

/// What to watch.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    /// `table` (in `public`) or `schema.table`.
    pub table: String,
    pub id_column: String,
    pub verdict_column: String,
    pub verdicts: Vec<String>,
    /// Mail the flagged rows already present instead of recording them as baseline.
    pub backfill: bool,
}

/// What watching found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub table: String,
    pub id_type: String,
    /// Flagged rows already present: recorded as baseline, or queued by a backfill.
    pub existing_flagged: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("table \"{0}\" does not exist")]
    UnknownTable(String),
    #[error("{0}")]
    BadColumn(String),
    #[error("at least one alerting verdict is needed")]
    NoVerdicts,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Starts watching a table (or updates how it is watched).
pub async fn watch(pool: &Pool, req: &WatchRequest) -> Result<Watched, WatchError> {
    if req.verdicts.iter().all(|v| v.trim().is_empty()) {
        return Err(WatchError::NoVerdicts);
    }
    let (schema, name) = match req.table.split_once('.') {
        Some((s, n)) => (s, n),
        None => ("public", req.table.as_str()),
    };
    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start watching")?;
    let relation: String = tx
        .query_opt(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await
        .context("Failed to look up the table")?
        .map(|r| r.get(0))
        .ok_or_else(|| WatchError::UnknownTable(req.table.clone()))?;
    // Creating the trigger locks out writers until commit, so every row is
    // either present now (baseline) or fires the trigger later.
    let id_type: String = tx
        .query_one(
            "SELECT audit_alert_install_trigger($1::text::regclass, $2, $3, $4, $5)",
            &[
                &relation,
                &req.table,
                &req.id_column,
                &req.verdict_column,
                &req.verdicts,
            ],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == SqlState::UNDEFINED_COLUMN || *c == SqlState::DATATYPE_MISMATCH => {
                WatchError::BadColumn(
                    e.as_db_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_default(),
                )
            }
            _ => WatchError::Other(anyhow::Error::new(e).context("Failed to install the trigger")),
        })?
        .get(0);
    let (id, verdict) = (
        quote_ident(&req.id_column),
        quote_ident(&req.verdict_column),
    );
    let existing_flagged = tx
        .execute(
            &format!(
                "INSERT INTO email_sent_log (table_name, record_id, verdict, status)
                 SELECT $1::text, t.{id}::text, t.{verdict}::text, $3 FROM {relation} t
                  WHERE t.{verdict}::text = ANY($2)
                 ON CONFLICT (table_name, record_id, verdict) DO NOTHING"
            ),
            &[
                &req.table,
                &req.verdicts,
                &if req.backfill {
                    AlertStatus::Pending
                } else {
                    AlertStatus::Baseline
                }
                .as_str(),
            ],
        )
        .await
        .context("Failed to record the rows already present")?;
    let integer_ids = matches!(id_type.as_str(), "integer" | "bigint" | "smallint");
    let newest: Option<i64> = if integer_ids {
        tx.query_one(&format!("SELECT max({id})::bigint FROM {relation}"), &[])
            .await
            .context("Failed to read the newest id")?
            .get(0)
    } else {
        None
    };
    tx.execute(
        "INSERT INTO watched_tables (table_name, relation, id_column, id_type, verdict_column,
                                     alert_verdicts, sweep_watermark, sweep_horizon)
         VALUES ($1, $2::text::regclass, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (table_name) DO UPDATE
            SET id_column = EXCLUDED.id_column, id_type = EXCLUDED.id_type,
                verdict_column = EXCLUDED.verdict_column, alert_verdicts = EXCLUDED.alert_verdicts,
                enabled = true, sweep_watermark = EXCLUDED.sweep_watermark,
                sweep_horizon = EXCLUDED.sweep_horizon, updated_at = now()",
        &[
            &req.table,
            &relation,
            &req.id_column,
            &id_type,
            &req.verdict_column,
            &req.verdicts,
            &newest,
        ],
    )
    .await
    .context("Failed to record the watched table")?;
    // Its resolution notices follow its alerting verdicts.
    tx.execute(
        "SELECT audit_alert_install_resolution(relation, verdict_column, alert_verdicts, true)
           FROM watched_tables WHERE table_name = $1 AND resolution_notice",
        &[&req.table],
    )
    .await
    .context("Failed to install the resolution trigger")?;
    tx.commit().await.context("Failed to finish watching")?;
    tracing::info!(table = %req.table, existing_flagged, backfill = req.backfill, "watching table");
    Ok(Watched {
        table: req.table.clone(),
        id_type,
        existing_flagged,
    })
}

/// The verdict whose clearing a resolution notice tells.
pub const UNCERTAIN: &str = "不确定";

/// Turns a table's resolution notices on or off (installing or removing its
/// resolution trigger); `false` when the table is not watched.
pub async fn set_resolution_notice(
    pool: &Pool,
    table: &str,
    enabled: bool,
) -> anyhow::Result<bool> {
    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start changing resolution notices")?;
    let changed = tx
        .execute(
            "UPDATE watched_tables SET resolution_notice = $2, updated_at = now()
              WHERE table_name = $1",
            &[&table, &enabled],
        )
        .await
        .context("Failed to record resolution notices")?;
    if changed == 0 {
        return Ok(false);
    }
    tx.execute(
        "SELECT audit_alert_install_resolution(relation, verdict_column, alert_verdicts, $2)
           FROM watched_tables WHERE table_name = $1",
        &[&table, &enabled],
    )
    .await
    .context("Failed to install the resolution trigger")?;
    tx.commit()
        .await
        .context("Failed to finish changing resolution notices")?;
    Ok(true)
}

/// Stops watching: removes the triggers; alert history stays. `false` when
/// the table was not watched.
pub async fn unwatch(pool: &Pool, table: &str) -> anyhow::Result<bool> {
    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start unwatching")?;
    let Some(row) = tx
        .query_opt(
            "DELETE FROM watched_tables WHERE table_name = $1 RETURNING relation::text",
            &[&table],
        )
        .await
        .context("Failed to remove the watched table")?
    else {
        return Ok(false);
    };
    let relation: String = row.get(0);
    tx.execute(
        "SELECT audit_alert_remove_trigger($1::text::regclass)",
        &[&relation],
    )
    .await
    .context("Failed to remove the trigger")?;
    tx.commit().await.context("Failed to finish unwatching")?;
    Ok(true)
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
    let client = db::client(pool).await?;
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
