//! The operation audit log: every operation declared, entries masked and
//! complete, nothing lost while writes fail, and the table append-only.

use crate::api::{client, client_with_token};
use crate::client::types;
use crate::helpers::*;

/// Waits until `n` audit entries match `filter` and returns them, newest first.
async fn entries(db: &TestDb, filter: &str, n: i64) -> Vec<serde_json::Value> {
    let client = db.client().await;
    wait_for_count_query(
        &client,
        &format!("SELECT count(*) FROM audit_log WHERE {filter}"),
        n,
    )
    .await;
    client
        .query(
            &format!("SELECT to_jsonb(a) FROM audit_log a WHERE {filter} ORDER BY audit_id DESC"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn every_operation_of_the_spec_is_audited() {
    let declared: Vec<&str> = audit_alert::api::audit_declarations()
        .iter()
        .map(|a| a.operation_id)
        .collect();
    let spec: serde_json::Value = serde_json::from_str(&audit_alert::api::spec_json()).unwrap();
    let mut operations = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            if path.starts_with("/api/") {
                assert!(
                    declared.contains(&id.as_str()),
                    "operation {id} has no audit declaration"
                );
            }
            operations.push(id);
        }
    }
    for id in &declared {
        assert!(
            operations.iter().any(|o| o == id),
            "declaration for unknown operation {id}"
        );
    }
    let mut unique = declared.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        declared.len(),
        "one declaration per operation"
    );
}

