//! How console pages are made: the handlebars templates (compiled once), the
//! layout around every page, the refusal pages, the headers every response
//! carries, the static assets, and the forms and queries pages read.

use handlebars::{handlebars_helper, Handlebars};
use poem::http::{HeaderValue, StatusCode};
use poem::{Request, Response};
use serde_json::{json, Map, Value};

use super::i18n::{self, Lang};
use super::Visit;
use crate::auth::Role;

const TEMPLATES: &[(&str, &str)] = &[
    ("layout", include_str!("templates/layout.hbs")),
    ("login", include_str!("templates/login.hbs")),
    ("message", include_str!("templates/message.hbs")),
    ("overview", include_str!("templates/overview.hbs")),
    ("alerts", include_str!("templates/alerts.hbs")),
    ("alert", include_str!("templates/alert.hbs")),
    ("config", include_str!("templates/config.hbs")),
    ("template", include_str!("templates/template.hbs")),
    ("audit", include_str!("templates/audit.hbs")),
    ("audit_entry", include_str!("templates/audit_entry.hbs")),
    ("tokens", include_str!("templates/tokens.hbs")),
];

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// Only this host; inline styles for the mail preview (its HTML is the mail's).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'; object-src 'none'";

handlebars_helper!(time: |s: str| format_time(s));

/// The zone the console shows times in: Beijing time, like the mails.
pub const ZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;

/// `2024-05-01 16:00:00` (Beijing time) from RFC 3339; other text as it is.
fn format_time(s: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| {
            t.with_timezone(&ZONE)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| s.to_owned())
}

pub struct Views {
    hbs: Handlebars<'static>,
    strings: [Value; 2],
}

impl Views {
    pub fn new() -> Self {
        let mut hbs = Handlebars::new();
        hbs.set_strict_mode(false);
        hbs.register_helper("time", Box::new(time));
        for (name, source) in TEMPLATES {
            hbs.register_template_string(name, source)
                .unwrap_or_else(|e| panic!("console template {name}: {e}"));
        }
        Self {
            hbs,
            strings: [Lang::Zh, Lang::En].map(|l| Value::Object(i18n::table(l))),
        }
    }

    fn render(&self, name: &str, cx: &Value) -> String {
        self.hbs.render(name, cx).unwrap_or_else(|e| {
            tracing::error!(error = %e, template = name, "console: a template failed");
            format!("<p>{}</p>", handlebars::html_escape(&e.to_string()))
        })
    }

    fn context(&self, lang: Lang, page: &str, data: Value, visit: Option<&Visit>) -> Value {
        let mut cx = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        cx.insert("t".into(), self.strings[lang as usize].clone());
        cx.insert("lang".into(), lang.code().into());
        cx.insert("page".into(), page.into());
        if let Some(v) = visit {
            let p = &v.session.principal;
            cx.insert(
                "me".into(),
                json!({
                    "operator_id": p.operator_id,
                    "role": lang.text(&format!("role_{}", p.role.as_str())),
                }),
            );
            cx.insert("csrf".into(), v.session.csrf().into());
            cx.insert(
                "can".into(),
                json!({
                    "operate": p.role.allows(Role::Operator),
                    "audit": p.role.allows(Role::Auditor),
                    "admin": p.role == Role::Admin,
                }),
            );
        }
        Value::Object(cx)
    }

    fn respond(&self, mut cx: Value, name: &str, status: StatusCode) -> Response {
        let body = self.render(name, &cx);
        let title_key = format!("title_{name}");
        let title = cx["t"][&title_key].clone();
        cx["body"] = body.into();
        cx["title"] = title;
        html(status, self.render("layout", &cx))
    }

    /// A page of a signed-in user.
    pub fn page(&self, visit: &Visit, name: &str, data: Value, status: StatusCode) -> Response {
        let cx = self.context(visit.lang, name, data, Some(visit));
        self.respond(cx, name, status)
    }

    /// A page without a session (sign-in).
    pub fn bare(&self, lang: Lang, name: &str, data: Value, status: StatusCode) -> Response {
        let cx = self.context(lang, name, data, None);
        self.respond(cx, name, status)
    }

    /// Refused before any session is known: the status and a message.
    pub fn refused(&self, lang: Lang, status: StatusCode, key: &str) -> Response {
        let data = json!({ "status": status.as_u16(), "heading": lang.text(status_key(status)),
                           "detail": lang.text(key) });
        self.bare(lang, "message", data, status)
    }

    /// An operation's failure as a page: 403 for a role that may not, and so on.
    pub fn problem(&self, visit: &Visit, status: StatusCode, detail: &str) -> Response {
        let data = json!({ "status": status.as_u16(),
                           "heading": visit.lang.text(status_key(status)), "detail": detail });
        self.page(visit, "message", data, status)
    }
}

fn status_key(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_client_error() => "refused",
        _ => "error",
    }
}

pub fn html(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .body(body)
}

pub fn redirect(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("location", location)
        .finish()
}

pub fn add_cookie(response: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append("set-cookie", v);
    }
}

/// What every console response carries: nothing from another host, no
/// framing, no referrer, not kept in a cache.
pub fn secure_headers(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The stylesheet and the script, served from the binary.
pub fn asset(name: &str) -> Response {
    let (body, content_type) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return html(StatusCode::NOT_FOUND, "not found".into()),
    };
    Response::builder().content_type(content_type).body(body)
}

/// Name-value pairs from a query string or a form body.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The request's `application/x-www-form-urlencoded` body (the body limit
    /// is the API's, applied before the console).
    pub async fn read(req: &mut Request) -> Self {
        let bytes = req.take_body().into_bytes().await.unwrap_or_default();
        Self(serde_urlencoded::from_bytes(&bytes).unwrap_or_default())
    }

    pub fn empty() -> Self {
        Self(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The trimmed value, empty when absent.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }
}

/// The query string of a page, read as a form.
pub type Query = Form;

impl Query {
    pub fn of(req: &Request) -> Self {
        Self(serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `t.key` a template uses is in the string table.
    #[test]
    fn templates_use_only_known_texts() {
        let known = i18n::table(Lang::En);
        for (name, source) in TEMPLATES {
            for (i, _) in source.match_indices("t.") {
                let (before, prefix) = (source[..i].chars().last(), &source[..i]);
                if !matches!(before, Some('{' | ' ')) && !prefix.ends_with("@root.") {
                    continue;
                }
                let key: String = source[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(known.contains_key(&key), "{name}: t.{key}");
            }
        }
    }

    #[test]
    fn times_read_in_beijing_time() {
        assert_eq!(format_time("2024-05-01T02:00:00Z"), "2024-05-01 10:00:00");
        assert_eq!(
            format_time("2024-05-01T10:00:00+08:00"),
            "2024-05-01 10:00:00"
        );
        assert_eq!(format_time("soon"), "soon");
    }
}
