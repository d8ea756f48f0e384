//! Facts about the worker for status pages and metrics: listener state, last
//! notification, sweeps and delivery counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::queue::Outcome;
use super::sweeper::SweepReport;

pub struct MonitorStatus {
    started_at: DateTime<Utc>,
    listener_connected: AtomicBool,
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    // A std Mutex: held only to copy a few timestamps.
    times: Mutex<Times>,
}

#[derive(Clone, Debug, Default)]
pub struct Times {
    pub last_notification: Option<DateTime<Utc>>,
    pub last_sweep: Option<DateTime<Utc>>,
    pub last_sweep_duration: Option<Duration>,
    pub last_sweep_found: u64,
    pub next_sweep: Option<DateTime<Utc>>,
}

impl Default for MonitorStatus {
    fn default() -> Self {
        Self {
            started_at: Utc::now(),
            listener_connected: AtomicBool::default(),
            sent: AtomicU64::default(),
            retried: AtomicU64::default(),
            failed: AtomicU64::default(),
            times: Mutex::default(),
        }
    }
}

impl MonitorStatus {
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn listener_connected(&self) -> bool {
        self.listener_connected.load(Ordering::Relaxed)
    }

    pub fn set_listener_connected(&self, connected: bool) {
        self.listener_connected.store(connected, Ordering::Relaxed);
    }

    pub fn times(&self) -> Times {
        self.times.lock().expect("status lock").clone()
    }

    /// Alerts sent, put back for retry, and failed by this copy since start.
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn note_notification(&self) {
        self.times.lock().expect("status lock").last_notification = Some(Utc::now());
    }

    pub(crate) fn note_sweep(&self, report: &SweepReport) {
        let mut t = self.times.lock().expect("status lock");
        t.last_sweep = Some(Utc::now());
        t.last_sweep_duration = Some(report.duration);
        t.last_sweep_found = report.found;
    }

    pub(crate) fn set_next_sweep(&self, after: Duration) {
        let at = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
        self.times.lock().expect("status lock").next_sweep = Some(at);
    }

    pub(crate) fn note_delivery(&self, outcomes: &[Outcome]) {
        for o in outcomes {
            let counter = match o.status {
                "sent" => &self.sent,
                "pending" => &self.retried,
                _ => &self.failed,
            };
            counter.fetch_add(o.ids.len() as u64, Ordering::Relaxed);
        }
    }
}