#[tokio::test]
async fn a_call_leaves_a_complete_entry_with_secrets_and_personal_data_masked() {
    let db = TestDb::new().await;
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", key)]))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str| {
        http.post(format!("http://{}{path}", app.addr()))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let created = post(
        "/api/config/smtp",
        r#"{"smtp_server":"smtp.example.com","smtp_port":465,"sender_email":"a@example.com","password":"Top-S3cret"}"#,
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 200);
    post(
        "/api/config/recipients",
        r#"{"table_name":"audit_results","email":"zhangsan@company.com","name":"张小三"}"#,
    )
    .await
    .unwrap();
    let failed = post(
        "/api/config/recipients",
        r#"{"table_name":"nope","email":"a@b.cn"}"#,
    )
    .await
    .unwrap();
    assert_eq!(failed.status(), 422);

    let smtp = &entries(&db, "operation_desc = '新增SMTP配置'", 1).await[0];
    assert_eq!(smtp["request_params"]["body"]["password"], "********");
    assert_eq!(
        smtp["request_params"]["body"]["smtp_server"],
        "smtp.example.com"
    );
    assert_eq!(smtp["operation_result"], "0");
    assert_eq!(smtp["operation_method"], "POST");
    assert_eq!(smtp["operation_url"], "/api/config/smtp");
    assert_eq!(
        (smtp["operator_id"].as_str(), smtp["role_id"].as_str()),
        (Some("admin"), Some("admin"))
    );
    assert_eq!(smtp["operation_ip"], "127.0.0.1");
    assert_eq!(smtp["audit_id"].as_str().unwrap().len(), 32);
    assert!(smtp["duration_ms"].as_i64().unwrap() >= 0);
    assert!(
        smtp["response_result"].is_null(),
        "results are not recorded by default"
    );

    let recipients = entries(&db, "operation_desc = '新增收件人'", 2).await;
    let ok = recipients
        .iter()
        .find(|e| e["operation_result"] == "0")
        .unwrap();
    assert_eq!(ok["request_params"]["body"]["email"], "z***@company.com");
    assert_eq!(ok["request_params"]["body"]["name"], "张*三");
    let bad = recipients
        .iter()
        .find(|e| e["operation_result"] == "1")
        .unwrap();
    assert!(
        bad["error_msg"].as_str().unwrap().contains("not watched"),
        "{bad}"
    );

    // Audit ids sort by time.
    let ids: Vec<String> = entries(&db, "true", 3)
        .await
        .iter()
        .map(|e| e["audit_id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted);
    app.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let db = TestDb::new().await;
    let call = |app: &audit_alert::app::App| {
        reqwest::Client::new()
            .get(format!("http://{}/api/monitor/status", app.addr()))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-forwarded-for", "203.0.113.9, 10.0.0.2")
            .send()
    };
    let app = db.start().await;
    call(&app).await.unwrap();
    assert_eq!(
        entries(&db, "true", 1).await[0]["operation_ip"],
        "127.0.0.1"
    );
    app.stop().await;

    let config = db.config_with(&[("TRUSTED_PROXIES", "127.0.0.1, 10.0.0.2")]);
    let app = audit_alert::app::App::start(&config).await.unwrap();
    call(&app).await.unwrap();
    assert_eq!(
        entries(&db, "true", 2).await[0]["operation_ip"],
        "203.0.113.9"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_read_by_auditors_only_and_reading_it_is_audited() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let admin = client(&app);
    let make = |role| types::TokenRequest {
        operator_id: "u1".try_into().unwrap(),
        org_id: Some("org-9".try_into().unwrap()),
        role,
        expires_in: None,
        description: None,
    };
    let auditor = admin
        .token_create(&make(types::RoleName::Auditor))
        .await
        .unwrap()
        .into_inner()
        .token;
    let viewer = admin
        .token_create(&make(types::RoleName::Viewer))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(
        client_with_token(&app, &viewer)
            .audit_log_list(None, None, None, None, None, None, None, None, None)
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16()),
        Some(403)
    );
    let wait = entries(&db, "operation_desc = '创建令牌'", 2).await;
    assert_eq!(
        wait[0]["response_result"]["token"], "********",
        "recorded results mask tokens"
    );

    let auditor = client_with_token(&app, &auditor);
    let page = auditor
        .audit_log_list(
            None,
            None,
            Some("POST"),
            Some("org-9"),
            None,
            None,
            None,
            None,
            None,
        )
        .await;
    assert!(
        page.unwrap().into_inner().items.is_empty(),
        "admin's calls carry no org"
    );
    let page = auditor
        .audit_log_list(None, None, None, None, None, None, None, Some("令牌"), None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 2);
    let one = auditor
        .audit_log_get(&page.items[0].audit_id)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.operation_desc, "创建令牌");
    let failures = auditor
        .audit_log_list(
            None,
            None,
            None,
            None,
            None,
            None,
            Some(types::OperationResult::X1),
            None,
            None,
        )
        .await
        .unwrap()
        .into_inner();
    assert!(failures
        .items
        .iter()
        .all(|e| e.operation_result == types::OperationResult::X1));
    assert!(
        failures
            .items
            .iter()
            .any(|e| e.role_id.as_deref() == Some("viewer")),
        "the refused read is there"
    );
    entries(
        &db,
        "operation_desc = '查询操作审计日志' AND operator_id = 'u1' AND role_id = 'auditor'",
        3,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn entries_wait_while_writes_fail_and_a_full_queue_refuses_calls() {
    let db = TestDb::new().await;
    let app = audit_alert::app::App::start(&db.config_with(&[("AUDIT_QUEUE_CAPACITY", "3")]))
        .await
        .unwrap();
    let admin = db.client().await;
    admin
        .batch_execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..50 {
        let resp = http
            .post(format!("http://{}/api/config/recipients", app.addr()))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"table_name":"audit_results","email":"r{i}@example.com"}}"#
            ))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => accepted += 1,
            503 => {
                assert_eq!(resp.headers()["content-type"], "application/problem+json");
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    refused.expect("a full queue refuses calls");
    let created: i64 = admin
        .query_one("SELECT count(*) FROM recipients_config", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, accepted, "the refused call was not performed");
    // The writer keeps failing and keeps what it holds.
    eventually("no write was attempted", async || {
        app.audit_queue()
            .stats()
            .failed_writes
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0
    })
    .await;

    admin
        .batch_execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        .await
        .unwrap();
    entries(&db, "operation_desc = '新增收件人'", accepted).await;
    assert_eq!(
        app.audit_queue()
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn stopping_flushes_the_queue() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let api = client(&app);
    for _ in 0..20 {
        api.monitor_status().await.unwrap();
    }
    app.stop().await;
    let n: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
}

#[tokio::test]
async fn the_audit_log_is_append_only_but_for_the_retention_purge() {
    let db = TestDb::new().await;
    let app = db.start().await;
    client(&app).monitor_status().await.unwrap();
    entries(&db, "true", 1).await;
    let c = db.client().await;
    for sql in [
        "UPDATE audit_log SET operator_id = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = c.batch_execute(sql).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    c.batch_execute(
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
         UPDATE audit_log SET operation_time = now() - interval '200 days';
         ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;",
    )
    .await
    .unwrap();
    assert_eq!(
        audit_alert::audit_log::writer::purge(app.pool(), 180, None)
            .await
            .unwrap(),
        1
    );
    app.stop().await;
}

/// Input PostgreSQL cannot store as sent (U+0000) or that comes back from
/// `jsonb` in a form serde_json cannot read (the largest double) is still
/// audited, does not hold up the entries after it, and reads back.
#[tokio::test]
async fn awkward_input_is_audited_and_read_back() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", app.addr());
    for body in [
        r#"{"table_name":"audit_results","email":"nul@example.com","note":"x\u0000y"}"#,
        r#"{"table_name":"audit_results","email":"big@example.com","name":"n","n":1.7976931348623157e308}"#,
    ] {
        http.post(format!("{base}/api/config/recipients"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
    }
    http.get(format!("{base}/api/config/recipients?table_name=a%00b"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    // The three calls above, in one batch or several, and a later one.
    client(&app).monitor_status().await.unwrap();
    let db_client = db.client().await;
    wait_for_count_query(&db_client, "SELECT count(*) FROM audit_log", 4).await;
    // As text: serde_json cannot read the largest double back from jsonb.
    let params: Vec<String> = db_client
        .query(
            "SELECT request_params::text FROM audit_log ORDER BY audit_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(params[0].contains("x\u{FFFD}y"), "body: {}", params[0]);
    assert!(
        params[1].contains("1797693134862315"),
        "body: {}",
        params[1]
    );
    assert!(params[2].contains("a\u{FFFD}b"), "query: {}", params[2]);

    let listed = http
        .get(format!("{base}/api/audit-logs?page_size=10"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed: serde_json::Value = listed.json().await.unwrap();
    let text = listed.to_string();
    // Read back whole, as the number it was.
    assert!(text.contains("1.7976931348623157e+308"), "{text}");
    assert!(text.contains("x\u{FFFD}y"), "{text}");
    app.stop().await;
}
