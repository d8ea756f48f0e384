//! The messages: one alert or a digest, in each service's format, cut to
//! the size the service accepts.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::{sign, AlertLine, BlockTemplate, ChannelKind, Request};

const CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// Longest value (in characters) shown for a column, record id or table.
const VALUE_CHARS: usize = 200;

/// Text from the database made safe for a markdown message: control
/// characters become spaces (so a value cannot start new markdown lines) and
/// angle brackets become full-width ones (so it cannot add tags such as
/// `<font>` or Feishu's `<at>`); cut to `max` characters.
fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| match c {
            '<' => '＜',
            '>' => '＞',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

fn beijing(at: DateTime<Utc>) -> String {
    let offset = FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    at.with_timezone(&offset)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// One alert with at most `columns` of its row's columns: a markdown block
/// (as a JSON string) for the bots, rendered by `block`; the alert object for
/// the webhook.
fn piece(
    kind: ChannelKind,
    alert: &AlertLine,
    columns: usize,
    table: &str,
    block: &BlockTemplate,
) -> Value {
    let row = alert.row.iter().flatten();
    if kind == ChannelKind::Webhook {
        let row: Option<Map<_, _>> = alert.row.as_ref().map(|_| {
            row.take(columns)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        let alerted_at = alert
            .alerted_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let (id, record_id, verdict) = (alert.id, &alert.record_id, &alert.verdict);
        return json!({
            "id": id, "record_id": record_id, "verdict": verdict, "alerted_at": alerted_at, "row": row,
            "ack_url": alert.ack_url,
        });
    }
    let rendered = block
        .render(&context(kind, alert, columns, table))
        // A table's template that fails for this alert: the built-in block.
        .or_else(|_| BlockTemplate::builtin(kind).render(&context(kind, alert, columns, table)))
        .unwrap_or_default();
    Value::String(rendered)
}

/// What a block template gets for one alert (see `template`).
fn context(kind: ChannelKind, alert: &AlertLine, columns: usize, table: &str) -> Value {
    let color = match (kind, alert.verdict.as_str()) {
        (ChannelKind::DingTalk, "不合格") => "#FF0000",
        (ChannelKind::DingTalk, _) => "#FF8C00",
        (ChannelKind::WeCom, "不确定") => "comment",
        (ChannelKind::WeCom, _) => "warning",
        (_, "不合格") => "red",
        _ => "orange",
    };
    let cells: Vec<_> = alert
        .row
        .iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .collect();
    let fields: Vec<Value> = cells
        .iter()
        .take(columns)
        .map(|(key, value)| {
            let value = match value {
                Value::String(s) => clean(s, VALUE_CHARS),
                other => clean(&other.to_string(), VALUE_CHARS),
            };
            json!({"name": clean(key, VALUE_CHARS), "value": value})
        })
        .collect();
    json!({
        "id": alert.id,
        "record_id": clean(&alert.record_id, VALUE_CHARS),
        "verdict": clean(&alert.verdict, 50),
        "color": color,
        "time": beijing(alert.alerted_at),
        "table": clean(table, VALUE_CHARS),
        "fields": fields,
        "more_fields": cells.len().saturating_sub(columns),
        "ack_url": alert.ack_url,
    })
}

/// One alert's block as a table's template (or the built-in one) renders it,
/// for previews.
pub fn preview_block(
    kind: ChannelKind,
    alert: &AlertLine,
    table: &str,
    block: &BlockTemplate,
) -> Result<String, String> {
    block.render(&context(kind, alert, usize::MAX, table))
}

/// A bot's body: the title, then `blocks` as paragraphs (Feishu: one card
/// element each). Feishu's signature fields come first when there is a secret.
fn bot_body(
    kind: ChannelKind,
    title: &str,
    blocks: &[&str],
    template: &str,
    feishu_sign: Option<(i64, String)>,
) -> Value {
    let text = || {
        [format!("### {title}")]
            .into_iter()
            .chain(blocks.iter().map(|b| b.to_string()))
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    match kind {
        ChannelKind::DingTalk => {
            json!({"msgtype": "markdown", "markdown": {"title": title, "text": text()}})
        }
        ChannelKind::WeCom => json!({"msgtype": "markdown", "markdown": {"content": text()}}),
        _ => {
            let elements: Vec<Value> = blocks
                .iter()
                .map(|b| json!({"tag": "div", "text": {"tag": "lark_md", "content": b}}))
                .collect();
            let header =
                json!({"title": {"tag": "plain_text", "content": title}, "template": template});
            let mut body = Map::new();
            if let Some((seconds, sign)) = feishu_sign {
                body.insert("timestamp".into(), seconds.to_string().into());
                body.insert("sign".into(), sign.into());
            }
            body.insert("msg_type".into(), "interactive".into());
            body.insert(
                "card".into(),
                json!({"header": header, "elements": elements}),
            );
            Value::Object(body)
        }
    }
}

/// The request for a finished body, signed as the kind asks.
fn finish(
    kind: ChannelKind,
    url: &str,
    secret: Option<&str>,
    now: DateTime<Utc>,
    body: &Value,
) -> Request {
    let body = serde_json::to_vec(body).expect("a JSON value always serialises");
    let mut url = url.trim().to_string();
    let mut headers = vec![("Content-Type", CONTENT_TYPE.to_string())];
    match (kind, secret) {
        (ChannelKind::DingTalk, Some(secret)) => {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&sign::dingtalk_query(secret, now.timestamp_millis()));
        }
        // The signature covers the body only; the timestamp header is sent
        // beside it for receivers that want to refuse stale messages.
        (ChannelKind::Webhook, Some(secret)) => {
            headers.push(("X-Audit-Alert-Signature", sign::webhook(secret, &body)));
            headers.push(("X-Audit-Alert-Timestamp", now.timestamp().to_string()));
        }
        _ => {}
    }
    Request {
        url,
        body,
        headers,
        listed: 0,
        counted: 0,
    }
}

fn feishu_sign(
    kind: ChannelKind,
    secret: Option<&str>,
    now: DateTime<Utc>,
) -> Option<(i64, String)> {
    let secret = secret.filter(|_| kind == ChannelKind::Feishu)?;
    Some((now.timestamp(), sign::feishu(secret, now.timestamp())))
}

/// The largest `x` in `lo..=hi` for which `fits(x)` holds (`fits` holds up
/// to some point and not after it), or `lo` when none does.
fn largest(mut lo: usize, mut hi: usize, fits: impl Fn(usize) -> bool) -> usize {
    while lo < hi {
        let mid = hi - (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// What a message says: `alerts` of the watched table `table`, each in
/// `block` (the built-in block when `None`), and where the console is.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    pub table: &'a str,
    pub alerts: &'a [AlertLine],
    pub console_url: Option<&'a str>,
    pub block: Option<&'a BlockTemplate>,
    /// Resolution notices (rows whose uncertain alert was cleared), not
    /// alerts: their own title and block.
    pub notice: bool,
}

/// Builds the message for `alerts` of the watched table `table` (a digest
/// when there are several), in Chinese like the e-mail: a title, then each
/// alert with its verdict coloured, number, record, time (UTC+8) and the
/// row's non-null columns (values cut to 200 characters).
///
/// Alerts are listed in order while the next still fits `kind.max_bytes()`
/// together with the footer; the rest are counted ("……另有 N 条告警未列出").
/// The first alert is always listed, with fewer columns when it alone is too
/// large. With `console_url`, a link to `{console_url}/alerts?table=...`
/// ends the message when alerts were left out, and always for a digest (the
/// webhook gets it as the field `console_url`). `now` gives the signature's
/// timestamp; see [`Request`] for the signatures.
pub fn build(
    kind: ChannelKind,
    url: &str,
    secret: Option<&str>,
    message: &Message<'_>,
    now: DateTime<Utc>,
) -> Request {
    let Message {
        table,
        alerts,
        console_url,
        block,
        notice,
    } = *message;
    let block = match (notice, block) {
        (true, _) => BlockTemplate::notice(),
        (false, Some(block)) => block,
        (false, None) => BlockTemplate::builtin(kind),
    };
    let n = alerts.len();
    let link = console_url.map(|base| {
        let query = serde_urlencoded::to_string([("table", table)]).unwrap_or_default();
        format!("{}/alerts?{query}", base.trim_end_matches('/'))
    });
    let title = if notice {
        format!("【告警已解除】{} {n} 条", clean(table, VALUE_CHARS))
    } else {
        format!("【内容审核告警】{} {n} 条", clean(table, VALUE_CHARS))
    };
    let colour = match (notice, alerts.iter().any(|a| a.verdict == "不合格")) {
        (true, _) => "green",
        (false, true) => "red",
        (false, false) => "orange",
    };
    let signature = feishu_sign(kind, secret, now);
    // The body listing `pieces` and counting the alerts after them.
    let render = |pieces: &[Value]| -> Value {
        let counted = n - pieces.len();
        if kind == ChannelKind::Webhook {
            let mut body = json!({"table": table, "count": n, "alerts": pieces});
            if notice {
                body["resolved"] = true.into();
            }
            if let Some(link) = &link {
                body["console_url"] = link.as_str().into();
            }
            return body;
        }
        let mut blocks: Vec<&str> = pieces.iter().filter_map(Value::as_str).collect();
        let more = format!("……另有 {counted} 条告警未列出");
        let link = link
            .as_ref()
            .filter(|_| counted > 0 || n > 1)
            .map(|l| format!("[在控制台查看全部]({l})"));
        let footer = [(counted > 0).then_some(more), link]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let footer = footer.join(if kind == ChannelKind::WeCom {
            "\n"
        } else {
            "\n\n"
        });
        if !footer.is_empty() {
            blocks.push(&footer);
        }
        bot_body(kind, &title, &blocks, colour, signature.clone())
    };
    let max = kind.max_bytes();
    let fits = |pieces: &[Value]| match (kind, render(pieces)) {
        (ChannelKind::WeCom, body) => {
            body["markdown"]["content"].as_str().map_or(0, str::len) <= max
        }
        (_, body) => serde_json::to_vec(&body).is_ok_and(|b| b.len() <= max),
    };

    let piece = |alert, columns| piece(kind, alert, columns, table, block);
    let mut pieces: Vec<Value> = alerts.iter().map(|a| piece(a, usize::MAX)).collect();
    if let Some(first) = alerts.first() {
        let columns = first.row.as_ref().map_or(0, Map::len);
        let keep = largest(0, columns, |keep| fits(&[piece(first, keep)]));
        pieces[0] = piece(first, keep);
    }
    let listed = largest(n.min(1), n, |k| fits(&pieces[..k]));
    let body = render(&pieces[..listed]);
    Request {
        listed,
        counted: n - listed,
        ..finish(kind, url, secret, now, &body)
    }
}

/// A test message ("audit-alert 测试消息 ...") for a channel, signed like the alerts.
pub fn build_test(
    kind: ChannelKind,
    url: &str,
    secret: Option<&str>,
    now: DateTime<Utc>,
) -> Request {
    let title = "audit-alert 测试消息";
    let text = format!(
        "{title}：此渠道配置正确，告警将发送到这里。（北京时间 {}）",
        beijing(now)
    );
    let body = match kind {
        ChannelKind::Webhook => {
            let sent_at = now.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            json!({"test": true, "message": text, "sent_at": sent_at})
        }
        _ => bot_body(
            kind,
            title,
            &[&text],
            "blue",
            feishu_sign(kind, secret, now),
        ),
    };
    finish(kind, url, secret, now, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn alert(id: i64, verdict: &str, columns: usize, value: &str) -> AlertLine {
        let row = (0..columns)
            .map(|c| (format!("col{c}"), value.into()))
            .collect();
        let alerted_at = Utc.with_ymd_and_hms(2024, 5, 1, 16, 30, 0).unwrap();
        let (record_id, verdict) = (format!("rec-{id}"), verdict.into());
        AlertLine {
            id,
            record_id,
            verdict,
            alerted_at,
            row: Some(row),
            ack_url: None,
        }
    }

    fn many(n: i64) -> Vec<AlertLine> {
        let verdict = |id| {
            if id % 2 == 0 {
                "不合格"
            } else {
                "不确定"
            }
        };
        (1..=n)
            .map(|id| alert(id, verdict(id), 3, "一段需要审核的内容"))
            .collect()
    }

    const URL: &str = "https://h/x?access_token=t";
    const SECRET: Option<&str> = Some("SEC0123");

    /// Builds for table "posts" at 1700000000 s; the request and its body.
    fn make(kind: ChannelKind, alerts: &[AlertLine], console: Option<&str>) -> (Request, Value) {
        make_as(kind, alerts, console, false)
    }

    /// [`make`], of alerts or of resolution notices.
    fn make_as(
        kind: ChannelKind,
        alerts: &[AlertLine],
        console: Option<&str>,
        notice: bool,
    ) -> (Request, Value) {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let request = build(
            kind,
            URL,
            SECRET,
            &Message {
                table: "posts",
                alerts,
                console_url: console,
                block: None,
                notice,
            },
            now,
        );
        let body = serde_json::from_slice(&request.body).unwrap();
        (request, body)
    }

    #[test]
    fn wecom_digest_of_500_fits_4096_and_counts_the_rest() {
        let (request, body) = make(ChannelKind::WeCom, &many(500), Some("https://console/"));
        let content = body["markdown"]["content"].as_str().unwrap();
        assert!(content.len() <= 4096, "{}", content.len());
        assert_eq!(request.listed + request.counted, 500);
        assert!(request.listed > 1 && request.counted > 0);
        assert!(content.starts_with("### 【内容审核告警】posts 500 条"));
        assert!(content.contains(&format!("……另有 {} 条告警未列出", request.counted)));
        assert!(content.ends_with("[在控制台查看全部](https://console/alerts?table=posts)"));
        assert!(content.contains("<font color=\"warning\">不合格</font>"));
        assert!(content.contains("<font color=\"comment\">不确定</font>"));
        assert!(content.contains("时间：2024-05-02 00:30:00"));
        assert_eq!(request.url, URL);
    }

    #[test]
    fn a_resolution_notice_has_its_own_title_colour_and_block() {
        let alerts = [alert(7, "合格", 2, "x")];
        let notice = |kind| make_as(kind, &alerts, None, true).1;
        let body = notice(ChannelKind::DingTalk);
        assert_eq!(body["markdown"]["title"], "【告警已解除】posts 1 条");
        let text = body["markdown"]["text"].as_str().unwrap();
        assert!(
            text.contains("**已解除** 记录 rec-7：不确定 → 合格（告警编号 7）"),
            "{text}"
        );
        let body = notice(ChannelKind::Feishu);
        assert_eq!(body["card"]["header"]["template"], "green");
        assert_eq!(notice(ChannelKind::Webhook)["resolved"], true);
    }

    #[test]
    fn feishu_and_dingtalk_digests_fit_their_limits() {
        let (request, body) = make(ChannelKind::Feishu, &many(500), None);
        assert!(request.body.len() <= 20 * 1024, "{}", request.body.len());
        assert_eq!(request.listed + request.counted, 500);
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], sign::feishu("SEC0123", 1_700_000_000));
        assert_eq!(body["card"]["header"]["template"], "red");
        let elements = body["card"]["elements"].as_array().unwrap();
        assert_eq!(elements.len(), request.listed + 1);
        let footer = &elements[request.listed]["text"]["content"];
        assert_eq!(
            footer.as_str().unwrap(),
            format!("……另有 {} 条告警未列出", request.counted)
        );
        let (request, _) = make(ChannelKind::DingTalk, &many(500), None);
        assert!(request.body.len() <= 20_000 && request.listed + request.counted == 500);
    }

    #[test]
    fn dingtalk_single_alert_signed_in_the_url() {
        let (request, body) = make(
            ChannelKind::DingTalk,
            &[alert(7, "不合格", 2, "x")],
            Some("c"),
        );
        let signature = sign::dingtalk_query("SEC0123", 1_700_000_000_000);
        assert_eq!(request.url, format!("{URL}&{signature}"));
        assert_eq!((request.listed, request.counted), (1, 0));
        assert_eq!(body["markdown"]["title"], "【内容审核告警】posts 1 条");
        let text = body["markdown"]["text"].as_str().unwrap();
        assert!(text.contains("**<font color=\"#FF0000\">不合格</font>** 告警编号 7"));
        assert!(text.contains("\n\ncol1: x"));
        // One alert, nothing left out: no console link.
        assert!(!text.contains("在控制台查看全部"));
        assert_eq!(
            request.headers,
            [("Content-Type", CONTENT_TYPE.to_string())]
        );
    }

    #[test]
    fn an_oversized_first_alert_is_listed_with_fewer_columns() {
        let big = "很长的内容".repeat(60);
        let alerts = [alert(1, "不合格", 60, &big), alert(2, "不合格", 60, &big)];
        let (request, body) = make(ChannelKind::WeCom, &alerts, None);
        let content = body["markdown"]["content"].as_str().unwrap();
        assert!(content.len() <= 4096);
        assert_eq!((request.listed, request.counted), (1, 1));
        assert!(content.contains("个字段未列出") && content.contains("……另有 1 条告警未列出"));
        // Values are cut to 200 characters.
        assert!(content.contains(&format!("col0: {}…", "很长的内容".repeat(40))));
    }

    #[test]
    fn values_cannot_add_markup_or_lines() {
        let mut line = alert(1, "不合格", 0, "");
        let cells = [
            ("a", "<at id=all></at>\n### x".into()),
            ("b", Value::Null),
            ("c", 3.into()),
        ];
        line.row = Some(cells.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        let (_, body) = make(ChannelKind::Feishu, &[line], None);
        let text = body["card"]["elements"][0]["text"]["content"]
            .as_str()
            .unwrap();
        assert!(text.contains("a: ＜at id=all＞＜/at＞ ### x"));
        assert!(!text.contains("b:") && text.contains("c: 3"));
    }

    #[test]
    fn webhook_body_and_signature_header() {
        let (request, body) = make(ChannelKind::Webhook, &many(3), Some("https://c"));
        assert_eq!(
            (body["table"].as_str(), body["count"].as_u64()),
            (Some("posts"), Some(3))
        );
        assert_eq!(body["alerts"][1]["alerted_at"], "2024-05-01T16:30:00Z");
        assert_eq!(body["alerts"][1]["row"]["col0"], "一段需要审核的内容");
        assert_eq!(body["console_url"], "https://c/alerts?table=posts");
        assert_eq!((request.listed, request.counted), (3, 0));
        let signature = sign::webhook("SEC0123", &request.body);
        let expected = [
            ("Content-Type", CONTENT_TYPE.to_string()),
            ("X-Audit-Alert-Signature", signature),
            ("X-Audit-Alert-Timestamp", "1700000000".to_string()),
        ];
        assert_eq!(request.headers, expected);
    }

    #[test]
    fn test_messages_for_every_kind() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        for kind in ChannelKind::ALL {
            let request = build_test(kind, URL, SECRET, now);
            let body = String::from_utf8(request.body).unwrap();
            assert!(body.contains("audit-alert 测试消息"));
            assert_eq!(
                request.url.contains("&sign="),
                kind == ChannelKind::DingTalk
            );
            assert_eq!(body.contains("\"sign\""), kind == ChannelKind::Feishu);
        }
    }
}
