//! `GET /metrics` in the Prometheus text format: alerts by state, deliveries,
//! commit → sent latency, SMTP errors by kind, the listener, the sweep, the
//! audit-log writer and API calls.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use poem::web::Data;
use poem::{handler, IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;

/// API calls by operation and status, counted as they happen.
pub type HttpRequests = Family<Vec<(&'static str, String)>, Counter>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn float_gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

#[handler]
pub async fn metrics(state: Data<&AppState>) -> Response {
    let mut registry = Registry::with_prefix("audit_alert");
    let alerts = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let database_up = match crate::monitor::count_by_status(&state.pool).await {
        Ok(counts) => {
            for (status, n) in counts {
                alerts
                    .get_or_create(&vec![("status", status.as_str().to_owned())])
                    .set(n);
            }
            1
        }
        Err(_) => 0,
    };
    registry.register("alerts", "Alerts by state, across every copy", alerts);
    gauge(
        &mut registry,
        "database_up",
        "The database answered",
        database_up,
    );

    let status = state.worker.status();
    let (sent, retried, failed) = status.counters();
    let deliveries = Family::<Vec<(&'static str, String)>, Counter>::default();
    for (outcome, n) in [("sent", sent), ("retried", retried), ("failed", failed)] {
        deliveries
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc_by(n);
    }
    registry.register(
        "deliveries",
        "Alert delivery outcomes of this copy",
        deliveries,
    );
    registry.register(
        "sent_latency_seconds",
        "From an alert being recorded (the writing transaction) to the SMTP server accepting it, retries and re-sends included, this copy",
        status.sent_latency(),
    );
    registry.register(
        "smtp_errors",
        "SMTP failures of this copy by kind and class (transient, permanent), one per recipient and attempt",
        status.smtp_errors(),
    );
    registry.register(
        "channel_messages",
        "Chat-bot messages of this copy by channel kind and outcome: sent, failed (rate_limited, transient, permanent), or waited for the bot's send limit",
        status.chat_messages(),
    );
    gauge(
        &mut registry,
        "listener_connected",
        "The notification listener holds its connection",
        status.listener_connected() as i64,
    );
    let times = status.times();
    float_gauge(
        &mut registry,
        "sweep_last_duration_seconds",
        "Duration of the last fallback sweep",
        times.last_sweep_duration.map_or(0.0, |d| d.as_secs_f64()),
    );
    gauge(
        &mut registry,
        "sweep_last_found",
        "Rows the last sweep found unreported",
        times.last_sweep_found as i64,
    );

    let audit = state.audit.stats();
    gauge(
        &mut registry,
        "audit_queue_depth",
        "Audit entries waiting to be written",
        state.audit.depth() as i64,
    );
    gauge(
        &mut registry,
        "audit_queue_capacity",
        "Audit entries that may wait",
        state.audit.capacity() as i64,
    );
    counter(
        &mut registry,
        "audit_entries_written",
        "Audit entries written",
        audit.written.load(Relaxed),
    );
    counter(
        &mut registry,
        "audit_entries_dropped",
        "Audit entries given up on (stays 0)",
        audit.dropped.load(Relaxed),
    );
    counter(
        &mut registry,
        "audit_write_failures",
        "Audit writes that failed and were retried",
        audit.failed_writes.load(Relaxed),
    );
    float_gauge(
        &mut registry,
        "audit_last_write_seconds",
        "Duration of the last audit batch write",
        audit.last_write_micros.load(Relaxed) as f64 / 1e6,
    );
    registry.register(
        "http_requests",
        "API calls by operation and status",
        state.http_requests.clone(),
    );

    let mut body = String::new();
    if encode(&mut body, &registry).is_err() {
        return poem::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    body.into_response()
        .with_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .into_response()
}
