//! Existing data: a database the old system ran, and tables that already hold
//! flagged rows when they start being watched.

use audit_alert::monitor::{self as tables, WatchRequest};

use crate::helpers::*;

/// Runs the binary against `db`; returns its exit code, its log (stdout) and
/// its stderr.
fn run_binary(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audit-alert"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("LOG_LEVEL", "info")
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", "0")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Vec<T> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The old system's own database (tests/fixtures/legacy_schema.sql, built
/// from its init.sql) upgrades with `audit-alert migrate`, keeps its
/// configuration, never mails what the old system mailed, mails what it never
/// reached, and keeps alerting on the verdict the old code alerted on.
#[tokio::test]
async fn a_database_of_the_old_system_upgrades_in_place_and_resends_nothing() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("../fixtures/legacy_schema.sql"))
        .await
        .unwrap();

    let (code, log, stderr) = run_binary(&db, &["migrate"], &[("LOG_FORMAT", "json")]);
    assert_eq!(code, Some(0), "{log}{stderr}");
    let said: Vec<&str> = log.lines().filter(|l| l.contains("不合规")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains("audit_results now alerts on 不合格, 不确定, 不合规 (3 rows hold 不合规)")
            && said[0].contains(
                "image_audit_results now alerts on 不合格, 不确定, 不合规 (2 rows hold 不合规)"
            ),
        "{log}"
    );

    // SMTP configurations: name, server, port, login and sender, the clear
    // password kept until a key encrypts it; the newest active one is active.
    let smtp: Vec<String> = column(
        &client,
        "SELECT concat_ws(' ', name, smtp_server || ':' || smtp_port, sender_email,
                          username, sender_password, is_active::text)
           FROM smtp_config ORDER BY id",
    )
    .await;
    assert_eq!(
        smtp,
        [
            "旧邮箱 smtp.old.example.com:25 old@example.com old@example.com old-secret false",
            "公司邮箱 smtp.163.com:587 your_email@163.com your_email@163.com your_password true",
            "备用 smtp.backup.example.com:465 backup@example.com backup@example.com backup-secret false",
        ]
    );
    // Recipients, switches and interval.
    let recipients: Vec<(String, String, bool)> = client
        .query(
            "SELECT table_name, email, is_active FROM recipients_config ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let r = |t: &str, e: &str, a| (t.to_owned(), e.to_owned(), a);
    assert_eq!(
        recipients,
        [
            r("audit_results", "oncall@example.com", true),
            r("audit_results", "lead@example.com", true),
            r("image_audit_results", "image-team@example.com", true),
            r("audit_results", "left@example.com", false),
        ]
    );
    let settings: Vec<String> = column(
        &client,
        "SELECT config_key || '=' || config_value FROM system_config
          WHERE config_key IN ('check_interval', 'monitor_enabled', 'email_enabled') ORDER BY 1",
    )
    .await;
    assert_eq!(
        settings,
        [
            "check_interval=7",
            "email_enabled=true",
            "monitor_enabled=true"
        ]
    );
    // The sent log: once per record, sent; what the old system never reached, pending.
    let alerts: Vec<String> = column(
        &client,
        "SELECT table_name || ' ' || record_id || ' ' || verdict || ' ' || status
           FROM email_sent_log ORDER BY table_name, record_id::int, verdict",
    )
    .await;
    assert_eq!(
        alerts,
        [
            "audit_results 1 不合规 sent",
            "audit_results 2 不合规 sent",
            "audit_results 4 不合格 baseline",
            "audit_results 5 不确定 baseline",
            "audit_results 6 不合规 pending",
            "audit_results 7 不合格 pending",
            "image_audit_results 1 不合规 sent",
            "image_audit_results 2 不合规 pending",
        ]
    );
    let delivered: Vec<Vec<String>> = column(
        &client,
        "SELECT delivered_to FROM email_sent_log WHERE table_name = 'audit_results' AND record_id = '1'",
    )
    .await;
    assert_eq!(delivered, [["oncall@example.com", "lead@example.com"]]);

    // Without a key, the clear passwords would stay in clear: serve refuses.
    let (code, _, stderr) = run_binary(&db, &["serve"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr.trim();
    assert!(
        line.lines().count() == 1 && line.contains("SECRET_KEY") && line.contains("in clear"),
        "{stderr}"
    );

    // Point the active configuration at the test server and run.
    let smtp = SmtpServer::start();
    client
        .execute(
            "UPDATE smtp_config SET smtp_server = '127.0.0.1', smtp_port = $1, security = 'none',
                    sender_password = NULL WHERE name = '公司邮箱'",
            &[&i32::from(smtp.port)],
        )
        .await
        .unwrap();
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", key)]))
        .await
        .unwrap();
    // Each mail goes to one recipient: what reached whom, once each.
    let reached = |mails: &[Received]| {
        let mut pairs: Vec<String> = mails
            .iter()
            .flat_map(|m| {
                m.record_ids()
                    .into_iter()
                    .flat_map(|id| m.envelope_to.iter().map(move |to| format!("{to} {id}")))
            })
            .collect();
        pairs.sort();
        pairs
    };
    let mails = smtp
        .wait_for("5 deliveries", |m| reached(m).len() >= 5)
        .await;
    assert_eq!(
        reached(&mails),
        [
            "image-team@example.com 2",
            "lead@example.com 6",
            "lead@example.com 7",
            "oncall@example.com 6",
            "oncall@example.com 7",
        ]
    );
    assert!(mails.iter().all(|m| m.from.contains("your_email@163.com")));
    assert_eq!(app.worker().sweep_once().await.unwrap().found, 0);
    assert_eq!(app.worker().deliver_once().await.unwrap(), 0);

    // New rows flow as usual: 不合规 alerts, a passing verdict does not.
    wait_until_listening(&app).await;
    client
        .execute(
            "INSERT INTO audit_results (verdict, url) VALUES ('合规', 'https://example.com/8'),
                    ('不合规', 'https://example.com/9')",
            &[],
        )
        .await
        .unwrap();
    let mails = smtp
        .wait_for("7 deliveries", |m| reached(m).len() >= 7)
        .await;
    assert_eq!(app.worker().sweep_once().await.unwrap().found, 0);
    assert_eq!(app.worker().deliver_once().await.unwrap(), 0);
    assert_eq!(reached(&smtp.received()), reached(&mails));
    assert_eq!(
        reached(&mails)
            .iter()
            .filter(|p| p.ends_with(" 9"))
            .collect::<Vec<_>>(),
        ["lead@example.com 9", "oncall@example.com 9"]
    );
    app.stop().await;
}

#[tokio::test]
async fn existing_rows_of_builtin_tables_become_baseline() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE audit_results (id bigserial PRIMARY KEY, verdict text,
                 created_at timestamptz NOT NULL DEFAULT now(), url text, reason text);
             INSERT INTO audit_results (verdict) SELECT '不合格' FROM generate_series(1, 50);",
        )
        .await
        .unwrap();
    db.migrate().await;
    let smtp = SmtpServer::start();
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let app = db.start().await;
    let baseline: i64 = client
        .query_one(
            "SELECT count(*) FROM email_sent_log WHERE status = 'baseline'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(baseline, 50);

    let id = insert_audit_rows(&client, 1, "不合格").await[0];
    let mails = smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [id.to_string()]);
    assert_eq!(app.worker().sweep_once().await.unwrap().found, 0);
    assert_eq!(app.worker().deliver_once().await.unwrap(), 0);
    assert_eq!(smtp.received().len(), 1);
    app.stop().await;
}

