//! Alert history: filtered, paged listing; one alert with its delivery
//! details; re-sending a failed, suppressed or silenced alert.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use tokio_postgres::Row;

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::{
    default_page, default_page_size, get_by_id, list_page, ApiTags, AppState, ListQuery, Page,
};
use crate::audit_log::Audit;
use crate::monitor::{self, Acknowledged, Resend};

pub struct AlertsApi;

/// Where an alert is in its life.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum AlertStatus {
    /// Waiting to be sent (due, retrying, or held).
    Pending,
    /// Claimed by a worker.
    Sending,
    Sent,
    /// Attempts exhausted or refused by every recipient.
    Failed,
    /// Recorded while e-mail was switched off.
    Suppressed,
    /// Present when its table started being watched; not mailed.
    Baseline,
    /// Held by a silence (`silenced_by`); not sent, can be re-sent.
    Silenced,
}

impl AlertStatus {
    fn of(status: monitor::AlertStatus) -> Self {
        use monitor::AlertStatus as S;
        match status {
            S::Pending => Self::Pending,
            S::Sending => Self::Sending,
            S::Sent => Self::Sent,
            S::Failed => Self::Failed,
            S::Suppressed => Self::Suppressed,
            S::Baseline => Self::Baseline,
            S::Silenced => Self::Silenced,
        }
    }

    fn as_str(self) -> &'static str {
        use monitor::AlertStatus as S;
        match self {
            Self::Pending => S::Pending,
            Self::Sending => S::Sending,
            Self::Sent => S::Sent,
            Self::Failed => S::Failed,
            Self::Suppressed => S::Suppressed,
            Self::Baseline => S::Baseline,
            Self::Silenced => S::Silenced,
        }
        .as_str()
    }

    fn parse(s: &str) -> Self {
        monitor::AlertStatus::parse(s).map_or(Self::Pending, Self::of)
    }
}

/// One alert: a flagged record and its delivery.
#[derive(Object)]
pub struct Alert {
    pub id: i64,
    pub table_name: String,
    pub record_id: String,
    pub verdict: String,
    pub status: AlertStatus,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// The last error of any attempt, kept after a later attempt succeeded.
    #[oai(skip_serializing_if_is_none)]
    pub last_error: Option<String>,
    /// Every attempt that failed, oldest first (kept across re-sends).
    pub attempt_errors: Vec<AttemptError>,
    /// When a pending alert is due (or a sending one's lease ends).
    pub next_attempt_at: DateTime<Utc>,
    /// Recipients that have it.
    pub delivered_to: Vec<String>,
    /// Recipients that refused it for good: address → the server's answer.
    pub failed_recipients: BTreeMap<String, String>,
    /// Message-ID of the e-mail that carried it.
    #[oai(skip_serializing_if_is_none)]
    pub message_id: Option<String>,
    /// Who acknowledged it (an operator, or the recipient whose link it was).
    #[oai(skip_serializing_if_is_none)]
    pub acknowledged_by: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When it goes to its table's escalation group unless acknowledged.
    #[oai(skip_serializing_if_is_none)]
    pub escalate_at: Option<DateTime<Utc>>,
    /// When it went to the escalation group.
    #[oai(skip_serializing_if_is_none)]
    pub escalated_at: Option<DateTime<Utc>>,
    /// The silence that held it (status `silenced`).
    #[oai(skip_serializing_if_is_none)]
    pub silenced_by: Option<i32>,
    /// What each chat-bot channel of its table did with it, by channel id
    /// (also `channel:<id>` in `delivered_to` once delivered).
    pub channels: BTreeMap<String, ChannelOutcome>,
    /// Destinations its last attempt found in their quiet hours (see a
    /// recipient's or channel's `schedule`), by address or `channel:<id>`.
    pub held: BTreeMap<String, Held>,
    pub created_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub sent_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What one chat-bot channel did with an alert.
#[derive(Object, serde::Deserialize)]
pub struct ChannelOutcome {
    /// `dingtalk`, `wecom`, `feishu` or `webhook`.
    pub kind: String,
    #[serde(default)]
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    /// Messages sent to it carrying this alert.
    #[serde(default)]
    pub attempts: i32,
    /// Times it waited for the bot's send limit instead (not attempts).
    #[serde(default)]
    pub waits: i32,
    /// The last attempt's failure class: `rate_limited`, `transient` or
    /// `permanent`; absent when it was delivered.
    #[serde(default)]
    #[oai(skip_serializing_if_is_none)]
    pub class: Option<String>,
    /// The service's last code (`0` when delivered).
    #[serde(default)]
    #[oai(skip_serializing_if_is_none)]
    pub code: Option<String>,
    /// The service's last message, as it gave it.
    #[serde(default)]
    #[oai(skip_serializing_if_is_none)]
    pub message: Option<String>,
    #[serde(default)]
    #[oai(skip_serializing_if_is_none)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// While waiting for the bot's send limit: when it may send again.
    #[serde(default)]
    #[oai(skip_serializing_if_is_none)]
    pub waiting_until: Option<DateTime<Utc>>,
}

/// A destination that did not get an alert because of its quiet hours.
#[derive(Object, serde::Deserialize)]
pub struct Held {
    /// When its window opens; the alert goes to it then.
    pub until: DateTime<Utc>,
    /// Why it will not get the alert after all: `acknowledged` or
    /// `escalated` before its window opened.
    #[serde(default)]
    #[oai(skip_serializing_if_is_none)]
    pub dropped: Option<String>,
}

/// What went wrong with one delivery attempt.
#[derive(Object, serde::Deserialize)]
pub struct AttemptError {
    /// 1 for the first attempt (a re-send starts over).
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub error: String,
}

const COLUMNS: &str = "id, table_name, record_id, verdict, status, attempts, error_message,
     next_attempt_at, delivered_to, failed_recipients, message_id, created_at, sent_at, updated_at,
     attempt_errors, channel_outcomes, silenced_by, acknowledged_by, acknowledged_at,
     escalate_at, escalated_at, held";

fn to_alert(r: &Row) -> Alert {
    Alert {
        id: r.get(0),
        table_name: r.get(1),
        record_id: r.get(2),
        verdict: r.get(3),
        status: AlertStatus::parse(r.get(4)),
        attempts: r.get(5),
        last_error: r.get(6),
        next_attempt_at: r.get(7),
        delivered_to: r.get(8),
        failed_recipients: serde_json::from_value(r.get(9)).unwrap_or_default(),
        message_id: r.get(10),
        created_at: r.get(11),
        sent_at: r.get(12),
        updated_at: r.get(13),
        attempt_errors: serde_json::from_value(r.get(14)).unwrap_or_default(),
        channels: serde_json::from_value(r.get(15)).unwrap_or_default(),
        silenced_by: r.get(16),
        acknowledged_by: r.get(17),
        acknowledged_at: r.get(18),
        escalate_at: r.get(19),
        escalated_at: r.get(20),
        held: serde_json::from_value(r.get(21)).unwrap_or_default(),
    }
}

async fn read_alert(state: &AppState, id: i64) -> ApiResult<Alert> {
    get_by_id(state, "email_sent_log", COLUMNS, &id, to_alert, || {
        not_found(id)
    })
    .await
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("alert {id} does not exist"))
}

