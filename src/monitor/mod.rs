//! The alert worker: listener, dispatcher and sweeper around one shared
//! [`Worker`]. Triggers report alerts into an inbox and NOTIFY; the listener
//! wakes the dispatcher, which takes them into the outbox, claims, sends and
//! records; the sweeper catches what no trigger reported. PostgreSQL is the
//! only coordinator between copies.

pub mod control;
pub mod dispatcher;
pub mod listener;
pub mod queue;
pub mod retry;
pub mod status;
pub mod sweeper;
pub mod tables;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use control::{SmtpState, Snapshot};
use status::MonitorStatus;
use sweeper::SweepReport;

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
const VACUUM_INBOX_AFTER: u64 = 10_000;

/// Cheap to clone; every task holds one.
#[derive(Clone)]
pub struct Worker(Arc<Inner>);

struct Inner {
    pool: Pool,
    /// The outbox statements of delivery: connections of their own, with
    /// [`queue::PLANNER_SETTINGS`], one per lane and one for the next due time.
    delivery: Pool,
    /// Takes reported alerts into the outbox: [`queue::admit_pool`].
    admit: Pool,
    /// Held by the lane taking reported alerts in (a tokio lock for its
    /// `try_lock`; it is held across the statement).
    admitting: tokio::sync::Mutex<()>,
    /// Set by each lane about to take in; cleared by the one that does.
    admit_wanted: AtomicBool,
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
    /// Numbers configuration loads in the order they started.
    loads: AtomicU64,
    mailer: Mutex<Option<Mailer>>,
    renderer: Renderer,
    wake: Notify,
    config_changed: Notify,
    /// Transactions announced on the control channel and not yet looked at
    /// (`None`: one that did not say which).
    announced: Mutex<Vec<Option<u64>>>,
    /// Held by whoever loads the configuration, and by an API call from
    /// before its change until it has loaded it.
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// Control wake-ups that needed a reload, and those whose changes the
    /// configuration held already.
    control_applied: AtomicU64,
    control_skipped: AtomicU64,
    rearm_sweep: Notify,
    swept_fully: AtomicBool,
    status: MonitorStatus,
}

