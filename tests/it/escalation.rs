//! Escalation: a sent alert nobody acknowledged within its table's delay
//! goes to the escalation group once, marked as an escalation; an
//! acknowledged one never does. The moment lives on the alert, so a restart
//! keeps it; the test moves that moment instead of waiting for it.

use serde_json::json;

use crate::api::raw;
use crate::helpers::*;

#[tokio::test]
async fn an_unacknowledged_alert_escalates_once_and_an_acknowledged_one_never() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    wait_until_listening(&t.app).await;
    let body = json!({"emails": ["boss@example.com"], "after_minutes": 30});
    let (status, _, saved) = raw(
        &t.app,
        "PUT",
        "/api/config/tables/audit_results/escalation",
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    let (status, _, problem) = raw(
        &t.app,
        "PUT",
        "/api/config/tables/audit_results/escalation",
        Some(r#"{"emails":["not an address"],"after_minutes":5}"#),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("emails[0]")),
        "{problem}"
    );

    let rows = insert_audit_rows(&t.client, 2, "不合格").await;
    t.smtp.wait_for_records(2).await;
    let id_of = async |record: i64| -> i64 {
        t.client
            .query_one(
                "SELECT id FROM email_sent_log WHERE record_id = $1",
                &[&record.to_string()],
            )
            .await
            .unwrap()
            .get(0)
    };
    let (left, taken) = (id_of(rows[0]).await, id_of(rows[1]).await);
    let shown = eventually("the escalation moment is set", async || {
        let (_, _, a) = raw(&t.app, "GET", &format!("/api/alerts/{left}"), None).await;
        a["escalate_at"].is_string().then_some(a)
    })
    .await;
    let at: chrono::DateTime<chrono::Utc> = shown["escalate_at"].as_str().unwrap().parse().unwrap();
    assert!(
        at > chrono::Utc::now() + chrono::Duration::minutes(29),
        "{at}"
    );
    let (status, _, _) = raw(&t.app, "POST", &format!("/api/alerts/{taken}/ack"), None).await;
    assert_eq!(status, 200);

    // Thirty minutes pass while the service is down.
    t.app.stop().await;
    t.client
        .execute(
            "UPDATE email_sent_log SET escalate_at = now() - interval '1 second'
              WHERE id = ANY($1)",
            &[&vec![left, taken]],
        )
        .await
        .unwrap();
    let app = t.db.start().await;
    let mails = t
        .smtp
        .wait_for("the escalation", |m| {
            m.iter()
                .any(|m| m.envelope_to.iter().any(|to| to == "boss@example.com"))
        })
        .await;
    let to_boss: Vec<_> = mails
        .iter()
        .filter(|m| m.envelope_to.iter().any(|to| to == "boss@example.com"))
        .collect();
    assert_eq!(to_boss.len(), 1);
    assert!(
        to_boss[0].subject.contains("升级"),
        "{}",
        to_boss[0].subject
    );
    assert_eq!(
        to_boss[0].record_ids(),
        [rows[0].to_string()],
        "not the acknowledged one"
    );
    let escalated = eventually("the escalation is recorded", async || {
        let (_, _, a) = raw(&app, "GET", &format!("/api/alerts/{left}"), None).await;
        a["escalated_at"].is_string().then_some(a)
    })
    .await;
    assert_eq!(escalated["status"], "sent");
    let (_, _, acked) = raw(&app, "GET", &format!("/api/alerts/{taken}"), None).await;
    assert!(acked.get("escalated_at").is_none(), "{acked}");

    // Later deliveries do not escalate it again.
    let later = insert_audit_rows(&t.client, 1, "不合格").await[0];
    t.smtp
        .wait_for("a later alert", |m| {
            m.iter()
                .any(|m| m.record_ids().contains(&later.to_string()))
        })
        .await;
    let again = t
        .smtp
        .received()
        .iter()
        .filter(|m| m.envelope_to.iter().any(|to| to == "boss@example.com"))
        .count();
    assert_eq!(again, 1);
    app.stop().await;
}
