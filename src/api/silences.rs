//! Silences: alerts matching a table, verdicts and conditions on the row's
//! columns are held, not sent, from a start to an end, for a stated reason.
//! The creator is the caller's token; a silence can be ended early.

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::GenericClient;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use tokio_postgres::Row;

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::recipients::ensure_watched;
use super::{
    default_page, default_page_size, get_by_id, list_page, ApiTags, AppState, ListQuery, Page,
};
use crate::audit_log::Audit;
use crate::monitor::{Condition as Matcher, ConditionOp};

pub struct SilencesApi;

/// How a condition compares a column's value (as text).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum Op {
    /// Equal to the one value.
    Equals,
    /// One of the values.
    In,
    /// Starts with one of the values.
    Prefix,
}

impl From<Op> for ConditionOp {
    fn from(op: Op) -> Self {
        match op {
            Op::Equals => Self::Equals,
            Op::In => Self::In,
            Op::Prefix => Self::Prefix,
        }
    }
}

/// A condition on one column of the alerted row.
#[derive(Object, Clone)]
pub struct Condition {
    /// A column of the table.
    #[oai(validator(min_length = 1, max_length = 63))]
    pub column: String,
    pub op: Op,
    /// `equals` takes exactly one.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub values: Vec<String>,
}

/// A silence.
#[derive(Object, Clone)]
pub struct Silence {
    pub id: i32,
    /// Absent: every table.
    #[oai(skip_serializing_if_is_none)]
    pub table_name: Option<String>,
    /// Absent: every verdict.
    #[oai(skip_serializing_if_is_none)]
    pub verdicts: Option<Vec<String>>,
    /// All must hold.
    pub conditions: Vec<Condition>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Why.
    pub comment: String,
    /// The operator of the token that created it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Who ended it early.
    #[oai(skip_serializing_if_is_none)]
    pub expired_by: Option<String>,
    pub state: SilenceState,
    /// Alerts it has held.
    pub silenced_alerts: i64,
}

/// Where a silence is in its time: `pending` (not begun), `active` or
/// `expired`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

/// A new silence: what it matches, when, and why.
#[derive(Object)]
pub struct SilenceInput {
    /// A watched table; absent for every table.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub table_name: Option<String>,
    /// Absent for every verdict.
    #[oai(validator(min_items = 1, max_items = 20))]
    pub verdicts: Option<Vec<String>>,
    /// Conditions on the row's columns (they need `table_name`).
    #[oai(validator(max_items = 20))]
    pub conditions: Option<Vec<Condition>>,
    /// Default now.
    pub starts_at: Option<DateTime<Utc>>,
    /// The end; or give `duration_minutes`.
    pub ends_at: Option<DateTime<Utc>>,
    /// Minutes from the start (1 to 525600), instead of `ends_at`.
    #[oai(validator(minimum(value = "1"), maximum(value = "525600")))]
    pub duration_minutes: Option<i64>,
    /// Why the alerts are silenced (required).
    #[oai(validator(min_length = 1, max_length = 2000))]
    pub comment: String,
}

/// How each silence operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("silence_create", "新增静默"),
    Audit::new("silence_list", "查询静默列表"),
    Audit::new("silence_get", "查询静默"),
    Audit::new("silence_expire", "提前结束静默"),
];

const COLUMNS: &str = "id, table_name, verdicts, conditions, starts_at, ends_at, comment,
    created_by, created_at, expired_by,
    CASE WHEN ends_at <= now() THEN 'expired' WHEN starts_at > now() THEN 'pending'
         ELSE 'active' END,
    (SELECT count(*) FROM email_sent_log e WHERE e.silenced_by = silences.id)";

fn to_silence(r: &Row) -> Silence {
    Silence {
        id: r.get(0),
        table_name: r.get(1),
        verdicts: r.get(2),
        conditions: shown(r.get(3)),
        starts_at: r.get(4),
        ends_at: r.get(5),
        comment: r.get(6),
        created_by: r.get(7),
        created_at: r.get(8),
        expired_by: r.get(9),
        state: match r.get::<_, &str>(10) {
            "expired" => SilenceState::Expired,
            "pending" => SilenceState::Pending,
            _ => SilenceState::Active,
        },
        silenced_alerts: r.get(11),
    }
}

fn not_found(id: i32) -> ApiError {
    ApiError::not_found(format!("silence {id} does not exist"))
}

/// The conditions checked against the table's columns, as stored.
async fn matchers(
    state: &AppState,
    table: Option<&str>,
    conditions: &[Condition],
) -> ApiResult<Vec<Matcher>> {
    let client = state.pool.get().await?;
    if let Some(table) = table {
        ensure_watched(&client, table, "").await?;
    }
    if conditions.is_empty() {
        return Ok(Vec::new());
    }
    let Some(table) = table else {
        return Err(ApiError::unprocessable(
            "conditions",
            "conditions: conditions on columns need a table_name",
        ));
    };
    check_conditions(&client, table, conditions, "").await
}

