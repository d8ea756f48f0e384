//! SMTP server configurations: CRUD, activation (exactly one active) and a
//! test send that reports the outcome in plain words.

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use tokio_postgres::Row;

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::{
    default_page, default_page_size, parse_email, table_page, ApiTags, AppState, Deleted, Page,
};
use crate::audit_log::Audit;
use crate::crypto::KEY_HINT;
use crate::mail::transport::{FailureKind, Security};
use crate::mail::{Mailer, SmtpSettings};
use crate::monitor::control::{smtp_settings, SMTP_COLUMNS};

pub struct SmtpApi;

/// How the connection to the SMTP server is secured.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// STARTTLS on a plain connection (ports 25, 587).
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
    /// No encryption.
    None,
}

impl SmtpSecurity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Starttls => "starttls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }

    fn from_security(s: Security) -> Self {
        match s {
            Security::StartTls => Self::Starttls,
            Security::Tls => Self::Tls,
            Security::None => Self::None,
        }
    }
}

/// A stored SMTP configuration. The password is never returned.
#[derive(Object)]
pub struct SmtpConfig {
    pub id: i32,
    pub smtp_server: String,
    pub smtp_port: u16,
    /// The security in effect (derived from the port when none was stored).
    pub security: SmtpSecurity,
    pub sender_email: String,
    #[oai(skip_serializing_if_is_none)]
    pub sender_name: Option<String>,
    /// Login name; the sender address is used when empty.
    #[oai(skip_serializing_if_is_none)]
    pub username: Option<String>,
    /// Whether a password is stored.
    pub password_set: bool,
    pub timeout_seconds: i32,
    /// The configuration the worker sends with; exactly one is active.
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new or replaced SMTP configuration.
#[derive(Object)]
pub struct SmtpConfigInput {
    /// Host name or IP address of the SMTP server.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub smtp_server: String,
    /// TCP port (1-65535).
    #[oai(validator(minimum(value = "1"), maximum(value = "65535")))]
    pub smtp_port: u32,
    /// Defaults to `tls` on port 465 and `starttls` elsewhere.
    #[oai(skip_serializing_if_is_none)]
    pub security: Option<SmtpSecurity>,
    /// The From address.
    #[oai(validator(max_length = 255))]
    pub sender_email: String,
    /// Display name in From.
    #[oai(validator(max_length = 255))]
    pub sender_name: Option<String>,
    /// Login name when it differs from the sender address.
    #[oai(validator(max_length = 255))]
    pub username: Option<String>,
    /// Stored encrypted (needs SECRET_KEY), never returned. On update, leave
    /// out to keep the stored one, or send "" to remove it.
    #[oai(write_only, validator(max_length = 1024))]
    pub password: Option<String>,
    /// Seconds to wait on the server (1-600, default 30).
    #[oai(validator(minimum(value = "1"), maximum(value = "600")))]
    pub timeout_seconds: Option<u32>,
    /// Make this the active configuration (others are deactivated).
    #[oai(skip_serializing_if_is_none)]
    pub is_active: Option<bool>,
}

/// Where to send a test mail.
#[derive(Object)]
pub struct SmtpTestRequest {
    /// Recipient of the test mail.
    pub to: String,
}

/// What happened to the test mail.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum SmtpTestOutcome {
    Sent,
    ConnectionFailed,
    TlsFailed,
    AuthenticationFailed,
    RecipientRejected,
    Timeout,
    Failed,
}

/// The result of a test send.
#[derive(Object)]
pub struct SmtpTestResult {
    pub success: bool,
    pub outcome: SmtpTestOutcome,
    /// The server's answer or the error, in plain words.
    pub detail: String,
}

const COLUMNS: &str = "id, smtp_server, smtp_port, security, sender_email, sender_name, username,
     (password_encrypted IS NOT NULL OR coalesce(sender_password, '') <> ''), timeout_seconds,
     is_active, created_at, updated_at";

fn to_config(r: &Row) -> SmtpConfig {
    let port = u16::try_from(r.get::<_, i32>(2)).unwrap_or(25);
    SmtpConfig {
        id: r.get(0),
        smtp_server: r.get(1),
        smtp_port: port,
        security: SmtpSecurity::from_security(Security::resolve(r.get(3), port)),
        sender_email: r.get(4),
        sender_name: r.get(5),
        username: r.get(6),
        password_set: r.get(7),
        timeout_seconds: r.get(8),
        is_active: r.get(9),
        created_at: r.get(10),
        updated_at: r.get(11),
    }
}

