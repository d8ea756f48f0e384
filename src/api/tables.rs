//! Watched tables: list, watch (validating the table and columns, installing
//! the triggers, recording existing rows as baseline or backfilling them),
//! change and stop watching.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use tokio_postgres::Row;

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::parse_email;
use super::recipients::ensure_watched;
use super::{default_page, default_page_size, table_page, ApiTags, AppState, Deleted, Page};
use crate::audit_log::mask::Strategy;
use crate::audit_log::{Audit, Masked};
use crate::monitor::{self, WatchError, WatchRequest, DEFAULT_VERDICTS};

pub struct TablesApi;

/// A table whose flagged rows raise alerts.
#[derive(Object)]
pub struct WatchedTable {
    /// `table`, or `schema.table` outside public.
    pub table_name: String,
    pub id_column: String,
    /// The id column's SQL type.
    pub id_type: String,
    pub verdict_column: String,
    /// Verdicts that raise an alert.
    pub alert_verdicts: Vec<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A table to watch, or new settings for a watched one.
#[derive(Object)]
pub struct WatchInput {
    /// `table`, or `schema.table`.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub table_name: String,
    /// The id column (integer, bigint, uuid or text); default `id`.
    #[oai(validator(min_length = 1, max_length = 63))]
    pub id_column: Option<String>,
    /// The verdict column; default `verdict`.
    #[oai(validator(min_length = 1, max_length = 63))]
    pub verdict_column: Option<String>,
    /// Verdicts that raise an alert; default 不合格 and 不确定.
    #[oai(validator(min_items = 1, max_items = 20))]
    pub alert_verdicts: Option<Vec<String>>,
    /// Mail the flagged rows already present instead of recording them as
    /// baseline (default false).
    #[oai(skip_serializing_if_is_none)]
    pub backfill: Option<bool>,
}

/// The result of watching a table.
#[derive(Object)]
pub struct WatchResult {
    pub table: WatchedTable,
    /// Flagged rows already present: baseline, or queued by a backfill.
    pub existing_flagged: u64,
}

const COLUMNS: &str = "table_name, id_column, id_type, verdict_column, alert_verdicts, enabled,
     created_at, updated_at";

fn to_table(r: &Row) -> WatchedTable {
    WatchedTable {
        table_name: r.get(0),
        id_column: r.get(1),
        id_type: r.get(2),
        verdict_column: r.get(3),
        alert_verdicts: r.get(4),
        enabled: r.get(5),
        created_at: r.get(6),
        updated_at: r.get(7),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("table '{name}' is not watched"))
}

async fn watch(state: &AppState, table_name: &str, input: &WatchInput) -> ApiResult<WatchResult> {
    let request = WatchRequest {
        table: table_name.to_owned(),
        id_column: input.id_column.clone().unwrap_or_else(|| "id".into()),
        verdict_column: input
            .verdict_column
            .clone()
            .unwrap_or_else(|| "verdict".into()),
        verdicts: input
            .alert_verdicts
            .clone()
            .unwrap_or_else(|| DEFAULT_VERDICTS.map(String::from).to_vec()),
        backfill: input.backfill.unwrap_or(false),
    };
    let held = state.worker.hold_reloads().await;
    let watched = monitor::watch(&state.pool, &request)
        .await
        .map_err(|e| match e {
            WatchError::UnknownTable(_) => ApiError::unprocessable("table_name", e.to_string()),
            WatchError::BadColumn(ref m) if m.contains(&format!("\"{}\"", request.id_column)) => {
                ApiError::unprocessable("id_column", e.to_string())
            }
            WatchError::BadColumn(_) => ApiError::unprocessable("verdict_column", e.to_string()),
            WatchError::NoVerdicts => ApiError::invalid("alert_verdicts", e.to_string()),
            WatchError::Other(e) => e.into(),
        })?;
    state.worker.reload_holding(held).await?;
    let client = state.pool.get().await?;
    let row = client
        .query_one(
            &format!("SELECT {COLUMNS} FROM watched_tables WHERE table_name = $1"),
            &[&watched.table],
        )
        .await?;
    Ok(WatchResult {
        table: to_table(&row),
        existing_flagged: watched.existing_flagged,
    })
}

/// How each watched-table operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("table_list", "查询监控表"),
    Audit::new("table_watch", "新增监控表").record_result(),
    Audit::new("table_update", "修改监控表").record_result(),
    Audit::new("table_unwatch", "移除监控表"),
    Audit::new("escalation_get", "查询升级规则"),
    Audit::new("escalation_set", "设置升级规则").masks(EscalationInput::MASKS),
    Audit::new("escalation_remove", "删除升级规则"),
    Audit::new("resolution_notice_get", "查询解除通知"),
    Audit::new("resolution_notice_set", "设置解除通知"),
];

