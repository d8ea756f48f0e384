//! SMTP server configurations: CRUD, activation (exactly one active) and a
//! test send that reports the outcome in plain words.

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::Address;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::{
    default_page, default_page_size, delete_by_id, get_by_id, parse_email, table_page, ApiTags,
    AppState, ConfigList, Deleted,
};
use crate::audit_log::Audit;
use crate::crypto::KEY_HINT;
use crate::mail::transport::{FailureKind, Security};
use crate::mail::{Mailer, SmtpSettings};

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

/// A stored SMTP configuration. The password is never returned. `security`
/// is the security in effect (derived from the port when none was stored).
#[derive(Object, Clone)]
pub struct SmtpConfig {
    pub id: i32,
    /// The configuration's label, unique.
    pub name: String,
    pub smtp_server: String,
    pub smtp_port: u16,
    pub security: SmtpSecurity,
    pub sender_email: String,
    #[oai(skip_serializing_if_is_none)]
    pub sender_name: Option<String>,
    /// The login name in effect: the one stored, else the sender address.
    pub username: String,
    /// Whether a password is stored.
    pub password_set: bool,
    pub timeout_seconds: i32,
    /// The configuration the worker sends with; exactly one is active.
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Deprecated: the old system's name of `smtp_server`.
    #[oai(deprecated)]
    pub server: String,
    /// Deprecated: the old system's name of `smtp_port`.
    #[oai(deprecated)]
    pub port: u16,
}

/// An SMTP configuration saved, with the old system's confirmation message.
#[derive(Object)]
pub struct SmtpConfigSaved {
    /// What was done, in plain words.
    pub message: String,
    #[oai(flatten)]
    pub config: SmtpConfig,
}

