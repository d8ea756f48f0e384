//! Starting the binary: bad configuration is one clear line and a non-zero
//! exit; `migrate` prepares a database from nothing.

use std::process::Command;

use crate::helpers::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-alert"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    // An empty working directory, so no stray .env is read.
    cmd.current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run audit-alert");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_clear_line(stderr: &str, variable: &str) {
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("audit-alert: error: "), "{stderr}");
    assert!(lines[0].contains(variable), "names {variable}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_is_one_clear_line_and_a_nonzero_exit() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, i32);
    let cases: &[Case] = &[
        (&[("API_PORT", "70000")], "API_PORT", 2),
        (&[("API_PORT", "http")], "API_PORT", 2),
        (&[("DATABASE_URL", "mysql:/nope")], "DATABASE_URL", 2),
        (&[("DB_PORT", "0")], "DB_PORT", 2),
        (&[("LOG_LEVEL", "loud=[")], "LOG_LEVEL", 2),
        (&[("LOG_FORMAT", "xml")], "LOG_FORMAT", 2),
        (&[("SMTP_POOL_SIZE", "0")], "SMTP_POOL_SIZE", 2),
        (&[("SECRET_KEY", "short")], "SECRET_KEY", 2),
        (
            &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")],
            "DATABASE_URL",
            1,
        ),
    ];
    for (env, variable, code) in cases {
        let (status, stderr) = run(&["migrate"], env);
        assert_eq!(status, *code, "{env:?}: {stderr}");
        assert_one_clear_line(&stderr, variable);
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["openapi", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_audit-alert"))
            .args(sub)
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub:?}"
        );
    }
}

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    let db = TestDb::new().await;
    let fresh = format!("{}_created", db.name);
    let url = db.url.replace(&db.name, &fresh);
    for _ in 0..2 {
        let (status, stderr) = run(
            &["migrate"],
            &[("DATABASE_URL", &url), ("LOG_LEVEL", "warn")],
        );
        assert_eq!(status, 0, "{stderr}");
    }
    let client = connect(&url).await;
    let watched: i64 = client
        .query_one("SELECT count(*) FROM watched_tables", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 2);
    drop(client);
    let admin = db.client().await;
    admin
        .batch_execute(&format!("DROP DATABASE {fresh} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn copies_starting_together_migrate_once() {
    let db = TestDb::new().await;
    let config = db.config();
    let (a, b, c) = tokio::join!(
        audit_alert::app::prepare_database(&config),
        audit_alert::app::prepare_database(&config),
        audit_alert::app::prepare_database(&config),
    );
    for r in [a, b, c] {
        r.expect("every copy starts");
    }
    let client = db.client().await;
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/db/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, migrations);
}

#[tokio::test]
async fn json_logs_carry_the_request_id_on_every_line_of_a_request() {
    let db = TestDb::new().await;
    db.migrate().await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-alert"))
        .env("DATABASE_URL", &db.url)
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", port.to_string())
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "debug")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    eventually("service did not start", async || {
        http.get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let resp = http
        .get(format!("http://127.0.0.1:{port}/api/alerts/999"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", "req-42-abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "req-42-abc");
    let generated = http
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        generated.headers()["x-request-id"].len(),
        32,
        "an id is made when none is sent"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_request: Vec<_> = lines
        .iter()
        .filter(|l| l["span"]["id"] == "req-42-abc")
        .collect();
    assert!(!of_request.is_empty(), "the request's lines carry its id");
    assert!(
        of_request.iter().any(|l| l["fields"]["status"] == 404),
        "{of_request:?}"
    );
}

#[tokio::test]
async fn check_tells_what_is_in_order_and_what_is_not() {
    let db = TestDb::new().await;
    db.migrate().await;
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_audit-alert"))
            .arg("check")
            .env("DATABASE_URL", &db.url)
            .env("LOG_LEVEL", "error")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = check();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("ok    database"), "{text}");
    assert!(
        text.contains("FAIL  no active SMTP configuration"),
        "{text}"
    );
    assert!(
        text.contains("warn  audit_results: no active recipient"),
        "{text}"
    );

    let smtp = SmtpServer::start();
    configure(
        &db,
        smtp.port,
        &[
            ("audit_results", "a@example.com"),
            ("image_audit_results", "b@example.com"),
        ],
    )
    .await;
    let (code, text) = check();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "ok    SMTP server 127.0.0.1:{} accepts connections",
            smtp.port
        )),
        "{text}"
    );
    assert!(!text.contains("alert_inbox"), "{text}");

    // Reported two minutes ago and never taken in: no service is running.
    db.client()
        .await
        .batch_execute(
            "INSERT INTO alert_inbox (table_name, record_id, verdict, reported_at)
             VALUES ('audit_results', '1', '不合格', now() - interval '2 minutes')",
        )
        .await
        .unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warn  1 alert(s) reported by the triggers wait in alert_inbox"),
        "{text}"
    );

    db.client()
        .await
        .batch_execute("ALTER TABLE audit_results DISABLE TRIGGER audit_alert_insert")
        .await
        .unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(1));
    assert!(
        text.contains("FAIL  audit_results: its alert triggers are missing or disabled"),
        "{text}"
    );
    assert!(!text.contains("no longer exists"), "{text}");

    db.client()
        .await
        .batch_execute("ALTER TABLE image_audit_results RENAME COLUMN audit_result TO outcome")
        .await
        .unwrap();
    let (code, text) = check();
    assert_eq!(code, Some(1));
    assert!(
        text.contains("FAIL  image_audit_results: column audit_result no longer exists"),
        "{text}"
    );
}
