//! Chat-bot channels of each table (WeCom, DingTalk, Feishu / Lark, a
//! generic webhook): CRUD and a test message. A channel's webhook URL and
//! signing secret are sealed with `SECRET_KEY`, never returned, and masked in
//! the audit log; a URL may only point to an allowed host
//! (`CHANNEL_ALLOWED_HOSTS`).

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use sha2::{Digest, Sha256};
use tokio_postgres::Row;

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::recipients::ensure_watched;
use super::schedules::{self, check_schedule, Schedule};
use super::silences::{check_conditions, shown, Condition};
use super::{
    default_page, default_page_size, delete_by_id, get_by_id, list_page, ApiTags, AppState,
    ConfigList, Deleted, ListQuery,
};
use crate::audit_log::mask::Strategy;
use crate::audit_log::{Audit, Masked};
use crate::channels::{self, Answer, ChannelKind};

pub struct ChannelsApi;

/// The service a channel posts to.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum ChannelType {
    /// DingTalk custom bot (钉钉自定义机器人), markdown; signed when a
    /// secret (`SEC…`) is set.
    Dingtalk,
    /// WeCom group bot (企业微信群机器人), markdown.
    Wecom,
    /// Feishu / Lark custom bot (飞书自定义机器人), interactive card; signed
    /// when a secret is set.
    Feishu,
    /// Any HTTPS endpoint: the alerts as JSON, with an
    /// `X-Audit-Alert-Signature` HMAC-SHA256 header when a secret is set.
    Webhook,
}

impl ChannelType {
    pub(super) fn kind(self) -> ChannelKind {
        match self {
            Self::Dingtalk => ChannelKind::DingTalk,
            Self::Wecom => ChannelKind::WeCom,
            Self::Feishu => ChannelKind::Feishu,
            Self::Webhook => ChannelKind::Webhook,
        }
    }

    pub(super) fn of(kind: ChannelKind) -> Self {
        match kind {
            ChannelKind::DingTalk => Self::Dingtalk,
            ChannelKind::WeCom => Self::Wecom,
            ChannelKind::Feishu => Self::Feishu,
            ChannelKind::Webhook => Self::Webhook,
        }
    }
}

/// A channel as shown: never its URL or secret.
#[derive(Object, Clone)]
pub struct Channel {
    pub id: i32,
    /// The watched table whose alerts go to this channel.
    pub table_name: String,
    #[oai(rename = "type")]
    pub kind: ChannelType,
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    /// The host the webhook URL points to (the URL itself is a secret).
    pub webhook_host: String,
    /// Whether a signing secret is set.
    pub has_secret: bool,
    /// Inactive channels are kept but not sent to.
    pub is_active: bool,
    /// Only alerts of these verdicts; absent: every verdict.
    #[oai(skip_serializing_if_is_none)]
    pub verdicts: Option<Vec<String>>,
    /// Only alerts whose row meets all of these; empty: every row.
    pub conditions: Vec<Condition>,
    /// When it takes alerts; absent: at any time.
    #[oai(skip_serializing_if_is_none)]
    pub schedule: Option<Schedule>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new channel.
#[derive(Object)]
pub struct ChannelInput {
    /// A watched table (see `/api/config/tables`).
    #[oai(validator(min_length = 1, max_length = 255))]
    pub table_name: String,
    #[oai(rename = "type")]
    pub kind: ChannelType,
    /// The bot's webhook URL, as the service shows it (a secret: stored
    /// encrypted, never returned).
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub webhook_url: String,
    /// The signing secret (DingTalk `SEC…`, Feishu, webhook); not for WeCom.
    #[oai(validator(min_length = 1, max_length = 512))]
    pub secret: Option<String>,
    #[oai(validator(max_length = 255))]
    pub name: Option<String>,
    /// Default true.
    #[oai(skip_serializing_if_is_none)]
    pub is_active: Option<bool>,
    /// Route: only alerts of these verdicts (default: every verdict).
    #[oai(validator(min_items = 1, max_items = 20))]
    #[oai(skip_serializing_if_is_none)]
    pub verdicts: Option<Vec<String>>,
    /// Route: only alerts whose row meets all of these, checked against the
    /// table's columns (default: every row).
    #[oai(validator(max_items = 20))]
    #[oai(skip_serializing_if_is_none)]
    pub conditions: Option<Vec<Condition>>,
    /// Quiet hours: when it takes alerts (default: at any time).
    #[oai(skip_serializing_if_is_none)]
    pub schedule: Option<Schedule>,
}

/// The fields of a channel to change; the others are kept.
#[derive(Object)]
pub struct ChannelChange {
    #[oai(validator(min_length = 1, max_length = 255))]
    pub table_name: Option<String>,
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub webhook_url: Option<String>,
    /// "" removes the secret.
    #[oai(validator(max_length = 512))]
    pub secret: Option<String>,
    /// "" removes the name.
    #[oai(validator(max_length = 255))]
    pub name: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub is_active: Option<bool>,
    /// Route: only alerts of these verdicts; [] takes every verdict again.
    #[oai(validator(max_items = 20))]
    #[oai(skip_serializing_if_is_none)]
    pub verdicts: Option<Vec<String>>,
    /// Route: only alerts whose row meets all of these; [] takes every row.
    #[oai(validator(max_items = 20))]
    #[oai(skip_serializing_if_is_none)]
    pub conditions: Option<Vec<Condition>>,
    /// Quiet hours: when it takes alerts; no windows takes them at any time again.
    #[oai(skip_serializing_if_is_none)]
    pub schedule: Option<Schedule>,
}

/// A channel saved.
#[derive(Object)]
pub struct ChannelSaved {
    /// What was done, in plain words.
    pub message: String,
    #[oai(flatten)]
    pub channel: Channel,
}

/// What the service answered to a test message.
#[derive(Object)]
pub struct ChannelTestResult {
    pub success: bool,
    /// The service's own code (`0` when delivered; `130101`, `19021`, `http 503`, …).
    pub code: String,
    /// The service's own message, as it gave it.
    pub message: String,
    /// What that means, in plain words.
    pub detail: String,
}

impl Masked for ChannelInput {
    const MASKS: &'static [(&'static str, Strategy)] = &[
        ("webhook_url", Strategy::Password),
        ("secret", Strategy::Password),
    ];
}