/// An SMTP configuration to add, or the fields of one to change: a PUT
/// changes only the fields it gives. `security` defaults to `tls` on port
/// 465 and `starttls` elsewhere. The old system's bodies (`name`, `server`,
/// `port`, `username`, `password`, `is_active`) are accepted as they are.
#[derive(Object)]
pub struct SmtpConfigInput {
    /// A label, unique among the configurations (e.g. "公司邮箱"). On create,
    /// defaults to "<sender_email> @ <smtp_server>:<smtp_port>".
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: Option<String>,
    /// Host name or IP address of the SMTP server; required on create (or `server`).
    #[oai(validator(min_length = 1, max_length = 255))]
    pub smtp_server: Option<String>,
    /// Deprecated: the old system's name of `smtp_server`.
    #[oai(deprecated, validator(min_length = 1, max_length = 255))]
    pub server: Option<String>,
    /// TCP port (1-65535); on create, defaults to 587.
    #[oai(validator(minimum(value = "1"), maximum(value = "65535")))]
    pub smtp_port: Option<u32>,
    /// Deprecated: the old system's name of `smtp_port`.
    #[oai(deprecated, validator(minimum(value = "1"), maximum(value = "65535")))]
    pub port: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub security: Option<SmtpSecurity>,
    /// The From address; on create, defaults to `username` when that is an
    /// e-mail address (the old system's login and sender in one).
    #[oai(validator(max_length = 255))]
    pub sender_email: Option<String>,
    /// Display name in From; "" removes it.
    #[oai(validator(max_length = 255))]
    pub sender_name: Option<String>,
    /// Login name when it differs from the sender address; "" removes it. A
    /// configuration whose login is its sender address keeps them one: a new
    /// address given here becomes the sender too.
    #[oai(validator(max_length = 255))]
    pub username: Option<String>,
    /// Stored encrypted (needs SECRET_KEY), never returned. On update, leave
    /// out to keep the stored one, or send "" to remove it.
    #[oai(write_only, validator(max_length = 1024))]
    pub password: Option<String>,
    /// Seconds to wait on the server (1-600, default 30).
    #[oai(validator(minimum(value = "1"), maximum(value = "600")))]
    pub timeout_seconds: Option<u32>,
    /// Make this the active configuration (others are deactivated). On
    /// create, defaults to true when no configuration is active yet.
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

const COLUMNS: &str = "id,
     coalesce(name, left(sender_email || ' @ ' || smtp_server || ':' || smtp_port, 100)), smtp_server, smtp_port, security, sender_email, sender_name,
     coalesce(nullif(username, ''), sender_email),
     (password_encrypted IS NOT NULL OR coalesce(sender_password, '') <> ''), timeout_seconds,
     is_active, created_at, updated_at";

fn to_config(r: &Row) -> SmtpConfig {
    let port = u16::try_from(r.get::<_, i32>(3)).unwrap_or(25);
    let server: String = r.get(2);
    SmtpConfig {
        id: r.get(0),
        name: r.get(1),
        server: server.clone(),
        smtp_server: server,
        smtp_port: port,
        port,
        security: SmtpSecurity::from_security(Security::resolve(r.get(4), port)),
        sender_email: r.get(5),
        sender_name: r.get(6),
        username: r.get(7),
        password_set: r.get(8),
        timeout_seconds: r.get(9),
        is_active: r.get(10),
        created_at: r.get(11),
        updated_at: r.get(12),
    }
}

fn saved(message: &str, row: &Row) -> Json<SmtpConfigSaved> {
    Json(SmtpConfigSaved {
        message: message.into(),
        config: to_config(row),
    })
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

/// The fields a request gives, the old system's names resolved to today's.
/// `Some("")` clears `sender_name` and `username`.
struct Given {
    name: Option<String>,
    smtp_server: Option<String>,
    smtp_port: Option<i32>,
    security: Option<&'static str>,
    sender_email: Option<String>,
    sender_name: Option<String>,
    username: Option<String>,
    /// `username` when it is an e-mail address: the sender of a
    /// configuration whose login is its sender address.
    username_address: Option<String>,
    timeout_seconds: Option<i32>,
    is_active: Option<bool>,
}

/// A field given under today's name or its old one; both must agree.
fn either<T: PartialEq>(
    field: &str,
    value: Option<T>,
    old: &str,
    old_value: Option<T>,
) -> ApiResult<Option<T>> {
    match (value, old_value) {
        (Some(v), Some(o)) if v != o => Err(ApiError::invalid(
            old,
            format!("{old} is the old name of {field}, and the two differ: give one of them"),
        )),
        (v, o) => Ok(v.or(o)),
    }
}

fn given(input: &SmtpConfigInput) -> ApiResult<Given> {
    let name = input.name.as_deref().map(str::trim);
    if name == Some("") {
        return Err(ApiError::invalid("name", "name must not be blank"));
    }
    let smtp_server = either(
        "smtp_server",
        input.smtp_server.as_deref().map(str::trim),
        "server",
        input.server.as_deref().map(str::trim),
    )?;
    if smtp_server.is_some_and(|s| s.is_empty() || s.contains(char::is_whitespace)) {
        return Err(ApiError::invalid(
            "smtp_server",
            "smtp_server must be a host name or IP address",
        ));
    }
    let smtp_port = either("smtp_port", input.smtp_port, "port", input.port)?;
    let sender_email = input
        .sender_email
        .as_deref()
        .map(|e| parse_email("sender_email", e).map(|a| a.to_string()))
        .transpose()?;
    let username = input.username.as_deref().map(str::trim);
    Ok(Given {
        name: name.map(str::to_owned),
        smtp_server: smtp_server.map(str::to_owned),
        smtp_port: smtp_port.map(|p| p as i32),
        security: input.security.map(SmtpSecurity::as_str),
        sender_email,
        sender_name: input.sender_name.clone(),
        username_address: username
            .and_then(|u| u.parse::<Address>().ok())
            .map(|a| a.to_string()),
        username: username.map(str::to_owned),
        timeout_seconds: input.timeout_seconds.map(|t| t as i32),
        is_active: input.is_active,
    })
}

/// A unique `name` taken already.
fn duplicate_name(e: tokio_postgres::Error, name: Option<&str>) -> ApiError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return ApiError::conflict(
            Some("name"),
            format!(
                "name: an SMTP configuration named '{}' exists already",
                name.unwrap_or_default()
            ),
        );
    }
    e.into()
}

