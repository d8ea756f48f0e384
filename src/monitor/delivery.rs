//! Delivery: the lanes that take reported alerts in, claim due alerts, send
//! them as digests and record the outcome; and how long a lane may wait.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{
    chat, digest, intake, outbox, silences, tables, Worker, PARALLEL_DIGESTS, VACUUM_INBOX_AFTER,
};

impl Worker {
    /// Claims one batch of due alerts and delivers it; returns how many
    /// alerts it handled (0 when paused, unconfigured or idle).
    pub async fn deliver_once(&self) -> anyhow::Result<usize> {
        // Taken in even while delivery is paused: an alert is recorded (and
        // shown as pending) when it arrives, not when it can be sent.
        self.take_in_reported().await?;
        let snapshot = self.snapshot();
        let switches = &snapshot.switches;
        if !switches.monitor_enabled {
            return Ok(0);
        }
        let limit = (switches.digest_max_records * PARALLEL_DIGESTS) as i64;
        if !switches.email_enabled {
            return Ok(outbox::suppress_due(&self.0.delivery, limit).await? as usize);
        }
        let mailer = self.0.mailer.lock().expect("mailer lock").clone();
        let tables = snapshot.deliverable_tables(mailer.is_some());
        if tables.is_empty() {
            return Ok(0);
        }
        let pool = &self.0.delivery;
        let started = std::time::Instant::now();
        let claimed =
            outbox::claim(pool, &tables, limit, &self.0.id, switches.sending_lease).await?;
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
            outbox::unclaim(pool, &self.0.id, &ids, suppress).await?;
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
                rows.insert(table.as_str(), tables::fetch_rows(pool, t, &ids).await?);
            }
        }
        let fetched_at = started.elapsed();
        let row_of = |a: &outbox::ClaimedAlert| {
            rows.get(a.table_name.as_str())
                .and_then(|r| r.get(&a.record_id))
        };
        // What a silence holds is recorded as silenced, not sent.
        let now = chrono::Utc::now();
        let held: Vec<(i64, i32)> = claimed
            .iter()
            .filter_map(|a| {
                silences::holding(&snapshot.silences, a, row_of(a), now).map(|s| (a.id, s.id))
            })
            .collect();
        let held_count = held.len();
        let mut claimed = if held.is_empty() {
            claimed
        } else {
            outbox::silence(pool, &self.0.id, &held).await?;
            let held: std::collections::HashSet<i64> = held.iter().map(|(id, _)| *id).collect();
            claimed
                .into_iter()
                .filter(|a| !held.contains(&a.id))
                .collect()
        };
        if claimed.is_empty() {
            return Ok(held_count);
        }
        // Resolution notices go to those who got the alert they clear.
        for a in &mut claimed {
            a.notice = snapshot
                .table(&a.table_name)
                .is_some_and(|t| !t.verdicts.contains(&a.verdict));
        }
        let notices: Vec<&outbox::ClaimedAlert> = claimed.iter().filter(|a| a.notice).collect();
        let told = if notices.is_empty() {
            HashMap::new()
        } else {
            outbox::told_of(pool, &notices).await?
        };
        // A notice for an alert still being delivered waits until it is
        // over, so that it knows everyone who got it.
        let early: Vec<i64> = claimed
            .iter()
            .filter(|a| a.notice && told.get(&a.id).is_some_and(|(_, over)| !over))
            .map(|a| a.id)
            .collect();
        if !early.is_empty() {
            outbox::postpone(pool, &self.0.id, &early, Duration::from_secs(1)).await?;
            claimed.retain(|a| !early.contains(&a.id));
            if claimed.is_empty() {
                return Ok(held_count + early.len());
            }
        }
        let mut routed: HashMap<i64, Vec<String>> = claimed
            .iter()
            .map(|a| {
                let to = if a.notice {
                    // Those of them still recipients or channels of the table.
                    let (recipients, channels) = snapshot.destinations(a);
                    let mut to: Vec<String> = told
                        .get(&a.id)
                        .into_iter()
                        .flat_map(|(to, _)| to)
                        .map(|d| d.to_lowercase())
                        .filter(|d| {
                            recipients.iter().any(|r| r.email.eq_ignore_ascii_case(d))
                                || channels.iter().any(|c| c.destination() == *d)
                        })
                        .collect();
                    to.sort();
                    to
                } else {
                    snapshot.routed(a, row_of(a))
                };
                (a.id, to)
            })
            .collect();
        // A notice for an alert nobody (still here) got tells nobody:
        // recorded, not sent.
        let nobody: Vec<i64> = claimed
            .iter()
            .filter(|a| a.notice && routed[&a.id].is_empty())
            .map(|a| a.id)
            .collect();
        if !nobody.is_empty() {
            outbox::unclaim(pool, &self.0.id, &nobody, true).await?;
            claimed.retain(|a| !nobody.contains(&a.id));
            routed.retain(|id, _| !nobody.contains(id));
            if claimed.is_empty() {
                return Ok(held_count + nobody.len());
            }
        }
        // Each channel gets one message for the batch, while the mail goes;
        // schedules are read once for the batch.
        let clock = self.0.clock.read();
        let chat = chat::send_all(
            pool,
            &self.0.chat,
            &claimed,
            &rows,
            &routed,
            &snapshot,
            self.0.console_url.as_deref(),
            self.0.ack.as_ref(),
            clock.now,
        )
        .await;
        self.0.status.note_chat(&snapshot, &chat);
        let empty = HashMap::new();
        let digests = digest::group(&claimed, switches.digest_max_records, &routed);
        let mut outcomes = join_all(digests.iter().map(|d| {
            let rows = rows.get(d.table).unwrap_or(&empty);
            let renderer = snapshot
                .templates
                .get(d.table)
                .map_or(&self.0.renderer, |r| &**r);
            digest::send_digest(
                d,
                rows,
                &snapshot,
                mailer.as_ref(),
                renderer,
                &chat,
                self.0.ack.as_ref(),
                &clock,
            )
        }))
        .await;
        for (o, d) in outcomes.iter_mut().zip(&digests) {
            if !d.escalating && !d.notice {
                o.escalate_in_ms = snapshot
                    .escalations
                    .get(d.table)
                    .map(|e| e.after.as_millis() as i64);
            }
        }
        let sent_at = started.elapsed();
        outbox::complete(pool, &self.0.id, &outcomes)
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
    async fn take_in_reported(&self) -> anyhow::Result<()> {
        self.0.take_in_wanted.store(true, Ordering::SeqCst);
        loop {
            let Ok(_taking_in) = self.0.taking_in.try_lock() else {
                return Ok(());
            };
            if !self.0.take_in_wanted.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
            let taken = match intake::take_in(&self.0.intake, &self.snapshot().tables).await {
                Ok(taken) => taken,
                Err(e) => {
                    self.0.take_in_wanted.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            };
            let since = self
                .0
                .taken_since_vacuum
                .fetch_add(taken.reports, Ordering::Relaxed)
                + taken.reports;
            if taken.more() {
                self.0.take_in_wanted.store(true, Ordering::SeqCst);
                self.wake();
                return Ok(());
            }
            // The end of a burst: its dead rows would slow every taking in
            // until autovacuum comes.
            if since >= VACUUM_INBOX_AFTER {
                self.0.taken_since_vacuum.store(0, Ordering::Relaxed);
                if let Err(e) = intake::vacuum_inbox(&self.0.intake).await {
                    tracing::warn!(error = format!("{e:#}"), "inbox not vacuumed");
                }
            }
        }
    }

    /// Delivers until idle, then waits for a wake-up, the next retry, or
    /// shutdown. An in-flight batch always finishes before the loop ends.
    pub(super) async fn dispatch_loop(self, shutdown: CancellationToken) {
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
            // Sent alerts nobody acknowledged in time go to their escalation
            // group; the moment lives in the database, not in a timer.
            if !self.snapshot().escalations.is_empty() {
                match outbox::escalate_due(&self.0.delivery).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(alerts = n, "escalating unacknowledged alerts");
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "escalation check failed"),
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
        let mail = self.0.mailer.lock().expect("mailer lock").is_some();
        let tables = snapshot.deliverable_tables(mail);
        if !switches.monitor_enabled || tables.is_empty() {
            return IDLE;
        }
        let escalation = if snapshot.escalations.is_empty() {
            None
        } else {
            outbox::next_escalation(&self.0.delivery)
                .await
                .unwrap_or_default()
        };
        let due = outbox::next_due(&self.0.delivery, &tables)
            .await
            .map(|due| due.into_iter().chain(escalation).min());
        match due {
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
}
