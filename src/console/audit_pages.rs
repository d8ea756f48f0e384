//! The operation audit log (auditor, admin): filtered list, one entry in
//! full, the filtered entries as CSV; and the tokens page (admin).

use poem::http::{Method, StatusCode};
use poem::{IntoResponse, Response};
use serde_json::{json, Value};

use super::api_call::{segment, with_query, Caller};
use super::pages::{local_time, pager};
use super::view::{self, Form, Query};
use super::{Inner, Visit};

/// The audit-log filters of the page, as the page's own query carries them.
fn audit_filters(query: &Query) -> Vec<(&'static str, String)> {
    ["operator_id", "result", "text", "from", "to"]
        .into_iter()
        .map(|k| (k, query.text(k)))
        .collect()
}

/// The same filters as the API takes them (times in RFC 3339).
fn api_filters(query: &Query) -> Vec<(&'static str, String)> {
    audit_filters(query)
        .into_iter()
        .map(|(k, v)| match k {
            "from" | "to" => (k, local_time(&v)),
            _ => (k, v),
        })
        .collect()
}

fn pretty(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        v => serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

impl Inner {
    pub(super) async fn audit(&self, visit: &Visit, query: &Query) -> Response {
        let mut api_query = api_filters(query);
        api_query.push(("page", query.text("page")));
        let list = match self
            .get(visit, &with_query("/api/audit-logs", &api_query))
            .await
        {
            Ok(list) => list,
            Err(page) => return *page,
        };
        let filters = audit_filters(query);
        let (prev, next) = pager("/console/audit", &filters, &list);
        let filter: serde_json::Map<String, Value> = filters
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        let data = json!({
            "list": list, "filter": filter, "prev": prev, "next": next,
            "export": with_query("/console/audit/export", &filters),
        });
        self.views.page(visit, "audit", data, StatusCode::OK)
    }

    pub(super) async fn audit_entry(&self, visit: &Visit, id: &str) -> Response {
        let entry = match self
            .get(visit, &format!("/api/audit-logs/{}", segment(id)))
            .await
        {
            Ok(entry) => entry,
            Err(page) => return *page,
        };
        let data = json!({
            "params": pretty(&entry["request_params"]),
            "result": pretty(&entry["response_result"]),
            "entry": entry,
        });
        self.views.page(visit, "audit_entry", data, StatusCode::OK)
    }

    /// The API's export of the filtered entries, passed through as it streams.
    pub(super) async fn audit_export(&self, visit: &Visit, query: &Query) -> Response {
        let mut api_query = api_filters(query);
        api_query.push(("format", "csv".to_owned()));
        let path = with_query("/api/audit-logs/export", &api_query);
        let caller = Caller::Console(&visit.session.principal);
        let response = self
            .call_raw(&visit.origin, caller, Method::GET, &path, None)
            .await;
        if response.status().is_success() {
            return response.into_response();
        }
        let status = response.status();
        let body = response.into_body().into_bytes().await.unwrap_or_default();
        let detail = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|p| p["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        self.views.problem(visit, status, &detail)
    }

    /// The tokens; `issued` is a token just created, shown this once.
    pub(super) async fn tokens(&self, visit: &Visit, issued: Option<Value>) -> Response {
        let list = match self.get(visit, "/api/auth/tokens?page_size=500").await {
            Ok(list) => list,
            Err(page) => return *page,
        };
        let data = json!({ "list": list, "issued": issued });
        self.views.page(visit, "tokens", data, StatusCode::OK)
    }

    pub(super) async fn create_token(&self, visit: &Visit, form: &Form) -> Response {
        let mut body =
            json!({ "operator_id": form.text("operator_id"), "role": form.text("role") });
        for field in ["org_id", "expires_in", "description"] {
            if !form.text(field).is_empty() {
                body[field] = form.text(field).into();
            }
        }
        let reply = self
            .api(visit, Method::POST, "/api/auth/tokens", Some(&body))
            .await;
        match self.ok(visit, reply) {
            Ok(issued) => self.tokens(visit, Some(issued)).await,
            Err(page) => *page,
        }
    }

    pub(super) async fn revoke_token(&self, visit: &Visit, id: &str) -> Response {
        let path = format!("/api/auth/tokens/{}", segment(id));
        let reply = self.api(visit, Method::DELETE, &path, None).await;
        match self.ok(visit, reply) {
            Ok(_) => view::redirect("/console/tokens"),
            Err(page) => *page,
        }
    }
}
