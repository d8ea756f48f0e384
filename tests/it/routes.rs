//! Routes: a recipient or channel limited to some verdicts and to rows
//! meeting conditions gets only those alerts; the default stays everything.

use serde_json::json;

use crate::api::raw;
use crate::helpers::*;

#[tokio::test]
async fn each_recipient_gets_only_what_is_routed_to_it() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    wait_until_listening(&t.app).await;
    let review = json!({
        "table_name": "audit_results", "email": "review@example.com", "name": "复核组",
        "verdicts": ["不确定"],
        "conditions": [{"column": "reason", "op": "prefix", "values": ["涉嫌违规"]}],
    });
    let (status, _, saved) = raw(
        &t.app,
        "POST",
        "/api/config/recipients",
        Some(&review.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["verdicts"], json!(["不确定"]));
    assert_eq!(saved["conditions"][0]["op"], "prefix");
    let bad = json!({"table_name": "audit_results", "email": "x@example.com",
                     "conditions": [{"column": "nope", "op": "equals", "values": ["1"]}]});
    let (status, _, problem) = raw(
        &t.app,
        "POST",
        "/api/config/recipients",
        Some(&bad.to_string()),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("conditions[0].column"))
    );
    eventually("the route is loaded", async || {
        t.app
            .worker()
            .snapshot()
            .recipients
            .get("audit_results")
            .map(Vec::len)
            == Some(2)
    })
    .await;

    let failing = insert_audit_rows(&t.client, 1, "不合格").await[0].to_string();
    let unsure = insert_audit_rows(&t.client, 1, "不确定").await[0].to_string();
    let mails = t
        .smtp
        .wait_for("both alerts to on-call and the review", |m| {
            let to = |who: &str| {
                m.iter()
                    .filter(|m| m.envelope_to.iter().any(|t| t == who))
                    .flat_map(|m| m.record_ids())
                    .collect::<Vec<_>>()
            };
            to("oncall@example.com").len() == 2 && !to("review@example.com").is_empty()
        })
        .await;
    let to_review: Vec<String> = mails
        .iter()
        .filter(|m| m.envelope_to.iter().any(|t| t == "review@example.com"))
        .flat_map(|m| m.record_ids())
        .collect();
    assert_eq!(
        to_review,
        std::slice::from_ref(&unsure),
        "the review team gets only 不确定"
    );
    assert!(!to_review.contains(&failing));
    t.app.stop().await;
}

#[tokio::test]
async fn an_alert_routed_nowhere_fails_and_says_why() {
    let t = TestApp::start(SmtpServer::start(), &[]).await;
    wait_until_listening(&t.app).await;
    let only_unsure = json!({"table_name": "audit_results", "email": "review@example.com",
                             "verdicts": ["不确定"]});
    let (status, _, _) = raw(
        &t.app,
        "POST",
        "/api/config/recipients",
        Some(&only_unsure.to_string()),
    )
    .await;
    assert_eq!(status, 200);
    eventually("the route is loaded", async || {
        t.app
            .worker()
            .snapshot()
            .recipients
            .contains_key("audit_results")
    })
    .await;
    let record = insert_audit_rows(&t.client, 1, "不合格").await[0].to_string();
    let error: String = eventually("the alert fails", async || {
        t.client
            .query_opt(
                "SELECT error_message FROM email_sent_log WHERE record_id = $1 AND status = 'failed'",
                &[&record],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    assert!(error.contains("routed nowhere"), "{error}");
    assert!(t.smtp.received().is_empty());
    t.app.stop().await;
}
