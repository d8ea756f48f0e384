//! Recipients of each table's alerts: CRUD plus all-or-nothing batches.
//! An address is unique per table; the table must be watched.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::{ApiError, ApiResult};
use super::schedules::{self, check_schedule, Schedule};
use super::silences::{check_conditions, shown, Condition};
use super::{
    default_page, default_page_size, delete_by_id, get_by_id, list_page, parse_email, ApiTags,
    AppState, ConfigList, Deleted, ListQuery,
};
use crate::audit_log::mask::Strategy;
use crate::audit_log::{Audit, Masked};

pub struct RecipientsApi;

/// Someone who receives a table's alerts.
#[derive(Object, Clone)]
pub struct Recipient {
    pub id: i32,
    /// The watched table whose alerts this recipient gets.
    pub table_name: String,
    pub email: String,
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    /// Inactive recipients are kept but not mailed.
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

/// A new or replaced recipient.
#[derive(Object)]
pub struct RecipientInput {
    /// A watched table (see `/api/config/tables`).
    #[oai(validator(min_length = 1, max_length = 255))]
    pub table_name: String,
    #[oai(validator(max_length = 255))]
    pub email: String,
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

/// A recipient saved, with the old system's confirmation message.
#[derive(Object)]
pub struct RecipientSaved {
    /// What was done, in plain words.
    pub message: String,
    #[oai(flatten)]
    pub recipient: Recipient,
}

/// The fields of a recipient to change; the others are kept.
#[derive(Object)]
pub struct RecipientChange {
    /// A watched table (see `/api/config/tables`).
    #[oai(validator(min_length = 1, max_length = 255))]
    pub table_name: Option<String>,
    #[oai(validator(max_length = 255))]
    pub email: Option<String>,
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

/// Several recipients, created together or not at all.
#[derive(Object)]
pub struct RecipientBatch {
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub recipients: Vec<RecipientInput>,
}

/// Recipients to delete together (all must exist).
#[derive(Object)]
pub struct RecipientIds {
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub ids: Vec<i32>,
}

const COLUMNS: &str =
    "id, table_name, email, name, is_active, created_at, updated_at, verdicts, conditions, schedule";

fn to_recipient(r: &Row) -> Recipient {
    Recipient {
        id: r.get(0),
        table_name: r.get(1),
        email: r.get(2),
        name: r.get(3),
        is_active: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
        verdicts: r.get(7),
        conditions: shown(r.get(8)),
        schedule: schedules::shown(r.get(9)),
    }
}

/// Checks one input; `at` prefixes field names inside a batch
/// (`recipients[3].email`). The address, the route's conditions and the
/// schedule as stored.
async fn validate(
    client: &impl GenericClient,
    input: &RecipientInput,
    at: &str,
) -> ApiResult<(String, serde_json::Value, Option<serde_json::Value>)> {
    let email = parse_email(&format!("{at}email"), &input.email)?.to_string();
    let schedule = check_schedule(input.schedule.as_ref(), at)?;
    ensure_watched(client, &input.table_name, at).await?;
    let conditions = check_conditions(
        client,
        &input.table_name,
        input.conditions.as_deref().unwrap_or_default(),
        at,
    )
    .await?;
    let conditions = serde_json::to_value(conditions).map_err(anyhow::Error::from)?;
    Ok((email, conditions, schedule))
}

/// Refuses a table that is not watched, naming `{at}table_name`.
pub(super) async fn ensure_watched(
    client: &impl GenericClient,
    table: &str,
    at: &str,
) -> ApiResult<()> {
    let watched = client
        .query_opt(
            "SELECT 1 FROM watched_tables WHERE table_name = $1",
            &[&table],
        )
        .await?
        .is_some();
    if !watched {
        return Err(ApiError::unprocessable(
            &format!("{at}table_name"),
            format!("{at}table_name: table '{table}' is not watched"),
        ));
    }
    Ok(())
}

fn duplicate(e: &tokio_postgres::Error, at: &str) -> Option<ApiError> {
    (e.code() == Some(&SqlState::UNIQUE_VIOLATION)).then(|| {
        ApiError::conflict(
            Some(&format!("{at}email")),
            format!("{at}email: this address is already a recipient of that table"),
        )
    })
}

async fn insert(
    client: &impl GenericClient,
    input: &RecipientInput,
    at: &str,
) -> ApiResult<Recipient> {
    let (email, conditions, schedule) = validate(client, input, at).await?;
    client
        .query_one(
            &format!(
                "INSERT INTO recipients_config
                        (table_name, email, name, is_active, verdicts, conditions, schedule)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
            ),
            &[
                &input.table_name,
                &email,
                &input.name,
                &input.is_active.unwrap_or(true),
                &input.verdicts,
                &conditions,
                &schedule,
            ],
        )
        .await
        .map(|r| to_recipient(&r))
        .map_err(|e| duplicate(&e, at).unwrap_or_else(|| e.into()))
}

fn not_found(id: i32) -> ApiError {
    ApiError::not_found(format!("recipient {id} does not exist"))
}

/// How each recipient operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("recipient_create", "新增收件人").masks(RecipientInput::MASKS),
    Audit::new("recipient_list", "查询收件人列表"),
    Audit::new("recipient_get", "查询收件人"),
    Audit::new("recipient_update", "修改收件人").masks(RecipientInput::MASKS),
    Audit::new("recipient_delete", "删除收件人"),
    Audit::new("recipient_batch_create", "批量新增收件人").masks(RecipientInput::MASKS),
    Audit::new("recipient_batch_delete", "批量删除收件人"),
];

impl Masked for RecipientInput {
    const MASKS: &'static [(&'static str, Strategy)] =
        &[("email", Strategy::Email), ("name", Strategy::Name)];
}

