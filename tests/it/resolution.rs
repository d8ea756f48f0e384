//! Resolution notices: when a row left `不确定` is re-reviewed to a verdict
//! that does not alert, those who got its alert (mail and chat) are told it
//! was cleared, once; nothing is sent when it goes to `不合格`, nor for a
//! table that did not ask for notices.

use serde_json::json;

use crate::api::raw;
use crate::bots::{Bot, Service};
use crate::channels::{add, loaded, start};
use crate::helpers::*;

const REVIEW: &str = "review@example.com";

fn to<'a>(mails: &'a [Received], who: &str) -> Vec<&'a Received> {
    mails
        .iter()
        .filter(|m| m.envelope_to.iter().any(|t| t == who))
        .collect()
}

async fn set_verdict(client: &tokio_postgres::Client, id: i64, verdict: &str) {
    let n = client
        .execute(
            "UPDATE audit_results SET verdict = $2 WHERE id = $1",
            &[&id, &verdict],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn those_who_got_an_uncertain_alert_are_told_when_it_is_cleared() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let path = "/api/config/tables/audit_results/resolution-notice";
    let (_, _, off) = raw(&app, "GET", path, None).await;
    assert_eq!(off["enabled"], false, "{off}");
    let (status, _, on) = raw(&app, "PUT", path, Some(r#"{"enabled":true}"#)).await;
    assert_eq!((status, &on["enabled"]), (200, &json!(true)), "{on}");
    let (status, _, _) = raw(
        &app,
        "PUT",
        "/api/config/tables/nope/resolution-notice",
        Some(r#"{"enabled":true}"#),
    )
    .await;
    assert_eq!(status, 404);
    // Takes only failing alerts: it never gets the uncertain one, so it is
    // not told it was cleared either.
    let review = json!({"table_name": "audit_results", "email": REVIEW, "verdicts": ["不合格"]});
    let (status, _, saved) = raw(
        &app,
        "POST",
        "/api/config/recipients",
        Some(&review.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    let bot = Bot::start(Service::Webhook, Some("webhook-secret")).await;
    add(&app, "webhook", &bot.url(), Some("webhook-secret")).await;
    loaded(&app, 1).await;
    eventually("the routed recipient is loaded", async || {
        app.worker()
            .snapshot()
            .recipients
            .get("audit_results")
            .map_or(0, Vec::len)
            == 2
    })
    .await;

    let rows = insert_audit_rows(&client, 3, "不确定").await;
    smtp.wait_for_records(3).await;
    eventually("the channel has the three alerts", async || {
        bot.accepted()
            .iter()
            .map(|b| b["count"].as_i64().unwrap_or(0))
            .sum::<i64>()
            == 3
    })
    .await;
    assert!(to(&smtp.received(), REVIEW).is_empty());

    // One row cleared, another re-reviewed to failing.
    set_verdict(&client, rows[0], "合格").await;
    set_verdict(&client, rows[2], "不合格").await;
    let mails = smtp
        .wait_for("the notice and the failing alert", |m| {
            m.iter().any(|m| m.subject.contains("已解除")) && !to(m, REVIEW).is_empty()
        })
        .await;
    let notices: Vec<_> = mails
        .iter()
        .filter(|m| m.subject.contains("已解除"))
        .collect();
    assert_eq!(notices.len(), 1, "one notice");
    assert_eq!(notices[0].envelope_to, ["oncall@example.com"]);
    assert!(
        notices[0]
            .text
            .contains(&format!("记录 {}：不确定 → 合格", rows[0])),
        "{}",
        notices[0].text
    );
    let review_mails = to(&mails, REVIEW);
    assert_eq!(review_mails.len(), 1);
    assert_eq!(review_mails[0].record_ids(), [rows[2].to_string()]);
    let resolved = eventually("the channel is told", async || {
        bot.accepted().into_iter().find(|b| b["resolved"] == true)
    })
    .await;
    assert_eq!(resolved["count"], 1, "{resolved}");
    assert_eq!(resolved["alerts"][0]["record_id"], rows[0].to_string());
    assert_eq!(resolved["alerts"][0]["verdict"], "合格");
    let notice = eventually("the notice is recorded as sent", async || {
        let id: Option<i64> = client
            .query_opt(
                "SELECT id FROM email_sent_log WHERE record_id = $1 AND verdict = '合格'",
                &[&rows[0].to_string()],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        let (_, _, a) = raw(&app, "GET", &format!("/api/alerts/{}", id?), None).await;
        (a["status"] == "sent").then_some(a)
    })
    .await;
    let mut got: Vec<String> = serde_json::from_value(notice["delivered_to"].clone()).unwrap();
    got.sort();
    assert_eq!(got[1], "oncall@example.com");
    assert!(got[0].starts_with("channel:"), "{got:?}");
    assert!(
        notice.get("escalate_at").is_none(),
        "a notice never escalates"
    );

    // Notices off: a cleared row tells nobody.
    let (status, _, _) = raw(&app, "PUT", path, Some(r#"{"enabled":false}"#)).await;
    assert_eq!(status, 200);
    set_verdict(&client, rows[1], "合格").await;
    let later = insert_audit_rows(&client, 1, "不合格").await[0];
    smtp.wait_for("a later alert", |m| {
        m.iter()
            .any(|m| m.record_ids().contains(&later.to_string()))
    })
    .await;
    let cleared: i64 = client
        .query_one(
            "SELECT count(*) FROM email_sent_log WHERE verdict = '合格'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cleared, 1, "only the first clearing was reported");
    let notices = smtp
        .received()
        .iter()
        .filter(|m| m.subject.contains("已解除"))
        .count();
    assert_eq!(notices, 1);
    app.stop().await;
}
