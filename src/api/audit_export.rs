//! Exporting the operation audit log as a file: CSV for spreadsheets, JSON
//! Lines for programs. Rows are read from the database as a stream and
//! written to the response as they come, so memory stays flat however many
//! entries match. Auditors and admins only — and exporting is itself audited.

use std::pin::Pin;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt;
use poem::web::Data;
use poem::{Body, IntoResponse, Response};
use poem_openapi::param::Query;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Enum, OpenApi};
use tokio_postgres::types::{FromSql, Type as SqlType};
use tokio_postgres::{Row, RowStream};

use super::audit_logs::{AuditFilter, OperationResult};
use super::auth::AuditorAuth;
use super::error::ApiResult;
use super::{ApiTags, AppState};
use crate::audit_log::Audit;

/// How the export is audited. Never `record_result`: the audit layer would
/// then hold the whole file in memory to record it.
pub(super) const AUDIT: &[Audit] = &[Audit::new("audit_log_export", "导出操作审计日志")];

/// Bytes gathered before a piece of the body is handed to the connection.
const CHUNK: usize = 64 * 1024;

pub struct AuditExportApi;

/// The file format of an export.
#[derive(Enum, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum ExportFormat {
    /// Comma-separated values (RFC 4180), UTF-8 with a byte order mark.
    #[default]
    Csv,
    /// JSON Lines: one JSON object per entry and line.
    Jsonl,
}

impl ExportFormat {
    fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Jsonl => "application/x-ndjson",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
        }
    }
}

#[OpenApi(tag = "ApiTags::AuditLog")]
impl AuditExportApi {
    /// The operation audit log as a CSV or JSON Lines file, oldest first
    #[allow(clippy::too_many_arguments)]
    ///
    /// Every entry the filters match (those of the list), ordered by time,
    /// then audit id, oldest first, streamed as it is read. CSV: UTF-8 with a
    /// byte order mark, a header row of column names, RFC 4180 quoting, JSON
    /// columns as JSON text; a text cell beginning with `=`, `+`, `-`, `@`,
    /// tab or carriage return is prefixed with `'`, so that a spreadsheet does
    /// not take it for a formula. JSON Lines: one object per line with every
    /// column. Requires the auditor or admin role.
    #[oai(
        path = "/api/audit-logs/export",
        method = "get",
        operation_id = "audit_log_export"
    )]
    async fn export(
        &self,
        state: Data<&AppState>,
        _auth: AuditorAuth,
        /// Only calls by this operator.
        operator_id: Query<Option<String>>,
        /// Only calls by this organisation.
        org_id: Query<Option<String>>,
        /// Only successful (0) or failed (1) calls.
        result: Query<Option<OperationResult>>,
        /// Only calls with this HTTP method.
        method: Query<Option<String>>,
        /// Text the URL or the description contains.
        text: Query<Option<String>>,
        /// At or after this time (RFC 3339).
        from: Query<Option<DateTime<Utc>>>,
        /// Before this time (RFC 3339).
        to: Query<Option<DateTime<Utc>>>,
        /// `csv` (the default) or `jsonl`.
        format: Query<Option<ExportFormat>>,
    ) -> ApiResult<Export> {
        let filter = AuditFilter::new(
            operator_id.0,
            org_id.0,
            result.0,
            method.0,
            text.0,
            from.0,
            to.0,
        );
        let client = state.pool.get().await?;
        // Not cached: a cached `SELECT *` fails once a newer copy's migration
        // adds a column, and one more round trip is nothing beside an export.
        let statement = client
            .prepare(&format!(
                "SELECT * FROM audit_log WHERE {} ORDER BY operation_time, audit_id",
                AuditFilter::SQL
            ))
            .await?;
        let columns: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| {
                if Cell::accepts(c.type_()) {
                    Ok(c.name().to_owned())
                } else {
                    Err(anyhow::anyhow!(
                        "audit_log column {} has type {}, which the export cannot write",
                        c.name(),
                        c.type_()
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        // The rows arrive as the connection reads them; nothing is collected.
        let rows = client.query_raw(&statement, filter.params()).await?;
        let format = format.0.unwrap_or_default();
        let body = Rows {
            client: Some(client),
            rows: Box::pin(rows),
            encoder: Encoder::new(format, columns),
            finished: false,
        }
        .into_body();
        Ok(Export {
            format,
            body,
            filename: format!(
                "audit-log-{}.{}",
                Utc::now().format("%Y%m%dT%H%M%SZ"),
                format.extension()
            ),
        })
    }
}

/// The streamed file, with its media type and file name.
pub struct Export {
    format: ExportFormat,
    body: Body,
    filename: String,
}

impl IntoResponse for Export {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(self.format.content_type())
            .header(
                poem::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", self.filename),
            )
            .body(self.body)
    }
}

/// One success response with one media type per format; the body is text of
/// unknown length, so clients read it as a string or a byte stream.
impl ApiResponse for Export {
    fn meta() -> MetaResponses {
        let media = |format: ExportFormat| MetaMediaType {
            content_type: format.content_type(),
            schema: String::schema_ref(),
        };
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The export, streamed: `text/csv` or `application/x-ndjson`, as \
                              `format` asks.",
                status: Some(200),
                status_range: None,
                content: vec![media(ExportFormat::Csv), media(ExportFormat::Jsonl)],
                headers: vec![MetaHeader {
                    name: "Content-Disposition".into(),
                    description: Some(
                        "`attachment; filename=\"audit-log-<UTC time>.csv\"` (or `.jsonl`)".into(),
                    ),
                    required: true,
                    deprecated: false,
                    schema: String::schema_ref(),
                }],
            }],
        }
    }

    fn register(_registry: &mut Registry) {}
}