/// Whom to tell when one of the table's alerts was sent and nobody
/// acknowledged it in time: once per alert, marked as an escalation.
#[derive(Object)]
pub struct Escalation {
    pub table_name: String,
    pub emails: Vec<String>,
    pub after_minutes: i32,
}

/// A table's escalation group and delay.
#[derive(Object)]
pub struct EscalationInput {
    #[oai(validator(min_items = 1, max_items = 50))]
    pub emails: Vec<String>,
    /// Minutes after an alert was sent (1 to 10080, a week).
    #[oai(validator(minimum(value = "1"), maximum(value = "10080")))]
    pub after_minutes: i32,
}

impl Masked for EscalationInput {
    const MASKS: &'static [(&'static str, Strategy)] = &[("emails", Strategy::Email)];
}

/// Whether those who got a table's `不确定` alert are told when the row is
/// re-reviewed to a verdict that does not alert.
#[derive(Object)]
pub struct ResolutionNotice {
    pub table_name: String,
    pub enabled: bool,
}

/// Resolution notices on or off.
#[derive(Object)]
pub struct ResolutionNoticeInput {
    pub enabled: bool,
}

async fn resolution_notice(state: &AppState, table: &str) -> ApiResult<ResolutionNotice> {
    let client = state.pool.get().await?;
    client
        .query_opt(
            "SELECT table_name, resolution_notice FROM watched_tables WHERE table_name = $1",
            &[&table],
        )
        .await?
        .map(|r| ResolutionNotice {
            table_name: r.get(0),
            enabled: r.get(1),
        })
        .ok_or_else(|| not_found(table))
}

async fn escalation(state: &AppState, table: &str) -> ApiResult<Escalation> {
    let client = state.pool.get().await?;
    client
        .query_opt(
            "SELECT table_name, emails, after_minutes FROM table_escalations WHERE table_name = $1",
            &[&table],
        )
        .await?
        .map(|r| Escalation {
            table_name: r.get(0),
            emails: r.get(1),
            after_minutes: r.get(2),
        })
        .ok_or_else(|| ApiError::not_found(format!("table '{table}' has no escalation")))
}

