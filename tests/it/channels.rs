//! Chat-bot channels against stand-ins of the services (`bots`), which check
//! each signature as its service documents it and enforce its send limits:
//! what arrived, what the alert records, and that mail is never held back.

use serde_json::{json, Value};

use crate::api::raw;
use crate::bots::{Bot, Service};
use crate::helpers::*;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The service with `SECRET_KEY`, loopback allowed for webhooks, mail to
/// the on-call address.
pub(crate) async fn start(
    smtp: &SmtpServer,
) -> (TestDb, audit_alert::app::App, tokio_postgres::Client) {
    let db = TestDb::new().await;
    db.migrate().await;
    configure(&db, smtp.port, ONCALL).await;
    let config = db.config_with(&[
        ("SECRET_KEY", KEY),
        (
            "CHANNEL_ALLOWED_HOSTS",
            "127.0.0.1,oapi.dingtalk.com,qyapi.weixin.qq.com,open.feishu.cn",
        ),
        ("PUBLIC_URL", "https://alerts.example.com"),
    ]);
    let app = audit_alert::app::App::start(&config).await.unwrap();
    wait_until_listening(&app).await;
    let client = db.client().await;
    (db, app, client)
}

/// Waits until the service holds `n` channels of `audit_results`.
pub(crate) async fn loaded(app: &audit_alert::app::App, n: usize) {
    eventually("the channels are loaded", async || {
        let held = app
            .worker()
            .snapshot()
            .channels
            .get("audit_results")
            .map_or(0, Vec::len);
        (held == n).then_some(()).ok_or(format!("{held} of {n}"))
    })
    .await
}

/// Adds a channel through the API; its id.
pub(crate) async fn add(
    app: &audit_alert::app::App,
    kind: &str,
    url: &str,
    secret: Option<&str>,
) -> i64 {
    let mut body =
        json!({"table_name": "audit_results", "type": kind, "webhook_url": url, "name": kind});
    if let Some(s) = secret {
        body["secret"] = json!(s);
    }
    let (status, _, saved) =
        raw(app, "POST", "/api/config/channels", Some(&body.to_string())).await;
    assert_eq!(status, 200, "{saved}");
    assert!(saved.get("webhook_url").is_none() && saved.get("secret").is_none());
    saved["id"].as_i64().unwrap()
}

/// The alert's record as the API shows it (null until it is recorded).
async fn alert(app: &audit_alert::app::App, client: &tokio_postgres::Client, record: i64) -> Value {
    let row = client
        .query_opt(
            "SELECT id FROM email_sent_log WHERE record_id = $1",
            &[&record.to_string()],
        )
        .await
        .unwrap();
    match row {
        Some(r) => {
            raw(
                app,
                "GET",
                &format!("/api/alerts/{}", r.get::<_, i64>(0)),
                None,
            )
            .await
            .2
        }
        None => Value::Null,
    }
}

/// Every text of a message, whatever the service's shape.
fn text(body: &Value) -> String {
    body.to_string()
}

