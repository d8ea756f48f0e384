//! Stand-ins for the chat-bot services, on loopback: each checks the
//! signature exactly as its service documents it, enforces the service's
//! send limits, answers with the service's own error shapes, and keeps what
//! arrived.
//!
//! - DingTalk: `sign = urlencode(base64(HMAC-SHA256(key = secret,
//!   msg = timestamp + "\n" + secret)))` in the query; 20 a minute, then
//!   errcode 130101; a bad signature is errcode 310000.
//! - WeCom: no signature; markdown content at most 4,096 bytes (errcode
//!   40058); 20 a minute, then errcode 45009.
//! - Feishu: `sign = base64(HMAC-SHA256(key = timestamp + "\n" + secret,
//!   msg = ""))` in the body; 100 a minute and 5 a second, then code 9499; a
//!   bad signature is code 19021.
//! - Webhook: `X-Audit-Alert-Signature: sha256=<hex HMAC-SHA256(key =
//!   secret, msg = body)>`, else HTTP 401.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{KeyInit, Mac};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::{Data, Query};
use poem::{handler, post, EndpointExt, Route, Server};
use serde_json::{json, Value};

type Hmac = hmac::Hmac<sha2::Sha256>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    DingTalk,
    WeCom,
    Feishu,
    Webhook,
}

/// One message as it arrived, and what the bot answered.
#[derive(Clone, Debug)]
pub struct Arrived {
    pub body: Value,
    /// The bot's own code: 0 when accepted.
    pub code: i64,
}

struct State {
    service: Service,
    secret: Option<String>,
    arrived: Mutex<Vec<Arrived>>,
    sends: Mutex<VecDeque<Instant>>,
    /// Answers to give instead of checking, first first (e.g. a rate limit).
    scripted: Mutex<VecDeque<(u16, Value)>>,
}

pub struct Bot {
    pub port: u16,
    state: Arc<State>,
    _server: tokio::task::JoinHandle<()>,
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::new_from_slice(key).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Bot {
    pub async fn start(service: Service, secret: Option<&str>) -> Self {
        let state = Arc::new(State {
            service,
            secret: secret.map(str::to_owned),
            arrived: Mutex::default(),
            sends: Mutex::default(),
            scripted: Mutex::default(),
        });
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
        let app = Route::new().at("/*path", post(receive)).data(state.clone());
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            port,
            state,
            _server: server,
        }
    }

    /// The webhook URL of this bot, as its service would show it.
    pub fn url(&self) -> String {
        let base = format!("http://127.0.0.1:{}", self.port);
        match self.state.service {
            Service::DingTalk => format!("{base}/robot/send?access_token=tok-{}", self.port),
            Service::WeCom => format!("{base}/cgi-bin/webhook/send?key=key-{}", self.port),
            Service::Feishu => format!("{base}/open-apis/bot/v2/hook/hook-{}", self.port),
            Service::Webhook => format!("{base}/hooks/audit"),
        }
    }

    /// Answers the next message with this instead of checking it.
    pub fn script(&self, status: u16, answer: Value) {
        self.state
            .scripted
            .lock()
            .unwrap()
            .push_back((status, answer));
    }

