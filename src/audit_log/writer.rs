//! The asynchronous writer: requests only enqueue into a bounded queue; one
//! task batches the entries into INSERTs. While the database is unreachable
//! the batch is kept and retried, so nothing is lost; when the queue is full,
//! callers are refused (the HTTP layer answers 503) rather than unaudited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Entries written per COPY at most.
const BATCH: usize = 1000;
/// How long the writer lets a small batch grow before writing it: one write
/// per interval under load instead of one per request.
const LINGER: Duration = Duration::from_millis(20);
/// Advisory lock class for the daily retention purge.
const PURGE_LOCK: i64 = 0x6175_6469_745f_7072;

/// One audited call.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub audit_id: String,
    pub operation_time: DateTime<Utc>,
    pub operation_ip: Option<String>,
    pub operator_id: Option<String>,
    pub operator_org_id: Option<String>,
    pub role_id: Option<String>,
    pub request_params: Option<serde_json::Value>,
    pub response_result: Option<serde_json::Value>,
    pub operation_url: String,
    pub operation_method: String,
    pub operation_desc: String,
    pub operation_result: &'static str,
    pub error_msg: Option<String>,
    pub duration_ms: i32,
}

impl Entry {
    /// The entry as PostgreSQL can store it: text and `jsonb` cannot hold
    /// U+0000, which a caller may send (`%00`, `"\u0000"`); it becomes U+FFFD.
    /// Without this, one such call would fail every write of its batch.
    pub fn storable(mut self) -> Self {
        for v in [&mut self.request_params, &mut self.response_result]
            .into_iter()
            .flatten()
        {
            without_nul(v);
        }
        for text in [
            &mut self.operation_ip,
            &mut self.operator_id,
            &mut self.operator_org_id,
            &mut self.role_id,
            &mut self.error_msg,
        ]
        .into_iter()
        .flatten()
        .chain([
            &mut self.operation_url,
            &mut self.operation_method,
            &mut self.operation_desc,
        ]) {
            replace_nul(text);
        }
        self
    }
}

fn replace_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

fn without_nul(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => replace_nul(s),
        Value::Array(items) => items.iter_mut().for_each(without_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(mut k, v)| {
                        replace_nul(&mut k);
                        (k, v)
                    })
                    .collect();
            }
            map.values_mut().for_each(without_nul);
        }
        _ => {}
    }
}

/// Counters for status pages and metrics.
#[derive(Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    /// Entries given up on; stays 0 (nothing is dropped, callers are refused).
    pub dropped: AtomicU64,
    pub failed_writes: AtomicU64,
    pub last_write_micros: AtomicU64,
}

/// The enqueue side, held by the HTTP layer.
#[derive(Clone)]
pub struct AuditQueue {
    sender: mpsc::Sender<Entry>,
    capacity: usize,
    stats: Arc<WriterStats>,
}

impl AuditQueue {
    /// Reserves a place for one entry; `None` when the queue is full.
    pub fn reserve(&self) -> Option<mpsc::OwnedPermit<Entry>> {
        self.sender.clone().try_reserve_owned().ok()
    }

