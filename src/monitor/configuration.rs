//! The configuration a copy holds: loaded at start, after every
//! (re)connect, and when the control channel announces a change; an API call
//! that changes it loads it at once, and its own announcement then finds it
//! loaded.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::snapshot::{SmtpState, Snapshot};
use super::Worker;
use crate::mail::Mailer;

/// See [`Worker::hold_reloads`].
pub struct ReloadGuard {
    held: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl Worker {
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
    /// Calls changing the configuration at once share the hold.
    pub async fn hold_reloads(&self) -> ReloadGuard {
        ReloadGuard {
            held: self.0.reloading.clone().read_owned().await,
        }
    }

    /// Makes sure a load that started after the held change has run, and
    /// runs one if none has: calls that changed the configuration together
    /// share one load.
    pub async fn reload_holding(&self, guard: ReloadGuard) -> anyhow::Result<()> {
        // No load runs while the hold is held: any load counted after this
        // began after the change.
        let changed_at = self.generation();
        drop(guard.held);
        let _loading = self.0.reloading.write().await;
        if self.generation() > changed_at {
            return Ok(());
        }
        self.load().await
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
        let _loading = self.0.reloading.write().await;
        self.load().await
    }

    /// Loads run one at a time (under `reloading`), so the newest load is
    /// always the last one stored.
    async fn load(&self) -> anyhow::Result<()> {
        let mut snapshot = Snapshot::load(&self.0.pool, self.0.secrets.as_ref()).await?;
        let (previous, snapshot) = {
            let mut current = self.0.snapshot.write().expect("snapshot lock");
            let number = current.0 + 1;
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
        // A changed schedule may open or close a window for what waits.
        if previous.schedules() != snapshot.schedules() {
            if let Err(e) = self.recheck_holds().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "alerts held for quiet hours not looked at again"
                );
            }
        }
        // What waited for this change (a resumed monitor, a new recipient)
        // goes out now.
        self.wake();
        Ok(())
    }

    /// Applies configuration changes announced on the control channel.
    pub(super) async fn config_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.0.config_changed.notified() => {}
            }
            let loading = self.0.reloading.write().await;
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
            if let Err(e) = self.load().await {
                tracing::error!(error = format!("{e:#}"), "configuration reload failed");
            }
            drop(loading);
        }
    }
}