/// The label of a configuration created without one (as `COLUMNS` shows a
/// configuration stored without one).
fn default_name(sender: &str, server: &str, port: i32) -> String {
    format!("{sender} @ {server}:{port}")
        .chars()
        .take(100)
        .collect()
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty())
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
    ) -> ApiResult<Json<SmtpConfigSaved>> {
        let given = given(&body)?;
        let server = given.smtp_server.ok_or_else(|| {
            ApiError::invalid(
                "smtp_server",
                "smtp_server: required (or its old name server)",
            )
        })?;
        let sender = given
            .sender_email
            .or(given.username_address)
            .ok_or_else(|| {
                ApiError::invalid(
                    "sender_email",
                    "sender_email: required, or username as an e-mail address",
                )
            })?;
        let port = given.smtp_port.unwrap_or(587);
        let name = given
            .name
            .unwrap_or_else(|| default_name(&sender, &server, port));
        let encrypted = match password_change(&state, &body)? {
            PasswordChange::Set(c) => Some(c),
            PasswordChange::Keep | PasswordChange::Clear => None,
        };
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        let active = match given.is_active {
            Some(active) => active,
            None => tx
                .query_opt("SELECT 1 FROM smtp_config WHERE is_active LIMIT 1", &[])
                .await?
                .is_none(),
        };
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
                    "INSERT INTO smtp_config (name, smtp_server, smtp_port, security, sender_email,
                         sender_name, username, password_encrypted, timeout_seconds, is_active)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
                ),
                &[
                    &name,
                    &server,
                    &port,
                    &given.security,
                    &sender,
                    &non_empty(given.sender_name),
                    &non_empty(given.username),
                    &encrypted,
                    &given.timeout_seconds.unwrap_or(30),
                    &active,
                ],
            )
            .await
            .map_err(|e| duplicate_name(e, Some(&name)))?;
        tx.commit().await?;
        Ok(saved("SMTP configuration created", &row))
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
    ) -> ApiResult<Json<ConfigList<SmtpConfig>>> {
        table_page(
            &state,
            "smtp_config",
            COLUMNS,
            page.0,
            page_size.0,
            to_config,
        )
        .await
        .map(|page| Json(page.into()))
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
        get_by_id(&state, "smtp_config", COLUMNS, &id.0, to_config, || {
            not_found(id.0)
        })
        .await
        .map(Json)
    }

    /// Change an SMTP configuration: only the fields given
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
    ) -> ApiResult<Json<SmtpConfigSaved>> {
        let given = given(&body)?;
        let (clear, encrypted) = match password_change(&state, &body)? {
            PasswordChange::Keep => (false, None),
            PasswordChange::Clear => (true, None),
            PasswordChange::Set(c) => (true, Some(c)),
        };
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        if given.is_active == Some(true) {
            tx.execute(
                "UPDATE smtp_config SET is_active = false, updated_at = now() WHERE is_active AND id <> $1",
                &[&id.0],
            )
            .await?;
        }
        // In SET, a column names its value before the update: a sender that
        // was the login follows a new login address.
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE smtp_config SET name = coalesce($2, name),
                         smtp_server = coalesce($3, smtp_server),
                         smtp_port = coalesce($4, smtp_port),
                         security = coalesce($5, security),
                         sender_email = coalesce($6, CASE
                             WHEN $7::text IS NOT NULL AND sender_email = coalesce(nullif(username, ''), sender_email)
                             THEN $7 ELSE sender_email END),
                         sender_name = CASE WHEN $8::text IS NULL THEN sender_name ELSE nullif($8, '') END,
                         username = CASE WHEN $9::text IS NULL THEN username ELSE nullif($9, '') END,
                         timeout_seconds = coalesce($10, timeout_seconds),
                         is_active = coalesce($11, is_active),
                         password_encrypted = CASE WHEN $12 THEN $13 ELSE password_encrypted END,
                         sender_password = CASE WHEN $12 THEN NULL ELSE sender_password END,
                         updated_at = now()
                      WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[
                    &id.0,
                    &given.name,
                    &given.smtp_server,
                    &given.smtp_port,
                    &given.security,
                    &given.sender_email,
                    &given.username_address,
                    &given.sender_name,
                    &given.username,
                    &given.timeout_seconds,
                    &given.is_active,
                    &clear,
                    &encrypted,
                ],
            )
            .await
            .map_err(|e| duplicate_name(e, given.name.as_deref()))?
            .ok_or_else(|| not_found(id.0))?;
        tx.commit().await?;
        Ok(saved("SMTP configuration updated", &row))
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
        delete_by_id(&state, "smtp_config", &id.0, || not_found(id.0))
            .await
            .map(Json)
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
    crate::monitor::smtp_configuration(&state.pool, id, state.secrets.as_ref())
        .await?
        .ok_or_else(|| not_found(id))?
        .map_err(|e| ApiError::unprocessable("id", e))
}
