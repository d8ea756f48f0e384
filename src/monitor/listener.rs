//! The listener: one dedicated connection that LISTENs for the triggers'
//! wake-ups and for configuration changes, reconnecting with capped backoff.
//! After every (re)connect it runs a catch-up sweep, since whatever was
//! notified while it was away is lost.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::retry::RetryPolicy;
use super::{Worker, CONTROL_CHANNEL, DATA_CHANNEL};

const RECONNECT: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(100),
    max: Duration::from_secs(30),
};

/// Listens until `shutdown`, reconnecting whenever the connection is lost.
pub async fn run(worker: Worker, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let result = listen(&worker, &shutdown, &mut failures).await;
        worker.status().set_listener_connected(false);
        match result {
            Ok(()) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = RECONNECT.delay(failures, fastrand::f64());
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "listener disconnected");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One connection's life. `Ok` only on shutdown.
async fn listen(
    worker: &Worker,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> anyhow::Result<()> {
    let mut config = worker.db_config().clone();
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10));
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .context("Failed to connect the listener")?;
    let (tx, mut channels) = mpsc::unbounded_channel::<(String, String)>();
    // Notifications arrive only when the connection is polled directly; this
    // task also drives the client's own requests. It ends with the connection.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    let _abort_driver = AbortOnDrop(driver.abort_handle());
    let data = if worker.listens_for_alerts() {
        format!("LISTEN {DATA_CHANNEL};")
    } else {
        String::new()
    };
    client
        .batch_execute(&format!("{data} LISTEN {CONTROL_CHANNEL}"))
        .await
        .context("Failed to LISTEN")?;
    *failures = 0;
    worker.status().set_listener_connected(true);
    tracing::info!("listener connected");
    worker.catch_up().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            channel = channels.recv() => match channel {
                Some((c, payload)) if c == CONTROL_CHANNEL => worker.config_changed(&payload),
                Some(_) => {
                    worker.status().note_notification();
                    worker.wake();
                }
                None => {
                    return match driver_result(driver).await {
                        Some(e) => Err(e).context("listener connection failed"),
                        None => anyhow::bail!("listener connection closed"),
                    };
                }
            }
        }
    }
}

async fn driver_result(
    driver: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> Option<tokio_postgres::Error> {
    driver.await.ok().and_then(Result::err)
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
