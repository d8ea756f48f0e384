//! Verifying the audit log: every entry's hash recomputed from its canonical
//! form, every link to the entry before it, every place of every chain from
//! its recorded start (genesis, or where a retention purge cut it), every
//! checkpoint's signature and head. Names the first entry that was changed,
//! inserted or removed, and how.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::{pin_mut, TryStreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{IsolationLevel, Row, Transaction};
use uuid::Uuid;

use super::chain::{self, Canonical, Hash};
use crate::crypto::SecretBox;

/// What a log that verifies holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub entries: u64,
    pub chains: u64,
    /// Checkpoints checked (signed ones, when the key is known).
    pub checkpoints: u64,
    /// Entries from before chaining began: counted, not verifiable.
    pub unchained: u64,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "audit log verified: {} entries in {} chain(s), {} checkpoint(s)",
            self.entries, self.chains, self.checkpoints
        )?;
        if let (Some(first), Some(last)) = (self.first, self.last) {
            write!(f, ", {} to {}", first.to_rfc3339(), last.to_rfc3339())?;
        }
        if self.unchained > 0 {
            write!(
                f,
                "; {} entries from before chaining, counted",
                self.unchained
            )?;
        }
        Ok(())
    }
}

/// The first thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tampering {
    /// Its content no longer has the hash it was written with.
    Changed {
        audit_id: String,
        chain_id: Uuid,
        seq: i64,
    },
    /// It does not follow the entry before it: inserted, or the chain rewritten.
    Inserted { audit_id: String, why: String },
    /// Places of a chain are missing.
    Removed { chain_id: Uuid, from: i64, to: i64 },
    /// The chain ends before its last signed checkpoint.
    Truncated {
        chain_id: Uuid,
        last: i64,
        signed: i64,
    },
    /// The chain differs from what a signed checkpoint says it was.
    Rewritten {
        chain_id: Uuid,
        seq: i64,
        audit_id: String,
    },
    /// A checkpoint or a purge's record whose signature does not hold.
    Forged { what: String },
    /// Entries from before chaining were added or removed.
    Unchained { recorded: i64, found: i64 },
}

impl fmt::Display for Tampering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Changed { audit_id, chain_id, seq } => write!(
                f,
                "entry {audit_id} (chain {chain_id}, #{seq}) was changed: its content no longer has its hash"
            ),
            Self::Inserted { audit_id, why } => write!(f, "entry {audit_id} was inserted: {why}"),
            Self::Removed { chain_id, from, to } if from == to => {
                write!(f, "entry #{from} of chain {chain_id} was removed")
            }
            Self::Removed { chain_id, from, to } => {
                write!(f, "entries #{from} to #{to} of chain {chain_id} were removed")
            }
            Self::Truncated { chain_id, last, signed } => write!(
                f,
                "entries after #{last} of chain {chain_id} were removed: a signed checkpoint counts {signed}"
            ),
            Self::Rewritten { chain_id, seq, audit_id } => write!(
                f,
                "chain {chain_id} was rewritten up to #{seq} (entry {audit_id}): it no longer matches its signed checkpoint"
            ),
            Self::Forged { what } => write!(f, "{what}"),
            Self::Unchained { recorded, found } => write!(
                f,
                "{recorded} entries from before chaining were recorded, {found} are there: entries were {} among them",
                if found > recorded { "inserted" } else { "removed" }
            ),
        }
    }
}

/// Where a chain starts, as recorded.
struct Start {
    seq: i64,
    prev: Hash,
}

struct Checkpoint {
    head: Hash,
}

