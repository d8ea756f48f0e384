//! Per-table templates of the e-mail and of each chat-bot type's block: read,
//! replace (refused when it does not compile), reset to the built-in one,
//! and preview for a record.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde_json::{Map, Value};

use super::auth::{OperatorAuth, ViewerAuth};
use super::channels::ChannelType;
use super::error::{ApiError, ApiResult};
use super::{ApiTags, AppState, Deleted};
use crate::audit_log::Audit;
use crate::channels::{AlertLine, BlockTemplate, ChannelKind};
use crate::db::quote_ident;
use crate::mail::render::RenderError;
use crate::mail::{AlertRecord, Renderer};
use crate::monitor::{self, WatchedTable};

pub struct TemplatesApi;

/// The templates a table's alerts are rendered with (handlebars). Each gets
/// `table`, `count`, `digest`, `verdict_counts` and `records` (each with `id`,
/// `verdict`, `color`, `time`, `url`, `ip_address`, `mac_address`, `reason`,
/// `fields`: every column as `name`/`value`, and `ack_url`: the link that
/// acknowledges it for the mail's recipient, when `PUBLIC_URL` is set).
#[derive(Object)]
pub struct Template {
    pub table_name: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// True while the built-in templates are in use.
    pub is_default: bool,
}

/// Replacement templates.
#[derive(Object)]
pub struct TemplateInput {
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub subject: String,
    #[oai(validator(min_length = 1, max_length = 200000))]
    pub html: String,
    #[oai(validator(min_length = 1, max_length = 200000))]
    pub text: String,
}

/// What to preview. `template`, when given, is rendered instead of the
/// stored templates.
#[derive(Object)]
pub struct PreviewRequest {
    /// Render this record (default: the table's newest row, or a sample).
    #[oai(skip_serializing_if_is_none)]
    pub record_id: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub template: Option<TemplateInput>,
}

/// A rendered e-mail.
#[derive(Object)]
pub struct Preview {
    pub subject: String,
    pub html: String,
    pub text: String,
}

fn compile(input: &TemplateInput) -> ApiResult<Renderer> {
    Renderer::new(&input.subject, &input.html, &input.text).map_err(|e| match e {
        RenderError::Compile { name, .. } => ApiError::invalid(name, e.to_string()),
        RenderError::Render(_) => ApiError::invalid("template", e.to_string()),
    })
}

fn watched(state: &AppState, table: &str) -> ApiResult<WatchedTable> {
    state
        .worker
        .snapshot()
        .table(table)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("table '{table}' is not watched")))
}

async fn current(state: &AppState, table: &str) -> ApiResult<Template> {
    watched(state, table)?;
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT subject, html, text FROM alert_templates WHERE table_name = $1",
            &[&table],
        )
        .await?;
    Ok(match row {
        Some(r) => Template {
            table_name: table.to_owned(),
            subject: r.get(0),
            html: r.get(1),
            text: r.get(2),
            is_default: false,
        },
        None => {
            let built_in = Renderer::default_templates();
            let s = built_in.sources();
            Template {
                table_name: table.to_owned(),
                subject: s.subject.clone(),
                html: s.html.clone(),
                text: s.text.clone(),
                is_default: true,
            }
        }
    })
}

/// The record to preview: the one asked for, else the newest row, else a sample.
async fn preview_record(
    state: &AppState,
    table: &WatchedTable,
    id: Option<&str>,
) -> ApiResult<AlertRecord> {
    let row: Option<Map<String, Value>> = match id {
        Some(id) => {
            let rows = monitor::fetch_rows(&state.pool, table, &[id])
                .await
                .map_err(|e| {
                    let bad_id = e.chain().any(|c| {
                        c.downcast_ref::<tokio_postgres::Error>()
                            .and_then(|pg| pg.code())
                            .is_some_and(|code| {
                                *code
                                    == tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION
                            })
                    });
                    if bad_id {
                        ApiError::invalid(
                            "record_id",
                            format!("record_id: '{id}' is not a {} id", table.id_type),
                        )
                    } else {
                        e.into()
                    }
                })?;
            Some(rows.into_values().next().ok_or_else(|| {
                ApiError::not_found(format!("record '{id}' does not exist in {}", table.name))
            })?)
        }
        None => {
            let client = state.pool.get().await?;
            let sql = format!(
                "SELECT row_to_json(t) FROM {} t ORDER BY t.{} DESC LIMIT 1",
                table.relation,
                quote_ident(&table.id_column)
            );
            client
                .query_opt(&sql, &[])
                .await?
                .and_then(|r| r.get::<_, Value>(0).as_object().cloned())
        }
    };
    let field = |name: &str| {
        row.as_ref()
            .and_then(|r| r.get(name))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    Ok(AlertRecord {
        record_id: field(&table.id_column).unwrap_or_else(|| "1".into()),
        verdict: field(&table.verdict_column).unwrap_or_else(|| "不合格".into()),
        row,
        alerted_at: chrono::Utc::now(),
        ack_url: None,
    })
}

/// How each template operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("template_get", "查询邮件模板"),
    Audit::new("template_replace", "修改邮件模板"),
    Audit::new("template_reset", "恢复默认邮件模板"),
    Audit::new("template_preview", "预览邮件模板"),
    Audit::new("channel_template_get", "查询消息模板"),
    Audit::new("channel_template_replace", "修改消息模板"),
    Audit::new("channel_template_reset", "恢复默认消息模板"),
    Audit::new("channel_template_preview", "预览消息模板"),
];

