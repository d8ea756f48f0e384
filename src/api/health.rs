//! `GET /health`: is the database reachable and the listener connected.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use super::AppState;

#[derive(Tags)]
enum ApiTags {
    /// Liveness and readiness.
    Health,
}

pub struct HealthApi;

/// The service's health.
#[derive(Object)]
pub struct Health {
    /// `ok` when every check passes, else `degraded`.
    pub status: String,
    /// The database answered a query.
    pub database: bool,
    /// The notification listener holds its connection.
    pub listener_connected: bool,
}

#[derive(ApiResponse)]
enum HealthResponse {
    /// Every check passed.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// A check failed; the body says which.
    #[oai(status = 503)]
    Unavailable(Json<Health>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Health check (public, for load balancers and orchestrators)
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self, state: Data<&AppState>) -> HealthResponse {
        let database = match state.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        };
        let listener_connected = state.worker.status().listener_connected();
        let ok = database && listener_connected;
        let health = Health {
            status: if ok { "ok" } else { "degraded" }.into(),
            database,
            listener_connected,
        };
        if ok {
            HealthResponse::Ok(Json(health))
        } else {
            HealthResponse::Unavailable(Json(health))
        }
    }
}
