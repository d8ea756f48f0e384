//! The one place errors become HTTP responses: every failure is
//! `application/problem+json` (RFC 9457) with a detail that names the field.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error, as every operation reports it.
#[derive(Object, Debug, Clone)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` when the status says it all).
    #[oai(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, in plain words.
    pub detail: String,
    /// The request field at fault, when one is.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

/// The error side of every operation.
#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed or a value is invalid; `field` names it.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The bearer token is missing or invalid.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The token's role may not do this.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such resource.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The request conflicts with what exists (a duplicate, a wrong state).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The HTTP method is not allowed on this path.
    #[oai(status = 405, content_type = "application/problem+json")]
    MethodNotAllowed(Json<Problem>),
    /// The body is too large.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not `application/json`.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// Well-formed, but refers to something that cannot be used.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// Something failed on our side; the detail does not leak internals.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database (or another dependency) is unreachable; retry later.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

pub type ApiResult<T> = Result<T, ApiError>;

fn problem(status: StatusCode, detail: impl Into<String>, field: Option<&str>) -> Json<Problem> {
    Json(Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail: detail.into(),
        field: field.map(str::to_owned),
    })
}

impl ApiError {
    /// A bad value in `field`.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::BadRequest(problem(StatusCode::BAD_REQUEST, detail, Some(field)))
    }

    /// A value in `field` that names something unusable (an unwatched table…).
    pub fn unprocessable(field: &str, detail: impl Into<String>) -> Self {
        Self::Unprocessable(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            detail,
            Some(field),
        ))
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound(problem(StatusCode::NOT_FOUND, detail, None))
    }

    pub fn conflict(field: Option<&str>, detail: impl Into<String>) -> Self {
        Self::Conflict(problem(StatusCode::CONFLICT, detail, field))
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::Unauthorized(problem(StatusCode::UNAUTHORIZED, detail, None))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::Forbidden(problem(StatusCode::FORBIDDEN, detail, None))
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable(problem(StatusCode::SERVICE_UNAVAILABLE, detail, None))
    }
}

/// Unexpected failures: logged once here with their cause chain; the caller
/// sees 503 when the database is out of reach, else a plain 500.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // Class 22, data exceptions: a value PostgreSQL cannot take (a NUL
        // character, a number out of range); the caller's to fix.
        let data_exception = e.chain().find_map(|c| {
            c.downcast_ref::<tokio_postgres::Error>()
                .and_then(|pg| pg.as_db_error())
                .filter(|db| db.code().code().starts_with("22"))
                .map(|db| db.message().to_owned())
        });
        if let Some(message) = data_exception {
            return Self::BadRequest(problem(
                StatusCode::BAD_REQUEST,
                format!("a value cannot be stored: {message}"),
                None,
            ));
        }
        let unreachable = e.chain().any(|c| {
            c.downcast_ref::<deadpool_postgres::PoolError>().is_some()
                || c.downcast_ref::<tokio_postgres::Error>()
                    .is_some_and(|pg| pg.is_closed() || pg.as_db_error().is_none())
        });
        if unreachable {
            tracing::warn!(error = format!("{e:#}"), "database unavailable");
            return Self::unavailable("the database is unavailable; try again shortly");
        }
        tracing::error!(error = format!("{e:#}"), "request failed");
        Self::Internal(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an unexpected error occurred; it has been logged",
            None,
        ))
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        anyhow::Error::new(e).into()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        anyhow::Error::new(e).into()
    }
}

/// Turns every error that escaped an operation (poem's own: unknown route,
/// wrong method, unparsable body, failed validation, size limit) into a problem.
pub async fn into_problem(err: poem::Error) -> Response {
    let detail = err.to_string();
    let operation = err.data::<poem_openapi::OperationId>().copied();
    let mut response = into_problem_response(err, detail);
    if let Some(op) = operation {
        response.set_data(op);
    }
    response
}

fn into_problem_response(err: poem::Error, detail: String) -> Response {
    let response = err.into_response();
    let is_problem = response
        .headers()
        .get(poem::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if is_problem {
        return response;
    }
    let status = response.status();
    let field = field_of(&detail);
    let body = problem(status, detail, field.as_deref()).0;
    let mut response = Json(body).into_response();
    response.set_status(status);
    response.headers_mut().insert(
        poem::http::header::CONTENT_TYPE,
        poem::http::HeaderValue::from_static(PROBLEM_JSON),
    );
    response
}

/// The field a poem-openapi parse error names: `parameter \`x\`` or `field \`x\``.
fn field_of(detail: &str) -> Option<String> {
    ["parameter `", "field `"].iter().find_map(|marker| {
        let start = detail.find(marker)? + marker.len();
        let len = detail[start..].find('`')?;
        Some(detail[start..start + len].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::field_of;

    #[test]
    fn finds_the_named_field() {
        assert_eq!(
            field_of("failed to parse parameter `minutes`: verification failed").as_deref(),
            Some("minutes")
        );
        assert_eq!(
            field_of("parse request payload error: failed to parse \"X\": field `smtp_port` verification failed").as_deref(),
            Some("smtp_port")
        );
        assert_eq!(field_of("not found"), None);
    }
}