    pub fn arrived(&self) -> Vec<Arrived> {
        self.state.arrived.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Value> {
        self.arrived()
            .into_iter()
            .filter(|a| a.code == 0)
            .map(|a| a.body)
            .collect()
    }
}

#[handler]
async fn receive(
    state: Data<&Arc<State>>,
    query: Query<HashMap<String, String>>,
    headers: &poem::http::HeaderMap,
    body: poem::Body,
) -> poem::Response {
    let bytes = body.into_bytes().await.unwrap_or_default();
    let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (status, answer) = match state.scripted.lock().unwrap().pop_front() {
        Some(scripted) => scripted,
        None => check(&state, &query, headers, &bytes, &parsed),
    };
    let code = answer
        .get("errcode")
        .or_else(|| answer.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or(if status == 200 { 0 } else { status as i64 });
    state
        .arrived
        .lock()
        .unwrap()
        .push(Arrived { body: parsed, code });
    poem::Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(answer.to_string())
}

/// Whether the send limits allow one more now (and count it if so).
fn within(state: &State, limits: &[(usize, Duration)]) -> bool {
    let mut sends = state.sends.lock().unwrap();
    let now = Instant::now();
    let longest = limits.iter().map(|l| l.1).max().unwrap_or_default();
    while sends.front().is_some_and(|t| now - *t > longest) {
        sends.pop_front();
    }
    let full = limits
        .iter()
        .any(|(n, window)| sends.iter().filter(|t| now - **t < *window).count() >= *n);
    if !full {
        sends.push_back(now);
    }
    !full
}

fn check(
    state: &State,
    query: &HashMap<String, String>,
    headers: &poem::http::HeaderMap,
    bytes: &[u8],
    body: &Value,
) -> (u16, Value) {
    let minute = Duration::from_secs(60);
    match state.service {
        Service::DingTalk => {
            if let Some(secret) = &state.secret {
                let ts = query.get("timestamp").cloned().unwrap_or_default();
                let expected = b64(&hmac(
                    secret.as_bytes(),
                    format!("{ts}\n{secret}").as_bytes(),
                ));
                // The query was URL-decoded by the server.
                if query.get("sign") != Some(&expected) {
                    return (
                        200,
                        json!({"errcode": 310000, "errmsg": "sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"}),
                    );
                }
            }
            if body["msgtype"] != "markdown" || !body["markdown"]["text"].is_string() {
                return (200, json!({"errcode": 40035, "errmsg": "缺少参数 json"}));
            }
            if !within(state, &[(20, minute)]) {
                return (
                    200,
                    json!({"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}),
                );
            }
            (200, json!({"errcode": 0, "errmsg": "ok"}))
        }
        Service::WeCom => {
            let content = body["markdown"]["content"].as_str().unwrap_or_default();
            if body["msgtype"] != "markdown" || content.is_empty() {
                return (
                    200,
                    json!({"errcode": 40008, "errmsg": "invalid message type"}),
                );
            }
            if content.len() > 4096 {
                return (
                    200,
                    json!({"errcode": 40058, "errmsg": "markdown.content exceed max length 4096"}),
                );
            }
            if !within(state, &[(20, minute)]) {
                return (
                    200,
                    json!({"errcode": 45009, "errmsg": "api freq out of limit"}),
                );
            }
            (200, json!({"errcode": 0, "errmsg": "ok"}))
        }
        Service::Feishu => {
            if let Some(secret) = &state.secret {
                let ts = body["timestamp"].as_str().unwrap_or_default();
                let expected = b64(&hmac(format!("{ts}\n{secret}").as_bytes(), b""));
                if body["sign"].as_str() != Some(expected.as_str()) {
                    return (
                        200,
                        json!({"code": 19021, "data": {}, "msg": "sign match fail or timestamp is not within one hour from current time"}),
                    );
                }
            }
            if bytes.len() > 20 * 1024 {
                return (
                    200,
                    json!({"code": 9499, "data": {}, "msg": "the request body is too large"}),
                );
            }
            if body["msg_type"] != "interactive" || !body["card"].is_object() {
                return (
                    200,
                    json!({"code": 19002, "data": {}, "msg": "params error, msg_type need"}),
                );
            }
            if !within(state, &[(100, minute), (5, Duration::from_secs(1))]) {
                return (
                    200,
                    json!({"code": 9499, "data": {}, "msg": "too many request"}),
                );
            }
            (200, json!({"code": 0, "data": {}, "msg": "success"}))
        }
        Service::Webhook => {
            if let Some(secret) = &state.secret {
                let expected = format!(
                    "sha256={}",
                    hmac(secret.as_bytes(), bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
                let given = headers
                    .get("x-audit-alert-signature")
                    .and_then(|v| v.to_str().ok());
                if given != Some(expected.as_str()) {
                    return (401, json!({"error": "bad signature"}));
                }
            }
            (200, json!({"ok": true}))
        }
    }
}