async fn comments_table(client: &tokio_postgres::Client, id_type: &str, flagged: i64) {
    let default = if id_type == "uuid" {
        "gen_random_uuid()"
    } else {
        "nextval('comment_ids')"
    };
    client
        .batch_execute(&format!(
            "CREATE SEQUENCE comment_ids;
             CREATE TABLE \"Comments\" (cid {id_type} PRIMARY KEY DEFAULT {default},
                                      \"Moderation\" text, body text);"
        ))
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO \"Comments\" (\"Moderation\", body) SELECT 'reject', 'old ' || g FROM generate_series(1, $1::bigint) g",
            &[&flagged],
        )
        .await
        .unwrap();
}

fn comments(backfill: bool) -> WatchRequest {
    WatchRequest {
        table: "Comments".into(),
        id_column: "cid".into(),
        verdict_column: "Moderation".into(),
        verdicts: vec!["reject".into()],
        backfill,
    }
}

#[tokio::test]
async fn watching_a_table_with_flagged_rows_records_them_as_baseline() {
    let db = TestDb::new().await;
    let client = db.client().await;
    db.migrate().await;
    comments_table(&client, "bigint", 30).await;
    let smtp = SmtpServer::start();
    configure(&db, smtp.port, &[("Comments", "mods@example.com")]).await;
    let app = db.start().await;

    let watched = tables::watch(app.pool(), &comments(false)).await.unwrap();
    assert_eq!(watched.existing_flagged, 30);
    assert_eq!(watched.id_type, "bigint");
    let new_id: i64 = client
        .query_one("INSERT INTO \"Comments\" (\"Moderation\", body) VALUES ('reject', 'new') RETURNING cid", &[])
        .await
        .unwrap()
        .get(0);
    let mails = smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [new_id.to_string()]);
    assert!(
        mails[0].text.contains("Moderation: reject"),
        "{}",
        mails[0].text
    );
    assert_eq!(app.worker().deliver_once().await.unwrap(), 0);
    assert_eq!(smtp.received().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn watching_with_backfill_mails_existing_rows_and_uuid_ids_work() {
    let db = TestDb::new().await;
    let client = db.client().await;
    db.migrate().await;
    comments_table(&client, "uuid", 3).await;
    let smtp = SmtpServer::start();
    configure(&db, smtp.port, &[("Comments", "mods@example.com")]).await;
    let app = db.start().await;

    let watched = tables::watch(app.pool(), &comments(true)).await.unwrap();
    assert_eq!(
        (watched.existing_flagged, watched.id_type.as_str()),
        (3, "uuid")
    );
    smtp.wait_for_records(3).await;

    // A uuid row written with triggers bypassed is found by the sweep.
    wait_until_listening(&app).await;
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let hidden: String = client
        .query_one(
            "INSERT INTO \"Comments\" (\"Moderation\") VALUES ('reject') RETURNING cid::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("SET session_replication_role = origin")
        .await
        .unwrap();
    assert_eq!(app.worker().sweep_once().await.unwrap().found, 1);
    let mails = smtp.wait_for_records(4).await;
    assert!(id_counts(&mails).contains_key(&hidden));

    assert!(tables::unwatch(app.pool(), "Comments").await.unwrap());
    client
        .execute(
            "INSERT INTO \"Comments\" (\"Moderation\") VALUES ('reject')",
            &[],
        )
        .await
        .unwrap();
    let pending: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM email_sent_log WHERE status = 'pending')
                  + (SELECT count(*) FROM alert_inbox)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "no trigger after unwatching");
    app.stop().await;
}

