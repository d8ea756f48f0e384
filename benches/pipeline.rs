//! Pipeline benchmarks: commit → mail latency, burst drain rate, the writer's
//! trigger overhead and the cost of an idle sweep on a large table.
//!
//! Starts what it needs: a fresh database on the local PostgreSQL, a real SMTP
//! server on loopback and the service in-process. Prints a table and a JSON line.
//!
//! ```sh
//! cargo bench --bench pipeline
//! BENCH_SWEEP_ROWS=100000 cargo bench --bench pipeline    # smaller sweep tables
//! BENCH_ONLY=latency,burst cargo bench --bench pipeline    # some parts only
//! ```

#[allow(dead_code)]
#[path = "../tests/it/helpers.rs"]
mod helpers;

use std::time::{Duration, Instant};

use audit_alert::monitor::sweeper;
use helpers::*;
use serde_json::json;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mut results = serde_json::Map::new();
    let mut rows: Vec<(String, String)> = Vec::new();

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    if run("latency") {
        latency(&mut results, &mut rows).await;
    }
    if run("burst") {
        burst(&mut results, &mut rows).await;
    }
    if run("trigger") {
        trigger_overhead(&mut results, &mut rows).await;
    }
    if run("sweep") {
        sweep(&mut results, &mut rows).await;
    }

    println!("\n{:<58} value", "measure");
    for (k, v) in &rows {
        println!("{k:<58} {v}");
    }
    println!("{}", serde_json::Value::Object(results));
}

