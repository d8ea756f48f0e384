//! The pages behind an alert mail's acknowledge link: `GET /ack/{token}`
//! shows the alert and asks to confirm (a mail scanner that opens links
//! changes nothing); `POST /ack/{token}` acknowledges it for the recipient
//! the link was made for, once, and writes the operation audit log.

use std::time::Instant;

use chrono::Utc;
use handlebars::html_escape as esc;
use poem::http::StatusCode;
use poem::web::{Data, Path};
use poem::{handler, Request, Response};

use super::AppState;
use crate::ack::LinkError;
use crate::audit_log::new_audit_id;
use crate::audit_log::writer::Entry;
use crate::monitor::Acknowledged;

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}}\
         button{{font-size:1rem;padding:.6rem 1.4rem;background:#c62828;color:#fff;border:0;border-radius:4px}}\
         dt{{color:#666}}</style></head><body><h2>{title}</h2>{body}</body></html>"
    );
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header("Cache-Control", "no-store")
        .header("Referrer-Policy", "no-referrer")
        .body(html)
}

/// The link's alert and recipient, or the page saying why not.
fn checked(state: &AppState, token: &str) -> Result<(i64, String), Box<Response>> {
    let Some(links) = state.worker.ack_links() else {
        return Err(Box::new(page(
            StatusCode::NOT_FOUND,
            "确认链接未启用",
            "<p>Acknowledge links need PUBLIC_URL and SECRET_KEY to be set.</p>",
        )));
    };
    let refused = match links.check(token, Utc::now()) {
        Ok(link) => return Ok((link.alert_id, link.recipient)),
        Err(e @ LinkError::Expired(_)) => page(
            StatusCode::GONE,
            "链接已过期",
            &format!("<p>{}</p>", esc(&e.to_string())),
        ),
        Err(e @ LinkError::Forged) => page(
            StatusCode::FORBIDDEN,
            "链接无效",
            &format!("<p>{}</p>", esc(&e.to_string())),
        ),
    };
    Err(Box::new(refused))
}

#[handler]
pub async fn show(state: Data<&AppState>, Path(token): Path<String>) -> Response {
    let (id, recipient) = match checked(&state, &token) {
        Ok(link) => link,
        Err(page) => return *page,
    };
    let row = match state.pool.get().await {
        Ok(client) => client
            .query_opt(
                "SELECT table_name, record_id, verdict, created_at, acknowledged_by, acknowledged_at
                   FROM email_sent_log WHERE id = $1",
                &[&id],
            )
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    let Some(row) = row else {
        return page(
            StatusCode::NOT_FOUND,
            "告警不存在",
            "<p>This alert does not exist.</p>",
        );
    };
    let facts = format!(
        "<dl><dt>告警编号</dt><dd>{id}</dd><dt>表</dt><dd>{}</dd><dt>记录</dt><dd>{}</dd>\
         <dt>结论</dt><dd>{}</dd><dt>时间</dt><dd>{}</dd><dt>确认人</dt><dd>{}</dd></dl>",
        esc(row.get(0)),
        esc(row.get(1)),
        esc(row.get(2)),
        row.get::<_, chrono::DateTime<Utc>>(3).to_rfc3339(),
        esc(&recipient),
    );
    if let Some(by) = row.get::<_, Option<String>>(4) {
        let at: chrono::DateTime<Utc> = row.get(5);
        return page(
            StatusCode::OK,
            "告警已确认",
            &format!(
                "{facts}<p>已由 {} 于 {} 确认。</p>",
                esc(&by),
                at.to_rfc3339()
            ),
        );
    }
    page(
        StatusCode::OK,
        "确认告警",
        &format!(
            "{facts}<form method=\"post\"><button type=\"submit\">确认已处理 / Acknowledge</button></form>"
        ),
    )
}

#[handler]
pub async fn confirm(req: &Request, state: Data<&AppState>, Path(token): Path<String>) -> Response {
    let started = Instant::now();
    let operation_time = Utc::now();
    let (id, recipient) = match checked(&state, &token) {
        Ok(link) => link,
        Err(page) => return *page,
    };
    // A call that cannot be audited is not made.
    let Some(permit) = state.audit.reserve() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "请稍后再试",
            "<p>The audit log is not keeping up; try again shortly.</p>",
        );
    };
    let (response, failed, error) = match state.worker.acknowledge(id, &recipient).await {
        Ok(Acknowledged::Now) => (
            page(
                StatusCode::OK,
                "已确认",
                &format!("<p>告警 {id} 已由 {} 确认。</p>", esc(&recipient)),
            ),
            false,
            None,
        ),
        Ok(Acknowledged::Already { by, at }) => (
            page(
                StatusCode::CONFLICT,
                "告警已确认",
                &format!(
                    "<p>告警 {id} 已由 {} 于 {} 确认，无需再次确认。</p>",
                    esc(&by),
                    at.to_rfc3339()
                ),
            ),
            true,
            Some(format!("already acknowledged by {by}")),
        ),
        Ok(Acknowledged::Missing) => (
            page(
                StatusCode::NOT_FOUND,
                "告警不存在",
                "<p>This alert does not exist.</p>",
            ),
            true,
            Some("no such alert".to_owned()),
        ),
        Err(e) => (
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "请稍后再试",
                "<p>The alert could not be acknowledged; try again shortly.</p>",
            ),
            true,
            Some(format!("{e:#}")),
        ),
    };
    permit.send(
        Entry {
            audit_id: new_audit_id(),
            operation_time,
            operation_ip: req
                .remote_addr()
                .as_socket_addr()
                .map(|a| a.ip().to_string()),
            operator_id: Some(recipient),
            operator_org_id: None,
            role_id: None,
            request_params: Some(serde_json::json!({"alert_id": id, "via": "acknowledge link"})),
            response_result: Some(serde_json::json!({"status": response.status().as_u16()})),
            // The link's token is a credential: not logged.
            operation_url: format!("/ack/{id}"),
            operation_method: "POST".into(),
            operation_desc: "确认告警".into(),
            operation_result: if failed { "1" } else { "0" },
            error_msg: error,
            duration_ms: started.elapsed().as_millis().min(i32::MAX as u128) as i32,
            link: None,
        }
        .storable(),
    );
    response
}
