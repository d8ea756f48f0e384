//! The HTTP API: poem-openapi operations, the generated spec and the docs page.
//! Errors are turned into problem+json in one place (`error`).

mod ack_page;
mod alerts;
mod audit;
mod audit_export;
mod audit_logs;
mod audit_verify;
mod auth;
mod body_errors;
mod channels;
mod error;
mod health;
mod metrics;
mod monitor;
mod recipients;
mod schedules;
mod silences;
mod smtp;
mod system;
mod tables;
mod templates;

use deadpool_postgres::Pool;
use lettre::Address;
use poem::middleware::Cors;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::types::{ParseFromJSON, ToJSON};
use poem_openapi::{Object, OpenApiService, Tags};

pub use auth::ConsoleCaller;
pub use error::{ApiError, ApiResult, Problem};

use std::net::IpAddr;
use std::sync::Arc;

use crate::audit_log::writer::AuditQueue;
use crate::audit_log::Audit;
use crate::crypto::SecretBox;
use crate::monitor::Worker;

/// What every operation can reach through `Data<&AppState>`.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub worker: Worker,
    pub secrets: Option<SecretBox>,
    pub auth: auth::Authenticator,
    pub audit: AuditQueue,
    /// API calls by operation and status, for `/metrics`.
    pub http_requests: metrics::HttpRequests,
}

#[derive(Tags)]
pub(crate) enum ApiTags {
    /// Liveness and readiness.
    Health,
    /// SMTP servers alerts are sent through.
    Smtp,
    /// Who receives the alerts of each table.
    Recipients,
    /// Chat-bot channels (DingTalk, WeCom, Feishu / Lark, webhook) of each table.
    Channels,
    /// Run-time switches and tunables.
    System,
    /// Tables whose flagged rows raise alerts.
    Tables,
    /// The alert worker: pause, resume, status, logs.
    Monitor,
    /// Alert history and re-sending.
    Alerts,
    /// Holding matching alerts back for a time, with a reason.
    Silences,
    /// Bearer tokens and roles.
    Auth,
    /// Who did what through the API.
    AuditLog,
}

/// A page of results; every list shares this shape.
#[derive(Object)]
pub struct Page<T: ParseFromJSON + ToJSON> {
    pub items: Vec<T>,
    /// Matches across all pages.
    pub total: i64,
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

impl<T: ParseFromJSON + ToJSON> Page<T> {
    pub fn new(items: Vec<T>, total: i64, page: u32, page_size: u32) -> Self {
        Self {
            items,
            total,
            page,
            page_size,
        }
    }

    /// SQL `LIMIT` and `OFFSET` for a page.
    pub fn window(page: u32, page_size: u32) -> (i64, i64) {
        let limit = i64::from(page_size);
        (limit, i64::from(page.max(1) - 1) * limit)
    }
}

/// The configuration lists the old system had (SMTP servers, recipients):
/// `items` as every list has, and `data`, the same rows under the name the
/// old system's lists used, so a script written for it reads them unchanged.
#[derive(Object)]
pub struct ConfigList<T: ParseFromJSON + ToJSON + Clone> {
    pub items: Vec<T>,
    /// Deprecated: the same rows as `items`.
    #[oai(deprecated)]
    pub data: Vec<T>,
    /// Matches across all pages.
    pub total: i64,
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

impl<T: ParseFromJSON + ToJSON + Clone> From<Page<T>> for ConfigList<T> {
    fn from(page: Page<T>) -> Self {
        Self {
            data: page.items.clone(),
            items: page.items,
            total: page.total,
            page: page.page,
            page_size: page.page_size,
        }
    }
}

/// What one list query selects: trusted SQL from this crate (`filter` uses
/// `$1…$n` for `params`), the caller's values only in `params`.
pub(crate) struct ListQuery<'a> {
    pub table: &'a str,
    pub columns: &'a str,
    pub filter: &'a str,
    pub params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
    pub order: &'a str,
}

/// One page of a list query, with the total across pages.
pub(crate) async fn list_page<T: ParseFromJSON + ToJSON>(
    state: &AppState,
    query: ListQuery<'_>,
    page: u32,
    page_size: u32,
    map: impl Fn(&tokio_postgres::Row) -> T,
) -> ApiResult<Page<T>> {
    let ListQuery {
        table,
        columns,
        filter,
        params,
        order,
    } = query;
    let (limit, offset) = Page::<T>::window(page, page_size);
    let client = state.pool.get().await?;
    let n = params.len();
    // One prepared statement carries the total in a window column (last).
    let statement = client
        .prepare_cached(&format!(
            "SELECT {columns}, count(*) OVER () FROM {table} WHERE {filter}
              ORDER BY {order} LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        ))
        .await?;
    let mut all = params.to_vec();
    all.push(&limit);
    all.push(&offset);
    let rows = client.query(&statement, &all).await?;
    let total: i64 = match rows.first() {
        Some(row) => row.get(row.len() - 1),
        None if offset == 0 => 0,
        // Past the last page: the window saw no row, so count apart.
        None => client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE {filter}"),
                params,
            )
            .await?
            .get(0),
    };
    Ok(Page::new(
        rows.iter().map(map).collect(),
        total,
        page,
        page_size,
    ))
}

