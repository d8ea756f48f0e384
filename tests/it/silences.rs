//! Silences: what one holds never arrives and says why; when it ends,
//! alerts go out again, and what it held can be re-sent.

use serde_json::json;

use crate::api::raw;
use crate::helpers::*;

#[tokio::test]
async fn a_silenced_alert_never_arrives_and_shows_why() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    wait_until_listening(&t.app).await;
    let body = json!({
        "table_name": "audit_results",
        "verdicts": ["不确定"],
        "conditions": [{"column": "url", "op": "prefix", "values": ["https://example.com/post/"]}],
        "duration_minutes": 60,
        "comment": "复核队列维护中",
    });
    let (status, _, silence) = raw(&t.app, "POST", "/api/silences", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{silence}");
    assert_eq!(silence["state"], "active");
    assert_eq!(silence["created_by"], "admin");
    let sid = silence["id"].as_i64().unwrap();

    let held = insert_audit_rows(&t.client, 1, "不确定").await[0];
    let sent = insert_audit_rows(&t.client, 1, "不合格").await[0];
    let mails = t.smtp.wait_for_records(1).await;
    assert_eq!(
        mails
            .iter()
            .flat_map(|m| m.record_ids())
            .collect::<Vec<_>>(),
        [sent.to_string()]
    );
    let alert = eventually("the held alert is recorded as silenced", async || {
        let id: Option<i64> = t
            .client
            .query_opt(
                "SELECT id FROM email_sent_log WHERE record_id = $1 AND status = 'silenced'",
                &[&held.to_string()],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        id
    })
    .await;
    let (_, _, shown) = raw(&t.app, "GET", &format!("/api/alerts/{alert}"), None).await;
    assert_eq!(
        (shown["status"].as_str(), shown["silenced_by"].as_i64()),
        (Some("silenced"), Some(sid))
    );
    let (_, _, silence) = raw(&t.app, "GET", &format!("/api/silences/{sid}"), None).await;
    assert_eq!(silence["silenced_alerts"], 1);

    // Ended early: alerts go out again; what it held stays held until re-sent.
    let (status, _, ended) =
        raw(&t.app, "POST", &format!("/api/silences/{sid}/expire"), None).await;
    assert_eq!(
        (status, ended["state"].as_str()),
        (200, Some("expired")),
        "{ended}"
    );
    assert_eq!(ended["expired_by"], "admin");
    let (status, _, _) = raw(&t.app, "POST", &format!("/api/silences/{sid}/expire"), None).await;
    assert_eq!(status, 409);
    let after = insert_audit_rows(&t.client, 1, "不确定").await[0];
    t.smtp
        .wait_for("the alert after the silence", |m| {
            m.iter()
                .any(|m| m.record_ids().contains(&after.to_string()))
        })
        .await;
    assert!(!t
        .smtp
        .received()
        .iter()
        .any(|m| m.record_ids().contains(&held.to_string())));
    let (status, _, _) = raw(&t.app, "POST", &format!("/api/alerts/{alert}/resend"), None).await;
    assert_eq!(status, 200);
    t.smtp
        .wait_for("the re-sent alert", |m| {
            m.iter().any(|m| m.record_ids().contains(&held.to_string()))
        })
        .await;
    let (_, _, listed) = raw(&t.app, "GET", "/api/silences?state=expired", None).await;
    assert_eq!(listed["total"], 1);
    t.app.stop().await;
}

#[tokio::test]
async fn a_silence_is_refused_when_it_cannot_hold_what_it_says() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    let cases = [
        (
            json!({"table_name": "audit_results", "conditions": [{"column": "nope", "op": "equals", "values": ["x"]}], "duration_minutes": 5, "comment": "x"}),
            422,
            "conditions[0].column",
        ),
        (
            json!({"conditions": [{"column": "url", "op": "equals", "values": ["x"]}], "duration_minutes": 5, "comment": "x"}),
            422,
            "conditions",
        ),
        (
            json!({"table_name": "audit_results", "conditions": [{"column": "url", "op": "equals", "values": ["x", "y"]}], "duration_minutes": 5, "comment": "x"}),
            400,
            "conditions[0].values",
        ),
        (
            json!({"table_name": "nope", "duration_minutes": 5, "comment": "x"}),
            422,
            "table_name",
        ),
        (
            json!({"duration_minutes": 5, "comment": "   "}),
            400,
            "comment",
        ),
        (json!({"comment": "x"}), 400, "ends_at"),
        (
            json!({"starts_at": "2026-01-02T00:00:00Z", "ends_at": "2026-01-01T00:00:00Z", "comment": "x"}),
            400,
            "ends_at",
        ),
    ];
    for (body, status, field) in cases {
        let (got, _, problem) = raw(&t.app, "POST", "/api/silences", Some(&body.to_string())).await;
        assert_eq!(
            (got, problem["field"].as_str()),
            (status, Some(field)),
            "{body}: {problem}"
        );
    }
    let n: i64 = t
        .client
        .query_one("SELECT count(*) FROM silences", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    t.app.stop().await;
}