/// How each alert operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("alert_list", "查询告警记录"),
    Audit::new("alert_get", "查询告警详情"),
    Audit::new("alert_resend", "重发告警").record_result(),
    Audit::new("alert_ack", "确认告警").record_result(),
];

#[OpenApi(tag = "ApiTags::Alerts")]
impl AlertsApi {
    /// Alert history, newest first, with filters and paging
    #[allow(clippy::too_many_arguments)]
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(path = "/api/alerts", method = "get", operation_id = "alert_list")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        /// Only alerts of this table.
        table_name: Query<Option<String>>,
        /// Only alerts in this state.
        status: Query<Option<AlertStatus>>,
        /// Only alerts with this verdict.
        verdict: Query<Option<String>>,
        /// Raised at or after this time (RFC 3339).
        from: Query<Option<DateTime<Utc>>>,
        /// Raised before this time (RFC 3339).
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
    ) -> ApiResult<Json<Page<Alert>>> {
        let filter = "($1::text IS NULL OR table_name = $1) AND ($2::text IS NULL OR status = $2)
            AND ($3::text IS NULL OR verdict = $3) AND ($4::timestamptz IS NULL OR created_at >= $4)
            AND ($5::timestamptz IS NULL OR created_at < $5)";
        let status = status.0.map(AlertStatus::as_str);
        let query = ListQuery {
            table: "email_sent_log",
            columns: COLUMNS,
            filter,
            params: &[&table_name.0, &status, &verdict.0, &from.0, &to.0],
            order: "created_at DESC, id DESC",
        };
        list_page(&state, query, page.0, page_size.0, to_alert)
            .await
            .map(Json)
    }

    /// One alert with its recipients, attempts and last error
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(path = "/api/alerts/:id", method = "get", operation_id = "alert_get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        id: Path<i64>,
    ) -> ApiResult<Json<Alert>> {
        read_alert(&state, id.0).await.map(Json)
    }

    /// Send a failed, suppressed or silenced alert again, to every active recipient
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/alerts/:id/resend",
        method = "post",
        operation_id = "alert_resend"
    )]
    async fn resend(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i64>,
    ) -> ApiResult<Json<Alert>> {
        // Re-sends usually follow a configuration fix: load it before the
        // alert can be claimed, so the send uses it.
        state.worker.reload().await?;
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        match monitor::resend(&tx, id.0).await? {
            Resend::Queued => {
                // Read as re-queued (the row is locked until the commit, so
                // no copy has claimed it yet), then let delivery take it.
                let row = tx
                    .query_one(
                        &format!("SELECT {COLUMNS} FROM email_sent_log WHERE id = $1"),
                        &[&id.0],
                    )
                    .await?;
                tx.commit().await?;
                state.worker.wake();
                Ok(Json(to_alert(&row)))
            }
            Resend::Missing => Err(not_found(id.0)),
            Resend::NotResendable(status) => Err(ApiError::conflict(
                None,
                format!(
                    "alert {} is {}; only failed, suppressed or silenced alerts can be re-sent",
                    id.0,
                    status.as_str()
                ),
            )),
        }
    }

    /// Acknowledge an alert: someone has taken it (once; the caller is recorded)
    ///
    /// Requires the operator or admin role. The same as opening the
    /// acknowledge link of its mail.
    #[oai(
        path = "/api/alerts/:id/ack",
        method = "post",
        operation_id = "alert_ack"
    )]
    async fn ack(
        &self,
        state: Data<&AppState>,
        auth: OperatorAuth,
        id: Path<i64>,
    ) -> ApiResult<Json<Alert>> {
        match state.worker.acknowledge(id.0, &auth.0.operator_id).await? {
            Acknowledged::Now => read_alert(&state, id.0).await.map(Json),
            Acknowledged::Missing => Err(not_found(id.0)),
            Acknowledged::Already { by, at } => Err(ApiError::conflict(
                None,
                format!(
                    "alert {} was acknowledged already, by {by} at {}",
                    id.0,
                    at.to_rfc3339()
                ),
            )),
        }
    }
}