/// The block each alert takes in a table's chat-bot messages of one type
/// (handlebars, markdown for DingTalk and WeCom, lark_md for Feishu). It gets
/// `id`, `record_id`, `verdict`, `color` (the type's colour for the verdict),
/// `time` (UTC+8), `table`, `fields` (the row's non-null columns as
/// `name`/`value`) and `more_fields` (columns left out to fit the service's
/// size limit). Values arrive made safe for markdown; nothing is escaped.
#[derive(Object)]
pub struct ChannelTemplate {
    pub table_name: String,
    #[oai(rename = "type")]
    pub kind: ChannelType,
    pub block: String,
    /// True while the built-in block is in use.
    pub is_default: bool,
}

/// A replacement block.
#[derive(Object)]
pub struct ChannelTemplateInput {
    #[oai(validator(min_length = 1, max_length = 20000))]
    pub block: String,
}

/// What to preview: `block`, when given, is rendered instead of the stored one.
#[derive(Object)]
pub struct ChannelPreviewRequest {
    /// Render this record (default: the table's newest row, or a sample).
    #[oai(skip_serializing_if_is_none)]
    pub record_id: Option<String>,
    #[oai(validator(min_length = 1, max_length = 20000))]
    #[oai(skip_serializing_if_is_none)]
    pub block: Option<String>,
}

/// A rendered chat-bot message for one record.
#[derive(Object)]
pub struct ChannelPreview {
    /// The record's block.
    pub block: String,
    /// The JSON body the service would get (unsigned).
    pub body: String,
}

fn templated(kind: ChannelType) -> ApiResult<ChannelKind> {
    let kind = kind.kind();
    match crate::channels::default_source(kind) {
        Some(_) => Ok(kind),
        None => Err(ApiError::unprocessable(
            "type",
            "type: webhook messages carry the alerts as JSON; they have no template",
        )),
    }
}

fn compile_block(block: &str) -> ApiResult<BlockTemplate> {
    BlockTemplate::new(block).map_err(|e| ApiError::invalid("block", format!("block: {e}")))
}

async fn current_block(
    state: &AppState,
    table: &str,
    kind: ChannelKind,
) -> ApiResult<ChannelTemplate> {
    watched(state, table)?;
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT block FROM channel_templates WHERE table_name = $1 AND kind = $2",
            &[&table, &kind.as_str()],
        )
        .await?;
    let (block, is_default) = match row {
        Some(r) => (r.get(0), false),
        None => (
            crate::channels::default_source(kind)
                .unwrap_or_default()
                .to_owned(),
            true,
        ),
    };
    Ok(ChannelTemplate {
        table_name: table.to_owned(),
        kind: ChannelType::of(kind),
        block,
        is_default,
    })
}

