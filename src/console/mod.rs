//! The operator console: the web pages an on-call operator and a compliance
//! officer open instead of curl, at `/console`, rendered on the server with
//! handlebars (no JavaScript build; one small script, served from here, only
//! for the template preview).
//!
//! - `session`: signing in with a bearer token, the session cookie, CSRF.
//! - `api_call`: every page reads, and every form acts, by calling the API's
//!   operation in-process for the signed-in user, so roles, validation,
//!   problem messages and the operation audit log are exactly the API's.
//! - `view`: templates, the string table (Chinese first, English), headers.
//! - `pages`, `config_pages`, `audit_pages`: the pages and their forms.
//! - `chart`: the overview's figures and its inline SVG chart.

mod api_call;
mod audit_pages;
mod chart;
mod config_pages;
mod i18n;
mod pages;
mod session;
mod view;

use std::sync::Arc;

use poem::http::{Method, StatusCode};
use poem::{Endpoint, Request, Response};

use crate::api::{AppState, InProcess};
use api_call::Origin;
use i18n::Lang;
use session::Session;
use view::Views;

/// The console as one endpoint (nested at `/console`).
pub fn routes(state: AppState, api: Arc<InProcess>) -> Console {
    Console(Arc::new(Inner {
        state,
        api,
        views: Views::new(),
    }))
}

pub struct Console(Arc<Inner>);

struct Inner {
    state: AppState,
    api: Arc<InProcess>,
    views: Views,
}

/// One signed-in request: who, in which language, from where.
pub(crate) struct Visit {
    session: Session,
    lang: Lang,
    origin: Origin,
}

impl Endpoint for Console {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let lang = Lang::of(&req);
        let chosen = lang.chosen_now(&req);
        let mut response = self.0.dispatch(req, lang).await;
        if chosen {
            if let Ok(v) = lang.cookie().parse() {
                response.headers_mut().append("set-cookie", v);
            }
        }
        view::secure_headers(&mut response);
        Ok(response)
    }
}

impl Inner {
    async fn dispatch(&self, mut req: Request, lang: Lang) -> Response {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["static", name]) => return view::asset(name),
            (&Method::GET, ["login"]) => return self.login_form(&req, lang, None),
            (&Method::POST, ["login"]) => return self.login(&mut req, lang).await,
            _ => {}
        }
        let session = match session::find(&self.state, &req).await {
            Ok(Some(session)) => session,
            Ok(None) if method == Method::GET => return view::redirect("/console/login"),
            Ok(None) => {
                return self
                    .views
                    .refused(lang, StatusCode::FORBIDDEN, "no_session")
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "console: session look-up failed");
                return self
                    .views
                    .refused(lang, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            }
        };
        let visit = Visit {
            session,
            lang,
            origin: Origin::of(&req),
        };
        if method == Method::POST {
            let form = view::Form::read(&mut req).await;
            // Every form carries the session's CSRF token; nothing is done without it.
            if !visit.session.csrf_matches(form.get("csrf")) {
                return self
                    .views
                    .refused(lang, StatusCode::FORBIDDEN, "csrf_refused");
            }
            return self.post(&visit, &segments, form).await;
        }
        if method != Method::GET {
            return self
                .views
                .refused(lang, StatusCode::METHOD_NOT_ALLOWED, "not_found");
        }
        let query = view::Query::of(&req);
        match segments.as_slice() {
            [] => self.overview(&visit).await,
            ["alerts"] => self.alerts(&visit, &query).await,
            ["alerts", id] => self.alert(&visit, id, &query).await,
            ["config"] => self.config(&visit, &query, None).await,
            ["config", "templates", table] => self.template(&visit, table, Some(&query)).await,
            ["audit"] => self.audit(&visit, &query).await,
            ["audit", "export"] => self.audit_export(&visit, &query).await,
            ["audit", id] => self.audit_entry(&visit, id).await,
            ["tokens"] => self.tokens(&visit, None).await,
            _ => self.views.refused(lang, StatusCode::NOT_FOUND, "not_found"),
        }
    }

    async fn post(&self, visit: &Visit, segments: &[&str], form: view::Form) -> Response {
        match segments {
            ["logout"] => self.logout(visit).await,
            ["alerts", id, "resend"] => self.resend(visit, id).await,
            ["alerts", id, "ack"] => self.acknowledge(visit, id).await,
            ["config", "recipients"] => self.add_recipient(visit, &form).await,
            ["config", "recipients", id, "delete"] => self.delete_recipient(visit, id).await,
            ["config", "recipients", id, "active"] => {
                self.set_recipient_active(visit, id, &form).await
            }
            ["config", "smtp", id, "test"] => self.test_smtp(visit, id, &form).await,
            ["config", "templates", table] => self.save_template(visit, table, &form).await,
            ["config", "templates", table, "preview"] => {
                self.preview_template(visit, table, &form).await
            }
            ["tokens"] => self.create_token(visit, &form).await,
            ["tokens", id, "revoke"] => self.revoke_token(visit, id).await,
            _ => self
                .views
                .refused(visit.lang, StatusCode::NOT_FOUND, "not_found"),
        }
    }
}
