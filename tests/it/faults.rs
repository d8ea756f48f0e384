//! Faults the service must survive: an SMTP server that says "try later",
//! SIGTERM in the middle of work, and kill -9 in the middle of a burst.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use audit_alert::monitor::{DELIVERY_LANES, PARALLEL_DIGESTS};

use crate::helpers::*;

#[tokio::test]
async fn a_server_answering_451_is_retried_with_the_attempts_visible() {
    let t = TestApp::start(SmtpServer::flaky(3), ONCALL).await;
    let id = insert_audit_rows(&t.client, 1, "不合格").await[0];
    let mails = t.smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [id.to_string()]);
    wait_for_count_query(
        &t.client,
        "SELECT count(*) FROM email_sent_log WHERE status = 'sent' AND attempts = 4
            AND error_message LIKE '%451%'",
        1,
    )
    .await;
    // Every failed attempt keeps its error, in order.
    let alert: i64 = t
        .client
        .query_one("SELECT id FROM email_sent_log", &[])
        .await
        .unwrap()
        .get(0);
    let (status, _, body) =
        crate::api::raw(&t.app, "GET", &format!("/api/alerts/{alert}"), None).await;
    assert_eq!(status, 200);
    let errors = body["attempt_errors"].as_array().unwrap();
    assert_eq!(
        errors
            .iter()
            .map(|e| e["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3],
        "{body}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e["error"].as_str().unwrap().contains("451") && e["at"].is_string()),
        "{body}"
    );
    t.app.stop().await;
}

/// The service as its own process.
fn spawn_service(db: &TestDb, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-alert"));
    cmd.env("DATABASE_URL", &db.url)
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", port.to_string())
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start the service")
}

async fn wait_healthy(port: u16) {
    eventually("service did not become healthy", async || {
        reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_flushes_the_audit_log_and_exits_zero() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let port = free_port();
    let child = spawn_service(&db, port, &[]);
    wait_healthy(port).await;
    let http = reqwest::Client::new();
    for _ in 0..25 {
        http.get(format!("http://127.0.0.1:{port}/api/monitor/status"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
    }
    insert_audit_rows(&db.client().await, 500, "不合格").await;
    signal(&child, "-TERM");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = db.client().await;
    let audited: i64 = client
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 25, "the queue was flushed before exit");
    let sending: i64 = client
        .query_one(
            "SELECT count(*) FROM email_sent_log WHERE status = 'sending'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sending, 0, "in-flight sends were finished and recorded");
}

#[tokio::test]
async fn kill_9_in_a_burst_then_restart_mails_every_record() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    // Small digests so the burst takes a while; a short lease so the
    // restarted copy takes over what the killed one held.
    set_config(&client, "digest_max_records", "10").await;
    set_config(&client, "sending_lease_seconds", "2").await;
    let port = free_port();
    let mut child = spawn_service(&db, port, &[]);
    wait_healthy(port).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.extend(insert_audit_rows(&client, 1000, "不合格").await);
    }
    smtp.wait_for_records(500).await;
    signal(&child, "-KILL");
    let _ = child.wait();
    let mailed_at_kill = id_counts(&smtp.received()).len();

    let mut child = spawn_service(&db, port, &[]);
    let mails = smtp.wait_for_records(5000).await;
    signal(&child, "-TERM");
    let _ = child.wait();
    let counts = id_counts(&mails);
    assert!(
        ids.iter().all(|id| counts.contains_key(&id.to_string())),
        "every record mailed"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("kill -9 after {mailed_at_kill} of 5000 records: {duplicates} mailed twice");
    // At most what was in flight at the kill: a claimed batch in each
    // delivery lane (digests of 10).
    let bound = DELIVERY_LANES * PARALLEL_DIGESTS * 10;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn three_copies_one_killed_mid_burst_mail_every_record() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    set_config(&client, "digest_max_records", "20").await;
    set_config(&client, "sending_lease_seconds", "2").await;
    let ports = [free_port(), free_port(), free_port()];
    let mut copies: Vec<Child> = ports.iter().map(|p| spawn_service(&db, *p, &[])).collect();
    for p in ports {
        wait_healthy(p).await;
    }
    let survivor = copies[1].id();
    let rss_before = rss_kib(survivor, "VmRSS:");
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(insert_audit_rows(&client, 1000, "不合格").await);
    }
    smtp.wait_for_records(2000).await;
    signal(&copies[0], "-KILL");
    let _ = copies[0].wait();
    let mails = smtp.wait_for_records(10_000).await;
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM email_sent_log WHERE status <> 'sent'",
        0,
    )
    .await;
    let (rss_peak, rss_after) = (rss_kib(survivor, "VmHWM:"), rss_kib(survivor, "VmRSS:"));
    for child in &mut copies[1..] {
        signal(child, "-TERM");
        let _ = child.wait();
    }
    let counts = id_counts(&mails);
    assert!(
        ids.iter().all(|id| counts.contains_key(&id.to_string())),
        "every record mailed"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "3 copies, one killed: {duplicates} records mailed twice; survivor RSS {rss_before} KiB before, \
         {rss_peak} KiB peak, {rss_after} KiB after"
    );
    // Only what the killed copy had in flight may repeat: a claim in each of
    // its delivery lanes (digests of 20).
    let bound = DELIVERY_LANES * PARALLEL_DIGESTS * 20;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
}

#[tokio::test]
async fn slow_and_broken_clients_do_not_hold_up_others() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new().await;
    let app = db.start().await;
    // Fifty clients that send half a request and then nothing.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
        s.write_all(
            b"POST /api/config/smtp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"sm",
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    // Garbage that is not HTTP at all.
    let mut junk = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    junk.write_all(&[0xff, 0x00, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n'])
        .await
        .unwrap();
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/monitor/status", app.addr()))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(stalled);
    app.stop().await;
}
