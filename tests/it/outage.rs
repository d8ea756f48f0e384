//! PostgreSQL going away under a running service: a throwaway cluster the test
//! starts on its own port (so other tests are not disturbed) is stopped and
//! started again while calls and rows keep arriving.

use std::path::PathBuf;
use std::process::Command;

use crate::api::client;
use crate::helpers::*;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of the test's own, run as the `postgres` user.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new("env")
    };
    cmd.args(args).output().expect("run a PostgreSQL tool")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl Cluster {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("aa-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            assert!(Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap()
                .success());
        }
        let data = dir.join("data");
        let out = as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            dir,
            port: free_port(),
        };
        cluster.up();
        cluster
    }

    fn up(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn down(&self) {
        let data = self.dir.join("data");
        let out = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/audit_alert", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_database_restart_loses_no_audit_entry_and_no_alert() {
    if !std::path::Path::new(BIN).exists() {
        panic!("PostgreSQL server binaries are needed at {BIN}");
    }
    init_tracing();
    let cluster = Cluster::start();
    let smtp = SmtpServer::start();
    let vars = [
        ("DATABASE_URL", cluster.url()),
        ("API_HOST", "127.0.0.1".to_owned()),
        ("API_PORT", "0".to_owned()),
        ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
    ];
    let config = audit_alert::config::Config::from_lookup(|k| {
        vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    let app = audit_alert::app::App::start(&config).await.unwrap();
    let db = connect(&cluster.url()).await;
    db.execute(
        "INSERT INTO smtp_config (smtp_server, smtp_port, sender_email, security, is_active)
         VALUES ('127.0.0.1', $1, 'alerts@example.com', 'none', true)",
        &[&i32::from(smtp.port)],
    )
    .await
    .unwrap();
    db.execute("INSERT INTO recipients_config (table_name, email) VALUES ('audit_results', 'oncall@example.com')", &[])
        .await
        .unwrap();
    let api = client(&app);
    let http = reqwest::Client::new();
    let status_url = format!("http://{}/api/monitor/status", app.addr());
    let mut calls = 0;
    let mut unavailable = 0;
    for _ in 0..10 {
        api.monitor_status().await.unwrap();
        calls += 1;
    }
    insert_audit_rows(&db, 3, "不合格").await;
    smtp.wait_for_records(3).await;
    drop(db);

    cluster.down();
    // While the database is away: problems, not panics; every call still audited.
    for _ in 0..10 {
        let resp = http
            .get(&status_url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        calls += 1;
        if resp.status() == 503 {
            unavailable += 1;
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
    }
    assert!(
        unavailable > 0,
        "calls answer 503 while the database is down"
    );
    let health = http
        .get(format!("http://{}/health", app.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    cluster.up();

    // The listener reconnects and the service carries on.
    eventually("the listener never reconnected", async || {
        app.worker().status().listener_connected()
    })
    .await;
    let db = connect(&cluster.url()).await;
    let ids = insert_audit_rows(&db, 3, "不合格").await;
    let mails = smtp.wait_for_records(6).await;
    assert!(ids
        .iter()
        .all(|id| id_counts(&mails).contains_key(&id.to_string())));
    for _ in 0..5 {
        api.monitor_status().await.unwrap();
        calls += 1;
    }
    wait_for_count_query(&db, "SELECT count(*) FROM audit_log", calls).await;
    let failed: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_log WHERE operation_result = '1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        failed, unavailable,
        "the refused calls are recorded as failures"
    );
    assert_eq!(
        app.audit_queue()
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    app.stop().await;
}