#[tokio::test]
async fn each_channel_gets_the_alert_signed_as_its_service_documents() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let dingtalk = Bot::start(Service::DingTalk, Some("SECa1b2c3")).await;
    let wecom = Bot::start(Service::WeCom, None).await;
    let feishu = Bot::start(Service::Feishu, Some("fs-secret")).await;
    let webhook = Bot::start(Service::Webhook, Some("wh-secret")).await;
    let ids = [
        add(&app, "dingtalk", &dingtalk.url(), Some("SECa1b2c3")).await,
        add(&app, "wecom", &wecom.url(), None).await,
        add(&app, "feishu", &feishu.url(), Some("fs-secret")).await,
        add(&app, "webhook", &webhook.url(), Some("wh-secret")).await,
    ];
    loaded(&app, 4).await;

    let record = insert_audit_rows(&client, 1, "不合格").await[0];
    smtp.wait_for_records(1).await;
    for bot in [&dingtalk, &wecom, &feishu, &webhook] {
        let got = eventually("the message arrives", async || {
            Some(bot.arrived()).filter(|a| !a.is_empty())
        })
        .await;
        assert_eq!(got.len(), 1, "one message: {got:?}");
        assert_eq!(got[0].code, 0, "accepted: {got:?}");
        assert!(
            text(&got[0].body).contains(&format!("{record}")),
            "{}",
            got[0].body
        );
    }
    assert!(text(&dingtalk.accepted()[0]).contains("不合格"));
    assert_eq!(feishu.accepted()[0]["card"]["header"]["template"], "red");
    assert_eq!(
        webhook.accepted()[0]["alerts"][0]["record_id"],
        record.to_string()
    );

    let shown = eventually("every destination is recorded", async || {
        let a = alert(&app, &client, record).await;
        (a["delivered_to"].as_array().map(Vec::len) == Some(5)).then_some(a)
    })
    .await;
    assert_eq!(shown["status"], "sent");
    for id in ids {
        let c = &shown["channels"][id.to_string()];
        assert_eq!(c["attempts"], 1, "{shown}");
        assert_eq!(c["code"], "0");
        assert!(c["delivered_at"].is_string());
        assert!(shown["delivered_to"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("channel:{id}"))));
    }
    // Each message carries an acknowledge link made for its channel.
    assert!(text(&dingtalk.accepted()[0]).contains("https://alerts.example.com/ack/"));
    let link = webhook.accepted()[0]["alerts"][0]["ack_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = link.rsplit('/').next().unwrap();
    let confirmed = reqwest::Client::new()
        .post(format!("http://{}/ack/{token}", app.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    let id = shown["id"].as_i64().unwrap();
    let (_, _, acked) = raw(&app, "GET", &format!("/api/alerts/{id}"), None).await;
    assert_eq!(acked["acknowledged_by"], format!("channel:{}", ids[3]));

    let metrics = reqwest::get(format!("http://{}/metrics", app.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"channel_messages_total{kind="feishu",outcome="sent"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_for_good_and_mail_still_goes() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let dingtalk = Bot::start(Service::DingTalk, Some("SECright")).await;
    let feishu = Bot::start(Service::Feishu, Some("right")).await;
    let wecom = Bot::start(Service::WeCom, None).await;
    let d = add(&app, "dingtalk", &dingtalk.url(), Some("SECwrong")).await;
    let f = add(&app, "feishu", &feishu.url(), Some("wrong")).await;
    let w = add(&app, "wecom", &wecom.url(), None).await;
    loaded(&app, 3).await;

    let record = insert_audit_rows(&client, 1, "不确定").await[0];
    smtp.wait_for_records(1).await;
    let shown = eventually("the refusals are recorded", async || {
        let a = alert(&app, &client, record).await;
        (a["status"] == "sent" && a["channels"].as_object().map(|c| c.len()) == Some(3))
            .then_some(a)
    })
    .await;
    // Neither mail nor the other channel is held back.
    let mut delivered: Vec<&str> = shown["delivered_to"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            "channel:".to_owned() + &w.to_string(),
            "oncall@example.com".to_owned()
        ]
    );
    assert_eq!(wecom.accepted().len(), 1);
    let dc = &shown["channels"][d.to_string()];
    assert_eq!(
        (dc["class"].as_str(), dc["code"].as_str()),
        (Some("permanent"), Some("310000"))
    );
    assert!(dc["message"].as_str().unwrap().contains("sign not match"));
    let fc = &shown["channels"][f.to_string()];
    assert_eq!(
        (fc["class"].as_str(), fc["code"].as_str()),
        (Some("permanent"), Some("19021"))
    );
    // Refused for good: not tried again.
    assert_eq!(dingtalk.arrived().len(), 1);
    assert_eq!(feishu.arrived().len(), 1);

    // The test call says so in plain words.
    let (status, _, answer) = raw(
        &app,
        "POST",
        &format!("/api/config/channels/{d}/test"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], false);
    assert_eq!(answer["code"], "310000");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("signature"),
        "{answer}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limit_answer_is_retried_and_a_test_message_arrives() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let feishu = Bot::start(Service::Feishu, None).await;
    let f = add(&app, "feishu", &feishu.url(), None).await;
    loaded(&app, 1).await;
    let (status, _, answer) = raw(
        &app,
        "POST",
        &format!("/api/config/channels/{f}/test"),
        None,
    )
    .await;
    assert_eq!(
        (status, &answer["success"]),
        (200, &json!(true)),
        "{answer}"
    );
    assert!(text(&feishu.accepted()[0]).contains("测试"));

    feishu.script(
        200,
        json!({"code": 9499, "data": {}, "msg": "too many request"}),
    );
    let record = insert_audit_rows(&client, 1, "不合格").await[0];
    let shown = eventually("delivered on the retry", async || {
        let a = alert(&app, &client, record).await;
        a["channels"][f.to_string()]["delivered_at"]
            .is_string()
            .then_some(a)
    })
    .await;
    let c = &shown["channels"][f.to_string()];
    assert_eq!(c["attempts"], 2, "{shown}");
    assert_eq!(
        feishu.arrived().iter().filter(|a| a.code == 9499).count(),
        1
    );
    assert!(shown["attempt_errors"][0]["error"]
        .as_str()
        .unwrap()
        .contains("9499"));
    app.stop().await;
}

#[tokio::test]
async fn a_burst_stays_within_the_bots_limit_and_every_alert_is_in_a_message() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let dingtalk = Bot::start(Service::DingTalk, Some("SECburst")).await;
    let wecom = Bot::start(Service::WeCom, None).await;
    add(&app, "dingtalk", &dingtalk.url(), Some("SECburst")).await;
    add(&app, "wecom", &wecom.url(), None).await;
    loaded(&app, 2).await;
    let n = 10_000;
    insert_audit_rows(&client, n, "不合格").await;
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM email_sent_log
          WHERE delivered_to @> ARRAY['oncall@example.com']
            AND cardinality(delivered_to) = 3",
        n,
    )
    .await;
    for bot in [&dingtalk, &wecom] {
        let arrived = bot.arrived();
        assert!(
            arrived.iter().all(|a| a.code == 0),
            "never over the limit: {arrived:?}"
        );
        assert!(arrived.len() <= 20, "{} messages", arrived.len());
        // Listed or counted, every alert is in one message.
        let mut total = 0;
        for a in &arrived {
            let t = text(&a.body);
            let listed = t.matches("告警编号").count();
            let counted: usize = t
                .split("另有 ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            total += listed + counted;
        }
        assert_eq!(total, n as usize, "{} messages", arrived.len());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_bot_at_its_limit_waits_without_losing_or_failing_the_alert() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let wecom = Bot::start(Service::WeCom, None).await;
    let w = add(&app, "wecom", &wecom.url(), None).await;
    loaded(&app, 1).await;
    // Another copy sent 20 messages to this bot 59.5 s ago: the window
    // frees in half a second.
    client
        .execute(
            "INSERT INTO channel_sends (bot, sent_at)
             SELECT bot, array_fill(clock_timestamp() - interval '59.5 seconds', ARRAY[20])
               FROM notification_channels WHERE id = $1",
            &[&(w as i32)],
        )
        .await
        .unwrap();
    let record = insert_audit_rows(&client, 1, "不合格").await[0];
    smtp.wait_for_records(1).await;
    let shown = eventually("delivered once the window frees", async || {
        let a = alert(&app, &client, record).await;
        a["channels"][w.to_string()]["delivered_at"]
            .is_string()
            .then_some(a)
    })
    .await;
    let c = &shown["channels"][w.to_string()];
    assert!(c["waits"].as_i64().unwrap() >= 1, "{shown}");
    assert_eq!(c["attempts"], 1, "waiting is not an attempt: {shown}");
    assert_eq!(shown["attempts"], 1, "{shown}");
    assert_eq!(wecom.arrived().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn webhook_urls_are_checked_sealed_and_never_shown() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let post = |body: Value| {
        let app = &app;
        async move { raw(app, "POST", "/api/config/channels", Some(&body.to_string())).await }
    };
    // A host not allowed, a private address not listed, a DingTalk URL
    // without its token: refused, naming the field.
    for url in [
        "https://evil.example.com/robot/send?access_token=x",
        "http://10.0.0.8/robot/send?access_token=x",
        "https://oapi.dingtalk.com/robot/send",
    ] {
        let (status, _, problem) =
            post(json!({"table_name": "audit_results", "type": "dingtalk", "webhook_url": url}))
                .await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["field"], "webhook_url", "{problem}");
    }
    let (status, _, problem) = post(json!({"table_name": "nope", "type": "wecom", "webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"})).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("table_name"))
    );
    let (status, _, problem) = post(json!({"table_name": "audit_results", "type": "wecom", "webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", "secret": "s"})).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("secret")));
    let n: i64 = client
        .query_one("SELECT count(*) FROM notification_channels", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing half-written");

    let token = "d7c0ffee5ecret70ken";
    let url = format!("https://oapi.dingtalk.com/robot/send?access_token={token}");
    let (status, _, saved) = post(json!({"table_name": "audit_results", "type": "dingtalk", "webhook_url": url, "secret": "SECsigning"})).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["webhook_host"], "oapi.dingtalk.com");
    assert_eq!(saved["has_secret"], true);
    let (_, listed_text, _) = raw(&app, "GET", "/api/config/channels", None).await;
    assert!(!listed_text.contains(token) && !listed_text.contains("SECsigning"));
    let stored: String = client
        .query_one(
            "SELECT row_to_json(c)::text FROM notification_channels c",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !stored.contains(token) && !stored.contains("SECsigning"),
        "{stored}"
    );
    let audited = eventually("the call is audited", async || {
        client
            .query_opt(
                "SELECT request_params::text FROM audit_log WHERE operation_desc = '新增告警渠道' AND operation_result = '0'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0))
    })
    .await;
    assert!(
        !audited.contains(token) && !audited.contains("SECsigning"),
        "{audited}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_tables_own_block_is_validated_previewed_and_used() {
    let smtp = SmtpServer::start();
    let (_db, app, client) = start(&smtp).await;
    let dingtalk = Bot::start(Service::DingTalk, None).await;
    add(&app, "dingtalk", &dingtalk.url(), None).await;
    loaded(&app, 1).await;
    let path = "/api/config/tables/audit_results/channel-templates/dingtalk";

    let (status, _, built_in) = raw(&app, "GET", path, None).await;
    assert_eq!((status, &built_in["is_default"]), (200, &json!(true)));
    assert!(built_in["block"].as_str().unwrap().contains("告警编号"));

    let (status, _, problem) =
        raw(&app, "PUT", path, Some(r#"{"block":"{{#each fields}}"}"#)).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("block")),
        "{problem}"
    );
    let (status, _, problem) = raw(
        &app,
        "GET",
        "/api/config/tables/audit_results/channel-templates/webhook",
        None,
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("type")),
        "{problem}"
    );

    let block = r#"{"block":"【{{verdict}}】{{table}} 第 {{record_id}} 条：{{#each fields}}{{#if (eq name \"reason\")}}{{value}}{{/if}}{{/each}}"}"#;
    let (status, _, preview) = raw(&app, "POST", &format!("{path}/preview"), Some(block)).await;
    assert_eq!(status, 200, "{preview}");
    assert!(
        preview["block"].as_str().unwrap().starts_with("【"),
        "{preview}"
    );
    let body: Value = serde_json::from_str(preview["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["msgtype"], "markdown");

    let (status, _, saved) = raw(&app, "PUT", path, Some(block)).await;
    assert_eq!(
        (status, &saved["is_default"]),
        (200, &json!(false)),
        "{saved}"
    );
    let record = insert_audit_rows(&client, 1, "不合格").await[0];
    let got = eventually("the message arrives", async || {
        dingtalk.accepted().into_iter().next()
    })
    .await;
    let text = got["markdown"]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "【不合格】audit_results 第 {record} 条：涉嫌违规 1"
        )),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn two_copies_send_each_alert_to_a_channel_exactly_once() {
    let smtp = SmtpServer::start();
    let (db, first, client) = start(&smtp).await;
    let webhook = Bot::start(Service::Webhook, Some("two-copies")).await;
    add(&first, "webhook", &webhook.url(), Some("two-copies")).await;
    let config = db.config_with(&[("SECRET_KEY", KEY), ("CHANNEL_ALLOWED_HOSTS", "127.0.0.1")]);
    let second = audit_alert::app::App::start(&config).await.unwrap();
    for app in [&first, &second] {
        loaded(app, 1).await;
    }
    let n = 2000;
    let ids = insert_audit_rows(&client, n, "不合格").await;
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM email_sent_log WHERE cardinality(delivered_to) = 2",
        n,
    )
    .await;
    let mut seen = std::collections::BTreeMap::new();
    for body in webhook.accepted() {
        for a in body["alerts"].as_array().unwrap() {
            *seen
                .entry(a["record_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), n as usize);
    assert!(seen.values().all(|&k| k == 1), "some alert went twice");
    assert!(ids.iter().all(|id| seen.contains_key(&id.to_string())));
    first.stop().await;
    second.stop().await;
}