/// The query's rows on their way to the response, on the pooled connection
/// that reads them.
struct Rows {
    client: Option<deadpool_postgres::Object>,
    rows: Pin<Box<RowStream>>,
    encoder: Encoder,
    finished: bool,
}

impl Rows {
    fn into_body(self) -> Body {
        Body::from_bytes_stream(futures_util::stream::try_unfold(
            self,
            |mut rows| async move {
                let chunk = rows.next_chunk().await?;
                Ok::<_, std::io::Error>(chunk.map(|c| (c, rows)))
            },
        ))
    }

    /// At least [`CHUNK`] bytes of encoded rows, fewer at the end, `None`
    /// after it.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        while !self.finished && self.encoder.out.len() < CHUNK {
            match self.rows.try_next().await {
                Ok(Some(row)) => self.encoder.row(&row).map_err(|e| {
                    tracing::error!(error = %e, "audit export: a row cannot be written");
                    std::io::Error::other(e)
                })?,
                Ok(None) => self.finished = true,
                Err(e) => {
                    tracing::error!(error = %e, "audit export: reading the rows failed");
                    return Err(std::io::Error::other(e));
                }
            }
        }
        let chunk = std::mem::replace(&mut self.encoder.out, Vec::with_capacity(CHUNK));
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}

/// A client that goes away (or a failure) ends the body early. Its query
/// would run on to the end, so it is cancelled, and its connection leaves
/// the pool: a late cancel must not hit another request's query.
impl Drop for Rows {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.finished {
            return;
        }
        let cancel = client.cancel_token();
        drop(deadpool_postgres::Object::take(client));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = cancel.cancel_query(tokio_postgres::NoTls).await {
                    tracing::debug!(error = %e, "audit export: cancelling the query failed");
                }
            });
        }
    }
}

/// One value of a row, of the column types `audit_log` has.
enum Cell<'a> {
    Null,
    Text(&'a str),
    Json(&'a str),
    Int(i64),
    Bool(bool),
    Time(DateTime<Utc>),
    Uuid(uuid::Uuid),
    Bytes(&'a [u8]),
}

impl<'a> FromSql<'a> for Cell<'a> {
    fn from_sql(
        ty: &SqlType,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            SqlType::INT2 => Self::Int(i16::from_sql(ty, raw)?.into()),
            SqlType::INT4 => Self::Int(i32::from_sql(ty, raw)?.into()),
            SqlType::INT8 => Self::Int(i64::from_sql(ty, raw)?),
            SqlType::BOOL => Self::Bool(bool::from_sql(ty, raw)?),
            SqlType::TIMESTAMPTZ => Self::Time(DateTime::<Utc>::from_sql(ty, raw)?),
            SqlType::UUID => Self::Uuid(uuid::Uuid::from_slice(raw)?),
            SqlType::BYTEA => Self::Bytes(raw),
            // Binary jsonb: a version byte (1), then the JSON text.
            SqlType::JSONB => match raw.split_first() {
                Some((1, text)) => Self::Json(std::str::from_utf8(text)?),
                _ => return Err("unknown jsonb version".into()),
            },
            _ => Self::Text(<&str>::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &SqlType) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self::Null)
    }

    fn accepts(ty: &SqlType) -> bool {
        matches!(
            *ty,
            SqlType::INT2
                | SqlType::INT4
                | SqlType::INT8
                | SqlType::BOOL
                | SqlType::TIMESTAMPTZ
                | SqlType::UUID
                | SqlType::BYTEA
                | SqlType::JSONB
        ) || <&str>::accepts(ty)
    }
}