    /// Entries waiting to be written.
    pub fn depth(&self) -> usize {
        self.capacity - self.sender.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

/// Starts the writer; after `shutdown` it writes what is queued, then exits.
/// Cancel it only once nothing can enqueue any more (the server has stopped).
pub fn start(
    pool: Pool,
    capacity: usize,
    shutdown: CancellationToken,
) -> (AuditQueue, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(capacity);
    let stats = Arc::new(WriterStats::default());
    let queue = AuditQueue {
        sender,
        capacity,
        stats: stats.clone(),
    };
    let task = tokio::spawn(run(pool, receiver, stats, shutdown));
    (queue, task)
}

async fn run(
    pool: Pool,
    mut receiver: mpsc::Receiver<Entry>,
    stats: Arc<WriterStats>,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    let mut failures = 0u32;
    loop {
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled(), if receiver.is_empty() => return,
                n = receiver.recv_many(&mut batch, BATCH) => {
                    if n == 0 { return; }
                    if n < BATCH && !shutdown.is_cancelled() {
                        tokio::time::sleep(LINGER).await;
                    }
                }
            }
        } else if failures == 0 {
            // Top up without waiting, so a burst goes out in large batches.
            // Not while retrying: then the queue must fill, so that callers
            // are refused instead of piling entries up in memory.
            while batch.len() < BATCH {
                match receiver.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        let started = Instant::now();
        match insert(&pool, &batch).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats
                    .last_write_micros
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                batch.clear();
                failures = 0;
            }
            Err(e) => {
                // Keep the batch; try again after a capped backoff.
                failures = failures.saturating_add(1);
                stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(error = format!("{e:#}"), kept = batch.len(), retry_in = ?wait, "audit log write failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Writes a batch with binary COPY, the cheapest way in; a batch whose earlier
/// attempt did commit after all falls back to an INSERT that skips what exists.
async fn insert(pool: &Pool, batch: &[Entry]) -> anyhow::Result<()> {
    use futures_util::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};

    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start an audit write")?;
    let sink = tx
        .copy_in(
            "COPY audit_log (audit_id, operation_time, operation_ip, operator_id, operator_org_id,
                 role_id, request_params, response_result, operation_url, operation_method,
                 operation_desc, operation_result, error_msg, duration_ms) FROM STDIN BINARY",
        )
        .await
        .context("Failed to start copying audit entries")?;
    let types = [
        Type::BPCHAR,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
        Type::JSONB,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::BPCHAR,
        Type::TEXT,
        Type::INT4,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let copied: Result<(), tokio_postgres::Error> = async {
        for e in batch {
            let row: [&(dyn ToSql + Sync); 14] = [
                &e.audit_id,
                &e.operation_time,
                &e.operation_ip,
                &e.operator_id,
                &e.operator_org_id,
                &e.role_id,
                &e.request_params,
                &e.response_result,
                &e.operation_url,
                &e.operation_method,
                &e.operation_desc,
                &e.operation_result,
                &e.error_msg,
                &e.duration_ms,
            ];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await.map(|_| ())
    }
    .await;
    match copied {
        Ok(()) => tx.commit().await.context("Failed to commit audit entries"),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            drop(tx);
            insert_skipping_existing(&client, batch).await
        }
        Err(e) => Err(e).context("Failed to copy audit entries"),
    }
}

async fn insert_skipping_existing(
    client: &deadpool_postgres::Client,
    batch: &[Entry],
) -> anyhow::Result<()> {
    let rows = serde_json::to_value(batch).context("Failed to encode audit entries")?;
    client
        .execute(
            "INSERT INTO audit_log (audit_id, operation_time, operation_ip, operator_id,
                 operator_org_id, role_id, request_params, response_result, operation_url,
                 operation_method, operation_desc, operation_result, error_msg, duration_ms)
             SELECT audit_id, operation_time, operation_ip, operator_id, operator_org_id, role_id,
                    request_params, response_result, operation_url, operation_method,
                    operation_desc, operation_result, error_msg, duration_ms
               FROM jsonb_to_recordset($1::jsonb) AS e(audit_id text, operation_time timestamptz,
                    operation_ip text, operator_id text, operator_org_id text, role_id text,
                    request_params jsonb, response_result jsonb, operation_url text,
                    operation_method text, operation_desc text, operation_result text,
                    error_msg text, duration_ms integer)
             ON CONFLICT (audit_id) DO NOTHING",
            &[&rows],
        )
        .await
        .context("Failed to insert audit entries")?;
    Ok(())
}

/// Deletes entries older than `days`; one copy at a time. Returns how many.
pub async fn purge(pool: &Pool, days: u64) -> anyhow::Result<u64> {
    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start the purge")?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PURGE_LOCK])
        .await
        .context("Failed to take the purge lock")?
        .get(0);
    if !locked {
        return Ok(0);
    }
    tx.batch_execute("SET LOCAL audit_alert.retention_purge = 'on'")
        .await
        .context("Failed to open the purge")?;
    let n = tx
        .execute(
            "DELETE FROM audit_log WHERE operation_time < now() - make_interval(days => $1::int)",
            &[&(days.min(i32::MAX as u64) as i32)],
        )
        .await
        .context("Failed to purge the audit log")?;
    tx.commit().await.context("Failed to finish the purge")?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_entries_hold_no_nul_in_keys_values_or_text() {
        let entry = Entry {
            audit_id: "0".repeat(32),
            operation_time: Utc::now(),
            operation_ip: None,
            operator_id: Some("a\0b".into()),
            operator_org_id: None,
            role_id: None,
            request_params: Some(serde_json::json!({"k\u{0}": ["v\u{0}", {"x": "\u{0}"}], "n": 1})),
            response_result: None,
            operation_url: "/api/x".into(),
            operation_method: "GET".into(),
            operation_desc: "d".into(),
            operation_result: "1",
            error_msg: Some("bad\0".into()),
            duration_ms: 0,
        }
        .storable();
        assert_eq!(
            entry.request_params.unwrap(),
            serde_json::json!({"k\u{FFFD}": ["v\u{FFFD}", {"x": "\u{FFFD}"}], "n": 1})
        );
        assert_eq!(entry.operator_id.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(entry.error_msg.as_deref(), Some("bad\u{FFFD}"));
    }
}