#[OpenApi(tag = "ApiTags::Tables")]
impl TablesApi {
    /// List watched tables
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/tables",
        method = "get",
        operation_id = "table_list"
    )]
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
    ) -> ApiResult<Json<Page<WatchedTable>>> {
        table_page(
            &state,
            "watched_tables",
            COLUMNS,
            page.0,
            page_size.0,
            to_table,
        )
        .await
        .map(Json)
    }

    /// Watch a table: checks it and its columns, installs the triggers, and
    /// records the flagged rows already present as baseline (or backfills them)
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables",
        method = "post",
        operation_id = "table_watch"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        body: Json<WatchInput>,
    ) -> ApiResult<Json<WatchResult>> {
        let client = state.pool.get().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM watched_tables WHERE table_name = $1",
                &[&body.table_name],
            )
            .await?
            .is_some();
        if exists {
            return Err(ApiError::conflict(
                Some("table_name"),
                format!(
                    "table '{}' is already watched; use PUT to change it",
                    body.table_name
                ),
            ));
        }
        drop(client);
        watch(&state, &body.table_name.clone(), &body)
            .await
            .map(Json)
    }

    /// Change how a watched table is watched (re-installs its triggers)
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name",
        method = "put",
        operation_id = "table_update"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        body: Json<WatchInput>,
    ) -> ApiResult<Json<WatchResult>> {
        if body.table_name != table_name.0 {
            return Err(ApiError::invalid(
                "table_name",
                "table_name in the body must match the path",
            ));
        }
        let client = state.pool.get().await?;
        client
            .query_opt(
                "SELECT 1 FROM watched_tables WHERE table_name = $1",
                &[&table_name.0],
            )
            .await?
            .ok_or_else(|| not_found(&table_name.0))?;
        drop(client);
        watch(&state, &table_name.0, &body).await.map(Json)
    }

    /// Stop watching a table: removes its triggers; its alert history stays
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name",
        method = "delete",
        operation_id = "table_unwatch"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
    ) -> ApiResult<Json<Deleted>> {
        let held = state.worker.hold_reloads().await;
        if !monitor::unwatch(&state.pool, &table_name.0).await? {
            return Err(not_found(&table_name.0));
        }
        state.worker.reload_holding(held).await?;
        Ok(Json(Deleted::rows(1)))
    }

    /// A table's escalation group and delay
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/tables/:table_name/escalation",
        method = "get",
        operation_id = "escalation_get"
    )]
    async fn escalation_get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        table_name: Path<String>,
    ) -> ApiResult<Json<Escalation>> {
        escalation(&state, &table_name.0).await.map(Json)
    }

    /// Set a table's escalation: its sent alerts nobody acknowledged within the delay go to this group, once
    ///
    /// Requires the operator or admin role. The delay counts from when each
    /// alert is sent; it is kept with the alert, so it survives restarts.
    #[oai(
        path = "/api/config/tables/:table_name/escalation",
        method = "put",
        operation_id = "escalation_set"
    )]
    async fn escalation_set(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        body: Json<EscalationInput>,
    ) -> ApiResult<Json<Escalation>> {
        let emails = body
            .emails
            .iter()
            .enumerate()
            .map(|(i, e)| parse_email(&format!("emails[{i}]"), e).map(|a| a.to_string()))
            .collect::<ApiResult<Vec<String>>>()?;
        let client = state.pool.get().await?;
        ensure_watched(&client, &table_name.0, "").await?;
        let held = state.worker.hold_reloads().await;
        client
            .execute(
                "INSERT INTO table_escalations (table_name, emails, after_minutes) VALUES ($1, $2, $3)
                 ON CONFLICT (table_name) DO UPDATE
                    SET emails = $2, after_minutes = $3, updated_at = now()",
                &[&table_name.0, &emails, &body.after_minutes],
            )
            .await?;
        drop(client);
        state.worker.reload_holding(held).await?;
        escalation(&state, &table_name.0).await.map(Json)
    }

    /// Remove a table's escalation; alerts waiting to escalate no longer will
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name/escalation",
        method = "delete",
        operation_id = "escalation_remove"
    )]
    async fn escalation_remove(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
    ) -> ApiResult<Json<Deleted>> {
        let held = state.worker.hold_reloads().await;
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        let deleted = tx
            .execute(
                "DELETE FROM table_escalations WHERE table_name = $1",
                &[&table_name.0],
            )
            .await?;
        tx.execute(
            "UPDATE email_sent_log SET escalate_at = NULL
              WHERE table_name = $1 AND escalate_at IS NOT NULL AND escalated_at IS NULL
                AND NOT escalating",
            &[&table_name.0],
        )
        .await?;
        tx.commit().await?;
        drop(client);
        state.worker.reload_holding(held).await?;
        if deleted == 0 {
            return Err(ApiError::not_found(format!(
                "table '{}' has no escalation",
                table_name.0
            )));
        }
        Ok(Json(Deleted::rows(deleted)))
    }

    /// Whether a table's cleared uncertain alerts are followed by a notice
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/tables/:table_name/resolution-notice",
        method = "get",
        operation_id = "resolution_notice_get"
    )]
    async fn resolution_notice_get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        table_name: Path<String>,
    ) -> ApiResult<Json<ResolutionNotice>> {
        resolution_notice(&state, &table_name.0).await.map(Json)
    }

    /// Turn resolution notices on or off: when a row left 不确定 is re-reviewed to a verdict that does not alert, those who got its alert are told it was cleared
    ///
    /// Requires the operator or admin role. Nothing is sent when the row
    /// goes to an alerting verdict (that alerts anyway). Off by default.
    #[oai(
        path = "/api/config/tables/:table_name/resolution-notice",
        method = "put",
        operation_id = "resolution_notice_set"
    )]
    async fn resolution_notice_set(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        body: Json<ResolutionNoticeInput>,
    ) -> ApiResult<Json<ResolutionNotice>> {
        if !monitor::set_resolution_notice(&state.pool, &table_name.0, body.enabled).await? {
            return Err(not_found(&table_name.0));
        }
        resolution_notice(&state, &table_name.0).await.map(Json)
    }
}
