//! The audit-log export part: a large audit log streamed over HTTP, as CSV
//! and as JSON Lines, into a sink that only counts; entries/s and how much the
//! process's peak RSS grew while it streamed (flat: the rows are not held).

use std::time::Instant;

use serde_json::json;

use crate::helpers::*;
use crate::{env_num, rss_kib, Results, Rows};

/// Resets the process's peak RSS (`VmHWM`) to its current RSS; false when
/// the kernel does not allow it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Fills `audit_log` with `n` entries like the service writes, in one
/// statement, times ending now (the retention purge keeps them).
async fn fill(client: &tokio_postgres::Client, n: i64) {
    client
        .execute(
            "INSERT INTO audit_log (audit_id, operation_time, operation_ip, operator_id,
                 operator_org_id, role_id, request_params, operation_url, operation_method,
                 operation_desc, operation_result, error_msg, duration_ms)
             SELECT md5(g::text), now() - make_interval(secs => ($1 - g) / 100.0),
                 '10.0.0.' || g % 250, 'user' || g % 50, 'org-' || g % 5, 'operator',
                 jsonb_build_object('path', '/api/config/recipients', 'body',
                     jsonb_build_object('table_name', 'audit_results',
                         'email', 'z***@example.com', 'name', '张*三', 'n', g)),
                 '/api/config/recipients', 'POST', '新增收件人',
                 CASE WHEN g % 20 = 0 THEN '1' ELSE '0' END,
                 CASE WHEN g % 20 = 0 THEN 'table_name: ''nope'' is not watched' END,
                 g % 50
               FROM generate_series(1, $1::bigint) g",
            &[&n],
        )
        .await
        .expect("fill audit_log");
}

/// 1,000,000 entries (`BENCH_EXPORT_ROWS`) exported in each format.
pub async fn export(results: &mut Results, rows: &mut Rows) {
    let n = env_num("BENCH_EXPORT_ROWS", 1_000_000);
    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    let filled = Instant::now();
    fill(&client, n as i64).await;
    client
        .batch_execute("VACUUM ANALYZE audit_log")
        .await
        .unwrap();
    rows.push((
        format!("audit export: filling {n} entries (one INSERT … SELECT)"),
        format!("{:.1} s", filled.elapsed().as_secs_f64()),
    ));
    let app = audit_alert::app::App::start(&db.config_with(&[("LOG_LEVEL", "warn")]))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    // Only the filled entries (POST), not the audit entries of the exports (GET).
    for format in ["csv", "jsonl"] {
        let before = rss_kib("VmRSS:");
        let exact = reset_peak_rss();
        let started = Instant::now();
        let mut resp = http
            .get(format!(
                "http://{}/api/audit-logs/export?format={format}&method=POST",
                app.addr()
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "export {format}");
        let first_byte = started.elapsed().as_secs_f64();
        let (mut bytes, mut lines) = (0u64, 0u64);
        while let Some(chunk) = resp.chunk().await.unwrap() {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        let peak = rss_kib("VmHWM:");
        // The CSV has a header line; no filled entry holds a line break.
        let entries = if format == "csv" { lines - 1 } else { lines };
        assert_eq!(entries, n, "every entry exported as {format}");
        let rate = n as f64 / seconds;
        let growth = peak.saturating_sub(before);
        rows.push((
            format!("audit export {format}, {n} entries over HTTP"),
            format!(
                "{rate:.0} entries/s ({:.0} MiB in {seconds:.1} s, first byte after {first_byte:.2} s)",
                bytes as f64 / 1048576.0
            ),
        ));
        rows.push((
            format!("audit export {format}: process peak RSS growth"),
            if exact {
                format!(
                    "{:.1} MiB ({:.1} → {:.1} MiB)",
                    growth as f64 / 1024.0,
                    before as f64 / 1024.0,
                    peak as f64 / 1024.0
                )
            } else {
                "not measured: the peak RSS cannot be reset here".into()
            },
        ));
        results.insert(
            format!("export_{format}"),
            json!({"entries": n, "entries_per_s": rate, "bytes": bytes, "seconds": seconds,
                   "first_byte_s": first_byte, "rss_before_kib": before,
                   "rss_peak_growth_kib": exact.then_some(growth)}),
        );
    }
    app.stop().await;
}
