//! The alert worker: listener, delivery lanes and sweeper around one shared
//! [`Worker`]. Triggers report alerts into an inbox and NOTIFY; the listener
//! wakes delivery, which takes them into the outbox, claims, sends and
//! records; the sweeper catches what no trigger reported. PostgreSQL is the
//! only coordinator between copies.
//!
//! Rooms: `intake` (inbox → outbox), `outbox` (states, claim, lease,
//! outcome, re-send), `delivery` (the lanes), `digest` (grouping, rendering,
//! sending one digest), `settings` (the catalogue), `snapshot` (the
//! configuration as read), `configuration` (loading it), `tables` (watched
//! tables and their rows), `listener`, `sweeper`, `retry`, `status`.

mod chat;
mod configuration;
mod delivery;
mod digest;
mod intake;
mod listener;
mod outbox;
mod retry;
mod schedule;
mod settings;
mod silences;
mod snapshot;
mod status;
mod sweeper;
mod tables;

pub use configuration::ReloadGuard;
pub use intake::{intake_pool, take_in, TakenIn, RANGE_WIDTH, TAKE_IN_BATCH, TAKE_IN_RANGES};
pub use outbox::{
    claim, complete, count_by_status, delivery_pool, next_due, recheck_holds, resend, unclaim,
    Acknowledged, AlertStatus, ClaimedAlert, Outcome, Resend,
};
/// The outbox and intake statements, for the tests of their plans.
pub mod statements {
    pub use super::intake::{take_in_params, take_in_statement};
    pub use super::outbox::{CLAIM, RECORD_OUTCOME};
}
pub use chat::{take_send, ChannelResult};
pub use retry::RetryPolicy;
pub use schedule::{Clock, Schedule, ScheduleError, ScheduleSpec, WindowSpec, DEFAULT_TIME_ZONE};
pub use settings::{validate_setting, Setting, SettingError, SettingKind, Switches, SETTINGS};
pub use silences::{Condition, ConditionOp, Route, Silence};
pub use snapshot::{
    channel, smtp_configuration, Channel, Recipient, SmtpState, Snapshot, WatchedTable,
};
pub use status::MonitorStatus;
pub use sweeper::{sweep, SweepReport};
pub use tables::{
    fetch_rows, set_resolution_notice, unwatch, watch, WatchError, WatchRequest, Watched,
    DEFAULT_VERDICTS, UNCERTAIN,
};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::crypto::SecretBox;
use crate::mail::{Mailer, Renderer};

/// Channel the alert triggers notify.
pub const DATA_CHANNEL: &str = "audit_alert";
/// Channel configuration changes notify.
pub const CONTROL_CHANNEL: &str = "audit_alert_control";

/// Digests sent at once from one claimed batch.
pub const PARALLEL_DIGESTS: usize = 4;
/// Dispatch loops per copy: under a burst some claim and record while others
/// render and send. Their claims together bound what a killed copy may have
/// sent without recording it: lanes × digests × `digest_max_records`.
pub const DELIVERY_LANES: usize = 3;
/// Inbox rows taken in after which the end of a burst vacuums the inbox.
pub(crate) const VACUUM_INBOX_AFTER: u64 = 10_000;

/// What the chat-bot channels of a copy need from its configuration.
#[derive(Clone, Debug, Default)]
pub struct ChatSettings {
    /// Hosts webhook URLs may point to (`CHANNEL_ALLOWED_HOSTS`).
    pub allowed_hosts: Vec<String>,
    /// `PUBLIC_URL`.
    pub public_url: Option<String>,
}

/// Cheap to clone; every task holds one.
#[derive(Clone)]
pub struct Worker(Arc<Inner>);

