//! Acknowledgement: the link in an alert mail shows a confirmation page and
//! acknowledges its alert for its recipient, once; a changed link is refused;
//! the API does the same for operators; both are audited.

use serde_json::json;

use crate::api::raw;
use crate::helpers::*;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[tokio::test]
async fn the_link_in_a_mail_acknowledges_its_alert_once() {
    let smtp = SmtpServer::start();
    let db = TestDb::new().await;
    db.migrate().await;
    configure(&db, smtp.port, ONCALL).await;
    let config = db.config_with(&[
        ("SECRET_KEY", KEY),
        ("PUBLIC_URL", "https://alerts.example.com"),
    ]);
    let app = audit_alert::app::App::start(&config).await.unwrap();
    wait_until_listening(&app).await;
    let client = db.client().await;

    let record = insert_audit_rows(&client, 1, "不合格").await[0];
    let mail = smtp.wait_for_records(1).await.remove(0);
    let link = mail
        .text
        .lines()
        .find_map(|l| l.split("确认已处理：").nth(1))
        .expect("an acknowledge link in the mail")
        .trim()
        .to_owned();
    assert!(
        link.starts_with("https://alerts.example.com/ack/"),
        "{link}"
    );
    assert!(mail.html.contains(&link.replace('&', "&amp;")));
    let token = link.rsplit('/').next().unwrap();
    let id: i64 = client
        .query_one(
            "SELECT id FROM email_sent_log WHERE record_id = $1",
            &[&record.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    let http = reqwest::Client::new();
    let url = |token: &str| format!("http://{}/ack/{token}", app.addr());

    // Opening it changes nothing: a page asks to confirm.
    let page = http.get(url(token)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    assert!(
        text.contains("<form method=\"post\">") && text.contains("oncall@example.com"),
        "{text}"
    );
    let (_, _, shown) = raw(&app, "GET", &format!("/api/alerts/{id}"), None).await;
    assert!(shown.get("acknowledged_at").is_none(), "{shown}");

    // A link changed to name another alert is refused.
    let other = token.replacen(&format!("{id}."), &format!("{}.", id + 1), 1);
    assert_eq!(http.post(url(&other)).send().await.unwrap().status(), 403);
    assert_eq!(
        http.post(url("1.2.3.4")).send().await.unwrap().status(),
        403
    );

    let confirmed = http.post(url(token)).send().await.unwrap();
    assert_eq!(confirmed.status(), 200);
    let (_, _, shown) = raw(&app, "GET", &format!("/api/alerts/{id}"), None).await;
    assert_eq!(shown["acknowledged_by"], "oncall@example.com");
    assert!(shown["acknowledged_at"].is_string());
    assert_eq!(
        http.post(url(token)).send().await.unwrap().status(),
        409,
        "only once"
    );

    let audited: Vec<(String, String, String)> =
        eventually("the acknowledgement is audited", async || {
            let rows = client
                .query(
                    "SELECT operator_id, operation_result, operation_url FROM audit_log
                  WHERE operation_desc = '确认告警' ORDER BY operation_time",
                    &[],
                )
                .await
                .unwrap();
            (rows.len() == 2).then(|| {
                rows.iter()
                    .map(|r| (r.get(0), r.get::<_, String>(1), r.get(2)))
                    .collect()
            })
        })
        .await;
    assert_eq!(
        audited[0],
        (
            "oncall@example.com".into(),
            "0".into(),
            format!("/ack/{id}")
        )
    );
    assert_eq!(audited[1].1, "1", "the second one failed");

    // Operators acknowledge through the API, once.
    let second = insert_audit_rows(&client, 1, "不确定").await[0];
    smtp.wait_for_records(2).await;
    let second_id: i64 = client
        .query_one(
            "SELECT id FROM email_sent_log WHERE record_id = $1",
            &[&second.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    let (status, _, acked) = raw(&app, "POST", &format!("/api/alerts/{second_id}/ack"), None).await;
    assert_eq!(
        (status, &acked["acknowledged_by"]),
        (200, &json!("admin")),
        "{acked}"
    );
    let (status, _, problem) =
        raw(&app, "POST", &format!("/api/alerts/{second_id}/ack"), None).await;
    assert_eq!(status, 409, "{problem}");
    app.stop().await;
}

#[tokio::test]
async fn without_public_url_a_mail_has_no_link_and_the_page_says_why() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    wait_until_listening(&t.app).await;
    insert_audit_rows(&t.client, 1, "不合格").await;
    let mail = t.smtp.wait_for_records(1).await.remove(0);
    assert!(!mail.text.contains("/ack/") && !mail.html.contains("/ack/"));
    let page = reqwest::get(format!("http://{}/ack/1.2.3.4", t.app.addr()))
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    t.app.stop().await;
}