impl Cell<'_> {
    /// The value as text: what a CSV cell holds, and a JSON string's content.
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Null => "".into(),
            Self::Text(s) | Self::Json(s) => (*s).into(),
            Self::Int(n) => n.to_string().into(),
            Self::Bool(b) => b.to_string().into(),
            Self::Time(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true).into(),
            Self::Uuid(u) => u.hyphenated().to_string().into(),
            Self::Bytes(b) => hex(b).into(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)].into());
        text.push(DIGITS[usize::from(b & 0xf)].into());
    }
    text
}

/// Writes rows in one format into `out`, the bytes not yet sent.
struct Encoder {
    format: ExportFormat,
    columns: Vec<String>,
    out: Vec<u8>,
}

impl Encoder {
    /// Starts the file: for CSV a byte order mark, so that a spreadsheet
    /// reads UTF-8 (Chinese text) as such, and the header row.
    fn new(format: ExportFormat, columns: Vec<String>) -> Self {
        let mut out = Vec::with_capacity(CHUNK);
        if format == ExportFormat::Csv {
            out.extend_from_slice("\u{feff}".as_bytes());
            csv_record(&mut out, &columns);
        }
        Self {
            format,
            columns,
            out,
        }
    }

    fn row(&mut self, row: &Row) -> Result<(), tokio_postgres::Error> {
        let cells = (0..self.columns.len())
            .map(|i| row.try_get::<_, Cell>(i))
            .collect::<Result<Vec<_>, _>>()?;
        match self.format {
            ExportFormat::Csv => csv_record(
                &mut self.out,
                cells.iter().map(|cell| match cell {
                    Cell::Text(text) | Cell::Json(text) => formula_guarded(text),
                    _ => cell.text(),
                }),
            ),
            ExportFormat::Jsonl => json_line(&mut self.out, &self.columns, &cells),
        }
        Ok(())
    }
}

/// A spreadsheet runs a cell that begins with one of these as a formula
/// (OWASP, CSV injection).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `text`, prefixed with `'` when a spreadsheet would take it for a formula.
fn formula_guarded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(FORMULA_STARTS) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

/// One CSV record (RFC 4180): fields separated by commas, a field holding a
/// comma, a quote or a line break in quotes with its quotes doubled, CRLF.
fn csv_record<S: AsRef<str>>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = S>) {
    for (i, field) in fields.into_iter().enumerate() {
        let field = field.as_ref();
        if i > 0 {
            out.push(b',');
        }
        if field.contains([',', '"', '\r', '\n']) {
            out.push(b'"');
            out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// One JSON object on one line: every column by name; jsonb columns as the
/// JSON they hold (PostgreSQL writes it on one line), numbers as numbers,
/// `null` for NULL, anything else as a string.
fn json_line(out: &mut Vec<u8>, columns: &[String], cells: &[Cell]) {
    out.push(b'{');
    for (i, (name, cell)) in columns.iter().zip(cells).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(out, name);
        out.push(b':');
        match cell {
            Cell::Null => out.extend_from_slice(b"null"),
            Cell::Json(text) => out.extend_from_slice(text.as_bytes()),
            Cell::Int(_) | Cell::Bool(_) => out.extend_from_slice(cell.text().as_bytes()),
            _ => json_string(out, &cell.text()),
        }
    }
    out.extend_from_slice(b"}\n");
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string serializes into memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> String {
        let mut out = Vec::new();
        csv_record(&mut out, fields.iter());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_quotes_only_what_needs_it_and_doubles_quotes() {
        assert_eq!(record(&["a", "", "审核"]), "a,,审核\r\n");
        assert_eq!(
            record(&["a,b", "say \"hi\"", "two\nlines", "cr\r"]),
            "\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\"\r\n"
        );
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_guarded() {
        for formula in ["=cmd|' /C calc'!A0", "+1", "-2", "@x", "\tx", "\rx"] {
            assert_eq!(formula_guarded(formula), format!("'{formula}"));
        }
        for plain in ["", "x=1", "1-2", "'quoted", "{\"a\":1}"] {
            assert_eq!(formula_guarded(plain), plain);
        }
        // Guarded, then quoted: the quote stays inside the field.
        assert_eq!(record(&[&formula_guarded("=1,2")]), "\"'=1,2\"\r\n");
    }

    #[test]
    fn a_json_line_has_every_column_on_one_line() {
        let mut out = Vec::new();
        let columns: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let time = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.5Z")
            .unwrap()
            .with_timezone(&Utc);
        json_line(
            &mut out,
            &columns,
            &[
                Cell::Text("两\n行\""),
                Cell::Json("{\"k\": [1, 2]}"),
                Cell::Null,
                Cell::Int(-7),
                Cell::Time(time),
            ],
        );
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": "两\n行\"", "b": {"k": [1, 2]}, "c": null, "d": -7,
                "e": "2026-01-02T03:04:05.500000Z"})
        );
    }
}