/// How each channel operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("channel_create", "新增告警渠道").masks(ChannelInput::MASKS),
    Audit::new("channel_list", "查询告警渠道列表"),
    Audit::new("channel_get", "查询告警渠道"),
    Audit::new("channel_update", "修改告警渠道").masks(ChannelInput::MASKS),
    Audit::new("channel_delete", "删除告警渠道"),
    Audit::new("channel_test", "测试告警渠道").record_result(),
];

const COLUMNS: &str = "id, table_name, kind, name, webhook_host, secret_encrypted IS NOT NULL,
    is_active, created_at, updated_at, verdicts, conditions, schedule";

fn to_channel(r: &Row) -> Channel {
    Channel {
        id: r.get(0),
        table_name: r.get(1),
        kind: ChannelKind::parse(r.get(2)).map_or(ChannelType::Webhook, ChannelType::of),
        name: r.get(3),
        webhook_host: r.get(4),
        has_secret: r.get(5),
        is_active: r.get(6),
        created_at: r.get(7),
        updated_at: r.get(8),
        verdicts: r.get(9),
        conditions: shown(r.get(10)),
        schedule: schedules::shown(r.get(11)),
    }
}

fn not_found(id: i32) -> ApiError {
    ApiError::not_found(format!("channel {id} does not exist"))
}

/// A checked URL, sealed: (sealed URL, its host, the bot's key).
fn seal_url(state: &AppState, kind: ChannelKind, url: &str) -> ApiResult<(String, String, String)> {
    let url = url.trim();
    channels::check_url(kind, url, state.worker.chat_allowed_hosts())
        .map_err(|why| ApiError::unprocessable("webhook_url", format!("webhook_url: {why}")))?;
    let secrets = state.secrets.as_ref().ok_or_else(|| {
        ApiError::unprocessable(
            "webhook_url",
            "webhook_url: SECRET_KEY is not set; webhook URLs are stored encrypted with it",
        )
    })?;
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let bot = crate::audit_log::chain::hex(&Sha256::digest(url.as_bytes()));
    Ok((secrets.encrypt(url), host, bot))
}