/// Verifies the entries written in `[since, until)` (all when `None`).
/// `secrets` check signatures; without them, signatures are not checked.
pub async fn verify(
    pool: &Pool,
    secrets: Option<&SecretBox>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> anyhow::Result<Result<Summary, Tampering>> {
    let mut client = crate::db::client(pool).await?;
    // One snapshot for the chains, the checkpoints and the entries. Only
    // the entries' places are sorted (in memory when they fit), and each
    // entry is then fetched by its place: sorting whole entries took most
    // of the time, and nothing came before it ended. The statement's cost
    // would have PostgreSQL compile it first (JIT), for longer than it runs.
    let client = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("Failed to start reading the audit log")?;
    client
        .batch_execute(
            "SET LOCAL work_mem = '64MB'; SET LOCAL enable_hashjoin = off;
             SET LOCAL enable_mergejoin = off; SET LOCAL jit = off",
        )
        .await
        .context("Failed to start reading the audit log")?;
    let starts = chain_starts(&client, secrets).await?;
    let starts = match starts {
        Ok(s) => s,
        Err(t) => return Ok(Err(t)),
    };
    let checkpoints = match checkpoints(&client, secrets).await? {
        Ok(c) => c,
        Err(t) => return Ok(Err(t)),
    };
    let mut summary = Summary::default();
    if since.is_none() && until.is_none() {
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(sum(entries), 0)::bigint FROM audit_unchained),
                        (SELECT count(*) FROM audit_log WHERE chain_id IS NULL)",
                &[],
            )
            .await
            .context("Failed to count entries from before chaining")?;
        let (recorded, found): (i64, i64) = (row.get(0), row.get(1));
        if recorded != found {
            return Ok(Err(Tampering::Unchained { recorded, found }));
        }
        summary.unchained = found as u64;
    }

    // Batches are read and hashed on blocking threads, several at once, while
    // the next ones are read; the checks of order take them in the order read.
    let (batches, hashed) = mpsc::channel::<JoinHandle<Vec<Read>>>(IN_FLIGHT);
    let whole = since.is_none() && until.is_none();
    let (reading, checked) = tokio::join!(
        read(&client, since, until, batches),
        in_order(hashed, &starts, &checkpoints, whole, summary)
    );
    // A failed read ends the batches early: it comes first.
    reading.context("Failed to read the audit log")?;
    checked
}

/// The checks of order over the entries read: each chain from its recorded
/// start (or, for a time range, from its first entry in the range), each
/// entry at its place and after the one before it, every checkpoint's head,
/// and no chain shorter than its last checkpoint.
async fn in_order(
    mut hashed: mpsc::Receiver<JoinHandle<Vec<Read>>>,
    starts: &HashMap<Uuid, Start>,
    checkpoints: &HashMap<Uuid, BTreeMap<i64, Checkpoint>>,
    whole: bool,
    mut summary: Summary,
) -> anyhow::Result<Result<Summary, Tampering>> {
    // The chain being read: its id, the place and hash the next entry must have.
    let mut current: Option<(Uuid, i64, Hash)> = None;
    let mut seen_chains: Vec<Uuid> = Vec::new();
    while let Some(batch) = hashed.recv().await {
        for entry in batch.await.context("Failed to hash audit-log entries")? {
            let Read {
                audit_id,
                time,
                chain_id,
                seq,
                link,
                intact,
            } = entry;
            let Some((prev, hash)) = link else {
                return Ok(Err(Tampering::Changed {
                    audit_id,
                    chain_id,
                    seq,
                }));
            };
            if current.map_or(true, |(id, _, _)| id != chain_id) {
                if let Some((id, next, _)) = current {
                    if let Some(t) = truncated(checkpoints, id, next - 1, whole) {
                        return Ok(Err(t));
                    }
                }
                let Some(start) = starts.get(&chain_id) else {
                    let why = format!("it names chain {chain_id}, which was never started");
                    return Ok(Err(Tampering::Inserted { audit_id, why }));
                };
                seen_chains.push(chain_id);
                current = Some(if whole {
                    (chain_id, start.seq, start.prev)
                } else {
                    // A time range starts where it starts.
                    (chain_id, seq, prev)
                });
            }
            let (_, next, expected_prev) = current.expect("set above");
            if seq < next {
                let why = format!("a second entry at #{seq} of chain {chain_id}");
                return Ok(Err(Tampering::Inserted { audit_id, why }));
            }
            if seq > next {
                return Ok(Err(Tampering::Removed {
                    chain_id,
                    from: next,
                    to: seq - 1,
                }));
            }
            if !intact {
                return Ok(Err(Tampering::Changed {
                    audit_id,
                    chain_id,
                    seq,
                }));
            }
            if prev != expected_prev {
                let why = format!(
                    "#{seq} of chain {chain_id} does not follow the entry before it (inserted there, or the chain was rewritten)"
                );
                return Ok(Err(Tampering::Inserted { audit_id, why }));
            }
            if let Some(cp) = checkpoints.get(&chain_id).and_then(|c| c.get(&seq)) {
                if cp.head != hash {
                    return Ok(Err(Tampering::Rewritten {
                        chain_id,
                        seq,
                        audit_id,
                    }));
                }
                summary.checkpoints += 1;
            }
            summary.entries += 1;
            summary.first = Some(summary.first.map_or(time, |t| t.min(time)));
            summary.last = Some(summary.last.map_or(time, |t| t.max(time)));
            current = Some((chain_id, seq + 1, hash));
        }
    }
    if let Some((id, next, _)) = current {
        if let Some(t) = truncated(checkpoints, id, next - 1, whole) {
            return Ok(Err(t));
        }
    }
    // A chain whose every entry is gone, while a checkpoint counts some.
    if whole {
        for (id, start) in starts {
            if !seen_chains.contains(id) {
                if let Some(t) = truncated(checkpoints, *id, start.seq - 1, true) {
                    return Ok(Err(t));
                }
            }
        }
    }
    summary.chains = seen_chains.len() as u64;
    Ok(Ok(summary))
}