/// See [`Worker::hold_reloads`].
pub struct ReloadGuard {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Worker {
    /// Loads the configuration; nothing runs until [`Worker::spawn`].
    pub async fn new(
        pool: Pool,
        db_config: tokio_postgres::Config,
        secrets: Option<SecretBox>,
        smtp_pool_size: u32,
        listen_for_alerts: bool,
    ) -> anyhow::Result<Self> {
        let delivery = queue::delivery_pool(&db_config, DELIVERY_LANES + 1)?;
        let admit = queue::admit_pool(&db_config)?;
        let worker = Self(Arc::new(Inner {
            pool,
            delivery,
            admit,
            admitting: tokio::sync::Mutex::new(()),
            admit_wanted: AtomicBool::new(false),
            taken_since_vacuum: AtomicU64::new(0),
            secrets,
            smtp_pool_size,
            listen_for_alerts,
            db_config,
            id: format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            snapshot: RwLock::default(),
            loads: AtomicU64::new(0),
            mailer: Mutex::new(None),
            renderer: Renderer::default_templates(),
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

    /// Closes the connections of delivery and of taking in (when the service stops).
    pub fn close(&self) {
        self.0.delivery.close();
        self.0.admit.close();
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

    /// Asks the dispatcher to look for due alerts now.
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// A configuration change was announced (`<table>:<transaction id>`).
    pub(crate) fn config_changed(&self, payload: &str) {
        let xid = payload
            .rsplit_once(':')
            .and_then(|(_, xid)| xid.parse::<u64>().ok());
        self.0.announced.lock().expect("announced lock").push(xid);
        self.0.config_changed.notify_one();
    }

    /// Holds configuration loads back while the caller changes the
    /// configuration; [`Worker::reload_holding`] then loads the change, and the
    /// change's own notification finds it loaded instead of loading it again.
    pub async fn hold_reloads(&self) -> ReloadGuard {
        ReloadGuard {
            _held: self.0.reloading.clone().lock_owned().await,
        }
    }

    /// Loads the configuration, releasing what [`Worker::hold_reloads`] held.
    pub async fn reload_holding(&self, guard: ReloadGuard) -> anyhow::Result<()> {
        let result = self.load().await;
        drop(guard);
        result
    }

    /// Control notifications so far: (reloaded for, already held).
    pub fn control_notifications(&self) -> (u64, u64) {
        (
            self.0.control_applied.load(Ordering::Relaxed),
            self.0.control_skipped.load(Ordering::Relaxed),
        )
    }

    /// Re-reads the configuration and rebuilds the SMTP transport if its
    /// server changed.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _loading = self.0.reloading.lock().await;
        self.load().await
    }

    async fn load(&self) -> anyhow::Result<()> {
        // A load that started earlier may finish later; it must not replace
        // what a later load (which saw more recent commits) stored.
        let number = self.0.loads.fetch_add(1, Ordering::SeqCst) + 1;
        let mut snapshot = Snapshot::load(&self.0.pool, self.0.secrets.as_ref()).await?;
        let (previous, snapshot) = {
            let mut current = self.0.snapshot.write().expect("snapshot lock");
            if current.0 > number {
                return Ok(());
            }
            let mut mailer = self.0.mailer.lock().expect("mailer lock");
            *mailer = match snapshot.smtp.settings().cloned() {
                None => None,
                Some(settings) => {
                    let id = settings.id;
                    match Mailer::reuse_or_new(mailer.as_ref(), settings, self.0.smtp_pool_size) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::error!(smtp_config = id, error = %e, "unusable SMTP configuration");
                            snapshot.smtp = SmtpState::Unusable {
                                id,
                                why: e.to_string(),
                            };
                            None
                        }
                    }
                }
            };
            let snapshot = Arc::new(snapshot);
            tracing::debug!(generation = number, "configuration loaded");
            let previous = std::mem::replace(&mut *current, (number, snapshot.clone())).1;
            (previous, snapshot)
        };
        if previous.switches.check_interval != snapshot.switches.check_interval {
            self.0.rearm_sweep.notify_one();
        }
        Ok(())
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
            sweeper::sweep(&self.0.pool, &self.0.admit, &self.snapshot().tables, full).await?;
        self.0.swept_fully.store(true, Ordering::Relaxed);
        self.0.status.note_sweep(&report);
        // Also what waits for lack of a wake-up (a lost NOTIFY): the sweep is
        // the fallback for delivery as well.
        self.wake();
        Ok(report)
    }

    /// Claims one batch of due alerts and delivers it; returns how many
    /// alerts it handled (0 when paused, unconfigured or idle).
    pub async fn deliver_once(&self) -> anyhow::Result<usize> {
        // Taken in even while delivery is paused: an alert is recorded (and
        // shown as pending) when it arrives, not when it can be sent.
        self.admit_reported().await?;
        let snapshot = self.snapshot();
        let switches = &snapshot.switches;
        if !switches.monitor_enabled {
            return Ok(0);
        }
        let limit = (switches.digest_max_records * PARALLEL_DIGESTS) as i64;
        if !switches.email_enabled {
            return Ok(queue::suppress_due(&self.0.delivery, limit).await? as usize);
        }
        let Some(mailer) = self.0.mailer.lock().expect("mailer lock").clone() else {
            return Ok(0);
        };
        let tables = snapshot.deliverable_tables();
        if tables.is_empty() {
            return Ok(0);
        }
        let pool = &self.0.delivery;
        let started = std::time::Instant::now();
        let claimed =
            queue::claim(pool, &tables, limit, &self.0.id, switches.sending_lease).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let claimed_at = started.elapsed();
        // Switches, recipients and templates as of now, not as of before the
        // claim: a change made before an alert arrived applies to that alert.
        let snapshot = self.snapshot();
        if !snapshot.switches.monitor_enabled || !snapshot.switches.email_enabled {
            let ids: Vec<i64> = claimed.iter().map(|a| a.id).collect();
            let suppress = snapshot.switches.monitor_enabled;
            queue::unclaim(pool, &self.0.id, &ids, suppress).await?;
            return Ok(if suppress { claimed.len() } else { 0 });
        }
        let mut rows = HashMap::new();
        for table in &tables {
            let ids: Vec<&str> = claimed
                .iter()
                .filter(|a| &a.table_name == table)
                .map(|a| a.record_id.as_str())
                .collect();
            if let (false, Some(t)) = (ids.is_empty(), snapshot.table(table)) {
                rows.insert(table.as_str(), queue::fetch_rows(pool, t, &ids).await?);
            }
        }
        let fetched_at = started.elapsed();
        let empty = HashMap::new();
        let digests = dispatcher::group(&claimed, switches.digest_max_records);
        let outcomes = join_all(digests.iter().map(|d| {
            let rows = rows.get(d.table).unwrap_or(&empty);
            let renderer = snapshot
                .templates
                .get(d.table)
                .map_or(&self.0.renderer, |r| &**r);
            dispatcher::send_digest(d, rows, &snapshot, &mailer, renderer)
        }))
        .await;
        let sent_at = started.elapsed();
        queue::complete(pool, &self.0.id, &outcomes)
            .await
            .context("Mail went out but its outcome was not recorded; it may be sent again")?;
        tracing::debug!(
            alerts = claimed.len(),
            mails = digests.len(),
            ?claimed_at,
            ?fetched_at,
            ?sent_at,
            recorded_at = ?started.elapsed(),
            "delivered a batch"
        );
        self.0.status.note_delivery(&outcomes);
        Ok(claimed.len())
    }

    /// Takes reported alerts into the outbox, one batch, in one lane at a
    /// time: a lane that finds another one taking in goes on to claim, and
    /// the one taking in runs again for it, so that what was reported after
    /// that one's statement started is taken in too. After a full batch,
    /// another lane is woken for the next one, and this one goes on to claim.
    async fn admit_reported(&self) -> anyhow::Result<()> {
        self.0.admit_wanted.store(true, Ordering::SeqCst);
        loop {
            let Ok(_taking_in) = self.0.admitting.try_lock() else {
                return Ok(());
            };
            if !self.0.admit_wanted.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
            let taken = match queue::admit_reported(&self.0.admit).await {
                Ok((taken, _)) => taken,
                Err(e) => {
                    self.0.admit_wanted.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            };
            let since = self
                .0
                .taken_since_vacuum
                .fetch_add(taken, Ordering::Relaxed)
                + taken;
            if taken >= queue::ADMIT_BATCH as u64 {
                self.0.admit_wanted.store(true, Ordering::SeqCst);
                self.wake();
                return Ok(());
            }
            // The end of a burst: its dead rows would slow every taking in
            // until autovacuum comes.
            if since >= VACUUM_INBOX_AFTER {
                self.0.taken_since_vacuum.store(0, Ordering::Relaxed);
                if let Err(e) = queue::vacuum_inbox(&self.0.admit).await {
                    tracing::warn!(error = format!("{e:#}"), "inbox not vacuumed");
                }
            }
        }
    }

    /// Delivers until idle, then waits for a wake-up, the next retry, or
    /// shutdown. An in-flight batch always finishes before the loop ends.
    async fn dispatch_loop(self, shutdown: CancellationToken) {
        loop {
            let mut failed = false;
            loop {
                let limit = self.snapshot().switches.digest_max_records * PARALLEL_DIGESTS;
                match self.deliver_once().await {
                    Ok(n) if n >= limit && !shutdown.is_cancelled() => {
                        // More is waiting: bring in another lane.
                        self.wake();
                        continue;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "delivery failed");
                        failed = true;
                        break;
                    }
                }
            }
            let wait = if failed {
                Duration::from_secs(1)
            } else {
                self.until_next_due().await
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.0.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until a waiting alert falls due (retries, expired leases).
    async fn until_next_due(&self) -> Duration {
        const IDLE: Duration = Duration::from_secs(60);
        let snapshot = self.snapshot();
        let switches = &snapshot.switches;
        if !switches.monitor_enabled || self.0.mailer.lock().expect("mailer lock").is_none() {
            return IDLE;
        }
        match queue::next_due(&self.0.delivery, &snapshot.deliverable_tables()).await {
            Ok(Some(at)) => (at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(IDLE),
            Ok(None) => IDLE,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot look up the next due alert"
                );
                Duration::from_secs(1)
            }
        }
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

    /// Applies configuration changes announced on the control channel.
    async fn config_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.0.config_changed.notified() => {}
            }
            let loading = self.0.reloading.lock().await;
            let announced = std::mem::take(&mut *self.0.announced.lock().expect("announced lock"));
            let seen = self.snapshot().seen.clone();
            let held = !announced.is_empty()
                && announced
                    .iter()
                    .all(|xid| xid.zip(seen.as_ref()).is_some_and(|(x, s)| s.includes(x)));
            if held {
                self.0.control_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.0.control_applied.fetch_add(1, Ordering::Relaxed);
            match self.load().await {
                Ok(()) => self.wake(),
                Err(e) => tracing::error!(error = format!("{e:#}"), "configuration reload failed"),
            }
            drop(loading);
        }
    }
}