#[tokio::test]
async fn watching_rejects_unknown_tables_and_columns() {
    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    comments_table(&client, "bigint", 0).await;
    let app = db.start().await;
    let mut req = comments(false);
    req.table = "nope".into();
    assert!(matches!(
        tables::watch(app.pool(), &req).await,
        Err(tables::WatchError::UnknownTable(_))
    ));
    let mut req = comments(false);
    req.verdict_column = "moderation".into();
    let err = tables::watch(app.pool(), &req).await.unwrap_err();
    assert!(
        err.to_string().contains("\"moderation\" does not exist"),
        "{err}"
    );
    let mut req = comments(false);
    req.id_column = "body".into();
    assert!(
        tables::watch(app.pool(), &req).await.is_ok(),
        "text ids are allowed"
    );
    app.stop().await;
}

#[tokio::test]
async fn passwords_the_old_system_stored_in_clear_are_encrypted_once_a_key_is_set() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(include_str!("../fixtures/legacy_schema.sql"))
        .await
        .unwrap();
    // No alert is due to be mailed through the old servers while this runs.
    client
        .batch_execute(
            "UPDATE system_config SET config_value = 'false' WHERE config_key = 'monitor_enabled'",
        )
        .await
        .unwrap();
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", key)]))
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT name, sender_password, password_encrypted FROM smtp_config ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let secrets =
        audit_alert::crypto::SecretBox::from_key(&audit_alert::config::Secret::new(key)).unwrap();
    let decrypted: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            assert_eq!(row.get::<_, Option<String>>(1), None, "no clear text left");
            let stored: String = row.get(2);
            (
                row.get(0),
                secrets.decrypt(&stored).unwrap().expose().to_owned(),
            )
        })
        .collect();
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        decrypted,
        [
            pair("旧邮箱", "old-secret"),
            pair("公司邮箱", "your_password"),
            pair("备用", "backup-secret")
        ]
    );
    let snapshot = app.worker().snapshot();
    let active = snapshot.smtp.settings().unwrap();
    assert_eq!(active.host, "smtp.163.com");
    assert_eq!(active.password.as_ref().unwrap().expose(), "your_password");
    app.stop().await;
}

