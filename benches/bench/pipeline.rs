//! Pipeline parts: commit → mail latency on NOTIFY and by polling alone,
//! burst drain rate, the writer's trigger overhead and the cost of an idle
//! sweep on a large table.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use audit_alert::app::App;
use audit_alert::monitor::{self, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::{env_num, median, percentile, rss_kib, Results, Rows};

const RULES: &str = " with 100 silences and 50 routes";

/// On-call rules every alert is checked against, none of which holds the
/// benchmark's alerts: 100 silences of the same table (each with a verdict
/// and a condition on a column), and 50 recipients with a route (a verdict
/// and a condition), besides the on-call recipient who takes everything.
async fn add_silences_and_routes(client: &tokio_postgres::Client) {
    client
        .execute(
            "INSERT INTO silences (table_name, verdicts, conditions, starts_at, ends_at, comment, created_by)
             SELECT 'audit_results', ARRAY['不确定'],
                    jsonb_build_array(jsonb_build_object('column', 'url', 'op', 'prefix',
                                      'values', jsonb_build_array('https://elsewhere-' || g || '/'))),
                    now(), now() + interval '1 day', 'benchmark', 'bench'
               FROM generate_series(1, 100) g",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO recipients_config (table_name, email, name, verdicts, conditions)
             SELECT 'audit_results', 'route' || g || '@example.com', '路由', ARRAY['不合格'],
                    jsonb_build_array(jsonb_build_object('column', 'reason', 'op', 'equals',
                                      'values', jsonb_build_array('其他 ' || g)))
               FROM generate_series(1, 50) g",
            &[],
        )
        .await
        .unwrap();
}

/// Single-row transactions at a steady rate; latency from commit to the SMTP
/// server holding the message.
pub async fn latency(results: &mut Results, rows: &mut Rows, rules: bool) {
    let n = env_num("BENCH_LATENCY_ROWS", 1000);
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    if rules {
        add_silences_and_routes(&db.client().await).await;
    }
    let (label, key) = if rules {
        (RULES, "latency_ms_with_rules")
    } else {
        ("", "latency_ms")
    };
    let app = db.start().await;
    let client = db.client().await;
    let rss_idle = rss_kib("VmRSS:");
    let committed = write_steadily(&client, n, Duration::from_millis(5)).await;
    let mails = smtp.wait_for_records(n as usize).await;
    let [p50, p90, p99, max] = latencies(&mails, &committed).map(|s| s * 1e3);
    rows.push((
        format!("commit → mail latency{label}, {n} rows at 200/s: p50 / p90 / p99 / max"),
        format!("{p50:.2} / {p90:.2} / {p99:.2} / {max:.2} ms"),
    ));
    rows.push(("mails for those rows".into(), mails.len().to_string()));
    results.insert(
        key.into(),
        json!({"p50": p50, "p90": p90, "p99": p99, "max": max, "rows": n, "mails": mails.len()}),
    );
    results.insert("rss_idle_kib".into(), json!(rss_idle));
    app.stop().await;
}

/// The latency above with delivery left to polling: the listener does not
/// LISTEN for alerts (`listen_for_alerts = false`), `check_interval` is one
/// minute, rows come at a steady rate for about two minutes. The first sweep
/// after start (a full catch-up) is over before the first row.
///
/// The triggers still record the alerts; each periodic sweep wakes the
/// dispatcher, which delivers what waits, as polling would.
pub async fn polling(results: &mut Results, rows: &mut Rows) {
    let n = env_num("BENCH_POLLING_ROWS", 1000);
    let rate = env_num("BENCH_POLLING_RATE", 8).max(1);
    let minutes = env_num("BENCH_POLLING_INTERVAL", 1);
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    set_config(&client, "check_interval", &minutes.to_string()).await;
    let mut config = db.config();
    config.listen_for_alerts = false;
    let app = App::start(&config).await.expect("start the service");
    wait_until_listening(&app).await;
    let stop_tally = CancellationToken::new();
    let tally = tally_sweeps(app.worker().clone(), stop_tally.clone());
    let committed = write_steadily(&client, n, Duration::from_secs_f64(1.0 / rate as f64)).await;
    // The last rows wait at most one interval; two and a margin for a slow one.
    let within = Duration::from_secs(2 * 60 * minutes + 30);
    let mails = wait_for_records_within(&smtp, n as usize, within).await;
    let [p50, p90, p99, max] = latencies(&mails, &committed);
    stop_tally.cancel();
    let sweeps = tally.await.unwrap();
    rows.push((
        format!(
            "no NOTIFY (check_interval {minutes} min), {n} rows at {rate}/s: p50 / p90 / p99 / max"
        ),
        format!("{p50:.2} / {p90:.2} / {p99:.2} / {max:.2} s"),
    ));
    rows.push((
        "polling: mails / periodic sweeps that ran".into(),
        format!("{} / {sweeps}", mails.len()),
    ));
    results.insert(
        "polling_s".into(),
        json!({"p50": p50, "p90": p90, "p99": p99, "max": max, "rows": n, "rows_per_s": rate,
               "check_interval_min": minutes, "mails": mails.len(), "sweeps": sweeps}),
    );
    app.stop().await;
}

/// Inserts `n` flagged single-row transactions, one per `period`; returns
/// when each committed, by record id.
async fn write_steadily(
    client: &tokio_postgres::Client,
    n: u64,
    period: Duration,
) -> HashMap<String, Instant> {
    let mut committed = HashMap::new();
    let mut tick = tokio::time::interval(period);
    for _ in 0..n {
        tick.tick().await;
        let id: i64 = client
            .query_one("INSERT INTO audit_results (verdict, url) VALUES ('不合格', 'https://example.com') RETURNING id", &[])
            .await
            .unwrap()
            .get(0);
        committed.insert(id.to_string(), Instant::now());
    }
    committed
}

/// p50, p90, p99 and max of commit → arrival at the SMTP server, in seconds.
fn latencies(mails: &[Received], committed: &HashMap<String, Instant>) -> [f64; 4] {
    let mut secs: Vec<f64> = mails
        .iter()
        .flat_map(|m| m.record_ids().into_iter().map(move |id| (id, m.at)))
        .filter_map(|(id, at)| {
            Some(
                at.saturating_duration_since(*committed.get(&id)?)
                    .as_secs_f64(),
            )
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    [
        percentile(&secs, 0.5),
        percentile(&secs, 0.9),
        percentile(&secs, 0.99),
        secs[secs.len() - 1],
    ]
}

/// Counts the periodic sweeps `worker` runs until `stop`, from its status.
fn tally_sweeps(worker: Worker, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut last = worker.status().times().last_sweep;
        let mut sweeps = 0;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return sweeps,
                _ = poll.tick() => {}
            }
            let times = worker.status().times();
            if times.last_sweep != last {
                last = times.last_sweep;
                sweeps += 1;
            }
        }
    })
}