struct Inner {
    pool: Pool,
    /// The outbox statements of delivery: connections of their own, with
    /// [`outbox::PLANNER_SETTINGS`], one per lane and one for the next due time.
    delivery: Pool,
    /// Takes reported alerts into the outbox: [`intake::intake_pool`].
    intake: Pool,
    /// Held by the lane taking reported alerts in (a tokio lock for its
    /// `try_lock`; it is held across the statement).
    taking_in: tokio::sync::Mutex<()>,
    /// Set by each lane about to take in; cleared by the one that does.
    take_in_wanted: AtomicBool,
    /// Inbox rows taken in since this copy last vacuumed the inbox.
    taken_since_vacuum: AtomicU64,
    secrets: Option<SecretBox>,
    /// Most SMTP connections this copy opens at once.
    smtp_pool_size: u32,
    /// Whether the listener LISTENs on the data channel (always, but in the
    /// benchmark that measures the sweep alone).
    listen_for_alerts: bool,
    db_config: tokio_postgres::Config,
    /// Names this copy in leases (`locked_by`).
    id: String,
    // std locks: nothing awaits while they are held.
    /// The configuration and the number of the load it came from.
    snapshot: RwLock<(u64, Arc<Snapshot>)>,
    mailer: Mutex<Option<Mailer>>,
    /// The HTTP client of the chat-bot channels.
    chat: reqwest::Client,
    /// Hosts webhook URLs may point to.
    chat_allowed_hosts: Vec<String>,
    /// Linked from chat messages (`PUBLIC_URL` + `/console`).
    console_url: Option<String>,
    /// Acknowledge links in mails (with `PUBLIC_URL` and `SECRET_KEY`).
    ack: Option<crate::ack::AckLinks>,
    renderer: Renderer,
    /// What schedules (quiet hours) are read by.
    clock: schedule::Clock,
    wake: Notify,
    config_changed: Notify,
    /// Transactions announced on the control channel and not yet looked at
    /// (`None`: one that did not say which).
    announced: Mutex<Vec<Option<u64>>>,
    /// Held exclusively by whoever loads the configuration; shared by API
    /// calls while they change it, so that no load runs between a change
    /// and the call's look at which loads came after it.
    reloading: Arc<tokio::sync::RwLock<()>>,
    /// Control wake-ups that needed a reload, and those whose changes the
    /// configuration held already.
    control_applied: AtomicU64,
    control_skipped: AtomicU64,
    rearm_sweep: Notify,
    swept_fully: AtomicBool,
    status: MonitorStatus,
}

impl Worker {
    /// Loads the configuration; nothing runs until [`Worker::spawn`].
    pub async fn new(
        pool: Pool,
        db_config: tokio_postgres::Config,
        secrets: Option<SecretBox>,
        smtp_pool_size: u32,
        listen_for_alerts: bool,
        chat: ChatSettings,
    ) -> anyhow::Result<Self> {
        let delivery = outbox::delivery_pool(&db_config, DELIVERY_LANES + 1)?;
        let ack = secrets
            .clone()
            .zip(chat.public_url.as_deref())
            .map(|(s, u)| crate::ack::AckLinks::new(s, u));
        let intake = intake::intake_pool(&db_config)?;
        let worker = Self(Arc::new(Inner {
            pool,
            delivery,
            intake,
            taking_in: tokio::sync::Mutex::new(()),
            take_in_wanted: AtomicBool::new(false),
            taken_since_vacuum: AtomicU64::new(0),
            secrets,
            smtp_pool_size,
            listen_for_alerts,
            db_config,
            id: format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            snapshot: RwLock::default(),
            mailer: Mutex::new(None),
            chat: crate::channels::client(&chat.allowed_hosts),
            chat_allowed_hosts: chat.allowed_hosts,
            ack,
            console_url: chat.public_url.map(|u| format!("{u}/console")),
            renderer: Renderer::default_templates(),
            clock: schedule::Clock::default(),
            wake: Notify::new(),
            config_changed: Notify::new(),
            announced: Mutex::default(),
            reloading: Arc::default(),
            control_applied: AtomicU64::new(0),
            control_skipped: AtomicU64::new(0),
            rearm_sweep: Notify::new(),
            swept_fully: AtomicBool::new(false),
            status: MonitorStatus::default(),
        }));
        worker.reload().await?;
        Ok(worker)
    }