/// What the input asks to store for the password: keep, clear or a new cipher text.
enum PasswordChange {
    Keep,
    Clear,
    Set(String),
}

fn password_change(state: &AppState, input: &SmtpConfigInput) -> ApiResult<PasswordChange> {
    match input.password.as_deref() {
        None => Ok(PasswordChange::Keep),
        Some("") => Ok(PasswordChange::Clear),
        Some(p) => match &state.secrets {
            Some(secrets) => Ok(PasswordChange::Set(secrets.encrypt(p))),
            None => Err(ApiError::unprocessable(
                "password",
                format!("passwords are stored encrypted and SECRET_KEY is not set: {KEY_HINT}, then restart"),
            )),
        },
    }
}

fn validate(input: &SmtpConfigInput) -> ApiResult<()> {
    parse_email("sender_email", &input.sender_email)?;
    if input.smtp_server.trim().is_empty() || input.smtp_server.contains(char::is_whitespace) {
        return Err(ApiError::invalid(
            "smtp_server",
            "smtp_server must be a host name or IP address",
        ));
    }
    Ok(())
}

/// How each SMTP operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("smtp_create", "新增SMTP配置"),
    Audit::new("smtp_list", "查询SMTP配置列表"),
    Audit::new("smtp_get", "查询SMTP配置"),
    Audit::new("smtp_update", "修改SMTP配置"),
    Audit::new("smtp_delete", "删除SMTP配置"),
    Audit::new("smtp_activate", "启用SMTP配置"),
    Audit::new("smtp_test", "发送测试邮件").record_result(),
];

