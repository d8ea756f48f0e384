//! Verifying the operation audit log over the API: the same check as
//! `audit-alert audit verify`, on a time range.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::auth::AuditorAuth;
use super::error::{ApiError, ApiResult};
use super::{ApiTags, AppState};
use crate::audit_log::verify;
use crate::audit_log::Audit;

pub struct AuditVerifyApi;

/// What verifying the audit log found.
#[derive(Object)]
pub struct AuditVerification {
    /// True when no entry was changed, inserted or removed.
    pub verified: bool,
    /// One line: what was verified, or the first entry found wrong and how.
    pub summary: String,
    /// Entries verified.
    pub entries: u64,
    /// Writer chains they belong to.
    pub chains: u64,
    /// Signed checkpoints matched.
    pub checkpoints: u64,
    #[oai(skip_serializing_if_is_none)]
    pub first: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub last: Option<DateTime<Utc>>,
}

/// How the verify operation is audited.
pub(super) const AUDIT: &[Audit] =
    &[Audit::new("audit_log_verify", "校验操作审计日志").record_result()];

#[OpenApi(tag = "ApiTags::AuditLog")]
impl AuditVerifyApi {
    /// Verify the audit log: no entry changed, inserted or removed
    ///
    /// Recomputes every entry's hash and link and checks the signed
    /// checkpoints; without a range, also that every chain is whole from its
    /// recorded start to its last checkpoint. Requires the auditor or admin role.
    #[oai(
        path = "/api/audit-logs/verify",
        method = "get",
        operation_id = "audit_log_verify"
    )]
    async fn verify(
        &self,
        state: Data<&AppState>,
        _auth: AuditorAuth,
        /// Only entries from this time on.
        since: Query<Option<DateTime<Utc>>>,
        /// Only entries before this time.
        until: Query<Option<DateTime<Utc>>>,
    ) -> ApiResult<Json<AuditVerification>> {
        if let (Some(since), Some(until)) = (since.0, until.0) {
            if until <= since {
                return Err(ApiError::invalid("until", "until: must be after since"));
            }
        }
        let found = verify::verify(&state.pool, state.secrets.as_ref(), since.0, until.0).await?;
        Ok(Json(match found {
            Ok(s) => AuditVerification {
                verified: true,
                summary: s.to_string(),
                entries: s.entries,
                chains: s.chains,
                checkpoints: s.checkpoints,
                first: s.first,
                last: s.last,
            },
            Err(tampering) => AuditVerification {
                verified: false,
                summary: tampering.to_string(),
                entries: 0,
                chains: 0,
                checkpoints: 0,
                first: None,
                last: None,
            },
        }))
    }
}