/// One page of a whole table, ordered by `id`.
pub(crate) async fn table_page<T: ParseFromJSON + ToJSON>(
    state: &AppState,
    table: &str,
    columns: &str,
    page: u32,
    page_size: u32,
    map: impl Fn(&tokio_postgres::Row) -> T,
) -> ApiResult<Page<T>> {
    let query = ListQuery {
        table,
        columns,
        filter: "true",
        params: &[],
        order: "id",
    };
    list_page(state, query, page, page_size, map).await
}

/// One row of `table` by its `id`, mapped; `missing` when there is none.
pub(crate) async fn get_by_id<T>(
    state: &AppState,
    table: &str,
    columns: &str,
    id: &(dyn tokio_postgres::types::ToSql + Sync),
    map: impl Fn(&tokio_postgres::Row) -> T,
    missing: impl FnOnce() -> ApiError,
) -> ApiResult<T> {
    let client = state.pool.get().await?;
    client
        .query_opt(
            &format!("SELECT {columns} FROM {table} WHERE id = $1"),
            &[id],
        )
        .await?
        .map(|r| map(&r))
        .ok_or_else(missing)
}

/// Deletes the row of `table` with `id`; `missing` when there is none.
pub(crate) async fn delete_by_id(
    state: &AppState,
    table: &str,
    id: &(dyn tokio_postgres::types::ToSql + Sync),
    missing: impl FnOnce() -> ApiError,
) -> ApiResult<Deleted> {
    let client = state.pool.get().await?;
    match client
        .execute(&format!("DELETE FROM {table} WHERE id = $1"), &[id])
        .await?
    {
        0 => Err(missing()),
        n => Ok(Deleted::rows(n)),
    }
}

pub(crate) fn default_page() -> u32 {
    1
}

pub(crate) fn default_page_size() -> u32 {
    50
}

/// How many rows a delete removed.
#[derive(Object)]
pub struct Deleted {
    pub deleted: u64,
    /// The same in plain words, as the old system answered.
    pub message: String,
}

impl Deleted {
    pub fn rows(deleted: u64) -> Self {
        Self {
            deleted,
            message: format!("{deleted} deleted"),
        }
    }
}

/// Parses an e-mail address, naming `field` when it is not one.
pub(crate) fn parse_email(field: &str, value: &str) -> ApiResult<Address> {
    value.trim().parse::<Address>().map_err(|e| {
        ApiError::invalid(
            field,
            format!("{field}: '{value}' is not a valid e-mail address ({e})"),
        )
    })
}