/// Single-row transactions at a steady rate; latency from commit to the SMTP
/// server holding the message.
async fn latency(
    results: &mut serde_json::Map<String, serde_json::Value>,
    rows: &mut Vec<(String, String)>,
) {
    let n = env_num("BENCH_LATENCY_ROWS", 1000);
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let app = db.start().await;
    let client = db.client().await;
    let rss_idle = rss_kib("VmRSS:");
    let mut committed = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..n {
        tick.tick().await;
        let id: i64 = client
            .query_one("INSERT INTO audit_results (verdict, url) VALUES ('不合格', 'https://example.com') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        committed.insert(id.to_string(), Instant::now());
    }
    let mails = smtp.wait_for_records(n as usize).await;
    let mut ms: Vec<f64> = mails
        .iter()
        .flat_map(|m| m.record_ids().into_iter().map(move |id| (id, m.at)))
        .filter_map(|(id, at)| {
            Some(
                at.saturating_duration_since(*committed.get(&id)?)
                    .as_secs_f64()
                    * 1e3,
            )
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let (p50, p90, p99, max) = (
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
    );
    rows.push((
        format!("commit → mail latency, {n} rows at 200/s: p50 / p90 / p99 / max"),
        format!("{p50:.2} / {p90:.2} / {p99:.2} / {max:.2} ms"),
    ));
    rows.push(("mails for those rows".into(), mails.len().to_string()));
    results.insert(
        "latency_ms".into(),
        json!({"p50": p50, "p90": p90, "p99": p99, "max": max, "rows": n, "mails": mails.len()}),
    );
    results.insert("rss_idle_kib".into(), json!(rss_idle));
    app.stop().await;
}

/// A burst written while delivery is paused, then drained: alerted records/s.
async fn burst(
    results: &mut serde_json::Map<String, serde_json::Value>,
    rows: &mut Vec<(String, String)>,
) {
    let n = env_num("BENCH_BURST_ROWS", 100_000);
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    set_config(&client, "monitor_enabled", "false").await;
    let digest = env_num("BENCH_DIGEST", 200).to_string();
    set_config(&client, "digest_max_records", &digest).await;
    let app = db.start().await;
    for _ in 0..n / 1000 {
        insert_audit_rows(&client, 1000, "不合格").await;
    }
    let start = Instant::now();
    set_config(&client, "monitor_enabled", "true").await;
    let first = smtp.wait_for_count(1).await[0].at;
    let mails = smtp.wait_for_records(n as usize).await;
    let last = mails.iter().map(|m| m.at).max().unwrap();
    let secs = last.duration_since(start).as_secs_f64();
    let rate = n as f64 / secs;
    rows.push((
        format!("burst drain, {n} rows, digests of {digest}: records/s"),
        format!("{rate:.0}"),
    ));
    rows.push((
        "burst: mails sent / time to first mail".into(),
        format!(
            "{} / {:.1} ms",
            mails.len(),
            first.duration_since(start).as_secs_f64() * 1e3
        ),
    ));
    rows.push((
        "process RSS peak (service + harness + SMTP server)".into(),
        format!("{} MiB", rss_kib("VmHWM:") / 1024),
    ));
    results.insert("burst".into(), json!({"rows": n, "records_per_s": rate, "mails": mails.len(), "first_mail_ms": first.duration_since(start).as_secs_f64() * 1e3}));
    results.insert("rss_peak_kib".into(), json!(rss_kib("VmHWM:")));
    app.stop().await;
}

/// The same inserts into a watched table and an identical unwatched one,
/// alternated, as single-row transactions and as 1,000-row statements.
async fn trigger_overhead(
    results: &mut serde_json::Map<String, serde_json::Value>,
    rows: &mut Vec<(String, String)>,
) {
    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE plain_results (LIKE audit_results INCLUDING ALL)")
        .await
        .unwrap();
    let rounds = env_num("BENCH_TRIGGER_ROUNDS", 7);
    for verdict in ["合格", "不合格"] {
        for (shape, statements, per_statement) in [
            ("single-row transactions", 500, 1),
            ("1000-row statements", 20, 1000),
        ] {
            let mut with = Vec::new();
            let mut without = Vec::new();
            for _ in 0..rounds {
                for (table, into) in [
                    ("audit_results", &mut with),
                    ("plain_results", &mut without),
                ] {
                    let sql = format!(
                        "INSERT INTO {table} (verdict, url, reason)
                         SELECT $1, 'https://example.com/' || g, 'r' FROM generate_series(1, $2::bigint) g"
                    );
                    let stmt = client.prepare(&sql).await.unwrap();
                    let t = Instant::now();
                    for _ in 0..statements {
                        client
                            .execute(&stmt, &[&verdict, &(per_statement as i64)])
                            .await
                            .unwrap();
                    }
                    into.push(t.elapsed().as_secs_f64());
                }
            }
            let (w, wo) = (median(with), median(without));
            let ratio = w / wo;
            let label = if verdict == "合格" {
                "passing"
            } else {
                "alerting"
            };
            rows.push((
                format!("trigger overhead, {label} rows, {shape}"),
                format!(
                    "{:+.1} % ({:.1} ms vs {:.1} ms)",
                    (ratio - 1.0) * 100.0,
                    w * 1e3,
                    wo * 1e3
                ),
            ));
            results.insert(
                format!("trigger_ratio_{label}_{}", per_statement),
                json!(ratio),
            );
        }
    }
}

/// An idle sweep on large tables (every flagged row already has its alert),
/// at each size of `BENCH_SWEEP_ROWS` (comma-separated) to show how it grows.
async fn sweep(
    results: &mut serde_json::Map<String, serde_json::Value>,
    rows: &mut Vec<(String, String)>,
) {
    let sizes = std::env::var("BENCH_SWEEP_ROWS").unwrap_or_else(|_| "1000000,10000000".into());
    let mut figures = Vec::new();
    for n in sizes
        .split(',')
        .filter_map(|s| s.trim().parse::<i64>().ok())
    {
        let (idle_ms, full_ms, setup) = sweep_table_of(n).await;
        rows.push((
            format!("idle sweep, {n} rows / {} flagged: median of 21", n / 10),
            format!("{idle_ms:.2} ms (full comparison {full_ms:.0} ms; setup {setup:.0} s)"),
        ));
        figures.push(json!({"rows": n, "idle_ms": idle_ms, "full_ms": full_ms}));
    }
    results.insert("sweep".into(), json!(figures));
}

async fn sweep_table_of(n: i64) -> (f64, f64, f64) {
    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    let t = Instant::now();
    // Written with triggers bypassed and the alerts recorded in bulk, as a
    // long-running installation would have them.
    client
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             INSERT INTO audit_results (verdict, url)
             SELECT CASE WHEN g % 10 = 0 THEN '不合格' ELSE '合格' END, 'https://example.com/' || g
               FROM generate_series(1, {n}) g;
             SET session_replication_role = origin;
             INSERT INTO email_sent_log (table_name, record_id, verdict, status, sent_at)
             SELECT 'audit_results', id::text, verdict, 'sent', now() FROM audit_results WHERE verdict = '不合格';
             UPDATE watched_tables SET sweep_watermark = (SELECT max(id) FROM audit_results),
                                       sweep_horizon = (SELECT max(id) FROM audit_results);"
        ))
        .await
        .unwrap();
    for table in ["audit_results", "email_sent_log"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .unwrap();
    }
    let setup = t.elapsed().as_secs_f64();
    let pool = audit_alert::db::pool(&db.config().database, 2).unwrap();
    let snapshot = audit_alert::monitor::control::Snapshot::load(&pool, None)
        .await
        .unwrap();
    let table: Vec<_> = snapshot
        .tables
        .iter()
        .filter(|t| t.name == "audit_results")
        .cloned()
        .collect();
    let mut idle = Vec::new();
    for _ in 0..21 {
        let report = sweeper::sweep(&pool, &table, false).await.unwrap();
        assert_eq!(report.found, 0);
        idle.push(report.duration.as_secs_f64() * 1e3);
    }
    let full = sweeper::sweep(&pool, &table, true).await.unwrap();
    assert_eq!(full.found, 0);
    pool.close();
    (median(idle), full.duration.as_secs_f64() * 1e3, setup)
}
