//! The HTTP side of the operation audit log: every `/api/**` call is recorded
//! from the declaration of its operation, after its response is known. Also
//! the body limit, since the recorded body must be the limited one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;
use serde_json::{json, Map, Value};

use super::error::{self, ApiError};
use crate::audit_log::mask::mask_json;
use crate::audit_log::writer::{AuditQueue, Entry};
use crate::audit_log::{new_audit_id, Audit};
use crate::auth::Principal;

/// Largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Longest text recorded for a body that is not JSON.
const TEXT_LIMIT: usize = 2048;

/// Where the security checker leaves the caller for the audit entry, so the
/// token is verified once per request.
#[derive(Clone, Default)]
pub struct PrincipalSlot(Arc<std::sync::Mutex<Option<Principal>>>);

impl PrincipalSlot {
    pub fn put(&self, principal: &Principal) {
        *self.0.lock().expect("principal slot") = Some(principal.clone());
    }

    fn take(&self) -> Option<Principal> {
        self.0.lock().expect("principal slot").take()
    }
}

/// What the audit layer needs, shared by every request.
pub struct AuditLayer {
    pub queue: AuditQueue,
    pub declarations: HashMap<&'static str, Audit>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl AuditLayer {
    pub fn new(queue: AuditQueue, trusted_proxies: Vec<IpAddr>) -> Self {
        Self {
            queue,
            declarations: super::audit_declarations()
                .into_iter()
                .map(|a| (a.operation_id, a))
                .collect(),
            trusted_proxies,
        }
    }

    fn client_ip(&self, req: &Request) -> Option<String> {
        let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
        let trusted = peer.is_some_and(|p| self.trusted_proxies.contains(&p));
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The nearest address no trusted proxy vouches for.
                v.rsplit(',')
                    .map(str::trim)
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .find(|a| !self.trusted_proxies.contains(a))
            });
        match (trusted, forwarded) {
            (true, Some(client)) => Some(client.to_string()),
            _ => peer.map(|p| p.to_string()),
        }
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let e = match status {
        StatusCode::PAYLOAD_TOO_LARGE => poem::Error::from_string(detail, status),
        _ => ApiError::unavailable(detail).into(),
    };
    futures_util::FutureExt::now_or_never(error::into_problem(e)).expect("builds at once")
}

fn body_value(bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(bytes).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(bytes);
        Value::String(text.chars().take(TEXT_LIMIT).collect())
    }))
}

/// Counts an API call by operation and status, audited or not.
fn count_request(requests: Option<&super::metrics::HttpRequests>, response: &Response) {
    if let (Some(op), Some(requests)) = (response.data::<OperationId>(), requests) {
        requests
            .get_or_create(&vec![
                ("operation", op.0.to_owned()),
                ("status", response.status().as_u16().to_string()),
            ])
            .inc();
    }
}

/// Limits the body, then records the call in the audit log (for `/api/**`,
/// unless auditing is off, which only the benchmarks do).
pub async fn gate<E: Endpoint>(
    next: E,
    mut req: Request,
    layer: Option<Arc<AuditLayer>>,
) -> poem::Result<Response> {
    let announced = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than 1 MiB",
        )
    };
    if announced.is_some_and(|n| n > BODY_LIMIT) {
        return Ok(too_large());
    }
    let body = match req.take_body().into_bytes_limit(BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return Ok(too_large()),
    };
    let http_requests = req
        .data::<super::AppState>()
        .map(|s| s.http_requests.clone());
    let layer = match layer {
        Some(layer) if req.uri().path().starts_with("/api/") => layer,
        _ => {
            req.set_body(body);
            let response = next.call(req).await?.into_response();
            count_request(http_requests.as_ref(), &response);
            return Ok(response);
        }
    };
    // Reserve the entry's place first: a call that cannot be audited is not made.
    let Some(permit) = layer.queue.reserve() else {
        return Ok(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log is not keeping up; try again shortly",
        ));
    };
    let started = Instant::now();
    let operation_time = Utc::now();
    let method = req.method().to_string();
    let url = req.uri().path().to_owned();
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default();
    let ip = layer.client_ip(&req);
    // The operation's security checker fills this in when the token is valid.
    let slot = PrincipalSlot::default();
    req.set_data(slot.clone());
    let request_body = body_value(&body);
    req.set_body(body);
    let via_console = req.data::<super::auth::ConsoleCaller>().is_some();

    let response = next.call(req).await?.into_response();
    let principal = slot.take();
    let status = response.status();
    let operation = response.data::<OperationId>().copied();
    count_request(http_requests.as_ref(), &response);
    let Some(audit) = operation.and_then(|op| layer.declarations.get(op.0)) else {
        // No operation matched (unknown path or method): nothing was done.
        return Ok(response);
    };

    let failed = !status.is_success();
    let (parts, body) = response.into_parts();
    let (response_bytes, body) = if failed || audit.record_result {
        let bytes = body.into_bytes().await.unwrap_or_default();
        (bytes.clone(), poem::Body::from(bytes))
    } else {
        (Default::default(), body)
    };
    let mut params = audit.record_params.then(|| {
        let mut p = Map::new();
        p.insert("path".into(), Value::String(url.clone()));
        if !query.is_empty() {
            p.insert(
                "query".into(),
                json!(query.iter().cloned().collect::<HashMap<_, _>>()),
            );
        }
        if let Some(b) = request_body {
            p.insert("body".into(), b);
        }
        Value::Object(p)
    });
    if via_console {
        // Made by the operator console for a signed-in user (its page or form).
        if let Value::Object(p) = params.get_or_insert_with(|| json!({})) {
            p.insert("via".into(), Value::String("console".into()));
        }
    }
    let mut result = (audit.record_result && !failed)
        .then(|| body_value(&response_bytes))
        .flatten();
    if audit.sensitive {
        for v in [params.as_mut(), result.as_mut()].into_iter().flatten() {
            mask_json(v, audit.masks);
        }
    }
    let error_msg = (failed && audit.record_exception).then(|| {
        serde_json::from_slice::<Value>(&response_bytes)
            .ok()
            .and_then(|p| p.get("detail")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string())
    });
    permit.send(
        Entry {
            audit_id: new_audit_id(),
            operation_time,
            operation_ip: ip,
            operator_id: principal.as_ref().map(|p| p.operator_id.clone()),
            operator_org_id: principal.as_ref().and_then(|p| p.org_id.clone()),
            role_id: principal.as_ref().map(|p| p.role.as_str().to_owned()),
            request_params: params,
            response_result: result,
            operation_url: url,
            operation_method: method,
            operation_desc: audit.description.to_owned(),
            operation_result: if failed { "1" } else { "0" },
            error_msg,
            duration_ms: started.elapsed().as_millis().min(i32::MAX as u128) as i32,
            link: None,
        }
        .storable(),
    );
    Ok(Response::from_parts(parts, body))
}