#[OpenApi(tag = "ApiTags::Recipients")]
impl RecipientsApi {
    /// Add a recipient
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/recipients",
        method = "post",
        operation_id = "recipient_create"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        body: Json<RecipientInput>,
    ) -> ApiResult<Json<RecipientSaved>> {
        let client = state.pool.get().await?;
        let recipient = insert(&client, &body, "").await?;
        Ok(Json(RecipientSaved {
            message: "recipient added".into(),
            recipient,
        }))
    }

    /// List recipients, optionally of one table or by active flag
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/recipients",
        method = "get",
        operation_id = "recipient_list"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        /// Only recipients of this table.
        table_name: Query<Option<String>>,
        /// Only active (true) or inactive (false) recipients.
        is_active: Query<Option<bool>>,
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
    ) -> ApiResult<Json<ConfigList<Recipient>>> {
        let query = ListQuery {
            table: "recipients_config",
            columns: COLUMNS,
            filter:
                "($1::text IS NULL OR table_name = $1) AND ($2::bool IS NULL OR is_active = $2)",
            params: &[&table_name.0, &is_active.0],
            order: "id",
        };
        list_page(&state, query, page.0, page_size.0, to_recipient)
            .await
            .map(|page| Json(page.into()))
    }

    /// Get one recipient
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/recipients/:id",
        method = "get",
        operation_id = "recipient_get"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<Recipient>> {
        get_by_id(
            &state,
            "recipients_config",
            COLUMNS,
            &id.0,
            to_recipient,
            || not_found(id.0),
        )
        .await
        .map(Json)
    }

    /// Change a recipient: only the fields given
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/recipients/:id",
        method = "put",
        operation_id = "recipient_update"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
        body: Json<RecipientChange>,
    ) -> ApiResult<Json<RecipientSaved>> {
        let client = state.pool.get().await?;
        let email = body
            .email
            .as_deref()
            .map(|e| parse_email("email", e).map(|a| a.to_string()))
            .transpose()?;
        if let Some(table) = &body.table_name {
            ensure_watched(&client, table, "").await?;
        }
        let schedule = check_schedule(body.schedule.as_ref(), "")?;
        let conditions = match &body.conditions {
            None => None,
            Some(conditions) => {
                let table: String = match &body.table_name {
                    Some(t) => t.clone(),
                    None => client
                        .query_opt(
                            "SELECT table_name FROM recipients_config WHERE id = $1",
                            &[&id.0],
                        )
                        .await?
                        .ok_or_else(|| not_found(id.0))?
                        .get(0),
                };
                let checked = check_conditions(&client, &table, conditions, "").await?;
                Some(serde_json::to_value(checked).map_err(anyhow::Error::from)?)
            }
        };
        let recipient = client
            .query_opt(
                &format!(
                    "UPDATE recipients_config SET table_name = coalesce($2, table_name),
                         email = coalesce($3, email),
                         name = CASE WHEN $4::text IS NULL THEN name ELSE nullif($4, '') END,
                         is_active = coalesce($5, is_active),
                         verdicts = CASE WHEN $6::text[] IS NULL THEN verdicts
                                         ELSE nullif($6, '{{}}'::text[]) END,
                         conditions = coalesce($7, conditions),
                         schedule = CASE WHEN $8 THEN $9 ELSE schedule END, updated_at = now()
                      WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[
                    &id.0,
                    &body.table_name,
                    &email,
                    &body.name,
                    &body.is_active,
                    &body.verdicts,
                    &conditions,
                    &body.schedule.is_some(),
                    &schedule,
                ],
            )
            .await
            .map_err(|e| duplicate(&e, "").unwrap_or_else(|| e.into()))?
            .map(|r| to_recipient(&r))
            .ok_or_else(|| not_found(id.0))?;
        Ok(Json(RecipientSaved {
            message: "recipient updated".into(),
            recipient,
        }))
    }

    /// Delete a recipient
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/recipients/:id",
        method = "delete",
        operation_id = "recipient_delete"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        id: Path<i32>,
    ) -> ApiResult<Json<Deleted>> {
        delete_by_id(&state, "recipients_config", &id.0, || not_found(id.0))
            .await
            .map(Json)
    }

    /// Add several recipients at once: all of them, or none when one is invalid
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/recipients/batch",
        method = "post",
        operation_id = "recipient_batch_create"
    )]
    async fn batch_create(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        body: Json<RecipientBatch>,
    ) -> ApiResult<Json<Vec<Recipient>>> {
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        let mut created = Vec::with_capacity(body.recipients.len());
        for (i, input) in body.recipients.iter().enumerate() {
            created.push(insert(&tx, input, &format!("recipients[{i}].")).await?);
        }
        tx.commit().await?;
        Ok(Json(created))
    }

    /// Delete several recipients at once: all of them, or none when one does not exist
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/recipients/batch-delete",
        method = "post",
        operation_id = "recipient_batch_delete"
    )]
    async fn batch_delete(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        body: Json<RecipientIds>,
    ) -> ApiResult<Json<Deleted>> {
        let mut client = state.pool.get().await?;
        let tx = client.transaction().await?;
        let deleted: Vec<i32> = tx
            .query(
                "DELETE FROM recipients_config WHERE id = ANY($1) RETURNING id",
                &[&body.ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(missing) = body.ids.iter().find(|id| !deleted.contains(id)) {
            return Err(not_found(*missing));
        }
        tx.commit().await?;
        Ok(Json(Deleted::rows(deleted.len() as u64)))
    }
}
