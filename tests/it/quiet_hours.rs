//! Quiet hours: a recipient outside its schedule gets nothing at that moment;
//! what arrived meanwhile reaches it as one digest when its window opens,
//! except what was acknowledged or escalated meanwhile. The schedule clock is
//! set by the test; nothing waits for the real hour.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use audit_alert::app::App;

use crate::api::raw;
use crate::bots::{Bot, Service};
use crate::channels::{add, loaded, start};
use crate::helpers::*;

const DAY: &str = "day@example.com";

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

async fn alert(app: &App, id: i64) -> Value {
    raw(app, "GET", &format!("/api/alerts/{id}"), None).await.2
}

fn to(mails: &[Received], who: &str) -> Vec<Received> {
    mails
        .iter()
        .filter(|m| m.envelope_to.iter().any(|t| t == who))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_destination_in_quiet_hours_gets_one_digest_when_its_window_opens() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let clock = app.worker().schedule_clock();
    // Saturday 2026-12-05, 04:00 in Beijing.
    clock.set(at("2026-12-04T20:00:00Z"));

    let every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    for (schedule, field) in [
        (
            json!({"time_zone": "UTC+8", "windows": [{"days": ["mon"], "start": "09:00", "end": "18:00"}]}),
            "schedule.time_zone",
        ),
        (
            json!({"windows": [{"days": ["mon"], "start": "25:00", "end": "18:00"}]}),
            "schedule.windows[0].start",
        ),
        (
            json!({"windows": [{"days": ["mon", "someday"], "start": "09:00", "end": "18:00"}]}),
            "schedule.windows[0].days[1]",
        ),
    ] {
        let body = json!({"table_name": "audit_results", "email": DAY, "schedule": schedule});
        let (status, _, problem) = raw(
            &app,
            "POST",
            "/api/config/recipients",
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some(field)),
            "{problem}"
        );
    }
    let body = json!({
        "table_name": "audit_results", "email": DAY,
        "schedule": {"windows": [{"days": every_day, "start": "09:00", "end": "18:00"}]},
    });
    let (status, _, saved) = raw(
        &app,
        "POST",
        "/api/config/recipients",
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["schedule"]["time_zone"], "Asia/Shanghai");
    // A channel with the same hours.
    let bot = Bot::start(Service::Webhook, Some("webhook-secret")).await;
    let channel = add(&app, "webhook", &bot.url(), Some("webhook-secret")).await;
    let hours = json!({"schedule": body["schedule"]});
    let (status, _, saved) = raw(
        &app,
        "PUT",
        &format!("/api/config/channels/{channel}"),
        Some(&hours.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    let channel = format!("channel:{channel}");
    let escalation = json!({"emails": ["boss@example.com"], "after_minutes": 30});
    let (status, _, _) = raw(
        &app,
        "PUT",
        "/api/config/tables/audit_results/escalation",
        Some(&escalation.to_string()),
    )
    .await;
    assert_eq!(status, 200);
    loaded(&app, 1).await;
    eventually("the schedules and the escalation are loaded", async || {
        let s = app.worker().snapshot();
        s.escalations.contains_key("audit_results")
            && s.recipients
                .get("audit_results")
                .is_some_and(|r| r.iter().any(|r| r.schedule.is_some()))
            && s.channels["audit_results"][0].schedule.is_some()
    })
    .await;

    let rows = insert_audit_rows(&client, 4, "不合格").await;
    smtp.wait_for("the on-call recipient's mail", |m| {
        to(m, "oncall@example.com")
            .iter()
            .flat_map(|m| m.record_ids())
            .count()
            == 4
    })
    .await;
    let mut ids = Vec::new();
    for row in &rows {
        ids.push(
            client
                .query_one(
                    "SELECT id FROM email_sent_log WHERE record_id = $1",
                    &[&row.to_string()],
                )
                .await
                .unwrap()
                .get::<_, i64>(0),
        );
    }
    // 09:00 in Beijing is 01:00 UTC.
    for id in &ids {
        let held = eventually("the alert is held for the quiet recipient", async || {
            let a = alert(&app, *id).await;
            let until = a["held"][DAY]["until"].as_str().map(at);
            (until == Some(at("2026-12-05T01:00:00Z"))).then_some(a)
        })
        .await;
        assert_eq!(held["status"], "pending", "{held}");
        assert_eq!(held["delivered_to"], json!(["oncall@example.com"]));
        assert_eq!(held["held"][&channel]["until"], held["held"][DAY]["until"]);
    }
    assert!(to(&smtp.received(), DAY).is_empty());
    assert!(bot.arrived().is_empty());

    // Acknowledged meanwhile: dropped for the quiet recipient.
    let (status, _, _) = raw(&app, "POST", &format!("/api/alerts/{}/ack", ids[1]), None).await;
    assert_eq!(status, 200);
    let acked = eventually("the acknowledged alert is settled", async || {
        let a = alert(&app, ids[1]).await;
        (a["status"] == "sent").then_some(a)
    })
    .await;
    assert_eq!(acked["held"][DAY]["dropped"], "acknowledged", "{acked}");

    // Escalated meanwhile: its moment passes while the recipient is quiet.
    client
        .execute(
            "UPDATE email_sent_log SET escalate_at = now() - interval '1 second' WHERE id = $1",
            &[&ids[2]],
        )
        .await
        .unwrap();
    app.worker().wake();
    let escalated = eventually("the escalation is recorded", async || {
        let a = alert(&app, ids[2]).await;
        a["escalated_at"].is_string().then_some(a)
    })
    .await;
    assert_eq!(escalated["status"], "sent", "{escalated}");
    smtp.wait_for("the escalation mail", |m| {
        !to(m, "boss@example.com").is_empty()
    })
    .await;

    // A minute before the window: looked at again, still held.
    clock.set(at("2026-12-05T00:59:00Z"));
    let looked = app.worker().recheck_holds().await.unwrap();
    assert_eq!(looked, 2, "the two still held");
    eventually("the remaining alert is held again", async || {
        let a = alert(&app, ids[0]).await;
        let due: DateTime<Utc> = a["next_attempt_at"].as_str().unwrap().parse().unwrap();
        a["status"] == "pending" && due > Utc::now() + chrono::Duration::seconds(30)
    })
    .await;
    assert!(to(&smtp.received(), DAY).is_empty());
    assert!(bot.arrived().is_empty());

    // The window opens: one digest, without what was settled meanwhile.
    clock.set(at("2026-12-05T01:00:00Z"));
    app.worker().recheck_holds().await.unwrap();
    let mails = smtp
        .wait_for("the digest at the window's opening", |m| {
            !to(m, DAY).is_empty()
        })
        .await;
    for id in [ids[0], ids[3]] {
        let sent = eventually("the held alert is sent", async || {
            let a = alert(&app, id).await;
            (a["status"] == "sent").then_some(a)
        })
        .await;
        let mut to: Vec<String> = serde_json::from_value(sent["delivered_to"].clone()).unwrap();
        to.sort();
        assert_eq!(to, [channel.as_str(), DAY, "oncall@example.com"]);
        assert_eq!(sent["held"], json!({}));
    }
    let escalated = alert(&app, ids[2]).await;
    assert_eq!(
        escalated["held"][DAY]["dropped"], "escalated",
        "{escalated}"
    );
    let mails = to(&mails, DAY);
    assert_eq!(mails.len(), 1);
    let mut got = mails[0].record_ids();
    got.sort();
    let mut want = vec![rows[0].to_string(), rows[3].to_string()];
    want.sort();
    assert_eq!(
        got, want,
        "one digest, without the acknowledged and the escalated"
    );
    let messages = bot.accepted();
    assert_eq!(messages.len(), 1, "one message at the opening");
    let mut listed: Vec<String> = messages[0]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["record_id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, want);
    let counts = id_counts(&to(&smtp.received(), "oncall@example.com"));
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}
