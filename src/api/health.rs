//! `GET /health`: is the database reachable and the listener connected.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::error::{ApiError, ApiResult};
use super::{ApiTags, AppState};

pub struct HealthApi;

/// `/health` is public and outside `/api/**`: nothing to audit.
pub(super) const AUDIT: &[crate::audit_log::Audit] = &[];

/// The service's health.
#[derive(Object)]
pub struct Health {
    /// `ok` when every check passes.
    pub status: String,
    /// The database answered a query.
    pub database: bool,
    /// The notification listener holds its connection.
    pub listener_connected: bool,
}

impl Health {
    pub(crate) async fn check(state: &AppState) -> ApiResult<Health> {
        let database = match state.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        };
        let listener_connected = state.worker.status().listener_connected();
        match (database, listener_connected) {
            (true, true) => Ok(Health {
                status: "ok".into(),
                database,
                listener_connected,
            }),
            (false, _) => Err(ApiError::unavailable("the database is unreachable")),
            (true, false) => Err(ApiError::unavailable(
                "the notification listener is not connected (reconnecting)",
            )),
        }
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Health check (public, for load balancers): 200 when the database is
    /// reachable and the listener connected, else 503
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self, state: Data<&AppState>) -> ApiResult<Json<Health>> {
        Health::check(&state).await.map(Json)
    }
}