/// Waits until `n` distinct records have been mailed, for up to `within`
/// (the helpers' waits end after `DEADLINE`). Polls the inbox; the times
/// measured are the server's own, so the polling does not blur them.
async fn wait_for_records_within(smtp: &SmtpServer, n: usize, within: Duration) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + within;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        poll.tick().await;
        let mails = smtp.received();
        let distinct = mails
            .iter()
            .flat_map(|m| m.record_ids())
            .collect::<HashSet<_>>()
            .len();
        if distinct >= n {
            return mails;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?}: {distinct} of {n} records mailed"
        );
    }
}

/// A burst written while delivery is paused, then drained: alerted records/s.
pub async fn burst(results: &mut Results, rows: &mut Rows, rules: bool) {
    let n = env_num("BENCH_BURST_ROWS", 100_000);
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    if rules {
        add_silences_and_routes(&client).await;
    }
    let (label, key) = if rules {
        (RULES, "burst_with_rules")
    } else {
        ("", "burst")
    };
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
        format!("burst drain{label}, {n} rows, digests of {digest}: records/s"),
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
    results.insert(key.into(), json!({"rows": n, "records_per_s": rate, "mails": mails.len(), "first_mail_ms": first.duration_since(start).as_secs_f64() * 1e3}));
    results.insert("rss_peak_kib".into(), json!(rss_kib("VmHWM:")));
    app.stop().await;
}

/// The same inserts into a watched table and an identical unwatched one,
/// alternated, as single-row transactions and as 1,000-row statements. A
/// third identical table has a trigger with the same `WHEN` whose function
/// does nothing: what any row trigger costs before it does its work.
pub async fn trigger_overhead(results: &mut Results, rows: &mut Rows) {
    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE plain_results (LIKE audit_results INCLUDING ALL);
             CREATE TABLE floor_results (LIKE audit_results INCLUDING ALL);
             CREATE FUNCTION floor_trigger() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER floor AFTER INSERT ON floor_results FOR EACH ROW
                 WHEN (NEW.verdict::text = ANY ('{不合格,不确定}'::text[]))
                 EXECUTE FUNCTION floor_trigger();",
        )
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
            let mut floor = Vec::new();
            for round in 0..rounds {
                // Which table goes first alternates, so that neither side
                // always follows the other's writes (checkpoints, WAL).
                let mut order = [
                    ("audit_results", &mut with),
                    ("floor_results", &mut floor),
                    ("plain_results", &mut without),
                ];
                if round % 2 == 1 {
                    order.reverse();
                }
                for (table, into) in order {
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
            let (w, wo, fl) = (median(with), median(without), median(floor));
            let ratio = w / wo;
            let label = if verdict == "合格" {
                "passing"
            } else {
                "alerting"
            };
            rows.push((
                format!("trigger overhead, {label} rows, {shape}"),
                format!(
                    "{:+.1} % ({:.1} ms vs {:.1} ms; a trigger doing nothing: {:+.1} %)",
                    (ratio - 1.0) * 100.0,
                    w * 1e3,
                    wo * 1e3,
                    (fl / wo - 1.0) * 100.0
                ),
            ));
            results.insert(
                format!("trigger_ratio_{label}_{}", per_statement),
                json!(ratio),
            );
            results.insert(
                format!("empty_trigger_ratio_{label}_{}", per_statement),
                json!(fl / wo),
            );
            // The 1,000-row target is relative: at most twice what a trigger
            // that does nothing costs.
            if label == "alerting" && per_statement == 1000 {
                rows.push((
                    "  its overhead against the trigger doing nothing's".into(),
                    format!("{:.2} times (target: at most 2)", (w - wo) / (fl - wo)),
                ));
            }
        }
    }
}

/// An idle sweep on large tables (every flagged row already has its alert),
/// at each size of `BENCH_SWEEP_ROWS` (comma-separated) to show how it grows.
pub async fn sweep(results: &mut Results, rows: &mut Rows) {
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
    let intake = audit_alert::monitor::intake_pool(&db.config().database).unwrap();
    let snapshot = audit_alert::monitor::Snapshot::load(&pool, None)
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
        let report = monitor::sweep(&pool, &intake, &table, false).await.unwrap();
        assert_eq!(report.found, 0);
        idle.push(report.duration.as_secs_f64() * 1e3);
    }
    let full = monitor::sweep(&pool, &intake, &table, true).await.unwrap();
    assert_eq!(full.found, 0);
    pool.close();
    intake.close();
    (median(idle), full.duration.as_secs_f64() * 1e3, setup)
}
