//! The audit log proves itself: `audit-alert audit verify` passes a log as
//! written and names the first entry changed, inserted or removed by someone
//! who could switch the append-only trigger off; the retention purge leaves a
//! log that still verifies.

use std::process::Command;

use audit_alert::audit_log::verify::{self, Tampering};
use audit_alert::audit_log::writer::{self, Entry};
use audit_alert::crypto::{Secret, SecretBox};

use crate::api::raw;
use crate::helpers::*;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A database whose audit log holds `calls` API calls of one copy, which
/// then stopped (signing the head of its chain).
async fn audited_calls(calls: usize) -> TestDb {
    let db = TestDb::new().await;
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", KEY)]))
        .await
        .unwrap();
    for _ in 0..calls {
        let (status, _, _) = raw(&app, "GET", "/api/config/recipients", None).await;
        assert_eq!(status, 200);
    }
    app.stop().await;
    db
}

/// `audit-alert audit verify`: exit code, stdout, stderr.
fn verify_command(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-alert"))
        .args(["audit", "verify"])
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("SECRET_KEY", KEY)
        .env("LOG_LEVEL", "error")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `sql` as a superuser with the log's append-only triggers switched off.
async fn tamper(db: &TestDb, sql: &str) {
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER TABLE audit_log DISABLE TRIGGER USER;
             ALTER TABLE audit_checkpoints DISABLE TRIGGER USER;
             {sql};
             ALTER TABLE audit_log ENABLE TRIGGER USER;
             ALTER TABLE audit_checkpoints ENABLE TRIGGER USER;"
        ))
        .await
        .unwrap();
}