/// Checks `conditions` against the columns of the watched table `table`
/// (`at` prefixes field names inside a batch); the conditions as stored.
pub(super) async fn check_conditions(
    client: &impl GenericClient,
    table: &str,
    conditions: &[Condition],
    at: &str,
) -> ApiResult<Vec<Matcher>> {
    let columns: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM watched_tables w
               JOIN pg_attribute a ON a.attrelid = w.relation
              WHERE w.table_name = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    conditions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("{at}conditions[{i}]");
            if !columns.contains(&c.column) {
                return Err(ApiError::unprocessable(
                    &format!("{field}.column"),
                    format!("{field}.column: {table} has no column '{}'", c.column),
                ));
            }
            if c.op == Op::Equals && c.values.len() != 1 {
                return Err(ApiError::invalid(
                    &format!("{field}.values"),
                    format!("{field}.values: equals takes exactly one value"),
                ));
            }
            Ok(Matcher {
                column: c.column.clone(),
                op: c.op.into(),
                values: c.values.clone(),
            })
        })
        .collect()
}

/// Stored conditions as the API shows them.
pub(super) fn shown(stored: serde_json::Value) -> Vec<Condition> {
    let conditions: Vec<Matcher> = serde_json::from_value(stored).unwrap_or_default();
    conditions
        .into_iter()
        .map(|c| Condition {
            column: c.column,
            op: match c.op {
                ConditionOp::Equals => Op::Equals,
                ConditionOp::In => Op::In,
                ConditionOp::Prefix => Op::Prefix,
            },
            values: c.values,
        })
        .collect()
}

#[OpenApi(tag = "ApiTags::Silences")]
impl SilencesApi {
    /// Silence alerts: those matching are recorded as silenced, not sent, until it ends
    ///
    /// Requires the operator or admin role. Applies on every running copy at
    /// once; what it held is not sent when it ends, but can be re-sent.
    #[oai(
        path = "/api/silences",
        method = "post",
        operation_id = "silence_create"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: OperatorAuth,
        body: Json<SilenceInput>,
    ) -> ApiResult<Json<Silence>> {
        if body.comment.trim().is_empty() {
            return Err(ApiError::invalid(
                "comment",
                "comment: say why the alerts are silenced",
            ));
        }
        let now = Utc::now();
        let starts_at = body.starts_at.unwrap_or(now);
        let ends_at = match (body.ends_at, body.duration_minutes) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "duration_minutes",
                    "duration_minutes: give ends_at or duration_minutes, not both",
                ))
            }
            (Some(end), None) => end,
            (None, Some(minutes)) => starts_at + Duration::minutes(minutes),
            (None, None) => {
                return Err(ApiError::invalid(
                    "ends_at",
                    "ends_at: say when the silence ends (ends_at or duration_minutes)",
                ))
            }
        };
        if ends_at <= starts_at || ends_at <= now {
            return Err(ApiError::invalid(
                "ends_at",
                "ends_at: must be after starts_at and in the future",
            ));
        }
        let conditions = matchers(
            &state,
            body.table_name.as_deref(),
            body.conditions.as_deref().unwrap_or_default(),
        )
        .await?;
        let conditions = serde_json::to_value(&conditions).map_err(anyhow::Error::from)?;
        let held = state.worker.hold_reloads().await;
        let client = state.pool.get().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO silences (table_name, verdicts, conditions, starts_at, ends_at,
                                           comment, created_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
                ),
                &[
                    &body.table_name,
                    &body.verdicts,
                    &conditions,
                    &starts_at,
                    &ends_at,
                    &body.comment.trim(),
                    &auth.0.operator_id,
                ],
            )
            .await?;
        drop(client);
        state.worker.reload_holding(held).await?;
        Ok(Json(to_silence(&row)))
    }

    /// List silences, newest first, optionally by state
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(path = "/api/silences", method = "get", operation_id = "silence_list")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        /// Only silences in this state.
        #[oai(name = "state")]
        in_state: Query<Option<SilenceState>>,
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
    ) -> ApiResult<Json<Page<Silence>>> {
        let wanted = in_state.0.map(|s| match s {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        });
        let query = ListQuery {
            table: "silences",
            columns: COLUMNS,
            filter: "($1::text IS NULL
                      OR ($1 = 'expired' AND ends_at <= now())
                      OR ($1 = 'pending' AND starts_at > now())
                      OR ($1 = 'active' AND starts_at <= now() AND ends_at > now()))",
            params: &[&wanted],
            order: "id DESC",
        };
        list_page(&state, query, page.0, page_size.0, to_silence)
            .await
            .map(Json)
    }

    /// Get one silence, with how many alerts it held
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/silences/:id",
        method = "get",
        operation_id = "silence_get"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<Silence>> {
        get_by_id(&state, "silences", COLUMNS, &id.0, to_silence, || {
            not_found(id.0)
        })
        .await
        .map(Json)
    }

    /// End a silence now; alerts from now on are sent again
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/silences/:id/expire",
        method = "post",
        operation_id = "silence_expire"
    )]
    async fn expire(
        &self,
        state: Data<&AppState>,
        auth: OperatorAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<Silence>> {
        let held = state.worker.hold_reloads().await;
        let client = state.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE silences SET starts_at = least(starts_at, now() - interval '1 microsecond'),
                            ends_at = now(), expired_by = $2
                      WHERE id = $1 AND ends_at > now() RETURNING {COLUMNS}"
                ),
                &[&id.0, &auth.0.operator_id],
            )
            .await?;
        drop(client);
        state.worker.reload_holding(held).await?;
        match row {
            Some(r) => Ok(Json(to_silence(&r))),
            None => {
                let current = get_by_id(&state, "silences", COLUMNS, &id.0, to_silence, || {
                    not_found(id.0)
                })
                .await?;
                Err(ApiError::conflict(
                    None,
                    format!("silence {} has ended already", current.id),
                ))
            }
        }
    }
}
