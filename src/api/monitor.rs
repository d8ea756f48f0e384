//! The worker seen from outside: pause and resume delivery on every copy,
//! status in the old system's shape plus listener, sweep and queue facts,
//! the sweep interval, recent log lines and health.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::auth::{OperatorAuth, ViewerAuth};
use super::error::ApiResult;
use super::health::Health;
use super::{system, ApiTags, AppState};
use crate::audit_log::Audit;
use crate::monitor::{AlertStatus, CONTROL_CHANNEL};

pub struct MonitorApi;

/// Switches as stored.
#[derive(Object)]
pub struct MonitorConfig {
    pub monitor_enabled: bool,
    pub email_enabled: bool,
    /// Minutes between fallback sweeps.
    pub check_interval: u64,
}

/// This copy of the service.
#[derive(Object)]
pub struct ProcessInfo {
    /// Delivery is running (not paused).
    pub is_running: bool,
    pub pid: u32,
    /// `running` or `stopped`.
    pub status: String,
    pub start_time: DateTime<Utc>,
}

/// The notification listener of this copy.
#[derive(Object)]
pub struct ListenerInfo {
    pub connected: bool,
    #[oai(skip_serializing_if_is_none)]
    pub last_notification: Option<DateTime<Utc>>,
}

/// A watched table the sweep could not sweep.
#[derive(Object)]
pub struct SweepFailure {
    pub table: String,
    pub error: String,
}

/// The fallback sweep of this copy.
#[derive(Object)]
pub struct SweepInfo {
    #[oai(skip_serializing_if_is_none)]
    pub last_sweep: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub last_duration_ms: Option<f64>,
    /// Rows the last sweep found that no trigger had reported.
    pub last_found: u64,
    /// Tables the last sweep could not sweep (a column renamed or dropped
    /// since the table was watched, say); the other tables were swept.
    pub last_failed: Vec<SweepFailure>,
    #[oai(skip_serializing_if_is_none)]
    pub next_sweep: Option<DateTime<Utc>>,
}

/// Alerts by state, across every copy.
#[derive(Object)]
pub struct QueueInfo {
    /// Waiting to go out, with the alerts just reported and not yet taken in.
    pub pending: i64,
    pub sending: i64,
    pub failed: i64,
    pub suppressed: i64,
    /// Held by a silence.
    pub silenced: i64,
    pub sent: i64,
    pub baseline: i64,
    /// Sent, retried and failed by this copy since it started.
    pub sent_by_this_copy: u64,
    pub retried_by_this_copy: u64,
    pub failed_by_this_copy: u64,
}

/// The operation audit log writer of this copy.
#[derive(Object)]
pub struct AuditLogInfo {
    /// Entries waiting to be written.
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub written: u64,
    /// Entries given up on; stays 0 (callers get 503 instead).
    pub dropped: u64,
    /// Write attempts that failed and were retried.
    pub failed_writes: u64,
    /// Duration of the last batch insert.
    pub last_write_ms: f64,
}

/// Worker status (the old system's fields first).
#[derive(Object)]
pub struct MonitorStatus {
    pub config: MonitorConfig,
    pub process: ProcessInfo,
    /// `healthy`, `stopped` (paused), or `degraded` (no SMTP server, listener down).
    pub overall_status: String,
    /// Whether an active SMTP configuration can send.
    pub smtp_configured: bool,
    /// Why no mail can go out, when none can: no active configuration, or
    /// "SMTP configured but unusable: …" and why.
    #[oai(skip_serializing_if_is_none)]
    pub smtp_problem: Option<String>,
    /// Active recipients per watched table.
    pub recipients_count: BTreeMap<String, i64>,
    pub listener: ListenerInfo,
    pub sweep: SweepInfo,
    pub queue: QueueInfo,
    pub audit_log: AuditLogInfo,
}

/// The newest log lines of this copy.
#[derive(Object)]
pub struct MonitorLogs {
    pub lines: Vec<String>,
}

async fn set_monitor(state: &AppState, enabled: bool) -> ApiResult<MonitorStatus> {
    let held = state.worker.hold_reloads().await;
    system::store(
        state,
        "monitor_enabled",
        &enabled.to_string(),
        "monitor_enabled",
    )
    .await?;
    state.worker.reload_holding(held).await?;
    status(state).await
}