mod up_to_v2 {
    refinery::embed_migrations!("db/migrations");
}

/// Migrations 3 and 5 give every table watched by an earlier version the new
/// trigger body (the latest reports into the inbox); a table whose columns
/// changed since keeps its old triggers, and the upgrade goes on.
#[tokio::test]
async fn triggers_installed_by_an_earlier_version_are_renewed_on_upgrade() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    up_to_v2::migrations::runner()
        .set_target(refinery::Target::Version(2))
        .run_async(&mut client)
        .await
        .unwrap();
    comments_table(&client, "bigint", 0).await;
    client
        .batch_execute("CREATE TABLE renamed (id bigserial PRIMARY KEY, verdict text)")
        .await
        .unwrap();
    for (relation, table, id, verdict) in [
        ("\"Comments\"", "Comments", "cid", "Moderation"),
        ("renamed", "renamed", "id", "verdict"),
    ] {
        client
            .execute(
                "WITH t AS (SELECT audit_alert_install_trigger($1::text::regclass, $2, $3, $4,
                                                               '{reject}') AS id_type)
                 INSERT INTO watched_tables (table_name, relation, id_column, id_type,
                                             verdict_column, alert_verdicts)
                 SELECT $2, $1::text::regclass, $3, id_type, $4, '{reject}' FROM t",
                &[&relation, &table, &id, &verdict],
            )
            .await
            .unwrap();
    }
    client
        .batch_execute("ALTER TABLE renamed RENAME COLUMN verdict TO outcome")
        .await
        .unwrap();
    let body = |relation: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT prosrc FROM pg_proc
                      WHERE proname = 'audit_alert_enqueue_' || $1::text::regclass::oid",
                    &[&relation],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    for relation in ["\"Comments\"", "audit_results", "renamed"] {
        assert!(body(relation).await.contains("pg_notify"), "{relation}");
    }

    db.migrate().await;

    for relation in ["\"Comments\"", "audit_results", "image_audit_results"] {
        let renewed = body(relation).await;
        assert!(
            renewed.contains("INSERT INTO public.alert_inbox")
                && renewed.contains("NOTIFY audit_alert;")
                && !renewed.contains("pg_notify"),
            "{relation}: {renewed}"
        );
    }
    assert!(body("renamed").await.contains("pg_notify"));

    let smtp = SmtpServer::start();
    configure(&db, smtp.port, &[("Comments", "mods@example.com")]).await;
    let app = db.start().await;
    wait_until_listening(&app).await;
    let id: i64 = client
        .query_one(
            "INSERT INTO \"Comments\" (\"Moderation\", body) VALUES ('reject', 'after') RETURNING cid",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mails = smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [id.to_string()]);
    // The broken table does not hold back the sweep of the others.
    let report = app.worker().sweep_once().await.unwrap();
    assert_eq!(report.tables, 3, "{report:?}");
    assert_eq!(
        report
            .failed
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>(),
        ["renamed"]
    );
    let failed = app.worker().status().times().last_sweep_failed;
    assert!(
        failed.len() == 1 && failed[0].1.contains("verdict"),
        "{failed:?}"
    );
    app.stop().await;
}
