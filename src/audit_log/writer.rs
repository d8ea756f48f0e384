//! The asynchronous writer: requests only enqueue into a bounded queue; one
//! task batches the entries into INSERTs. While the database is unreachable
//! the batch is kept and retried, so nothing is lost; when the queue is full,
//! callers are refused (the HTTP layer answers 503) rather than unaudited.
//!
//! The writer keeps this copy's hash chain (see `chain`): each entry gets its
//! place and hashes when it joins a batch, so that a batch written again after
//! a failure is the same; the chain's genesis is recorded with its first
//! batch, and its head is signed into `audit_checkpoints` (and the log) at
//! most every `AUDIT_CHECKPOINT_SECONDS` (60) while entries arrive, once more that long
//! after the last of them, and when the writer stops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use super::chain::{self, Canonical, Hash, Link};
use crate::crypto::SecretBox;
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
    /// Its place in the writer's chain, given when it joins a batch.
    #[serde(skip)]
    pub link: Option<Link>,
}

impl Entry {
    /// The stored columns, in the shape that is hashed.
    pub fn canonical(&self, chain_id: Uuid, seq: i64) -> Canonical<'_> {
        Canonical {
            audit_id: &self.audit_id,
            chain_id,
            chain_seq: seq,
            duration_ms: self.duration_ms,
            error_msg: self.error_msg.as_deref(),
            operation_desc: &self.operation_desc,
            operation_ip: self.operation_ip.as_deref(),
            operation_method: &self.operation_method,
            operation_result: self.operation_result,
            operation_time: self.operation_time,
            operation_url: &self.operation_url,
            operator_id: self.operator_id.as_deref(),
            operator_org_id: self.operator_org_id.as_deref(),
            request_params: self.request_params.as_ref(),
            response_result: self.response_result.as_ref(),
            role_id: self.role_id.as_deref(),
        }
    }

    /// The entry as PostgreSQL can store it: text and `jsonb` cannot hold
    /// U+0000, which a caller may send (`%00`, `"\u0000"`); it becomes U+FFFD.
    /// Without this, one such call would fail every write of its batch.
    pub fn storable(mut self) -> Self {
        // PostgreSQL keeps microseconds; the hash must be of what it keeps.
        self.operation_time = self.operation_time.trunc_subsecs(6);
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

/// This copy's chain: where the next entry goes, and what is signed.
struct Chain {
    id: Uuid,
    next_seq: i64,
    head: Hash,
    /// Whether `audit_chains` holds the genesis (written with the first batch).
    recorded: bool,
    /// The last signed place, and when.
    signed_seq: i64,
    signed_at: Instant,
    /// How often the head is signed while entries arrive.
    every: Duration,
    secrets: Option<SecretBox>,
}

impl Chain {
    fn new(secrets: Option<SecretBox>, every: Duration) -> Self {
        let id = Uuid::now_v7();
        Self {
            id,
            next_seq: 1,
            head: chain::genesis(id),
            recorded: false,
            signed_seq: 0,
            signed_at: Instant::now(),
            every,
            secrets,
        }
    }

    /// Whether written entries wait for a signature (with no batch pending).
    fn has_unsigned(&self) -> bool {
        self.recorded && self.next_seq - 1 > self.signed_seq
    }

    /// How long until a checkpoint is due.
    fn until_due(&self) -> Duration {
        self.every.saturating_sub(self.signed_at.elapsed())
    }

    /// Gives the entries of `batch` that have none their place and hashes.
    fn link(&mut self, batch: &mut [Entry]) {
        for e in batch.iter_mut().filter(|e| e.link.is_none()) {
            let prev = self.head;
            let hash = e.canonical(self.id, self.next_seq).hash(&prev);
            e.link = Some(Link {
                chain_id: self.id,
                seq: self.next_seq,
                prev,
                hash,
            });
            self.head = hash;
            self.next_seq += 1;
        }
    }

    /// The head written so far: (seq, hash), once anything is.
    fn written_head(&self, batch: &[Entry]) -> Option<(i64, Hash)> {
        let unwritten = batch.len() as i64;
        let seq = self.next_seq - 1 - unwritten;
        let hash = match batch.first().and_then(|e| e.link) {
            Some(first) => first.prev,
            None => self.head,
        };
        (seq > 0).then_some((seq, hash))
    }

    /// Signs the written head when it moved and it is time (or `now`).
    async fn checkpoint(&mut self, pool: &Pool, batch: &[Entry], now: bool) {
        let Some((seq, head)) = self.written_head(batch) else {
            return;
        };
        if seq == self.signed_seq || (!now && self.signed_at.elapsed() < self.every) {
            return;
        }
        let signed_at = Utc::now().trunc_subsecs(6);
        let message = chain::checkpoint_message(self.id, seq, &head, signed_at);
        let signature = self.secrets.as_ref().map(|s| s.sign(&message).to_vec());
        let stored = async {
            crate::db::client(pool)
                .await?
                .execute(
                    "INSERT INTO audit_checkpoints (chain_id, chain_seq, head_hash, signed_at, signature)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&self.id, &seq, &head.as_slice(), &signed_at, &signature],
                )
                .await
                .context("Failed to store an audit-log checkpoint")
        };
        match stored.await {
            Ok(_) => {
                self.signed_seq = seq;
                self.signed_at = Instant::now();
                tracing::info!(
                    chain_id = %self.id,
                    chain_seq = seq,
                    head_hash = chain::hex(&head),
                    signed_at = %signed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    signature = signature.as_deref().map(chain::hex).unwrap_or_default(),
                    "audit log checkpoint"
                );
            }
            Err(e) => {
                // Tried again after another interval, not at once.
                self.signed_at = Instant::now();
                tracing::warn!(error = format!("{e:#}"), "audit log checkpoint not stored");
            }
        }
    }
}

/// Starts the writer; after `shutdown` it writes what is queued, signs the
/// head of its chain, then exits. Cancel it only once nothing can enqueue
/// any more (the server has stopped). `secrets` sign the checkpoints, at
/// most every `checkpoint_every` while entries arrive.
pub fn start(
    pool: Pool,
    capacity: usize,
    secrets: Option<SecretBox>,
    checkpoint_every: Duration,
    shutdown: CancellationToken,
) -> (AuditQueue, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(capacity);
    let stats = Arc::new(WriterStats::default());
    let queue = AuditQueue {
        sender,
        capacity,
        stats: stats.clone(),
    };
    let task = tokio::spawn(run(
        pool,
        receiver,
        stats,
        Chain::new(secrets, checkpoint_every),
        shutdown,
    ));
    (queue, task)
}

async fn run(
    pool: Pool,
    mut receiver: mpsc::Receiver<Entry>,
    stats: Arc<WriterStats>,
    mut chain: Chain,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    let mut failures = 0u32;
    loop {
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled(), if receiver.is_empty() => {
                    chain.checkpoint(&pool, &batch, true).await;
                    return;
                }
                n = receiver.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        chain.checkpoint(&pool, &batch, true).await;
                        return;
                    }
                    if n < BATCH && !shutdown.is_cancelled() {
                        tokio::time::sleep(LINGER).await;
                    }
                }
                // Entries written since the last signature, and none
                // arriving: sign them once the interval is over.
                _ = tokio::time::sleep(chain.until_due()), if chain.has_unsigned() => {
                    chain.checkpoint(&pool, &batch, false).await;
                    continue;
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
        chain.link(&mut batch);
        let started = Instant::now();
        let genesis = (!chain.recorded).then(|| (chain.id, chain::genesis(chain.id)));
        match insert(&pool, &batch, genesis).await {
            Ok(()) => {
                chain.recorded = true;
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats
                    .last_write_micros
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                batch.clear();
                failures = 0;
                chain.checkpoint(&pool, &batch, false).await;
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
/// `genesis`: the chain's, to record with its first batch.
async fn insert(pool: &Pool, batch: &[Entry], genesis: Option<(Uuid, Hash)>) -> anyhow::Result<()> {
    use futures_util::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};

    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start an audit write")?;
    if let Some((chain_id, genesis)) = genesis {
        tx.execute(
            "INSERT INTO audit_chains (chain_id, genesis) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&chain_id, &genesis.as_slice()],
        )
        .await
        .context("Failed to record the audit-log chain")?;
    }
    let sink = tx
        .copy_in(
            "COPY audit_log (audit_id, operation_time, operation_ip, operator_id, operator_org_id,
                 role_id, request_params, response_result, operation_url, operation_method,
                 operation_desc, operation_result, error_msg, duration_ms, chain_id, chain_seq,
                 prev_hash, entry_hash) FROM STDIN BINARY",
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
        Type::UUID,
        Type::INT8,
        Type::BYTEA,
        Type::BYTEA,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let copied: Result<(), tokio_postgres::Error> = async {
        for e in batch {
            let link = e.link.expect("linked before it is written");
            let row: [&(dyn ToSql + Sync); 18] = [
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
                &link.chain_id,
                &link.seq,
                &link.prev.as_slice(),
                &link.hash.as_slice(),
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
    let rows: Vec<serde_json::Value> = batch
        .iter()
        .map(|e| {
            let mut row = serde_json::to_value(e)?;
            if let (Some(link), Some(fields)) = (e.link, row.as_object_mut()) {
                fields.insert("chain_id".into(), link.chain_id.to_string().into());
                fields.insert("chain_seq".into(), link.seq.into());
                fields.insert("prev_hash".into(), chain::hex(&link.prev).into());
                fields.insert("entry_hash".into(), chain::hex(&link.hash).into());
            }
            Ok(row)
        })
        .collect::<serde_json::Result<_>>()
        .context("Failed to encode audit entries")?;
    let rows = serde_json::Value::Array(rows);
    client
        .execute(
            "INSERT INTO audit_log (audit_id, operation_time, operation_ip, operator_id,
                 operator_org_id, role_id, request_params, response_result, operation_url,
                 operation_method, operation_desc, operation_result, error_msg, duration_ms,
                 chain_id, chain_seq, prev_hash, entry_hash)
             SELECT audit_id, operation_time, operation_ip, operator_id, operator_org_id, role_id,
                    request_params, response_result, operation_url, operation_method,
                    operation_desc, operation_result, error_msg, duration_ms,
                    chain_id, chain_seq, decode(prev_hash, 'hex'), decode(entry_hash, 'hex')
               FROM jsonb_to_recordset($1::jsonb) AS e(audit_id text, operation_time timestamptz,
                    operation_ip text, operator_id text, operator_org_id text, role_id text,
                    request_params jsonb, response_result jsonb, operation_url text,
                    operation_method text, operation_desc text, operation_result text,
                    error_msg text, duration_ms integer, chain_id uuid, chain_seq bigint,
                    prev_hash text, entry_hash text)
             ON CONFLICT (audit_id) DO NOTHING",
            &[&rows],
        )
        .await
        .context("Failed to insert audit entries")?;
    Ok(())
}

/// Deletes entries older than `days`; one copy at a time. Returns how many.
///
/// A chain is cut, not holed: its entries go by place, up to the first one
/// written within the retention, and where it now starts is recorded (and
/// signed) in `audit_chains`, so that what remains still verifies.
pub async fn purge(pool: &Pool, days: u64, secrets: Option<&SecretBox>) -> anyhow::Result<u64> {
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
    let days = days.min(i32::MAX as u64) as i32;
    let cutoff: DateTime<Utc> = tx
        .query_one("SELECT now() - make_interval(days => $1)", &[&days])
        .await
        .context("Failed to open the purge")?
        .get(0);
    let unchained = tx
        .execute(
            "DELETE FROM audit_log WHERE chain_id IS NULL AND operation_time < $1",
            &[&cutoff],
        )
        .await
        .context("Failed to purge the audit log")?;
    if unchained > 0 {
        tx.execute(
            "UPDATE audit_unchained SET entries = entries - $1",
            &[&(unchained as i64)],
        )
        .await
        .context("Failed to purge the audit log")?;
    }
    let mut purged = unchained;
    // Each chain with entries past the retention: the place it now starts at.
    let cuts = tx
        .query(
            "SELECT s.chain_id, coalesce(k.keep_from, k.last + 1),
                    coalesce((SELECT prev_hash FROM audit_log l
                               WHERE l.chain_id = s.chain_id AND l.chain_seq = k.keep_from),
                             (SELECT entry_hash FROM audit_log l
                               WHERE l.chain_id = s.chain_id AND l.chain_seq = k.last))
               FROM audit_chains s
               JOIN (SELECT chain_id,
                            min(chain_seq) FILTER (WHERE operation_time >= $1) AS keep_from,
                            max(chain_seq) AS last,
                            min(operation_time) AS oldest
                       FROM audit_log WHERE chain_id IS NOT NULL GROUP BY chain_id) k
                 USING (chain_id)
              WHERE k.oldest < $1",
            &[&cutoff],
        )
        .await
        .context("Failed to find where the audit-log chains are cut")?;
    for cut in &cuts {
        let (chain_id, first_seq): (Uuid, i64) = (cut.get(0), cut.get(1));
        let Some(first_prev) = cut.get::<_, Option<&[u8]>>(2).and_then(chain::hash_of) else {
            continue;
        };
        purged += tx
            .execute(
                "DELETE FROM audit_log WHERE chain_id = $1 AND chain_seq < $2",
                &[&chain_id, &first_seq],
            )
            .await
            .context("Failed to purge the audit log")?;
        let signature = secrets.map(|s| {
            s.sign(&chain::cut_message(chain_id, first_seq, &first_prev))
                .to_vec()
        });
        tx.execute(
            "UPDATE audit_chains SET first_seq = $2, first_prev = $3, cut_signature = $4
              WHERE chain_id = $1",
            &[&chain_id, &first_seq, &first_prev.as_slice(), &signature],
        )
        .await
        .context("Failed to record where an audit-log chain starts")?;
    }
    tx.commit().await.context("Failed to finish the purge")?;
    Ok(purged)
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
            link: None,
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