    /// Starts the listener, dispatcher, sweeper and configuration tasks.
    pub fn spawn(&self, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        tasks.spawn(listener::run(self.clone(), shutdown.clone()));
        for _ in 0..DELIVERY_LANES {
            tasks.spawn(self.clone().dispatch_loop(shutdown.clone()));
        }
        tasks.spawn(self.clone().sweep_loop(shutdown.clone()));
        tasks.spawn(self.clone().config_loop(shutdown.clone()));
    }

    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The HTTP client of the chat-bot channels.
    pub fn chat_client(&self) -> &reqwest::Client {
        &self.0.chat
    }

    /// The acknowledge links of this copy (with `PUBLIC_URL` and `SECRET_KEY`).
    pub fn ack_links(&self) -> Option<&crate::ack::AckLinks> {
        self.0.ack.as_ref()
    }

    /// Hosts webhook URLs may point to (`CHANNEL_ALLOWED_HOSTS`).
    pub fn chat_allowed_hosts(&self) -> &[String] {
        &self.0.chat_allowed_hosts
    }

    /// Closes the connections of delivery and of taking in (when the service stops).
    pub fn close(&self) {
        self.0.delivery.close();
        self.0.intake.close();
    }

    pub fn status(&self) -> &MonitorStatus {
        &self.0.status
    }

    /// Grows with every configuration reload.
    pub fn generation(&self) -> u64 {
        self.0.snapshot.read().expect("snapshot lock").0
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.0.snapshot.read().expect("snapshot lock").1.clone()
    }

    pub(crate) fn listens_for_alerts(&self) -> bool {
        self.0.listen_for_alerts
    }

    pub(crate) fn db_config(&self) -> &tokio_postgres::Config {
        &self.0.db_config
    }

    /// The clock schedules (quiet hours) are read by.
    pub fn schedule_clock(&self) -> &schedule::Clock {
        &self.0.clock
    }

    /// Looks again, now, at the alerts waiting for destinations in quiet
    /// hours (after a schedule or the clock changed).
    pub async fn recheck_holds(&self) -> anyhow::Result<u64> {
        let n = outbox::recheck_holds(&self.0.delivery).await?;
        self.wake();
        Ok(n)
    }

    /// Marks an alert acknowledged by `by`, once; what its destinations in
    /// quiet hours waited for is dropped at once.
    pub async fn acknowledge(&self, id: i64, by: &str) -> anyhow::Result<Acknowledged> {
        let done = outbox::acknowledge(&self.0.pool, id, by).await?;
        if done == Acknowledged::Now {
            self.wake();
        }
        Ok(done)
    }

    /// Asks the dispatcher to look for due alerts now.
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// What the listener does after every (re)connect: the configuration may
    /// have changed and notifications may have been missed.
    pub async fn catch_up(&self) {
        if let Err(e) = self.reload().await {
            tracing::error!(error = format!("{e:#}"), "configuration reload failed");
        }
        if let Err(e) = self.sweep_once().await {
            tracing::error!(error = format!("{e:#}"), "catch-up sweep failed");
        }
        self.wake();
    }

    /// One sweep of every watched table (the first one of a process compares
    /// every flagged row; later ones only new rows of integer-id tables).
    pub async fn sweep_once(&self) -> anyhow::Result<SweepReport> {
        let full = !self.0.swept_fully.load(Ordering::Relaxed);
        let report =
            sweeper::sweep(&self.0.pool, &self.0.intake, &self.snapshot().tables, full).await?;
        self.0.swept_fully.store(true, Ordering::Relaxed);
        self.0.status.note_sweep(&report);
        // Also what waits for lack of a wake-up (a lost NOTIFY): the sweep is
        // the fallback for delivery as well.
        self.wake();
        Ok(report)
    }

    /// Sweeps every `check_interval`, re-armed at once when it changes.
    async fn sweep_loop(self, shutdown: CancellationToken) {
        loop {
            let interval = self.snapshot().switches.check_interval;
            self.0.status.set_next_sweep(interval);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.0.rearm_sweep.notified() => continue,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.sweep_once().await {
                tracing::error!(error = format!("{e:#}"), "sweep failed");
            }
        }
    }
}
