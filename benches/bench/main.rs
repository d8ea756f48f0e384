//! Every benchmark, one command: `cargo bench` runs the parts below in order
//! and prints one table and one JSON line at the end.
//!
//! Each part starts what it needs: a fresh database on the local PostgreSQL
//! (`TEST_DATABASE_URL`, as for the tests), a real SMTP server on loopback and
//! the service in-process; `api` runs wrk in a second process.
//!
//! ```sh
//! cargo bench                                  # everything
//! BENCH_ONLY=latency,polling cargo bench       # some parts only
//! BENCH_SWEEP_ROWS=100000 cargo bench          # smaller sweep tables
//! ```
//!
//! Parts (names for `BENCH_ONLY`, comma-separated):
//!
//! - `latency`: commit → mail latency, single-row transactions at 200/s,
//!   delivery woken by NOTIFY; also the process RSS when idle.
//! - `polling`: the same latency with the listener not listening for alerts
//!   (`Config::listen_for_alerts = false`) and `check_interval` 1 minute, rows
//!   at a steady rate for about two minutes; with `latency`, also the ratio of
//!   the two medians. Takes about three minutes.
//! - `burst`: a burst written while delivery is paused, then drained:
//!   alerted records/s; also the process RSS peak.
//! - `oncall`: `latency` and `burst` again with 100 silences and 50 routes
//!   that every alert is checked against (none holds it).
//! - `trigger`: the writer's cost of the triggers, watched table against an
//!   identical unwatched one; also that of a trigger whose function does
//!   nothing, the least any row trigger costs.
//! - `sweep`: an idle sweep on large tables, at each size.
//! - `enqueue`: audit-log enqueue cost on the request path.
//! - `writer`: audit-log writer throughput, hashing, chaining and signing,
//!   then the throughput of verifying what it wrote, median of three (one
//!   run measures `enqueue` and `writer` together).
//! - `api`: req/s and p99 of a read and a write call, auditing on and off
//!   (wrk, medians of three alternated runs; skipped without wrk).
//! - `export`: the audit-log export streamed over HTTP, CSV and JSON Lines,
//!   to a sink that counts bytes: entries/s and the process's peak RSS growth
//!   during each export.
//!
//! Knobs (environment, defaults in brackets):
//!
//! - `BENCH_ONLY`: parts to run [all]
//! - `BENCH_LATENCY_ROWS`: rows of `latency` [1000]
//! - `BENCH_POLLING_ROWS`, `BENCH_POLLING_RATE`: rows of `polling` and rows
//!   per second [1000 at 8/s, about 125 s]
//! - `BENCH_POLLING_INTERVAL`: `check_interval` of `polling`, minutes [1];
//!   the dispatcher's idle re-check still runs every 60 s
//! - `BENCH_BURST_ROWS`: rows of `burst` [100000]
//! - `BENCH_DIGEST`: `digest_max_records` of `burst` [200]
//! - `BENCH_TRIGGER_ROUNDS`: alternated rounds of `trigger` [7]
//! - `BENCH_SWEEP_ROWS`: table sizes of `sweep`, comma-separated
//!   [1000000,10000000]
//! - `BENCH_WRK_SECONDS`: length of each wrk run of `api` [5]
//! - `BENCH_EXPORT_ROWS`: audit-log entries of `export` [1000000]

#[allow(dead_code)]
#[path = "../../tests/it/helpers.rs"]
mod helpers;

mod audit;
mod export;
mod pipeline;

use serde_json::json;

/// Figures for the JSON line, by name.
pub type Results = serde_json::Map<String, serde_json::Value>;
/// Lines of the table: measure, value.
pub type Rows = Vec<(String, String)>;

/// Every part, in the order it runs.
const PARTS: [&str; 10] = [
    "latency", "polling", "burst", "oncall", "trigger", "sweep", "enqueue", "writer", "api",
    "export",
];

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

pub fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The parts `BENCH_ONLY` names, or all of them; exits on an unknown name.
fn selected_parts() -> Vec<&'static str> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let names: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(unknown) = names.iter().find(|n| !PARTS.contains(n)) {
        eprintln!(
            "BENCH_ONLY: unknown part '{unknown}'; parts are {}",
            PARTS.join(", ")
        );
        std::process::exit(2);
    }
    PARTS
        .into_iter()
        .filter(|p| names.is_empty() || names.contains(p))
        .collect()
}

#[tokio::main]
async fn main() {
    let parts = selected_parts();
    let run = |name: &str| parts.contains(&name);
    let mut results = Results::new();
    let mut rows = Rows::new();

    if run("latency") {
        pipeline::latency(&mut results, &mut rows, false).await;
    }
    if run("polling") {
        pipeline::polling(&mut results, &mut rows).await;
    }
    if run("burst") {
        pipeline::burst(&mut results, &mut rows, false).await;
    }
    if run("oncall") {
        pipeline::latency(&mut results, &mut rows, true).await;
        pipeline::burst(&mut results, &mut rows, true).await;
    }
    if run("trigger") {
        pipeline::trigger_overhead(&mut results, &mut rows).await;
    }
    if run("sweep") {
        pipeline::sweep(&mut results, &mut rows).await;
    }
    if run("enqueue") || run("writer") {
        audit::enqueue_and_writer(&mut results, &mut rows, run("enqueue"), run("writer")).await;
    }
    if run("api") {
        audit::api(&mut results, &mut rows).await;
    }
    if run("export") {
        export::export(&mut results, &mut rows).await;
    }

    // What NOTIFY buys: delivery by polling against delivery on notification.
    let p50 = |key: &str| results.get(key)?.get("p50")?.as_f64();
    if let (Some(polling_s), Some(notify_ms)) = (p50("polling_s"), p50("latency_ms")) {
        let ratio = polling_s * 1e3 / notify_ms;
        rows.push((
            "polling p50 / NOTIFY p50".into(),
            format!("{ratio:.0} × ({polling_s:.2} s / {notify_ms:.2} ms)"),
        ));
        results.insert("polling_vs_notify_p50".into(), json!(ratio));
    }

    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        .max(58);
    println!("\n{:<width$} value", "measure");
    for (k, v) in &rows {
        println!("{k:<width$} {v}");
    }
    println!("{}", serde_json::Value::Object(results));
}
