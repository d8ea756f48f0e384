//! Calling an API operation in-process for the signed-in user: a request like
//! the one the HTTP client would send, from the browser's address, with the
//! user as [`ConsoleCaller`] in its extensions (which no HTTP client can set).
//! It passes the API's security checkers, validation, error mapping and
//! audit log, which records the user, the address and `"via": "console"`.

use poem::http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use poem::http::uri::Scheme;
use poem::http::{HeaderValue, Method, StatusCode};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Request, RequestParts, Response};
use serde_json::Value;

use super::{Inner, Visit};
use crate::api::ConsoleCaller;
use crate::auth::Principal;

/// Where the browser's request came from, copied onto the API requests made
/// for it (so the audit log records the client's address, proxies included).
pub struct Origin {
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
    forwarded_for: Option<HeaderValue>,
    /// Reached over HTTPS (directly or as a proxy says): cookies get `Secure`.
    pub https: bool,
}

impl Origin {
    pub fn of(req: &Request) -> Self {
        let proxied_https = req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        Self {
            local: req.local_addr().clone(),
            remote: req.remote_addr().clone(),
            scheme: req.scheme().clone(),
            forwarded_for: req.headers().get("x-forwarded-for").cloned(),
            https: *req.scheme() == Scheme::HTTPS || proxied_https,
        }
    }
}

impl Origin {
    /// The peer's address, for an audit entry the console writes itself.
    pub fn ip(&self) -> Option<String> {
        self.remote.as_socket_addr().map(|a| a.ip().to_string())
    }
}

/// Who the in-process call is for.
pub enum Caller<'a> {
    /// A signed-in user.
    Console(&'a Principal),
    /// A bearer token being exchanged for a session.
    Bearer(&'a str),
}

/// What the operation answered: the status and, when JSON, the body.
pub struct Reply {
    pub status: StatusCode,
    pub json: Value,
}

impl Reply {
    /// The problem's `detail` (or the status) of a failed call.
    pub fn detail(&self) -> String {
        self.json["detail"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| self.status.to_string())
    }
}

impl Inner {
    /// Calls the operation at `path` (with its query) and returns its response.
    pub async fn call_raw(
        &self,
        origin: &Origin,
        caller: Caller<'_>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Response {
        let bearer = match caller {
            // Only so the bearer scheme finds a header; the checker takes
            // the principal from the extensions and never looks at this.
            Caller::Console(_) => "console-session".to_owned(),
            Caller::Bearer(token) => token.to_owned(),
        };
        let mut builder = poem::http::Request::builder()
            .method(method)
            .uri(path)
            .header(AUTHORIZATION, format!("Bearer {bearer}"))
            .header(USER_AGENT, "audit-alert-console");
        if let Some(forwarded) = &origin.forwarded_for {
            builder = builder.header("x-forwarded-for", forwarded);
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let parts = match builder.body(()) {
            Ok(request) => request.into_parts().0,
            Err(e) => {
                return poem::Error::from_string(e.to_string(), StatusCode::BAD_REQUEST)
                    .into_response()
            }
        };
        let parts = RequestParts::from((
            parts,
            origin.local.clone(),
            origin.remote.clone(),
            origin.scheme.clone(),
        ));
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = Request::from_parts(parts, body.into());
        req.set_data(ConsoleCaller(match caller {
            Caller::Console(principal) => Some(principal.clone()),
            Caller::Bearer(_) => None,
        }));
        match self.api.call(req).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    /// [`Self::call_raw`], with the body read as JSON.
    pub async fn call(
        &self,
        origin: &Origin,
        caller: Caller<'_>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let response = self.call_raw(origin, caller, method, path, body).await;
        let status = response.status();
        let bytes = response.into_body().into_bytes().await.unwrap_or_default();
        Reply {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// An operation called for the signed-in user.
    pub async fn api(
        &self,
        visit: &Visit,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let caller = Caller::Console(&visit.session.principal);
        self.call(&visit.origin, caller, method, path, body).await
    }

    /// A GET for the signed-in user; `Err` is the page saying why it failed.
    pub async fn get(&self, visit: &Visit, path: &str) -> Result<Value, Box<Response>> {
        let reply = self.api(visit, Method::GET, path, None).await;
        self.ok(visit, reply)
    }

    /// The reply's JSON when it succeeded, else the page for its failure
    /// (403: the role may not; 404; any other: the API's problem detail).
    pub fn ok(&self, visit: &Visit, reply: Reply) -> Result<Value, Box<Response>> {
        if reply.status.is_success() {
            return Ok(reply.json);
        }
        Err(Box::new(self.views.problem(
            visit,
            reply.status,
            &reply.detail(),
        )))
    }
}

/// `path?query` with the non-empty `pairs` as the query.
pub fn with_query(path: &str, pairs: &[(&str, String)]) -> String {
    let pairs: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    if pairs.is_empty() {
        return path.to_owned();
    }
    format!(
        "{path}?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

/// A path segment taken from the browser's URL, encoded for the API's path.
pub fn segment(s: &str) -> String {
    let decoded: String = serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("s={s}"))
        .ok()
        .and_then(|v| v.into_iter().next())
        .map(|(_, v)| v)
        .unwrap_or_default();
    let encoded = serde_urlencoded::to_string([("s", decoded)]).unwrap_or_default();
    encoded
        .trim_start_matches("s=")
        .replace('+', "%20")
        .to_owned()
}
