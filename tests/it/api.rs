//! The HTTP API through the client generated from `openapi/openapi.json`, and
//! bad requests through plain HTTP.

use std::num::NonZeroU32;

use crate::client::{types, Client};
use crate::helpers::*;

pub fn client(app: &audit_alert::app::App) -> Client {
    client_with_token(app, ADMIN_TOKEN)
}

/// The generated client, sending `token` as its bearer token.
pub fn client_with_token(app: &audit_alert::app::App, token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    Client::new_with_client(&format!("http://{}", app.addr()), http)
}

fn smtp_input(port: u16) -> types::SmtpConfigInput {
    types::SmtpConfigInput {
        name: None,
        smtp_server: Some("127.0.0.1".try_into().unwrap()),
        server: None,
        smtp_port: Some(NonZeroU32::new(port.into()).unwrap()),
        port: None,
        security: Some(types::SmtpSecurity::None),
        sender_email: Some("alerts@example.com".try_into().unwrap()),
        sender_name: Some("审核告警".try_into().unwrap()),
        username: None,
        password: None,
        timeout_seconds: None,
        is_active: Some(true),
    }
}

#[tokio::test]
async fn smtp_configs_are_managed_and_tested_through_the_generated_client() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    let app = db.start().await;
    let api = client(&app);

    let first = api
        .smtp_create(&smtp_input(smtp.port))
        .await
        .unwrap()
        .into_inner();
    assert!(first.is_active && !first.password_set);
    let second = api
        .smtp_create(&smtp_input(free_port()))
        .await
        .unwrap()
        .into_inner();
    let list = api.smtp_list(None, None).await.unwrap().into_inner().items;
    assert_eq!(
        list.iter().filter(|c| c.is_active).count(),
        1,
        "creating an active one deactivates the rest"
    );
    assert!(list.iter().any(|c| c.id == second.id && c.is_active));

    api.smtp_activate(first.id).await.unwrap();
    let list = api.smtp_list(None, None).await.unwrap().into_inner().items;
    let active: Vec<_> = list.iter().filter(|c| c.is_active).map(|c| c.id).collect();
    assert_eq!(active, [first.id]);

    // The test mail goes through the real server; a dead port is reported in plain words.
    let sent = api
        .smtp_test(
            first.id,
            &types::SmtpTestRequest {
                to: "ops@example.com".into(),
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert!(sent.success, "{}", sent.detail);
    let mails = smtp.wait_for_count(1).await;
    assert_eq!(mails[0].envelope_to, ["ops@example.com"]);
    let refused = api
        .smtp_test(
            second.id,
            &types::SmtpTestRequest {
                to: "ops@example.com".into(),
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.success);
    assert_eq!(refused.outcome, types::SmtpTestOutcome::ConnectionFailed);
    assert!(
        refused.detail.contains("cannot connect"),
        "{}",
        refused.detail
    );

    let mut changed = smtp_input(smtp.port);
    changed.sender_name = Some("值班".try_into().unwrap());
    let updated = api
        .smtp_update(first.id, &changed)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.sender_name.as_deref(), Some("值班"));
    api.smtp_delete(second.id).await.unwrap();
    let missing = api.smtp_get(second.id).await.unwrap_err();
    assert_eq!(missing.status().map(|s| s.as_u16()), Some(404));
    app.stop().await;
}

#[tokio::test]
async fn passwords_need_a_secret_key_and_never_come_back() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let mut input = smtp_input(2525);
    input.password = Some("s3cret-Passw0rd".try_into().unwrap());
    let err = client(&app).smtp_create(&input).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    let problem = error_body(err).await;
    assert_eq!(problem["field"], "password");
    assert!(
        problem["detail"].as_str().unwrap().contains("SECRET_KEY"),
        "{problem}"
    );
    app.stop().await;

    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", key)]))
        .await
        .unwrap();
    let api = client(&app);
    let created = api.smtp_create(&input).await.unwrap().into_inner();
    assert!(created.password_set);
    let raw = reqwest::Client::new()
        .get(format!("http://{}/api/config/smtp", app.addr()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains("s3cret-Passw0rd"), "{raw}");
    let stored: String = db
        .client()
        .await
        .query_one(
            "SELECT password_encrypted || coalesce(sender_password, '') FROM smtp_config",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.starts_with("v1:") && !stored.contains("s3cret"),
        "encrypted at rest"
    );
    app.stop().await;
}

/// The problem+json body of an error response (the generated client hands
/// `application/problem+json` bodies over as bytes).
pub async fn error_body(
    err: progenitor_client::Error<progenitor_client::ByteStream>,
) -> serde_json::Value {
    use futures_util::StreamExt;
    let progenitor_client::Error::ErrorResponse(response) = err else {
        panic!("expected a problem response, got {err:?}");
    };
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let mut stream = response.into_inner().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    serde_json::from_slice(&bytes).unwrap()
}

/// A raw request: method, path, body; returns status, content type and JSON body.
pub async fn raw(
    app: &audit_alert::app::App,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, serde_json::Value) {
    let http = reqwest::Client::new();
    let url = format!("http://{}{path}", app.addr());
    let mut req = http
        .request(method.parse().unwrap(), url)
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test]
async fn bad_requests_are_problems_that_name_the_field() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let smtp = |port: &str, email: &str| {
        format!(r#"{{"smtp_server":"127.0.0.1","smtp_port":{port},"sender_email":"{email}"}}"#)
    };
    // method, path, body, status, the field the problem must name
    type Case<'a> = (&'a str, String, Option<String>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/config/smtp".into(),
            Some(smtp("0", "a@b.c")),
            400,
            Some("smtp_port"),
        ),
        (
            "POST",
            "/api/config/smtp".into(),
            Some(smtp("70000", "a@b.c")),
            400,
            Some("smtp_port"),
        ),
        (
            "POST",
            "/api/config/smtp".into(),
            Some(smtp("25", "not-an-address")),
            400,
            Some("sender_email"),
        ),
        (
            "POST",
            "/api/config/smtp".into(),
            Some("{not json".into()),
            400,
            None,
        ),
        (
            "POST",
            "/api/config/smtp".into(),
            Some(r#"{"smtp_server":"x"}"#.into()),
            400,
            None,
        ),
        (
            "POST",
            "/api/config/recipients".into(),
            Some(r#"{"table_name":"audit_results","email":"nope"}"#.into()),
            400,
            Some("email"),
        ),
        (
            "POST",
            "/api/config/recipients".into(),
            Some(r#"{"table_name":"no_such_table","email":"a@b.c"}"#.into()),
            422,
            Some("table_name"),
        ),
        (
            "PUT",
            "/api/monitor/interval/0".into(),
            None,
            400,
            Some("minutes"),
        ),
        (
            "PUT",
            "/api/monitor/interval/61".into(),
            None,
            400,
            Some("minutes"),
        ),
        (
            "PUT",
            "/api/monitor/interval/abc".into(),
            None,
            400,
            Some("minutes"),
        ),
        (
            "GET",
            "/api/monitor/logs?lines=0".into(),
            None,
            400,
            Some("lines"),
        ),
        (
            "PUT",
            "/api/config/system/check_interval".into(),
            Some(r#"{"value":"61"}"#.into()),
            400,
            Some("value"),
        ),
        (
            "PUT",
            "/api/config/system/no_such_key".into(),
            Some(r#"{"value":"1"}"#.into()),
            404,
            None,
        ),
        (
            "POST",
            "/api/config/tables".into(),
            Some(r#"{"table_name":"no_such_table"}"#.into()),
            422,
            Some("table_name"),
        ),
        (
            "GET",
            "/api/alerts?page_size=501".into(),
            None,
            400,
            Some("page_size"),
        ),
        ("GET", "/api/alerts/12345".into(), None, 404, None),
        ("GET", "/no/such/route".into(), None, 404, None),
        ("DELETE", "/api/monitor/status".into(), None, 405, None),
        (
            "POST",
            "/api/config/smtp".into(),
            Some(format!(
                r#"{{"smtp_server":"{}"}}"#,
                "x".repeat(2 * 1024 * 1024)
            )),
            413,
            None,
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (got, ct, problem) = raw(&app, method, &path, body.as_deref()).await;
        let what = format!("{method} {path}");
        assert_eq!(got, status, "{what}: {problem}");
        assert_eq!(ct, "application/problem+json", "{what}");
        assert_eq!(problem["status"], status, "{what}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {problem}"
        );
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{what}: {problem}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn recipients_are_validated_unique_and_batched_all_or_nothing() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let api = client(&app);
    let input = |table: &str, email: &str| types::RecipientInput {
        table_name: table.try_into().unwrap(),
        email: email.try_into().unwrap(),
        name: Some("张三".try_into().unwrap()),
        is_active: None,
        verdicts: Vec::new(),
        conditions: Vec::new(),
        schedule: None,
    };

    let one = api
        .recipient_create(&input("audit_results", "a@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert!(one.is_active);
    let dup = api
        .recipient_create(&input("audit_results", "A@example.com"))
        .await
        .unwrap_err();
    assert_eq!(dup.status().map(|s| s.as_u16()), Some(409));

    // One bad entry: nothing of the batch is created.
    let batch = types::RecipientBatch {
        recipients: vec![
            input("image_audit_results", "b@example.com"),
            input("audit_results", "broken"),
        ],
    };
    let err = error_body(api.recipient_batch_create(&batch).await.unwrap_err()).await;
    assert_eq!(err["field"], "recipients[1].email");
    assert_eq!(
        api.recipient_list(None, None, None, None)
            .await
            .unwrap()
            .into_inner()
            .total,
        1
    );

    let batch = types::RecipientBatch {
        recipients: vec![
            input("image_audit_results", "b@example.com"),
            input("audit_results", "c@example.com"),
        ],
    };
    let created = api
        .recipient_batch_create(&batch)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.len(), 2);
    let audit = api
        .recipient_list(None, None, None, Some("audit_results"))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(audit.len(), 2);

    let off = types::RecipientChange {
        is_active: Some(false),
        ..Default::default()
    };
    api.recipient_update(created[1].id, &off).await.unwrap();
    let active = api
        .recipient_list(Some(true), None, None, Some("audit_results"))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        active.iter().map(|r| r.email.as_str()).collect::<Vec<_>>(),
        ["a@example.com"]
    );

    let missing = types::RecipientIds {
        ids: vec![one.id, 999_999],
    };
    assert_eq!(
        api.recipient_batch_delete(&missing)
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16()),
        Some(404)
    );
    assert_eq!(
        api.recipient_list(None, None, None, None)
            .await
            .unwrap()
            .into_inner()
            .total,
        3,
        "nothing deleted"
    );
    let ids = types::RecipientIds {
        ids: vec![one.id, created[0].id],
    };
    assert_eq!(
        api.recipient_batch_delete(&ids)
            .await
            .unwrap()
            .into_inner()
            .deleted,
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn monitor_stop_holds_mail_and_start_releases_it() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    let api = client(&t.app);

    let stopped = api.monitor_stop().await.unwrap().into_inner();
    assert!(!stopped.config.monitor_enabled);
    assert_eq!(stopped.process.status, "stopped");
    let id = insert_audit_rows(&t.client, 1, "不合格").await[0];
    assert_eq!(
        t.app.worker().deliver_once().await.unwrap(),
        0,
        "stopped: nothing is sent"
    );
    // Recorded while stopped.
    wait_for_count_query(
        &t.client,
        &format!(
            "SELECT count(*) FROM email_sent_log WHERE record_id = '{id}' AND status = 'pending'"
        ),
        1,
    )
    .await;
    let status = api.monitor_status().await.unwrap().into_inner();
    assert_eq!(status.queue.pending, 1);
    assert_eq!(status.recipients_count.get("audit_results"), Some(&1));
    assert!(status.smtp_configured && status.listener.connected);

    let started = api.monitor_start().await.unwrap().into_inner();
    assert_eq!(started.overall_status, "healthy");
    let mails = t.smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [id.to_string()]);

    let status = api.monitor_interval(7).await.unwrap().into_inner();
    assert_eq!(status.config.check_interval, 7);
    let next = status.sweep.next_sweep.expect("a sweep is scheduled");
    let wait = next - chrono::Utc::now();
    assert!(
        wait <= chrono::Duration::minutes(7) && wait > chrono::Duration::minutes(6),
        "re-armed at once: {wait}"
    );
    api.monitor_health().await.unwrap();
    api.monitor_logs(Some(NonZeroU32::new(10).unwrap()))
        .await
        .unwrap();
    t.app.stop().await;
}

#[tokio::test]
async fn alert_history_filters_pages_and_resends() {
    let t = TestApp::start(
        SmtpServer::rejecting(&["gone@example.com"]),
        &[("audit_results", "gone@example.com")],
    )
    .await;
    let api = client(&t.app);

    insert_audit_rows(&t.client, 3, "不确定").await;
    wait_for_count_query(
        &t.client,
        "SELECT count(*) FROM email_sent_log WHERE status = 'failed'",
        3,
    )
    .await;
    let page = api
        .alert_list(
            None,
            None,
            Some(NonZeroU32::new(2).unwrap()),
            Some(types::AlertStatus::Failed),
            Some("audit_results"),
            None,
            Some("不确定"),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.total, page.items.len()), (3, 2));
    let failed = &page.items[0];
    assert!(failed.failed_recipients.contains_key("gone@example.com"));
    assert!(failed.last_error.as_deref().unwrap().contains("550"));

    // Fix the recipient, re-send one: it arrives.
    t.client
        .execute(
            "UPDATE recipients_config SET email = 'back@example.com'",
            &[],
        )
        .await
        .unwrap();
    let resent = api.alert_resend(failed.id).await.unwrap().into_inner();
    assert_eq!(resent.status, types::AlertStatus::Pending);
    let mails = t.smtp.wait_for_count(1).await;
    assert_eq!(
        mails[0].record_ids(),
        std::slice::from_ref(&failed.record_id)
    );
    wait_for_count_query(
        &t.client,
        &format!(
            "SELECT count(*) FROM email_sent_log WHERE id = {} AND status = 'sent'",
            failed.id
        ),
        1,
    )
    .await;
    let again = api.alert_resend(failed.id).await.unwrap_err();
    assert_eq!(again.status().map(|s| s.as_u16()), Some(409));
    let one = api.alert_get(failed.id).await.unwrap().into_inner();
    assert_eq!(one.delivered_to, ["back@example.com"]);
    t.app.stop().await;
}

#[tokio::test]
async fn tables_are_watched_and_unwatched_through_the_api() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    let rows = db.client().await;
    rows.batch_execute(
        "CREATE TABLE posts (id bigserial PRIMARY KEY, decision text, title text);
         INSERT INTO posts (decision, title) VALUES ('不合格', 'old one'), ('合格', 'fine');",
    )
    .await
    .unwrap();
    configure(&db, smtp.port, &[]).await;
    let app = db.start().await;
    let api = client(&app);

    let watched = api
        .table_watch(&types::WatchInput {
            table_name: "posts".try_into().unwrap(),
            id_column: None,
            verdict_column: Some("decision".try_into().unwrap()),
            alert_verdicts: vec![],
            backfill: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watched.existing_flagged, 1);
    assert_eq!(watched.table.id_type, "bigint");
    api.recipient_create(&types::RecipientInput {
        table_name: "posts".try_into().unwrap(),
        email: "posts@example.com".try_into().unwrap(),
        name: None,
        is_active: None,
        verdicts: Vec::new(),
        conditions: Vec::new(),
        schedule: None,
    })
    .await
    .unwrap();
    let id: i64 = rows
        .query_one(
            "INSERT INTO posts (decision, title) VALUES ('不合格', 'new one') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mails = smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [id.to_string()]);
    assert!(mails[0].text.contains("title: new one"));

    assert_eq!(
        api.table_list(None, None).await.unwrap().into_inner().total,
        3
    );
    api.table_unwatch("posts").await.unwrap();
    assert_eq!(
        api.table_unwatch("posts")
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16()),
        Some(404)
    );
    app.stop().await;
}

#[tokio::test]
async fn templates_are_replaced_previewed_and_used() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    let api = client(&t.app);

    let built_in = api
        .template_get("audit_results")
        .await
        .unwrap()
        .into_inner();
    assert!(built_in.is_default);
    let broken = types::TemplateInput {
        subject: "ok".try_into().unwrap(),
        html: "{{#if}}".try_into().unwrap(),
        text: "ok".try_into().unwrap(),
    };
    let err = error_body(
        api.template_replace("audit_results", &broken)
            .await
            .unwrap_err(),
    )
    .await;
    assert_eq!(err["field"], "html");

    let custom = types::TemplateInput {
        subject: "告警 {{table}} ×{{count}}".try_into().unwrap(),
        html: "<ul>{{#each records}}<li>{{id}} {{url}}</li>{{/each}}</ul>"
            .try_into()
            .unwrap(),
        text: "{{#each records}}[{{verdict}}] 记录 {{id}} {{url}}\n{{/each}}"
            .try_into()
            .unwrap(),
    };
    let stored = api
        .template_replace("audit_results", &custom)
        .await
        .unwrap()
        .into_inner();
    assert!(!stored.is_default);

    let id = insert_audit_rows(&t.client, 1, "不合格").await[0];
    let mails = t.smtp.wait_for_count(1).await;
    assert_eq!(mails[0].subject, "告警 audit_results ×1");
    assert_eq!(
        mails[0].record_ids(),
        [format!("{id} https://example.com/post/1")]
    );

    let preview = api
        .template_preview(
            "audit_results",
            &types::PreviewRequest {
                record_id: Some(id.to_string()),
                template: None,
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.subject, "告警 audit_results ×1");
    assert!(preview.html.contains("https://example.com/post/1"));
    let bad = api
        .template_preview(
            "audit_results",
            &types::PreviewRequest {
                record_id: Some("x".into()),
                template: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error_body(bad).await["field"], "record_id");

    api.template_reset("audit_results").await.unwrap();
    assert!(
        api.template_get("audit_results")
            .await
            .unwrap()
            .into_inner()
            .is_default
    );
    t.app.stop().await;
}

#[tokio::test]
async fn every_remaining_endpoint_answers_its_success_path() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    let app = db.start().await;
    let api = client(&app);

    // System settings: listed with types and ranges, one changed.
    let settings = api.system_list().await.unwrap().into_inner();
    let interval = settings.iter().find(|s| s.key == "check_interval").unwrap();
    assert_eq!((interval.minimum, interval.maximum), (Some(1), Some(60)));
    let changed = api
        .system_update(
            "digest_max_records",
            &types::SettingValue {
                value: "50".try_into().unwrap(),
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.value, "50");
    assert_eq!(app.worker().snapshot().switches.digest_max_records, 50);

    // Single SMTP configuration and recipient reads and deletes.
    let config = api
        .smtp_create(&smtp_input(smtp.port))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        api.smtp_get(config.id)
            .await
            .unwrap()
            .into_inner()
            .smtp_port,
        smtp.port
    );
    let r = api
        .recipient_create(&types::RecipientInput {
            table_name: "audit_results".try_into().unwrap(),
            email: "one@example.com".try_into().unwrap(),
            name: None,
            is_active: None,
            verdicts: Vec::new(),
            conditions: Vec::new(),
            schedule: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        api.recipient_get(r.id).await.unwrap().into_inner().email,
        "one@example.com"
    );
    assert_eq!(
        api.recipient_delete(r.id)
            .await
            .unwrap()
            .into_inner()
            .deleted,
        1
    );
    assert_eq!(
        api.recipient_get(r.id)
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16()),
        Some(404)
    );

    // Monitor: restart, logs, health; tables: update; alerts: unfiltered page.
    let restarted = api.monitor_restart().await.unwrap().into_inner();
    assert!(restarted.config.monitor_enabled);
    api.monitor_logs(None).await.unwrap();
    assert_eq!(
        api.monitor_health().await.unwrap().into_inner().status,
        "ok"
    );
    let updated = api
        .table_update(
            "image_audit_results",
            &types::WatchInput {
                table_name: "image_audit_results".try_into().unwrap(),
                id_column: None,
                verdict_column: Some("audit_result".try_into().unwrap()),
                alert_verdicts: vec!["不合格".to_owned()],
                backfill: None,
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.table.alert_verdicts, ["不合格"]);
    let tables = api
        .table_list(
            Some(NonZeroU32::new(1).unwrap()),
            Some(NonZeroU32::new(1).unwrap()),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tables.total, tables.items.len()), (2, 1));
    let alerts = api
        .alert_list(None, None, None, None, None, None, None)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alerts.total, 0);
    let preview = api
        .template_preview(
            "audit_results",
            &types::PreviewRequest {
                record_id: None,
                template: None,
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert!(
        preview.subject.contains("audit_results"),
        "a sample row is rendered"
    );

    // The docs page and the spec are public and self-contained.
    let docs = reqwest::get(format!("http://{}/docs", app.addr()))
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"));
    for outside in ["src=\"http", "href=\"http", "@import url(http"] {
        assert!(
            !html.contains(outside),
            "the docs load {outside}…: they must work without the internet"
        );
    }
    let spec = reqwest::get(format!("http://{}/openapi.json", app.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(spec, audit_alert::api::spec_json());
    app.stop().await;
}

#[tokio::test]
async fn the_smtp_test_names_what_went_wrong() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::rejecting(&["gone@example.com"]);
    let app = db.start().await;
    let api = client(&app);
    let plain = api
        .smtp_create(&smtp_input(smtp.port))
        .await
        .unwrap()
        .into_inner();
    let mut tls = smtp_input(smtp.port);
    tls.security = Some(types::SmtpSecurity::Tls);
    tls.smtp_server = Some("localhost".try_into().unwrap());
    let tls = api.smtp_create(&tls).await.unwrap().into_inner();
    let test = |id, to: &str| {
        let api = &api;
        let to = to.to_owned();
        async move {
            api.smtp_test(id, &types::SmtpTestRequest { to })
                .await
                .unwrap()
                .into_inner()
        }
    };

    let rejected = test(plain.id, "gone@example.com").await;
    assert_eq!(
        rejected.outcome,
        types::SmtpTestOutcome::RecipientRejected,
        "{}",
        rejected.detail
    );
    assert!(rejected.detail.contains("550"), "{}", rejected.detail);
    let handshake = test(tls.id, "ops@example.com").await;
    assert!(!handshake.success);
    assert_eq!(
        handshake.outcome,
        types::SmtpTestOutcome::TlsFailed,
        "{}",
        handshake.detail
    );
    assert!(smtp.received().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn metrics_are_public_and_in_prometheus_format() {
    let t = TestApp::start(
        SmtpServer::rejecting(&["gone@example.com"]),
        &[
            ("audit_results", "oncall@example.com"),
            ("audit_results", "gone@example.com"),
        ],
    )
    .await;
    insert_audit_rows(&t.client, 2, "不合格").await;
    let mails = t.smtp.wait_for_records(2).await.len();
    client(&t.app).monitor_status().await.unwrap();
    let text = eventually("metrics never showed the work", async || {
        let text = reqwest::get(format!("http://{}/metrics", t.app.addr()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // The outcome is committed a moment before this copy counts it.
        if text.contains(r#"audit_alert_alerts{status="sent"} 2"#)
            && text.contains(r#"audit_alert_deliveries_total{outcome="sent"} 2"#)
            && text.contains("audit_alert_audit_entries_written_total 1")
        {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    for line in [
        r#"audit_alert_deliveries_total{outcome="sent"} 2"#,
        "audit_alert_listener_connected 1",
        "audit_alert_audit_entries_dropped_total 0",
        r#"audit_alert_http_requests_total{operation="monitor_status",status="200"} 1"#,
        "audit_alert_audit_queue_depth 0",
        "audit_alert_sent_latency_seconds_count 2",
        r#"audit_alert_sent_latency_seconds_bucket{le="+Inf"} 2"#,
        // One refusal per mail that went out to the other recipient.
        &format!(
            r#"audit_alert_smtp_errors_total{{kind="recipient_rejected",class="permanent"}} {mails}"#
        ),
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(
        !text.contains(r#"class="transient""#),
        "no transient failure happened: {text}"
    );
    t.app.stop().await;
}