#[OpenApi(tag = "ApiTags::Smtp")]
impl SmtpApi {
    /// Add an SMTP configuration
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/smtp",
        method = "post",
        operation_id = "smtp_create"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        body: Json<SmtpConfigInput>,
    ) -> ApiResult<Json<SmtpConfig>> {
        validate(&body)?;
        let encrypted = match password_change(&state, &body)? {
            PasswordChange::Set(c) => Some(c),
            PasswordChange::Keep | PasswordChange::Clear => None,
        };
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        let active = body.is_active.unwrap_or(false);
        if active {
            tx.execute(
                "UPDATE smtp_config SET is_active = false, updated_at = now() WHERE is_active",
                &[],
            )
            .await?;
        }
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO smtp_config (smtp_server, smtp_port, security, sender_email, sender_name,
                         username, password_encrypted, timeout_seconds, is_active)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
                ),
                &[
                    &body.smtp_server.trim(),
                    &(body.smtp_port as i32),
                    &body.security.map(SmtpSecurity::as_str),
                    &body.sender_email.trim(),
                    &body.sender_name,
                    &body.username,
                    &encrypted,
                    &(body.timeout_seconds.unwrap_or(30) as i32),
                    &active,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Json(to_config(&row)))
    }

    /// List SMTP configurations
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(path = "/api/config/smtp", method = "get", operation_id = "smtp_list")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
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
    ) -> ApiResult<Json<Page<SmtpConfig>>> {
        table_page(
            &state,
            "smtp_config",
            COLUMNS,
            page.0,
            page_size.0,
            to_config,
        )
        .await
        .map(Json)
    }

    /// Get one SMTP configuration
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/smtp/:id",
        method = "get",
        operation_id = "smtp_get"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<SmtpConfig>> {
        let client = state.pool.get().await?;
        client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM smtp_config WHERE id = $1"),
                &[&id.0],
            )
            .await?
            .map(|r| Json(to_config(&r)))
            .ok_or_else(|| not_found(id.0))
    }

    /// Replace an SMTP configuration
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/smtp/:id",
        method = "put",
        operation_id = "smtp_update"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
        body: Json<SmtpConfigInput>,
    ) -> ApiResult<Json<SmtpConfig>> {
        validate(&body)?;
        let (clear, encrypted) = match password_change(&state, &body)? {
            PasswordChange::Keep => (false, None),
            PasswordChange::Clear => (true, None),
            PasswordChange::Set(c) => (true, Some(c)),
        };
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        if body.is_active == Some(true) {
            tx.execute(
                "UPDATE smtp_config SET is_active = false, updated_at = now() WHERE is_active AND id <> $1",
                &[&id.0],
            )
            .await?;
        }
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE smtp_config SET smtp_server = $2, smtp_port = $3, security = $4,
                         sender_email = $5, sender_name = $6, username = $7, timeout_seconds = $8,
                         is_active = coalesce($9, is_active),
                         password_encrypted = CASE WHEN $10 THEN $11 ELSE password_encrypted END,
                         sender_password = CASE WHEN $10 THEN NULL ELSE sender_password END,
                         updated_at = now()
                      WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[
                    &id.0,
                    &body.smtp_server.trim(),
                    &(body.smtp_port as i32),
                    &body.security.map(SmtpSecurity::as_str),
                    &body.sender_email.trim(),
                    &body.sender_name,
                    &body.username,
                    &(body.timeout_seconds.unwrap_or(30) as i32),
                    &body.is_active,
                    &clear,
                    &encrypted,
                ],
            )
            .await?
            .ok_or_else(|| not_found(id.0))?;
        tx.commit().await?;
        Ok(Json(to_config(&row)))
    }

    /// Delete an SMTP configuration
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/smtp/:id",
        method = "delete",
        operation_id = "smtp_delete"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<Deleted>> {
        let client = state.pool.get().await?;
        match client
            .execute("DELETE FROM smtp_config WHERE id = $1", &[&id.0])
            .await?
        {
            0 => Err(not_found(id.0)),
            n => Ok(Json(Deleted { deleted: n })),
        }
    }

    /// Make this the active SMTP configuration (the others are deactivated at once)
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/smtp/:id/activate",
        method = "post",
        operation_id = "smtp_activate"
    )]
    async fn activate(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<SmtpConfig>> {
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE smtp_config SET is_active = true, updated_at = now() WHERE id = $1
                     RETURNING {COLUMNS}"
                ),
                &[&id.0],
            )
            .await?
            .ok_or_else(|| not_found(id.0))?;
        tx.execute(
            "UPDATE smtp_config SET is_active = false, updated_at = now() WHERE is_active AND id <> $1",
            &[&id.0],
        )
        .await?;
        tx.commit().await?;
        Ok(Json(to_config(&row)))
    }

    /// Send a test mail with this configuration and report what the server said
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/smtp/:id/test",
        method = "post",
        operation_id = "smtp_test"
    )]
    async fn test(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
        body: Json<SmtpTestRequest>,
    ) -> ApiResult<Json<SmtpTestResult>> {
        let to = parse_email("to", &body.to)?;
        let settings = load_settings(&state, id.0).await?;
        let mailer =
            Mailer::new(settings, 1).map_err(|e| ApiError::unprocessable("id", e.to_string()))?;
        let message = lettre::Message::builder()
            .from(mailer.from().clone())
            .to(Mailbox::new(None, to))
            .subject("audit-alert 测试邮件 / test mail")
            .body(format!(
                "This test mail was sent by audit-alert through {}:{}.\n这是一封测试邮件。\n",
                mailer.settings().host,
                mailer.settings().port
            ))
            .map_err(|e| ApiError::invalid("to", e.to_string()))?;
        let result = match mailer.send(message).await {
            Ok(()) => SmtpTestResult {
                success: true,
                outcome: SmtpTestOutcome::Sent,
                detail: "the server accepted the test mail".into(),
            },
            Err(e) => SmtpTestResult {
                success: false,
                outcome: match e.kind() {
                    FailureKind::Connection => SmtpTestOutcome::ConnectionFailed,
                    FailureKind::Tls => SmtpTestOutcome::TlsFailed,
                    FailureKind::Authentication => SmtpTestOutcome::AuthenticationFailed,
                    FailureKind::RecipientRejected => SmtpTestOutcome::RecipientRejected,
                    FailureKind::Timeout => SmtpTestOutcome::Timeout,
                    FailureKind::Other => SmtpTestOutcome::Failed,
                },
                detail: e.to_string(),
            },
        };
        Ok(Json(result))
    }
}

fn not_found(id: i32) -> ApiError {
    ApiError::not_found(format!("SMTP configuration {id} does not exist"))
}

/// One configuration as the mailer needs it, password decrypted.
async fn load_settings(state: &AppState, id: i32) -> ApiResult<SmtpSettings> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {SMTP_COLUMNS} FROM smtp_config WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    smtp_settings(&row, state.secrets.as_ref()).map_err(|e| ApiError::unprocessable("id", e))
}
