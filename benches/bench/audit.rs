//! Audit-log and API parts: enqueue cost on the request path, writer
//! throughput, and req/s and p99 of a read and a write call with auditing on
//! and off (wrk in a second process; medians of three alternated runs).

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use audit_alert::audit_log::writer::{self, Entry};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::{percentile, Results, Rows};

fn entry(i: usize) -> Entry {
    Entry {
        audit_id: audit_alert::audit_log::new_audit_id(),
        operation_time: chrono::Utc::now(),
        operation_ip: Some("127.0.0.1".into()),
        operator_id: Some("bench".into()),
        operator_org_id: Some("org".into()),
        role_id: Some("admin".into()),
        request_params: Some(
            json!({"path": "/api/config/recipients", "body": {"email": "z***@example.com", "n": i}}),
        ),
        response_result: None,
        operation_url: "/api/config/recipients".into(),
        operation_method: "POST".into(),
        operation_desc: "新增收件人".into(),
        operation_result: "0",
        error_msg: None,
        duration_ms: 1,
        link: None,
    }
    .storable()
}

/// Requests per second and p99 latency (ms) wrk measured, or None when wrk is missing.
fn wrk(url: &str, token: &str, seconds: u32, script: Option<&str>) -> Option<(f64, f64)> {
    let mut args = vec![
        "-t2".to_owned(),
        "-c32".to_owned(),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        "-H".to_owned(),
        format!("Authorization: Bearer {token}"),
    ];
    if let Some(s) = script {
        args.push("-s".into());
        args.push(s.into());
    }
    args.push(url.into());
    let out = Command::new("wrk").args(&args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|v| {
            let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n / 1e3,
                "s" => n * 1e3,
                _ => n,
            }
        })
        .unwrap_or(f64::NAN);
    Some((rps, p99))
}

/// Enqueue cost of each of 200,000 entries, and the rate the writer stores
/// them at; one run measures both, `enqueue` and `writer` say which to report.
pub async fn enqueue_and_writer(
    results: &mut Results,
    rows: &mut Rows,
    enqueue: bool,
    writer: bool,
) {
    let db = TestDb::new().await;
    db.migrate().await;
    let pool = audit_alert::db::pool(&db.config().database, 4).unwrap();
    let n = 200_000;
    let stop = CancellationToken::new();
    // Hashed, chained and signed, as the service writes.
    let secrets = audit_alert::crypto::SecretBox::from_key(&audit_alert::crypto::Secret::new(
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    ))
    .ok();
    let (queue, task) = writer::start(
        pool.clone(),
        n,
        secrets.clone(),
        Duration::from_secs(60),
        stop.clone(),
    );
    let entries: Vec<Entry> = (0..n).map(entry).collect();
    let mut costs = Vec::with_capacity(n);
    let started = Instant::now();
    for e in entries {
        let t = Instant::now();
        let permit = queue.reserve().expect("room in the queue");
        permit.send(e);
        costs.push(t.elapsed().as_secs_f64() * 1e6);
    }
    while queue.stats().written.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    costs.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&costs, 0.5), percentile(&costs, 0.99));
    if enqueue {
        rows.push((
            format!("audit enqueue cost, {n} entries: p50 / p99"),
            format!("{p50:.2} / {p99:.2} µs"),
        ));
        results.insert("enqueue_us".into(), json!({"p50": p50, "p99": p99}));
    }
    if writer {
        rows.push((
            "audit writer throughput".into(),
            format!("{rate:.0} entries/s"),
        ));
        results.insert("writer_entries_per_s".into(), json!(rate));
    }
    stop.cancel();
    task.await.unwrap();
    if writer {
        // Verifying what was written: every hash, link and checkpoint; the
        // median of three runs.
        let mut rates = Vec::new();
        let mut entries = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let summary =
                audit_alert::audit_log::verify::verify(&pool, secrets.as_ref(), None, None)
                    .await
                    .unwrap()
                    .expect("the log verifies");
            entries = summary.entries;
            rates.push(entries as f64 / started.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let rate = rates[1];
        rows.push((
            format!("audit verify, {entries} entries, median of 3"),
            format!("{rate:.0} entries/s"),
        ));
        results.insert("verify_entries_per_s".into(), json!(rate));
    }
}

/// API throughput, auditing on and off, alternated.
pub async fn api(results: &mut Results, rows: &mut Rows) {
    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    for i in 0..5 {
        client
            .execute(
                "INSERT INTO recipients_config (table_name, email, name) VALUES ('audit_results', $1, '张三')",
                &[&format!("r{i}@example.com")],
            )
            .await
            .unwrap();
    }
    let seconds = std::env::var("BENCH_WRK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let write = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/put_setting.lua");
    let mixed = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/mixed.lua");
    let calls = [
        ("GET /api/config/recipients", "/api/config/recipients", None),
        (
            "PUT /api/config/system/email_enabled",
            "/api/config/system/email_enabled",
            Some(write),
        ),
        (
            "mixed, 9 reads : 1 write",
            "/api/config/recipients",
            Some(mixed),
        ),
    ];
    for (label, path, script) in calls {
        let mut on = Vec::new();
        let mut off = Vec::new();
        for round in 0..6 {
            let audited = round % 2 == 0;
            let mut config = db.config_with(&[("LOG_LEVEL", "warn")]);
            config.audit_enabled = audited;
            let app = audit_alert::app::App::start(&config).await.unwrap();
            let url = format!("http://{}{path}", app.addr());
            let measured = wrk(&url, ADMIN_TOKEN, seconds, script);
            app.stop().await;
            let Some(m) = measured else {
                rows.push((
                    "API throughput".into(),
                    "skipped: wrk is not installed".into(),
                ));
                break;
            };
            if audited {
                on.push(m)
            } else {
                off.push(m)
            }
        }
        if on.is_empty() || off.is_empty() {
            continue;
        }
        let median = |v: &mut Vec<(f64, f64)>| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v[v.len() / 2]
        };
        let (m_on, m_off) = (median(&mut on), median(&mut off));
        rows.push((
            format!("{label}, auditing on: req/s, p99"),
            format!("{:.0}, {:.2} ms", m_on.0, m_on.1),
        ));
        rows.push((
            format!("{label}, auditing off: req/s, p99"),
            format!("{:.0}, {:.2} ms", m_off.0, m_off.1),
        ));
        rows.push((
            format!("{label}: with auditing / without"),
            format!("{:.1} %", m_on.0 / m_off.0 * 100.0),
        ));
        results.insert(
            label.to_owned(),
            json!({"audit_on_rps": m_on.0, "audit_on_p99_ms": m_on.1, "audit_off_rps": m_off.0, "audit_off_p99_ms": m_off.1, "ratio": m_on.0 / m_off.0}),
        );
    }
}
