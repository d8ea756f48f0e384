//! Reading the operation audit log: filtered, paged, newest first; one entry.
//! Auditors and admins only — and reading it is itself audited.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use tokio_postgres::Row;

use super::auth::AuditorAuth;
use super::error::{ApiError, ApiResult};
use super::{default_page, default_page_size, list_page, ApiTags, AppState, ListQuery, Page};
use crate::audit_log::Audit;

/// How each audit-log operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("audit_log_list", "查询操作审计日志"),
    Audit::new("audit_log_get", "查询操作审计详情"),
];

pub struct AuditLogsApi;

/// Whether the call succeeded.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationResult {
    /// Succeeded.
    #[oai(rename = "0")]
    Success,
    /// Failed.
    #[oai(rename = "1")]
    Failure,
}

/// One audited API call.
#[derive(Object)]
pub struct AuditLogEntry {
    /// 32 characters, sortable by time.
    pub audit_id: String,
    pub operation_time: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub operation_ip: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub operator_id: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub operator_org_id: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub role_id: Option<String>,
    /// Path, query and body, masked.
    #[oai(skip_serializing_if_is_none)]
    pub request_params: Option<serde_json::Value>,
    /// The response, when the operation records it.
    #[oai(skip_serializing_if_is_none)]
    pub response_result: Option<serde_json::Value>,
    pub operation_url: String,
    pub operation_method: String,
    pub operation_desc: String,
    pub operation_result: OperationResult,
    #[oai(skip_serializing_if_is_none)]
    pub error_msg: Option<String>,
    pub duration_ms: i32,
}

const COLUMNS: &str =
    "audit_id, operation_time, operation_ip, operator_id, operator_org_id, role_id,
     request_params::text, response_result::text, operation_url, operation_method, operation_desc,
     operation_result, error_msg, duration_ms";

/// Stored JSON as the API shows it. `jsonb` returns numbers in its own
/// spelling (1.7976931348623157e308 as 309 digits), which serde_json reads
/// back with round-trip precision; anything it could not read is shown as the
/// text PostgreSQL returned instead of failing the read.
fn stored_json(r: &Row, column: usize) -> Option<serde_json::Value> {
    r.get::<_, Option<String>>(column)
        .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn to_entry(r: &Row) -> AuditLogEntry {
    AuditLogEntry {
        audit_id: r.get(0),
        operation_time: r.get(1),
        operation_ip: r.get(2),
        operator_id: r.get(3),
        operator_org_id: r.get(4),
        role_id: r.get(5),
        request_params: stored_json(r, 6),
        response_result: stored_json(r, 7),
        operation_url: r.get(8),
        operation_method: r.get(9),
        operation_desc: r.get(10),
        operation_result: if r.get::<_, &str>(11) == "0" {
            OperationResult::Success
        } else {
            OperationResult::Failure
        },
        error_msg: r.get(12),
        duration_ms: r.get(13),
    }
}

/// What the list and the export filter on: their shared query parameters.
pub(super) struct AuditFilter {
    operator_id: Option<String>,
    org_id: Option<String>,
    result: Option<&'static str>,
    method: Option<String>,
    text: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl AuditFilter {
    /// The condition on `audit_log`; `$1…$7` are [`Self::params`].
    pub(super) const SQL: &'static str = "($1::text IS NULL OR operator_id = $1) AND ($2::text IS NULL OR operator_org_id = $2)
            AND ($3::text IS NULL OR operation_result = $3) AND ($4::text IS NULL OR operation_method = upper($4))
            AND ($5::text IS NULL OR operation_url ILIKE '%' || $5 || '%' OR operation_desc ILIKE '%' || $5 || '%')
            AND ($6::timestamptz IS NULL OR operation_time >= $6) AND ($7::timestamptz IS NULL OR operation_time < $7)";

    pub(super) fn new(
        operator_id: Option<String>,
        org_id: Option<String>,
        result: Option<OperationResult>,
        method: Option<String>,
        text: Option<String>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Self {
        let result = result.map(|r| {
            if r == OperationResult::Success {
                "0"
            } else {
                "1"
            }
        });
        Self {
            operator_id,
            org_id,
            result,
            method,
            text,
            from,
            to,
        }
    }

    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.operator_id,
            &self.org_id,
            &self.result,
            &self.method,
            &self.text,
            &self.from,
            &self.to,
        ]
    }
}

#[OpenApi(tag = "ApiTags::AuditLog")]
impl AuditLogsApi {
    /// The operation audit log, newest first, with filters and paging
    #[allow(clippy::too_many_arguments)]
    ///
    /// Requires the auditor or admin role.
    #[oai(
        path = "/api/audit-logs",
        method = "get",
        operation_id = "audit_log_list"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: AuditorAuth,
        /// Only calls by this operator.
        operator_id: Query<Option<String>>,
        /// Only calls by this organisation.
        org_id: Query<Option<String>>,
        /// Only successful (0) or failed (1) calls.
        result: Query<Option<OperationResult>>,
        /// Only calls with this HTTP method.
        method: Query<Option<String>>,
        /// Text the URL or the description contains.
        text: Query<Option<String>>,
        /// At or after this time (RFC 3339).
        from: Query<Option<DateTime<Utc>>>,
        /// Before this time (RFC 3339).
        to: Query<Option<DateTime<Utc>>>,
        /// Page number, from 1.
        #[oai(
            default = "default_page",
            validator(minimum(value = "1"), maximum(value = "1000000"))
        )]
        page: Query<u32>,
        /// Items per page (1-500).
        #[oai(
            default = "default_page_size",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        page_size: Query<u32>,
    ) -> ApiResult<Json<Page<AuditLogEntry>>> {
        let filter = AuditFilter::new(
            operator_id.0,
            org_id.0,
            result.0,
            method.0,
            text.0,
            from.0,
            to.0,
        );
        let query = ListQuery {
            table: "audit_log",
            columns: COLUMNS,
            filter: AuditFilter::SQL,
            params: &filter.params(),
            order: "audit_id DESC",
        };
        list_page(&state, query, page.0, page_size.0, to_entry)
            .await
            .map(Json)
    }

    /// One audit-log entry
    ///
    /// Requires the auditor or admin role.
    #[oai(
        path = "/api/audit-logs/:audit_id",
        method = "get",
        operation_id = "audit_log_get"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: AuditorAuth,
        audit_id: Path<String>,
    ) -> ApiResult<Json<AuditLogEntry>> {
        let client = state.pool.get().await?;
        client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM audit_log WHERE audit_id = $1"),
                &[&audit_id.0],
            )
            .await?
            .map(|r| Json(to_entry(&r)))
            .ok_or_else(|| {
                ApiError::not_found(format!("audit entry '{}' does not exist", audit_id.0))
            })
    }
}
