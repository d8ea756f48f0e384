//! Assembly: database, migrations, worker and HTTP server, started and stopped
//! as one. `main` and the tests both go through [`App::start`].

use std::net::SocketAddr;
use std::time::Duration;

use deadpool_postgres::Pool;
use poem::listener::{Acceptor, Listener, TcpListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::audit_log::writer::{self, AuditQueue};
use crate::config::Config;
use crate::crypto::SecretBox;
use crate::db;
use crate::monitor::Worker;

/// How long in-flight work may take to finish after a stop is asked for.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Why the service could not start; each names the setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("DATABASE_URL: {0}")]
    Database(String),
    #[error("API_HOST/API_PORT: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A running service.
pub struct App {
    addr: SocketAddr,
    pool: Pool,
    worker: Worker,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    audit: AuditQueue,
    audit_stop: CancellationToken,
    audit_writer: tokio::task::JoinHandle<()>,
}

impl App {
    /// Prepares the database (creating and migrating it as needed), then
    /// starts the worker and the HTTP server.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let secrets = config.secrets.clone();
        let (pool, db_config) = prepare_database(config).await?;
        match &secrets {
            Some(secrets) => encrypt_legacy_passwords(&pool, secrets).await?,
            None => refuse_clear_passwords(&pool).await?,
        }
        let worker = Worker::new(
            pool.clone(),
            db_config,
            secrets.clone(),
            config.smtp_pool_size,
            config.listen_for_alerts,
            crate::monitor::ChatSettings {
                allowed_hosts: config.channel_allowed_hosts.clone(),
                public_url: config.public_url.clone(),
            },
        )
        .await?;
        let acceptor = TcpListener::bind(config.api_addr)
            .into_acceptor()
            .await
            .map_err(|source| StartError::Listen {
                addr: config.api_addr,
                source,
            })?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(config.api_addr);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        worker.spawn(&mut tasks, &shutdown);
        let audit_stop = CancellationToken::new();
        let (audit, audit_writer) = writer::start(
            pool.clone(),
            config.audit_queue_capacity,
            secrets.clone(),
            config.audit_checkpoint_every,
            audit_stop.clone(),
        );
        tasks.spawn(purge_loop(
            pool.clone(),
            worker.clone(),
            secrets.clone(),
            shutdown.clone(),
        ));
        let routes = api::routes(
            AppState {
                pool: pool.clone(),
                worker: worker.clone(),
                secrets,
                auth: std::sync::Arc::new(crate::auth::Authenticator::new(
                    config.admin_token.as_ref(),
                )),
                audit: audit.clone(),
                http_requests: Default::default(),
            },
            &config.cors_origins,
            config.trusted_proxies.clone(),
            config.audit_enabled,
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let server = poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
                routes,
                stop.cancelled_owned(),
                Some(Duration::from_secs(10)),
            );
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(%addr, worker = worker.id(), "audit-alert started");
        Ok(Self {
            addr,
            pool,
            worker,
            shutdown,
            tasks,
            audit,
            audit_stop,
            audit_writer,
        })
    }

    /// The address the HTTP server listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    pub fn audit_queue(&self) -> &AuditQueue {
        &self.audit
    }

    /// Soft stop: no new claims, in-flight sends finish (within a deadline),
    /// then every task ends.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(STOP_DEADLINE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("stop deadline passed; abandoning unfinished work");
            self.tasks.abort_all();
        }
        // The server has stopped: nothing enqueues any more; write what is queued.
        self.audit_stop.cancel();
        if tokio::time::timeout(STOP_DEADLINE, &mut self.audit_writer)
            .await
            .is_err()
        {
            tracing::error!(
                queued = self.audit.depth(),
                "audit log entries could not be written before the stop deadline"
            );
            self.audit_writer.abort();
        }
        self.pool.close();
        self.worker.close();
        tracing::info!("audit-alert stopped");
    }
}

/// Purges audit-log entries past their retention, at start and then daily.
async fn purge_loop(
    pool: Pool,
    worker: Worker,
    secrets: Option<SecretBox>,
    shutdown: CancellationToken,
) {
    loop {
        let days = worker.snapshot().switches.audit_retention_days;
        match writer::purge(&pool, days, secrets.as_ref()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, days, "audit log retention purge"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "audit log retention purge failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
        }
    }
}

/// Without a key, passwords the old system stored in clear would stay in clear:
/// the service does not start until `SECRET_KEY` is set.
async fn refuse_clear_passwords(pool: &Pool) -> Result<(), StartError> {
    use anyhow::Context;
    let client = crate::db::client(pool).await?;
    let clear: i64 = client
        .query_one(
            "SELECT count(*) FROM smtp_config
              WHERE coalesce(sender_password, '') <> '' AND password_encrypted IS NULL",
            &[],
        )
        .await
        .context("Failed to read stored passwords")?
        .get(0);
    if clear == 0 {
        return Ok(());
    }
    Err(StartError::Config(format!(
        "SECRET_KEY: not set, and {clear} SMTP password(s) the old system stored in clear \
         wait to be encrypted at start: {}",
        crate::crypto::KEY_HINT
    )))
}

/// Encrypts SMTP passwords the old system stored in clear, once a key exists.
async fn encrypt_legacy_passwords(pool: &Pool, secrets: &SecretBox) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut client = crate::db::client(pool).await?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start a transaction")?;
    let rows = tx
        .query(
            "SELECT id, sender_password FROM smtp_config
              WHERE coalesce(sender_password, '') <> '' AND password_encrypted IS NULL FOR UPDATE",
            &[],
        )
        .await
        .context("Failed to read stored passwords")?;
    for row in &rows {
        let (id, plain): (i32, &str) = (row.get(0), row.get(1));
        tx.execute(
            "UPDATE smtp_config SET password_encrypted = $2, sender_password = NULL WHERE id = $1",
            &[&id, &secrets.encrypt(plain)],
        )
        .await
        .context("Failed to encrypt a stored password")?;
    }
    tx.commit()
        .await
        .context("Failed to encrypt stored passwords")?;
    if !rows.is_empty() {
        tracing::info!(
            count = rows.len(),
            "encrypted SMTP passwords stored in clear"
        );
    }
    Ok(())
}

/// Creates the database if needed, applies migrations, and builds the pool.
pub async fn prepare_database(
    config: &Config,
) -> Result<(Pool, tokio_postgres::Config), StartError> {
    let mut db_config = config.database.clone();
    if db_config.get_connect_timeout().is_none() {
        db_config.connect_timeout(Duration::from_secs(10));
    }
    let mut client = db::connect_or_create(&db_config)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    db::migrate(&mut client).await?;
    let pool = db::pool(&db_config, config.db_pool_size)?;
    Ok((pool, db_config))
}
