//! Access control: one bearer security scheme (`bearerAuth`) with a checker per
//! role, and the token management operations (admin only).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi, SecurityScheme};

use super::error::{ApiError, ApiResult};
use super::{default_page, default_page_size, table_page, ApiTags, AppState, Deleted, Page};
use crate::audit_log::Audit;
use crate::auth::{self, AuthError, Principal, Role};

/// Marks a request the operator console makes to an operation in-process
/// (see `crate::console`), with its signed-in user: `None` while signing in,
/// when the bearer token is checked as usual. It lives in the request's
/// extensions, which no HTTP client can set; the console checked the session
/// (and its token) before putting a user there.
#[derive(Clone, Debug)]
pub struct ConsoleCaller(pub Option<Principal>);

/// Verifies the bearer token (or takes the console's caller) and that its
/// role includes `needed`.
async fn check(req: &Request, bearer: Bearer, needed: Role) -> poem::Result<Principal> {
    let state = req
        .data::<AppState>()
        .expect("AppState is attached to every route");
    let principal = match req.data::<ConsoleCaller>() {
        Some(ConsoleCaller(Some(principal))) => principal.clone(),
        _ => state
            .auth
            .verify(&state.pool, &bearer.token, state.worker.generation())
            .await
            .map_err(|e| match e {
                AuthError::Unavailable(e) => ApiError::from(e),
                e => ApiError::unauthorized(e.to_string()),
            })?,
    };
    if let Some(slot) = req.data::<super::audit::PrincipalSlot>() {
        slot.put(&principal);
    }
    if !principal.role.allows(needed) {
        return Err(ApiError::forbidden(format!(
            "the role '{}' may not do this; it needs '{}'",
            principal.role.as_str(),
            needed.as_str()
        ))
        .into());
    }
    Ok(principal)
}

/// Any valid token (reads).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", checker = "check_viewer")]
#[allow(dead_code)] // the principal is read where an operation needs it
pub struct ViewerAuth(pub Principal);

/// `operator` or `admin` (changes, monitor control, re-sends).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", checker = "check_operator")]
#[allow(dead_code)] // the principal is read where an operation needs it
pub struct OperatorAuth(pub Principal);

/// `auditor` or `admin` (the operation audit log).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", checker = "check_auditor")]
#[allow(dead_code)] // the principal is read where an operation needs it
pub struct AuditorAuth(pub Principal);

/// `admin` only (tokens).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", checker = "check_admin")]
#[allow(dead_code)] // the principal is read where an operation needs it
pub struct AdminAuth(pub Principal);

async fn check_viewer(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    check(req, bearer, Role::Viewer).await
}

async fn check_operator(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    check(req, bearer, Role::Operator).await
}

#[allow(dead_code)] // the audit-log operations use it
async fn check_auditor(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    check(req, bearer, Role::Auditor).await
}

async fn check_admin(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    check(req, bearer, Role::Admin).await
}

/// The shared verifier, cheap to clone into the state.
pub type Authenticator = Arc<auth::Authenticator>;

/// A role.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum RoleName {
    Viewer,
    Operator,
    Auditor,
    Admin,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Viewer => Role::Viewer,
            RoleName::Operator => Role::Operator,
            RoleName::Auditor => Role::Auditor,
            RoleName::Admin => Role::Admin,
        }
    }
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => RoleName::Viewer,
            Role::Operator => RoleName::Operator,
            Role::Auditor => RoleName::Auditor,
            Role::Admin => RoleName::Admin,
        }
    }
}

/// The caller, as its token says.
#[derive(Object)]
pub struct Me {
    /// `None` for the `ADMIN_TOKEN` of the environment.
    #[oai(skip_serializing_if_is_none)]
    pub token_id: Option<i64>,
    pub operator_id: String,
    #[oai(skip_serializing_if_is_none)]
    pub org_id: Option<String>,
    pub role: RoleName,
}

/// A token to create.
#[derive(Object)]
pub struct TokenRequest {
    #[oai(validator(min_length = 1, max_length = 128))]
    pub operator_id: String,
    #[oai(validator(min_length = 1, max_length = 128))]
    pub org_id: Option<String>,
    pub role: RoleName,
    /// Lifetime such as `90d` or `12h` (default: never expires).
    #[oai(validator(max_length = 32))]
    pub expires_in: Option<String>,
    #[oai(validator(max_length = 255))]
    pub description: Option<String>,
}