async fn status(state: &AppState) -> ApiResult<MonitorStatus> {
    let snapshot = state.worker.snapshot();
    let switches = &snapshot.switches;
    let counts = crate::monitor::count_by_status(&state.pool).await?;
    let count = |s| counts.get(&s).copied().unwrap_or(0);
    let status = state.worker.status();
    let times = status.times();
    let (sent, retried, failed) = status.counters();
    let running = switches.monitor_enabled;
    let listener = status.listener_connected();
    let smtp_usable = snapshot.smtp.settings().is_some();
    let overall = match (running, smtp_usable && listener) {
        (false, _) => "stopped",
        (true, true) => "healthy",
        (true, false) => "degraded",
    };
    Ok(MonitorStatus {
        config: MonitorConfig {
            monitor_enabled: switches.monitor_enabled,
            email_enabled: switches.email_enabled,
            check_interval: switches.check_interval.as_secs() / 60,
        },
        process: ProcessInfo {
            is_running: running,
            pid: std::process::id(),
            status: if running { "running" } else { "stopped" }.into(),
            start_time: status.started_at(),
        },
        overall_status: overall.into(),
        smtp_configured: smtp_usable,
        smtp_problem: snapshot.smtp.problem(),
        recipients_count: snapshot
            .tables
            .iter()
            .map(|t| {
                let n = snapshot.recipients.get(&t.name).map_or(0, Vec::len);
                (t.name.clone(), n as i64)
            })
            .collect(),
        listener: ListenerInfo {
            connected: listener,
            last_notification: times.last_notification,
        },
        sweep: SweepInfo {
            last_sweep: times.last_sweep,
            last_duration_ms: times.last_sweep_duration.map(|d| d.as_secs_f64() * 1e3),
            last_found: times.last_sweep_found,
            last_failed: times
                .last_sweep_failed
                .iter()
                .map(|(table, error)| SweepFailure {
                    table: table.clone(),
                    error: error.clone(),
                })
                .collect(),
            next_sweep: times.next_sweep,
        },
        queue: QueueInfo {
            pending: count(AlertStatus::Pending),
            sending: count(AlertStatus::Sending),
            failed: count(AlertStatus::Failed),
            suppressed: count(AlertStatus::Suppressed),
            silenced: count(AlertStatus::Silenced),
            sent: count(AlertStatus::Sent),
            baseline: count(AlertStatus::Baseline),
            sent_by_this_copy: sent,
            retried_by_this_copy: retried,
            failed_by_this_copy: failed,
        },
        audit_log: {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = state.audit.stats();
            AuditLogInfo {
                queue_depth: state.audit.depth() as u64,
                queue_capacity: state.audit.capacity() as u64,
                written: stats.written.load(Relaxed),
                dropped: stats.dropped.load(Relaxed),
                failed_writes: stats.failed_writes.load(Relaxed),
                last_write_ms: stats.last_write_micros.load(Relaxed) as f64 / 1e3,
            }
        },
    })
}

/// How each monitor operation is audited.
pub(super) const AUDIT: &[Audit] = &[
    Audit::new("monitor_start", "启动监控"),
    Audit::new("monitor_stop", "停止监控"),
    Audit::new("monitor_restart", "重启监控"),
    Audit::new("monitor_status", "查询监控状态"),
    Audit::new("monitor_interval", "修改检查间隔"),
    Audit::new("monitor_logs", "查询监控日志"),
    Audit::new("monitor_health", "查询健康状态"),
];

#[OpenApi(tag = "ApiTags::Monitor")]
impl MonitorApi {
    /// Resume delivery on every running copy; alerts that waited go out now
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/monitor/start",
        method = "post",
        operation_id = "monitor_start"
    )]
    async fn start(
        &self,
        _auth: OperatorAuth,
        state: Data<&AppState>,
    ) -> ApiResult<Json<MonitorStatus>> {
        set_monitor(&state, true).await.map(Json)
    }

    /// Pause delivery on every running copy; new alerts are kept and wait
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/monitor/stop",
        method = "post",
        operation_id = "monitor_stop"
    )]
    async fn stop(
        &self,
        _auth: OperatorAuth,
        state: Data<&AppState>,
    ) -> ApiResult<Json<MonitorStatus>> {
        set_monitor(&state, false).await.map(Json)
    }

    /// Resume delivery and make every copy reload its configuration and sweep
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/monitor/restart",
        method = "post",
        operation_id = "monitor_restart"
    )]
    async fn restart(
        &self,
        _auth: OperatorAuth,
        state: Data<&AppState>,
    ) -> ApiResult<Json<MonitorStatus>> {
        system::store(&state, "monitor_enabled", "true", "monitor_enabled").await?;
        let client = state.pool.get().await?;
        client
            .execute("SELECT pg_notify($1, 'restart')", &[&CONTROL_CHANNEL])
            .await?;
        state.worker.catch_up().await;
        status(&state).await.map(Json)
    }

    /// Worker status: switches, this copy, listener, sweep and queue
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/monitor/status",
        method = "get",
        operation_id = "monitor_status"
    )]
    async fn status(
        &self,
        _auth: ViewerAuth,
        state: Data<&AppState>,
    ) -> ApiResult<Json<MonitorStatus>> {
        status(&state).await.map(Json)
    }

    /// Set the fallback sweep interval in minutes (`check_interval`: its range
    /// is listed by `GET /api/config/system`); takes effect at once
    ///
    /// Requires the operator or admin role.
    #[oai(
        path = "/api/monitor/interval/:minutes",
        method = "put",
        operation_id = "monitor_interval"
    )]
    async fn interval(
        &self,
        state: Data<&AppState>,
        _auth: OperatorAuth,
        minutes: Path<u32>,
    ) -> ApiResult<Json<MonitorStatus>> {
        let held = state.worker.hold_reloads().await;
        system::store(&state, "check_interval", &minutes.0.to_string(), "minutes").await?;
        state.worker.reload_holding(held).await?;
        status(&state).await.map(Json)
    }

    /// The newest log lines of this copy (1-1000, default 100)
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/monitor/logs",
        method = "get",
        operation_id = "monitor_logs"
    )]
    async fn logs(
        &self,
        _auth: ViewerAuth,
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))] lines: Query<Option<u32>>,
    ) -> ApiResult<Json<MonitorLogs>> {
        Ok(Json(MonitorLogs {
            lines: crate::telemetry::recent_lines(lines.0.unwrap_or(100) as usize),
        }))
    }

    /// Health of this copy: database reachable, listener connected
    ///
    /// Requires any role (viewer, operator, auditor, admin).
    #[oai(
        path = "/api/monitor/health",
        method = "get",
        operation_id = "monitor_health"
    )]
    async fn health(&self, _auth: ViewerAuth, state: Data<&AppState>) -> ApiResult<Json<Health>> {
        Health::check(&state).await.map(Json)
    }
}
