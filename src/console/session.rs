//! Console sessions: a bearer token is exchanged once (checked by the API's
//! own `GET /api/auth/me`, so the sign-in is audited like that call) for a
//! random session id in an HttpOnly, SameSite=Strict cookie. The database
//! keeps only the id's SHA-256; every request joins the session to its token,
//! so revoking or expiring the token ends the session at once. Each session
//! has a CSRF token that every form carries; the sign-in form, which has no
//! session yet, uses a double-submit cookie instead.

use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use deadpool_postgres::Pool;
use poem::http::{Method, StatusCode};
use poem::{Request, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api_call::{Caller, Origin};
use super::i18n::Lang;
use super::view::{self, Form};
use super::{Inner, Visit};
use crate::api::AppState;
use crate::audit_log::new_audit_id;
use crate::audit_log::writer::Entry;
use crate::auth::{Principal, Role};

/// How long a session lasts (then the operator signs in again).
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
const SESSION_COOKIE: &str = "aa_session";
/// The sign-in form's double-submit cookie.
const LOGIN_COOKIE: &str = "aa_login";

/// A signed-in user.
pub struct Session {
    pub principal: Principal,
    csrf: String,
    id_hash: Vec<u8>,
}

impl Session {
    /// The value every form of this session carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    pub fn csrf_matches(&self, sent: Option<&str>) -> bool {
        sent.is_some_and(|s| bool::from(s.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    B64URL.encode(bytes)
}

fn digest(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The live session the request's cookie names, if any: its token is
/// neither revoked nor expired, or, for `ADMIN_TOKEN`, that is still the one
/// the service runs with.
pub async fn find(state: &AppState, req: &Request) -> anyhow::Result<Option<Session>> {
    let Some(id) = cookie(req, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = digest(id);
    let client = crate::db::client(&state.pool).await?;
    let row = client
        .query_opt(
            "SELECT s.token_id, s.operator_id, s.org_id, s.role, s.csrf_token
               FROM console_sessions s LEFT JOIN api_tokens t ON t.id = s.token_id
              WHERE s.id_hash = $1 AND s.expires_at > now()
                AND (s.admin_token_hash = $2
                     OR (t.id IS NOT NULL AND t.revoked_at IS NULL
                         AND (t.expires_at IS NULL OR t.expires_at > now())))",
            &[&id_hash, &state.auth.admin_digest()],
        )
        .await
        .context("Failed to look up the console session")?;
    Ok(row.and_then(|r| {
        Some(Session {
            principal: Principal {
                token_id: r.get(0),
                operator_id: r.get(1),
                org_id: r.get(2),
                role: Role::parse(r.get(3))?,
            },
            csrf: r.get(4),
            id_hash,
        })
    }))
}

/// Stores a new session for `principal` (`admin`: the digest of the
/// `ADMIN_TOKEN` it signed in with); returns the id for the cookie.
async fn create(
    pool: &Pool,
    principal: &Principal,
    admin: Option<&[u8]>,
) -> anyhow::Result<String> {
    let id = random();
    let client = crate::db::client(pool).await?;
    client
        .execute("DELETE FROM console_sessions WHERE expires_at < now()", &[])
        .await
        .context("Failed to remove expired console sessions")?;
    client
        .execute(
            "INSERT INTO console_sessions
                 (id_hash, token_id, operator_id, org_id, role, csrf_token, expires_at,
                  admin_token_hash)
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8)",
            &[
                &digest(&id),
                &principal.token_id,
                &principal.operator_id,
                &principal.org_id,
                &principal.role.as_str(),
                &random(),
                &(LIFETIME.as_secs() as f64),
                &principal.token_id.is_none().then_some(admin).flatten(),
            ],
        )
        .await
        .context("Failed to store the console session")?;
    Ok(id)
}

impl Inner {
    /// The sign-in page, with a fresh double-submit value.
    pub(super) fn login_form(&self, req: &Request, lang: Lang, error: Option<&str>) -> Response {
        let csrf = random();
        let https = Origin::of(req).https;
        let mut response = self.views.bare(
            lang,
            "login",
            json!({ "csrf": csrf, "error": error.map(|k| lang.text(k)) }),
            if error.is_some() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            },
        );
        let cookie = set_cookie(LOGIN_COOKIE, &csrf, "/console/login", 3600, https);
        view::add_cookie(&mut response, &cookie);
        response
    }

    /// Exchanges the posted token for a session.
    pub(super) async fn login(&self, req: &mut Request, lang: Lang) -> Response {
        let form = Form::read(req).await;
        let expected = cookie(req, LOGIN_COOKIE).unwrap_or_default();
        let sent = form.get("csrf").unwrap_or_default();
        if expected.is_empty() || !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
            return self
                .views
                .refused(lang, StatusCode::FORBIDDEN, "csrf_refused");
        }
        let token = form.get("token").unwrap_or_default().trim();
        if token.is_empty() {
            return self.login_form(req, lang, Some("token_missing"));
        }
        let origin = Origin::of(req);
        let reply = self
            .call(
                &origin,
                Caller::Bearer(token),
                Method::GET,
                "/api/auth/me",
                None,
            )
            .await;
        let principal = match reply.status {
            StatusCode::OK => Principal {
                token_id: reply.json["token_id"].as_i64(),
                operator_id: reply.json["operator_id"].as_str().unwrap_or("").to_owned(),
                org_id: reply.json["org_id"].as_str().map(str::to_owned),
                role: reply.json["role"]
                    .as_str()
                    .and_then(Role::parse)
                    .unwrap_or(Role::Viewer),
            },
            StatusCode::UNAUTHORIZED => return self.login_form(req, lang, Some("token_invalid")),
            status => return self.views.refused(lang, status, "unavailable"),
        };
        match create(&self.state.pool, &principal, self.state.auth.admin_digest()).await {
            Ok(id) => {
                let mut response = view::redirect("/console/");
                let max_age = LIFETIME.as_secs();
                let session = set_cookie(SESSION_COOKIE, &id, "/console", max_age, origin.https);
                view::add_cookie(&mut response, &session);
                let spent = set_cookie(LOGIN_COOKIE, "", "/console/login", 0, origin.https);
                view::add_cookie(&mut response, &spent);
                response
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "console: sign-in failed");
                self.views
                    .refused(lang, StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        }
    }

    /// Signing out stands for no API operation: it is recorded here, as the
    /// acknowledge page records its confirmations. Unlike a change, it is not
    /// refused when the audit log is full (ending a session is always safe).
    fn audit_sign_out(&self, visit: &Visit) {
        let Some(permit) = self.state.audit.reserve() else {
            tracing::warn!("console: a sign-out could not be audited (the audit queue is full)");
            return;
        };
        let p = &visit.session.principal;
        permit.send(
            Entry {
                audit_id: new_audit_id(),
                operation_time: chrono::Utc::now(),
                operation_ip: visit.origin.ip(),
                operator_id: Some(p.operator_id.clone()),
                operator_org_id: p.org_id.clone(),
                role_id: Some(p.role.as_str().to_owned()),
                request_params: Some(json!({ "via": "console" })),
                response_result: None,
                operation_url: "/console/logout".into(),
                operation_method: "POST".into(),
                operation_desc: "退出控制台".into(),
                operation_result: "0",
                error_msg: None,
                duration_ms: 0,
                link: None,
            }
            .storable(),
        );
    }

    /// Ends the session (the cookie is cleared too).
    pub(super) async fn logout(&self, visit: &Visit) -> Response {
        let ended = async {
            let client = crate::db::client(&self.state.pool).await?;
            client
                .execute(
                    "DELETE FROM console_sessions WHERE id_hash = $1",
                    &[&visit.session.id_hash],
                )
                .await
                .context("Failed to end the console session")
        }
        .await;
        if let Err(e) = ended {
            tracing::error!(error = format!("{e:#}"), "console: sign-out failed");
            return self
                .views
                .refused(visit.lang, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
        self.audit_sign_out(visit);
        let mut response = view::redirect("/console/login");
        let cleared = set_cookie(SESSION_COOKIE, "", "/console", 0, visit.origin.https);
        view::add_cookie(&mut response, &cleared);
        response
    }
}