/// A new token. `token` is shown this once and cannot be recovered.
#[derive(Object)]
pub struct IssuedToken {
    pub id: i64,
    pub token: String,
    pub operator_id: String,
    pub role: RoleName,
    #[oai(skip_serializing_if_is_none)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored token (never its secret).
#[derive(Object)]
pub struct TokenInfo {
    pub id: i64,
    pub operator_id: String,
    #[oai(skip_serializing_if_is_none)]
    pub org_id: Option<String>,
    pub role: RoleName,
    #[oai(skip_serializing_if_is_none)]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub expires_at: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub revoked_at: Option<DateTime<Utc>>,
}

pub struct AuthApi;

/// How each token operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("auth_me", "查询当前身份"),
    // The response carries the new token: recorded, with the token masked.
    Audit::new("token_create", "创建令牌").record_result(),
    Audit::new("token_list", "查询令牌列表"),
    Audit::new("token_revoke", "吊销令牌"),
];

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Who the token belongs to
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(path = "/api/auth/me", method = "get", operation_id = "auth_me")]
    async fn me(&self, auth: ViewerAuth) -> ApiResult<Json<Me>> {
        let p = auth.0;
        Ok(Json(Me {
            token_id: p.token_id,
            operator_id: p.operator_id,
            org_id: p.org_id,
            role: p.role.into(),
        }))
    }

    /// Create a token (shown once)
    ///
    /// Requires the admin role.
    #[oai(
        path = "/api/auth/tokens",
        method = "post",
        operation_id = "token_create"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        _auth: AdminAuth,
        body: Json<TokenRequest>,
    ) -> ApiResult<Json<IssuedToken>> {
        let expires_in = body
            .expires_in
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
            .map_err(|e| {
                ApiError::invalid("expires_in", format!("expires_in: {e} (e.g. 90d, 12h)"))
            })?;
        let role: Role = body.role.into();
        let issued = auth::issue(
            &state.pool,
            body.operator_id.trim(),
            body.org_id.as_deref(),
            role,
            expires_in,
            body.description.as_deref(),
        )
        .await?;
        Ok(Json(IssuedToken {
            id: issued.id,
            token: issued.token.expose().to_owned(),
            operator_id: body.operator_id.trim().to_owned(),
            role: body.role,
            expires_at: issued.expires_at,
        }))
    }

    /// List tokens (never their secrets)
    ///
    /// Requires the admin role.
    #[oai(path = "/api/auth/tokens", method = "get", operation_id = "token_list")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: AdminAuth,
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
    ) -> ApiResult<Json<Page<TokenInfo>>> {
        let columns = "id, operator_id, org_id, role, description, created_at, expires_at,
                       last_used_at, revoked_at";
        table_page(&state, "api_tokens", columns, page.0, page_size.0, |r| {
            TokenInfo {
                id: r.get(0),
                operator_id: r.get(1),
                org_id: r.get(2),
                role: Role::parse(r.get(3)).unwrap_or(Role::Viewer).into(),
                description: r.get(4),
                created_at: r.get(5),
                expires_at: r.get(6),
                last_used_at: r.get(7),
                revoked_at: r.get(8),
            }
        })
        .await
        .map(Json)
    }

    /// Revoke a token (takes effect on every copy at once)
    ///
    /// Requires the admin role.
    #[oai(
        path = "/api/auth/tokens/:id",
        method = "delete",
        operation_id = "token_revoke"
    )]
    async fn revoke(
        &self,
        state: Data<&AppState>,
        _auth: AdminAuth,
        id: Path<i64>,
    ) -> ApiResult<Json<Deleted>> {
        let held = state.worker.hold_reloads().await;
        if !auth::revoke(&state.pool, id.0).await? {
            return Err(ApiError::not_found(format!(
                "token {} does not exist or is already revoked",
                id.0
            )));
        }
        state.worker.reload_holding(held).await?;
        Ok(Json(Deleted::rows(1)))
    }
}
