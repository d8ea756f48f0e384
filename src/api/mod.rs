//! The HTTP API: poem-openapi operations, the generated spec and the docs page.

mod health;

use deadpool_postgres::Pool;
use poem::middleware::Tracing;
use poem::{EndpointExt, Route};
use poem_openapi::OpenApiService;

use crate::monitor::Worker;

/// What every operation can reach through `Data<&AppState>`.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub worker: Worker,
}

type Apis = health::HealthApi;

fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(health::HealthApi, "audit-alert", env!("CARGO_PKG_VERSION")).description(
        "Turns content-moderation verdicts in PostgreSQL into e-mail alerts, exactly once.",
    )
}

/// The OpenAPI document `openapi/openapi.json` must equal.
pub fn spec_json() -> String {
    service().spec()
}

pub fn spec_yaml() -> String {
    service().spec_yaml()
}

/// Every route: the operations, `/openapi.json` and `/docs`.
pub fn routes(state: AppState) -> impl poem::Endpoint {
    let api = service();
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .data(state)
        .with(Tracing)
}
