//! Facts about the worker for status pages and metrics: listener state, last
//! notification, sweeps, delivery counters, the commit → sent latency and
//! SMTP errors by kind.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use std::collections::HashMap;

use super::chat::ChannelResult;
use super::outbox::{AlertStatus, Outcome};
use super::snapshot::Snapshot;
use super::sweeper::SweepReport;

/// SMTP failures counted by `kind` and `class` labels.
pub type SmtpErrors = Family<Vec<(&'static str, &'static str)>, Counter>;

pub struct MonitorStatus {
    started_at: DateTime<Utc>,
    listener_connected: AtomicBool,
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    /// Seconds from the alert being recorded to the SMTP server accepting it.
    sent_latency: Histogram,
    /// SMTP failures by kind and class (transient or permanent).
    smtp_errors: SmtpErrors,
    /// Chat-bot messages by channel kind and outcome.
    chat_messages: SmtpErrors,
    // A std Mutex: held only to copy a few timestamps.
    times: Mutex<Times>,
}

#[derive(Clone, Debug, Default)]
pub struct Times {
    pub last_notification: Option<DateTime<Utc>>,
    pub last_sweep: Option<DateTime<Utc>>,
    pub last_sweep_duration: Option<Duration>,
    pub last_sweep_found: u64,
    /// Tables the last sweep could not sweep, with the reason.
    pub last_sweep_failed: Vec<(String, String)>,
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
            // 1 ms to about 9 minutes.
            sent_latency: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            smtp_errors: SmtpErrors::default(),
            chat_messages: SmtpErrors::default(),
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
        t.last_sweep_failed = report.failed.clone();
    }

    pub(crate) fn set_next_sweep(&self, after: Duration) {
        let at = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
        self.times.lock().expect("status lock").next_sweep = Some(at);
    }

    /// The commit → sent latency histogram (shared; cheap to clone).
    pub fn sent_latency(&self) -> Histogram {
        self.sent_latency.clone()
    }

    pub fn smtp_errors(&self) -> SmtpErrors {
        self.smtp_errors.clone()
    }

    /// Chat-bot messages by `kind` and `outcome` (sent, rate_limited,
    /// transient, permanent, waited).
    pub fn chat_messages(&self) -> SmtpErrors {
        self.chat_messages.clone()
    }

    /// Counts the messages of one batch (alerts and notices, by channel).
    pub(crate) fn note_chat(
        &self,
        snapshot: &Snapshot,
        results: &HashMap<(i32, bool), ChannelResult>,
    ) {
        for channels in snapshot.channels.values() {
            for c in channels {
                for notice in [false, true] {
                    let outcome = match results.get(&(c.id, notice)) {
                        None => continue,
                        Some(ChannelResult::Delivered { .. }) => "sent",
                        Some(ChannelResult::Failed { class, .. }) => class.as_str(),
                        Some(ChannelResult::Waiting { .. }) => "waited",
                    };
                    self.chat_messages
                        .get_or_create(&vec![("kind", c.kind.as_str()), ("outcome", outcome)])
                        .inc();
                }
            }
        }
    }

    pub(crate) fn note_delivery(&self, outcomes: &[Outcome]) {
        let now = Utc::now();
        for o in outcomes {
            if o.status == AlertStatus::Sent {
                for at in &o.created_at {
                    let seconds = (now - *at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
                    self.sent_latency.observe(seconds.max(0.0));
                }
            }
            for (kind, permanent) in &o.smtp_errors {
                let class = if *permanent { "permanent" } else { "transient" };
                self.smtp_errors
                    .get_or_create(&vec![("kind", kind.as_str()), ("class", class)])
                    .inc();
            }
            let counter = match o.status {
                AlertStatus::Sent => &self.sent,
                AlertStatus::Pending => &self.retried,
                _ => &self.failed,
            };
            counter.fetch_add(o.ids.len() as u64, Ordering::Relaxed);
        }
    }
}