fn seal_secret(state: &AppState, kind: ChannelKind, secret: &str) -> ApiResult<String> {
    if !kind.takes_secret() {
        return Err(ApiError::unprocessable(
            "secret",
            format!("secret: {} bots are not signed", kind.as_str()),
        ));
    }
    let secrets = state.secrets.as_ref().ok_or_else(|| {
        ApiError::unprocessable(
            "secret",
            "secret: SECRET_KEY is not set; signing secrets are stored encrypted with it",
        )
    })?;
    Ok(secrets.encrypt(secret))
}

#[OpenApi(tag = "ApiTags::Channels")]
impl ChannelsApi {
    /// Add a chat-bot channel to a table
    ///
    /// Requires the operator or admin role. The webhook URL must point to an
    /// allowed host (`CHANNEL_ALLOWED_HOSTS`; by default the DingTalk, WeCom,
    /// Feishu and Lark hosts) and `SECRET_KEY` must be set.
    #[oai(
        path = "/api/config/channels",
        method = "post",
        operation_id = "channel_create"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        body: Json<ChannelInput>,
    ) -> ApiResult<Json<ChannelSaved>> {
        let kind = body.kind.kind();
        let (url, host, bot) = seal_url(&state, kind, &body.webhook_url)?;
        let secret = body
            .secret
            .as_deref()
            .map(|s| seal_secret(&state, kind, s))
            .transpose()?;
        let client = state.pool.get().await?;
        ensure_watched(&client, &body.table_name, "").await?;
        let conditions = check_conditions(
            &client,
            &body.table_name,
            body.conditions.as_deref().unwrap_or_default(),
            "",
        )
        .await?;
        let conditions = serde_json::to_value(conditions).map_err(anyhow::Error::from)?;
        let schedule = check_schedule(body.schedule.as_ref(), "")?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO notification_channels
                         (table_name, kind, name, webhook_url_encrypted, webhook_host, bot,
                          secret_encrypted, is_active, verdicts, conditions, schedule)
                     VALUES ($1, $2, nullif($3, ''), $4, $5, $6, $7, $8, $9, $10, $11)
                     RETURNING {COLUMNS}"
                ),
                &[
                    &body.table_name,
                    &kind.as_str(),
                    &body.name,
                    &url,
                    &host,
                    &bot,
                    &secret,
                    &body.is_active.unwrap_or(true),
                    &body.verdicts,
                    &conditions,
                    &schedule,
                ],
            )
            .await?;
        Ok(Json(ChannelSaved {
            message: "channel added".into(),
            channel: to_channel(&row),
        }))
    }

    /// List chat-bot channels, optionally of one table or type
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/channels",
        method = "get",
        operation_id = "channel_list"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        /// Only channels of this table.
        table_name: Query<Option<String>>,
        /// Only channels of this type.
        #[oai(name = "type")]
        kind: Query<Option<ChannelType>>,
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
    ) -> ApiResult<Json<ConfigList<Channel>>> {
        let kind = kind.0.map(|k| k.kind().as_str());
        let query = ListQuery {
            table: "notification_channels",
            columns: COLUMNS,
            filter: "($1::text IS NULL OR table_name = $1) AND ($2::text IS NULL OR kind = $2)",
            params: &[&table_name.0, &kind],
            order: "id",
        };
        list_page(&state, query, page.0, page_size.0, to_channel)
            .await
            .map(|page| Json(page.into()))
    }

    /// Get one chat-bot channel
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/channels/:id",
        method = "get",
        operation_id = "channel_get"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<Channel>> {
        get_by_id(
            &state,
            "notification_channels",
            COLUMNS,
            &id.0,
            to_channel,
            || not_found(id.0),
        )
        .await
        .map(Json)
    }

    /// Change a chat-bot channel: only the fields given
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/channels/:id",
        method = "put",
        operation_id = "channel_update"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
        body: Json<ChannelChange>,
    ) -> ApiResult<Json<ChannelSaved>> {
        let client = state.pool.get().await?;
        let current = client
            .query_opt(
                "SELECT kind, table_name FROM notification_channels WHERE id = $1",
                &[&id.0],
            )
            .await?
            .ok_or_else(|| not_found(id.0))?;
        let kind = ChannelKind::parse(current.get(0)).unwrap_or(ChannelKind::Webhook);
        let conditions = match &body.conditions {
            None => None,
            Some(conditions) => {
                let table = body.table_name.as_deref().unwrap_or(current.get(1));
                let checked = check_conditions(&client, table, conditions, "").await?;
                Some(serde_json::to_value(checked).map_err(anyhow::Error::from)?)
            }
        };
        let sealed = body
            .webhook_url
            .as_deref()
            .map(|u| seal_url(&state, kind, u))
            .transpose()?;
        let (url, host, bot) = match sealed {
            Some((u, h, b)) => (Some(u), Some(h), Some(b)),
            None => (None, None, None),
        };
        // "" removes the secret.
        let secret = match body.secret.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(s) => Some(Some(seal_secret(&state, kind, s)?)),
        };
        if let Some(table) = &body.table_name {
            ensure_watched(&client, table, "").await?;
        }
        let schedule = check_schedule(body.schedule.as_ref(), "")?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE notification_channels SET table_name = coalesce($2, table_name),
                         name = CASE WHEN $3::text IS NULL THEN name ELSE nullif($3, '') END,
                         webhook_url_encrypted = coalesce($4, webhook_url_encrypted),
                         webhook_host = coalesce($5, webhook_host), bot = coalesce($6, bot),
                         secret_encrypted = CASE WHEN $7 THEN $8 ELSE secret_encrypted END,
                         is_active = coalesce($9, is_active),
                         verdicts = CASE WHEN $10::text[] IS NULL THEN verdicts
                                         ELSE nullif($10, '{{}}'::text[]) END,
                         conditions = coalesce($11, conditions),
                         schedule = CASE WHEN $12 THEN $13 ELSE schedule END, updated_at = now()
                      WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[
                    &id.0,
                    &body.table_name,
                    &body.name,
                    &url,
                    &host,
                    &bot,
                    &secret.is_some(),
                    &secret.flatten(),
                    &body.is_active,
                    &body.verdicts,
                    &conditions,
                    &body.schedule.is_some(),
                    &schedule,
                ],
            )
            .await?
            .ok_or_else(|| not_found(id.0))?;
        Ok(Json(ChannelSaved {
            message: "channel updated".into(),
            channel: to_channel(&row),
        }))
    }

    /// Delete a chat-bot channel
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/channels/:id",
        method = "delete",
        operation_id = "channel_delete"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<Deleted>> {
        delete_by_id(&state, "notification_channels", &id.0, || not_found(id.0))
            .await
            .map(Json)
    }

    /// Send a test message to a chat-bot channel and report the service's answer
    ///
    /// Requires the operator or admin role. The message counts against the
    /// bot's send limit like any other.
    #[oai(
        path = "/api/config/channels/:id/test",
        method = "post",
        operation_id = "channel_test"
    )]
    async fn test(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<ChannelTestResult>> {
        let channel = crate::monitor::channel(&state.pool, id.0, state.secrets.as_ref())
            .await?
            .ok_or_else(|| not_found(id.0))?
            .map_err(|why| ApiError::unprocessable("id", format!("id: {why}")))?;
        if let Some(until) = crate::monitor::take_send(&state.pool, &channel).await? {
            let wait = (until - Utc::now()).num_milliseconds().max(0) as f64 / 1000.0;
            return Ok(Json(ChannelTestResult {
                success: false,
                code: "waiting".into(),
                message: format!("the bot's send limit allows the next message in {wait:.1} s"),
                detail: format!(
                    "not sent: this bot may send {} and has; try again in {wait:.1} s",
                    limits_in_words(channel.kind)
                ),
            }));
        }
        let request = channels::build_test(
            channel.kind,
            &channel.url,
            channel.secret.as_deref(),
            Utc::now(),
        );
        let answer = channels::send(state.worker.chat_client(), channel.kind, &request).await;
        let detail = answer.describe(channel.kind);
        Ok(Json(match answer {
            Answer::Delivered => ChannelTestResult {
                success: true,
                code: "0".into(),
                message: "ok".into(),
                detail,
            },
            Answer::Failed { code, message, .. } => ChannelTestResult {
                success: false,
                code,
                message,
                detail,
            },
        }))
    }
}

fn limits_in_words(kind: ChannelKind) -> String {
    kind.limits()
        .iter()
        .map(|(n, window)| format!("{n} messages per {} s", window.as_secs()))
        .collect::<Vec<_>>()
        .join(" and ")
}