#[OpenApi(tag = "ApiTags::Tables")]
impl TemplatesApi {
    /// The templates a table's alerts use
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/tables/:table_name/template",
        method = "get",
        operation_id = "template_get"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        table_name: Path<String>,
    ) -> ApiResult<Json<Template>> {
        current(&state, &table_name.0).await.map(Json)
    }

    /// Replace a table's templates; refused (naming the template) when one does not compile
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name/template",
        method = "put",
        operation_id = "template_replace"
    )]
    async fn replace(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        body: Json<TemplateInput>,
    ) -> ApiResult<Json<Template>> {
        watched(&state, &table_name.0)?;
        compile(&body)?;
        // Held before a connection is taken: the load needs one.
        let held = state.worker.hold_reloads().await;
        let client = state.pool.get().await?;
        client
            .execute(
                "INSERT INTO alert_templates (table_name, subject, html, text) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (table_name) DO UPDATE
                    SET subject = $2, html = $3, text = $4, updated_at = now()",
                &[&table_name.0, &body.subject, &body.html, &body.text],
            )
            .await?;
        state.worker.reload_holding(held).await?;
        current(&state, &table_name.0).await.map(Json)
    }

    /// Go back to the built-in templates
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name/template",
        method = "delete",
        operation_id = "template_reset"
    )]
    async fn reset(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
    ) -> ApiResult<Json<Deleted>> {
        watched(&state, &table_name.0)?;
        // Held before a connection is taken: the load needs one.
        let held = state.worker.hold_reloads().await;
        let client = state.pool.get().await?;
        let deleted = client
            .execute(
                "DELETE FROM alert_templates WHERE table_name = $1",
                &[&table_name.0],
            )
            .await?;
        state.worker.reload_holding(held).await?;
        Ok(Json(Deleted::rows(deleted)))
    }

    /// Render a table's templates (or the given ones) for a record
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name/template/preview",
        method = "post",
        operation_id = "template_preview"
    )]
    async fn preview(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        body: Json<PreviewRequest>,
    ) -> ApiResult<Json<Preview>> {
        let table = watched(&state, &table_name.0)?;
        let renderer = match &body.template {
            Some(t) => compile(t)?,
            None => {
                let t = current(&state, &table.name).await?;
                Renderer::new(&t.subject, &t.html, &t.text)
                    .map_err(|e| ApiError::invalid("template", e.to_string()))?
            }
        };
        let record = preview_record(&state, &table, body.record_id.as_deref()).await?;
        let mail = renderer
            .render(&table.name, &[record])
            .map_err(|e| ApiError::invalid("template", e.to_string()))?;
        Ok(Json(Preview {
            subject: mail.subject,
            html: mail.html,
            text: mail.text,
        }))
    }

    /// The block each alert takes in a table's chat-bot messages of one type
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/config/tables/:table_name/channel-templates/:type",
        method = "get",
        operation_id = "channel_template_get"
    )]
    async fn channel_get(
        &self,
        state: Data<&AppState>,
        _auth: ViewerAuth,
        table_name: Path<String>,
        #[oai(name = "type")] kind: Path<ChannelType>,
    ) -> ApiResult<Json<ChannelTemplate>> {
        let kind = templated(kind.0)?;
        current_block(&state, &table_name.0, kind).await.map(Json)
    }

    /// Replace a table's block for one chat-bot type; refused when it does not compile or render
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name/channel-templates/:type",
        method = "put",
        operation_id = "channel_template_replace"
    )]
    async fn channel_replace(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        #[oai(name = "type")] kind: Path<ChannelType>,
        body: Json<ChannelTemplateInput>,
    ) -> ApiResult<Json<ChannelTemplate>> {
        let kind = templated(kind.0)?;
        watched(&state, &table_name.0)?;
        compile_block(&body.block)?;
        // Held before a connection is taken: the load needs one.
        let held = state.worker.hold_reloads().await;
        let client = state.pool.get().await?;
        client
            .execute(
                "INSERT INTO channel_templates (table_name, kind, block) VALUES ($1, $2, $3)
                 ON CONFLICT (table_name, kind) DO UPDATE SET block = $3, updated_at = now()",
                &[&table_name.0, &kind.as_str(), &body.block],
            )
            .await?;
        state.worker.reload_holding(held).await?;
        current_block(&state, &table_name.0, kind).await.map(Json)
    }

    /// Go back to the built-in block for one chat-bot type
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name/channel-templates/:type",
        method = "delete",
        operation_id = "channel_template_reset"
    )]
    async fn channel_reset(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        #[oai(name = "type")] kind: Path<ChannelType>,
    ) -> ApiResult<Json<Deleted>> {
        let kind = templated(kind.0)?;
        watched(&state, &table_name.0)?;
        let held = state.worker.hold_reloads().await;
        let client = state.pool.get().await?;
        let deleted = client
            .execute(
                "DELETE FROM channel_templates WHERE table_name = $1 AND kind = $2",
                &[&table_name.0, &kind.as_str()],
            )
            .await?;
        state.worker.reload_holding(held).await?;
        Ok(Json(Deleted::rows(deleted)))
    }

    /// Render a table's chat-bot message of one type (or the given block) for a record
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/config/tables/:table_name/channel-templates/:type/preview",
        method = "post",
        operation_id = "channel_template_preview"
    )]
    async fn channel_preview(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        table_name: Path<String>,
        #[oai(name = "type")] kind: Path<ChannelType>,
        body: Json<ChannelPreviewRequest>,
    ) -> ApiResult<Json<ChannelPreview>> {
        let kind = templated(kind.0)?;
        let table = watched(&state, &table_name.0)?;
        let block = match &body.block {
            Some(b) => compile_block(b)?,
            None => compile_block(&current_block(&state, &table.name, kind).await?.block)?,
        };
        let record = preview_record(&state, &table, body.record_id.as_deref()).await?;
        let alert = AlertLine {
            id: 1,
            record_id: record.record_id,
            verdict: record.verdict,
            alerted_at: record.alerted_at,
            row: record.row,
            ack_url: None,
        };
        let rendered = crate::channels::preview_block(kind, &alert, &table.name, &block)
            .map_err(|e| ApiError::invalid("block", format!("block: {e}")))?;
        let request = crate::channels::build(
            kind,
            "https://preview.invalid/",
            None,
            &crate::channels::Message {
                table: &table.name,
                alerts: &[alert],
                console_url: None,
                block: Some(&block),
                notice: false,
            },
            chrono::Utc::now(),
        );
        Ok(Json(ChannelPreview {
            block: rendered,
            body: String::from_utf8_lossy(&request.body).into_owned(),
        }))
    }
}