/// The API modules, listed once: each has its `XxxApi` and its operations'
/// audit declarations (`AUDIT`).
macro_rules! api_modules {
    ($($module:ident :: $api:ident),* $(,)?) => {
        type Apis = ($($module::$api,)*);

        fn service() -> OpenApiService<Apis, ()> {
            OpenApiService::new(($($module::$api,)*), "audit-alert", env!("CARGO_PKG_VERSION"))
                .description(
                    "Turns content-moderation verdicts in PostgreSQL into e-mail alerts, exactly once.",
                )
        }

        /// Every operation's audit declaration.
        pub fn audit_declarations() -> Vec<Audit> {
            [$($module::AUDIT,)*].concat()
        }
    };
}

api_modules!(
    health::HealthApi,
    smtp::SmtpApi,
    recipients::RecipientsApi,
    channels::ChannelsApi,
    system::SystemApi,
    tables::TablesApi,
    templates::TemplatesApi,
    monitor::MonitorApi,
    alerts::AlertsApi,
    silences::SilencesApi,
    auth::AuthApi,
    audit_logs::AuditLogsApi,
    audit_verify::AuditVerifyApi,
    audit_export::AuditExportApi,
);

/// The OpenAPI document `openapi/openapi.json` must equal.
pub fn spec_json() -> String {
    service().spec()
}

pub fn spec_yaml() -> String {
    service().spec_yaml()
}

/// Runs each request in a span carrying a request id (the caller's
/// `X-Request-Id` when it sends a sane one), so every log line of the request
/// names it; the id is echoed in the response.
async fn request_span<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    use tracing::Instrument;
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    async move {
        let started = std::time::Instant::now();
        let mut response = next.call(req).await?.into_response();
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        if let Ok(value) = id.parse() {
            response.headers_mut().insert("x-request-id", value);
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Names the path parameter of a parse error (see [`name_path_param`]).
async fn path_param_names<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    match next.call(req).await {
        Ok(response) => Ok(response.into_response()),
        Err(e) => Err(name_path_param(e, &path)),
    }
}

/// poem-openapi calls a path parameter that fails to parse `param0`; name it.
/// Every numeric path parameter is an `id`, except the sweep interval.
fn name_path_param(e: poem::Error, path: &str) -> poem::Error {
    let message = e.to_string();
    if !message.contains("path `param0`") {
        return e;
    }
    let name = if path.starts_with("/api/monitor/interval/") {
        "minutes"
    } else {
        "id"
    };
    let renamed = message.replace("path `param0`", &format!("parameter `{name}`"));
    poem::Error::from_string(renamed, e.status())
}

/// Every route: the operations, `/openapi.json`, `/docs` and the console.
pub fn routes(
    state: AppState,
    cors_origins: &[String],
    trusted_proxies: Vec<IpAddr>,
    audited: bool,
) -> impl poem::Endpoint {
    let api = service();
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    let layer =
        audited.then(|| Arc::new(audit::AuditLayer::new(state.audit.clone(), trusted_proxies)));
    let service: Arc<InProcess> = Arc::new(
        Route::new()
            .nest("/", api)
            .at("/openapi.json", spec)
            .at("/metrics", poem::get(metrics::metrics))
            .at(
                "/ack/:token",
                poem::get(ack_page::show).post(ack_page::confirm),
            )
            .nest("/docs", docs)
            .around(path_param_names)
            .around(body_errors::name_body_fields)
            .catch_all_error(error::into_problem)
            .around(move |next, req| audit::gate(next, req, layer.clone()))
            .data(state.clone())
            .boxed(),
    );
    // The console calls the operations through `service`, in-process, so
    // roles, validation and the audit log are the API's own.
    let console = crate::console::routes(state, service.clone())
        .around(|next, req| audit::gate(next, req, None));
    Route::new()
        .nest("/console", console)
        .nest("/", service)
        .with_if(
            !cors_origins.is_empty(),
            Cors::new().allow_origins(cors_origins.iter().map(String::as_str)),
        )
        .around(request_span)
}

/// The service as the console calls it in-process (every route but the console).
pub type InProcess = poem::endpoint::BoxEndpoint<'static, Response>;