async fn audit_id_at(db: &TestDb, seq: i64) -> String {
    db.client()
        .await
        .query_one(
            "SELECT audit_id FROM audit_log WHERE chain_seq = $1",
            &[&seq],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_log_as_written_verifies_in_one_line() {
    let db = audited_calls(6).await;
    let (code, out, err) = verify_command(&db, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let line = out.trim();
    assert_eq!(line.lines().count(), 1, "{out}");
    assert!(
        line.starts_with("audit log verified: 6 entries in 1 chain(s), 1 checkpoint(s), "),
        "{line}"
    );
    let (code, out, _) = verify_command(&db, &["--since", "1h"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("6 entries"), "{out}");
}

#[tokio::test]
async fn a_changed_entry_is_named() {
    let db = audited_calls(6).await;
    let changed = audit_id_at(&db, 3).await;
    tamper(
        &db,
        "UPDATE audit_log SET operator_id = 'mallory' WHERE chain_seq = 3",
    )
    .await;
    let (code, _, err) = verify_command(&db, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("entry {changed} (chain ")) && err.contains("#3) was changed"),
        "{err}"
    );
}

#[tokio::test]
async fn an_inserted_entry_is_named() {
    let db = audited_calls(6).await;
    // A copy of #4 under a new id, in #4's place.
    tamper(
        &db,
        "INSERT INTO audit_log SELECT 'ffffffffffffffffffffffffffffffff', operation_time,
                operation_ip, 'mallory', operator_org_id, role_id, request_params,
                response_result, operation_url, operation_method, operation_desc,
                operation_result, error_msg, duration_ms, chain_id, chain_seq, prev_hash,
                entry_hash
           FROM audit_log WHERE chain_seq = 4",
    )
    .await;
    let (code, _, err) = verify_command(&db, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("ffffffffffffffffffffffffffffffff"), "{err}");

    // One outside any chain, among the entries from before chaining.
    let db = audited_calls(2).await;
    tamper(
        &db,
        "INSERT INTO audit_log (audit_id, operation_time, operation_url, operation_method,
                                operation_desc, operation_result, duration_ms)
         VALUES ('eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee', now() - interval '1 year', '/api/x', 'GET',
                 'x', '0', 1)",
    )
    .await;
    let (code, _, err) = verify_command(&db, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(
            "0 entries from before chaining were recorded, 1 are there: entries were inserted"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_removed_entry_and_a_cut_tail_are_named() {
    let db = audited_calls(6).await;
    tamper(&db, "DELETE FROM audit_log WHERE chain_seq = 5").await;
    let (code, _, err) = verify_command(&db, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("entry #5 of chain ") && err.contains(" was removed"),
        "{err}"
    );

    let db = audited_calls(6).await;
    tamper(&db, "DELETE FROM audit_log WHERE chain_seq >= 5").await;
    let (code, _, err) = verify_command(&db, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("entries after #4 of chain ")
            && err.contains("were removed: a signed checkpoint counts 6"),
        "{err}"
    );
}

#[tokio::test]
async fn a_forged_checkpoint_is_refused() {
    let db = audited_calls(3).await;
    tamper(
        &db,
        "UPDATE audit_checkpoints SET head_hash = sha256('forged'::bytea)",
    )
    .await;
    let (code, _, err) = verify_command(&db, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("checkpoint #3 of chain ") && err.contains("is not signed"),
        "{err}"
    );
}

fn secrets() -> SecretBox {
    SecretBox::from_key(&Secret::new(KEY)).unwrap()
}

fn entry(days_ago: i64, n: usize) -> Entry {
    Entry {
        audit_id: format!("{n:032}"),
        operation_time: chrono::Utc::now() - chrono::Duration::days(days_ago),
        operation_ip: Some("10.0.0.1".into()),
        operator_id: Some("alice".into()),
        operator_org_id: None,
        role_id: Some("admin".into()),
        request_params: Some(
            serde_json::json!({"path": "/api/x", "body": {"名": "张*", "n": 1.5}}),
        ),
        response_result: None,
        operation_url: "/api/x".into(),
        operation_method: "PUT".into(),
        operation_desc: "修改".into(),
        operation_result: "0",
        error_msg: None,
        duration_ms: 2,
        link: None,
    }
    .storable()
}

#[tokio::test]
async fn the_retention_purge_leaves_a_log_that_still_verifies() {
    let db = TestDb::new().await;
    db.migrate().await;
    let pool = audit_alert::db::pool(&db.config().database, 2).unwrap();
    // One entry from before chaining, a year old: counted, then purged.
    db.client()
        .await
        .batch_execute(
            "INSERT INTO audit_log (audit_id, operation_time, operation_url, operation_method,
                                    operation_desc, operation_result, duration_ms)
             VALUES ('dddddddddddddddddddddddddddddddd', now() - interval '1 year', '/api/x',
                     'GET', 'x', '0', 1);
             SET audit_alert.retention_purge = 'on';
             UPDATE audit_unchained SET entries = entries + 1;
             RESET audit_alert.retention_purge;",
        )
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (queue, task) = writer::start(
        pool.clone(),
        100,
        Some(secrets()),
        std::time::Duration::from_secs(60),
        stop.clone(),
    );
    for n in 0..10 {
        let days_ago = if n < 4 { 400 } else { 0 };
        queue.reserve().unwrap().send(entry(days_ago, n));
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        verify::verify(&pool, Some(&secrets()), None, None)
            .await
            .unwrap()
            .map(|s| s.entries),
        Ok(10)
    );

    let purged = writer::purge(&pool, 180, Some(&secrets())).await.unwrap();
    assert_eq!(
        purged, 5,
        "the chain's four old entries and the one from before chaining"
    );
    let summary = verify::verify(&pool, Some(&secrets()), None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (summary.entries, summary.chains, summary.checkpoints),
        (6, 1, 1)
    );

    // A forged cut (someone deleting the start and moving the record) is refused.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE audit_log DISABLE TRIGGER USER;
             ALTER TABLE audit_chains DISABLE TRIGGER USER;
             DELETE FROM audit_log WHERE chain_seq = 5;
             UPDATE audit_chains SET first_seq = 6,
                    first_prev = (SELECT prev_hash FROM audit_log WHERE chain_seq = 6);",
        )
        .await
        .unwrap();
    let found = verify::verify(&pool, Some(&secrets()), None, None)
        .await
        .unwrap();
    assert!(
        matches!(&found, Err(Tampering::Forged { what }) if what.contains("starts (#6)")),
        "{found:?}"
    );
}

#[tokio::test]
async fn the_api_verifies_for_auditors() {
    let db = TestDb::new().await;
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", KEY)]))
        .await
        .unwrap();
    raw(&app, "GET", "/api/config/recipients", None).await;
    // The entry is written asynchronously: poll until the check counts it.
    let body = eventually("the call is in the verified log", async || {
        let (status, _, body) = raw(&app, "GET", "/api/audit-logs/verify", None).await;
        assert_eq!(status, 200, "{body}");
        (body["entries"].as_u64() >= Some(1)).then_some(body)
    })
    .await;
    assert_eq!(body["verified"], true, "{body}");
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .starts_with("audit log verified: "),
        "{body}"
    );
    app.stop().await;
}

/// While a copy runs, the head of its chain is signed once entries stop
/// arriving, without waiting for the copy to stop.
#[tokio::test]
async fn entries_are_signed_while_the_copy_runs() {
    let db = TestDb::new().await;
    let app = audit_alert::app::App::start(
        &db.config_with(&[("SECRET_KEY", KEY), ("AUDIT_CHECKPOINT_SECONDS", "1")]),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        raw(&app, "GET", "/api/config/recipients", None).await;
    }
    let client = db.client().await;
    let signed: i64 = eventually("the two entries are signed", async || {
        client
            .query_opt(
                "SELECT chain_seq FROM audit_checkpoints WHERE signature IS NOT NULL
                  ORDER BY chain_seq DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i64>(0))
            .filter(|seq| *seq >= 2)
    })
    .await;
    assert_eq!(signed, 2);
    // Cutting the tail now is caught although the copy never stopped.
    let (code, _, err) = {
        tamper(&db, "DELETE FROM audit_log WHERE chain_seq = 2").await;
        verify_command(&db, &[])
    };
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("a signed checkpoint counts 2"), "{err}");
    app.stop().await;
}
