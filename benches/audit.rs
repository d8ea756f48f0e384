//! Audit-log benchmarks: enqueue cost on the request path, writer throughput,
//! and API throughput with auditing on and off (wrk in a second process).
//!
//! ```sh
//! cargo bench --bench audit
//! ```

#[allow(dead_code)]
#[path = "../tests/it/helpers.rs"]
mod helpers;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use audit_alert::audit_log::writer::{self, Entry};
use helpers::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

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
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Requests per second wrk measured, or None when wrk is missing.
fn wrk(url: &str, token: &str, seconds: u32) -> Option<f64> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{seconds}s"),
            "-H",
            &format!("Authorization: Bearer {token}"),
            url,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[tokio::main]
async fn main() {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut results = serde_json::Map::new();

    // Enqueue cost and writer throughput.
    let db = TestDb::new().await;
    db.migrate().await;
    let pool = audit_alert::db::pool(&db.config().database, 4).unwrap();
    let n = 200_000;
    let stop = CancellationToken::new();
    let (queue, task) = writer::start(pool.clone(), n, stop.clone());
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
    rows.push((
        format!("audit enqueue cost, {n} entries: p50 / p99"),
        format!("{p50:.2} / {p99:.2} µs"),
    ));
    rows.push((
        "audit writer throughput".into(),
        format!("{rate:.0} entries/s"),
    ));
    results.insert("enqueue_us".into(), json!({"p50": p50, "p99": p99}));
    results.insert("writer_entries_per_s".into(), json!(rate));
    stop.cancel();
    task.await.unwrap();

    // API throughput, auditing on and off, alternated.
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
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..6 {
        let audited = round % 2 == 0;
        let mut config = db.config_with(&[("LOG_LEVEL", "warn")]);
        config.audit_enabled = audited;
        let app = audit_alert::app::App::start(&config).await.unwrap();
        let url = format!("http://{}/api/config/recipients", app.addr());
        let Some(rps) = wrk(&url, ADMIN_TOKEN, seconds) else {
            rows.push((
                "API throughput".into(),
                "skipped: wrk is not installed".into(),
            ));
            app.stop().await;
            break;
        };
        if audited {
            on.push(rps)
        } else {
            off.push(rps)
        }
        app.stop().await;
    }
    if !on.is_empty() {
        on.sort_by(f64::total_cmp);
        off.sort_by(f64::total_cmp);
        let (m_on, m_off) = (percentile(&on, 0.5), percentile(&off, 0.5));
        rows.push((
            "GET /api/config/recipients, auditing on (median of 3)".into(),
            format!("{m_on:.0} req/s"),
        ));
        rows.push((
            "GET /api/config/recipients, auditing off (median of 3)".into(),
            format!("{m_off:.0} req/s"),
        ));
        rows.push((
            "throughput with auditing / without".into(),
            format!("{:.1} %", m_on / m_off * 100.0),
        ));
        results.insert(
            "api_rps".into(),
            json!({"audit_on": m_on, "audit_off": m_off, "ratio": m_on / m_off}),
        );
    }

    println!("\n{:<58} value", "measure");
    for (k, v) in &rows {
        println!("{k:<58} {v}");
    }
    println!("{}", serde_json::Value::Object(results));
}