/// Batches of this many entries are hashed at once, up to `IN_FLIGHT` of
/// them while the next is read.
const BATCH: usize = 1024;
const IN_FLIGHT: usize = 4;

/// An entry as read: its place, and its link when its content still hashes,
/// with the hash before it it names, to the hash it has.
struct Read {
    audit_id: String,
    time: DateTime<Utc>,
    chain_id: Uuid,
    seq: i64,
    /// The stored (hash before, hash); `None` when they are not hashes.
    link: Option<(Hash, Hash)>,
    /// Whether the content, after the hash before it, still has its hash.
    intact: bool,
}

/// Reads the chained entries of `[since, until)` in chain order and hands
/// them on in batches, each being hashed on a blocking thread.
async fn read(
    client: &Transaction<'_>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    batches: mpsc::Sender<JoinHandle<Vec<Read>>>,
) -> anyhow::Result<()> {
    let rows = client
        .query_raw(
            "SELECT a.audit_id, a.operation_time, a.operation_ip, a.operator_id,
                    a.operator_org_id, a.role_id, a.request_params::text,
                    a.response_result::text, a.operation_url, a.operation_method,
                    a.operation_desc, a.operation_result, a.error_msg, a.duration_ms,
                    a.chain_id, a.chain_seq, a.prev_hash, a.entry_hash
               FROM (SELECT ctid AS place, chain_id, chain_seq FROM audit_log
                      WHERE chain_id IS NOT NULL
                        AND ($1::timestamptz IS NULL OR operation_time >= $1)
                        AND ($2::timestamptz IS NULL OR operation_time < $2)
                      ORDER BY chain_id, chain_seq) o
              CROSS JOIN LATERAL (SELECT * FROM audit_log a WHERE a.ctid = o.place) a
              ORDER BY o.chain_id, o.chain_seq",
            [&since as &(dyn tokio_postgres::types::ToSql + Sync), &until],
        )
        .await?;
    pin_mut!(rows);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let row = rows.try_next().await?;
        let done = row.is_none();
        batch.extend(row);
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let hashing = tokio::task::spawn_blocking(move || full.iter().map(hashed).collect());
            if batches.send(hashing).await.is_err() {
                // The check stopped at something found.
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// An entry's place, its stored link, and whether its content still hashes
/// to its stored hash from the stored hash before it.
fn hashed(row: &Row) -> Read {
    let audit_id: &str = row.get(0);
    let time: DateTime<Utc> = row.get(1);
    let chain_id: Uuid = row.get(14);
    let seq: i64 = row.get(15);
    let stored = chain::hash_of(row.get::<_, &[u8]>(16)).zip(chain::hash_of(row.get(17)));
    let intact = stored.is_some_and(|(prev, hash)| {
        let request: Option<Value> = row.get::<_, Option<&str>>(6).map(json);
        let response: Option<Value> = row.get::<_, Option<&str>>(7).map(json);
        let canonical = Canonical {
            audit_id,
            chain_id,
            chain_seq: seq,
            duration_ms: row.get(13),
            error_msg: row.get(12),
            operation_desc: row.get(10),
            operation_ip: row.get(2),
            operation_method: row.get(9),
            operation_result: row.get(11),
            operation_time: time,
            operation_url: row.get(8),
            operator_id: row.get(3),
            operator_org_id: row.get(4),
            request_params: request.as_ref(),
            response_result: response.as_ref(),
            role_id: row.get(5),
        };
        canonical.hash(&prev) == hash
    });
    Read {
        audit_id: audit_id.to_owned(),
        time,
        chain_id,
        seq,
        link: stored,
        intact,
    }
}

/// The stored JSON as a value; text that is not JSON stays text.
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Whether chain `id`, read up to `last`, ends before its last checkpoint.
fn truncated(
    checkpoints: &HashMap<Uuid, BTreeMap<i64, Checkpoint>>,
    id: Uuid,
    last: i64,
    whole: bool,
) -> Option<Tampering> {
    let signed = *checkpoints.get(&id)?.keys().next_back()?;
    (whole && signed > last).then_some(Tampering::Truncated {
        chain_id: id,
        last,
        signed,
    })
}

async fn chain_starts(
    client: &Transaction<'_>,
    secrets: Option<&SecretBox>,
) -> anyhow::Result<Result<HashMap<Uuid, Start>, Tampering>> {
    let mut starts = HashMap::new();
    for r in client
        .query(
            "SELECT chain_id, genesis, first_seq, first_prev, cut_signature FROM audit_chains",
            &[],
        )
        .await
        .context("Failed to read the audit-log chains")?
    {
        let id: Uuid = r.get(0);
        let genesis = chain::hash_of(r.get::<_, &[u8]>(1));
        if genesis != Some(chain::genesis(id)) {
            return Ok(Err(Tampering::Forged {
                what: format!("chain {id} names a genesis that is not its own"),
            }));
        }
        let seq: i64 = r.get(2);
        let prev = match r.get::<_, Option<&[u8]>>(3).and_then(chain::hash_of) {
            Some(prev) if seq > 1 => {
                let signature: Option<&[u8]> = r.get(4);
                let message = chain::cut_message(id, seq, &prev);
                if let Some(secrets) = secrets {
                    if !signature.is_some_and(|s| secrets.verify_signature(&message, s)) {
                        return Ok(Err(Tampering::Forged {
                            what: format!(
                                "the record of where chain {id} starts (#{seq}) is not signed by this SECRET_KEY"
                            ),
                        }));
                    }
                }
                prev
            }
            _ => chain::genesis(id),
        };
        starts.insert(id, Start { seq, prev });
    }
    Ok(Ok(starts))
}

async fn checkpoints(
    client: &Transaction<'_>,
    secrets: Option<&SecretBox>,
) -> anyhow::Result<Result<HashMap<Uuid, BTreeMap<i64, Checkpoint>>, Tampering>> {
    let mut all: HashMap<Uuid, BTreeMap<i64, Checkpoint>> = HashMap::new();
    for r in client
        .query(
            "SELECT c.chain_id, c.chain_seq, c.head_hash, c.signed_at, c.signature
               FROM audit_checkpoints c JOIN audit_chains s USING (chain_id)
              WHERE c.chain_seq >= s.first_seq",
            &[],
        )
        .await
        .context("Failed to read the audit-log checkpoints")?
    {
        let (id, seq): (Uuid, i64) = (r.get(0), r.get(1));
        let forged = || Tampering::Forged {
            what: format!("checkpoint #{seq} of chain {id} is not signed by this SECRET_KEY"),
        };
        let Some(head) = chain::hash_of(r.get::<_, &[u8]>(2)) else {
            return Ok(Err(forged()));
        };
        if let Some(secrets) = secrets {
            let message = chain::checkpoint_message(id, seq, &head, r.get(3));
            let signature: Option<&[u8]> = r.get(4);
            if !signature.is_some_and(|s| secrets.verify_signature(&message, s)) {
                return Ok(Err(forged()));
            }
        }
        all.entry(id).or_default().insert(seq, Checkpoint { head });
    }
    Ok(Ok(all))
}
