//! Database plumbing: creating the database, applying migrations under an
//! advisory lock, and the connection pool.

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

mod embedded {
    refinery::embed_migrations!("db/migrations");
}

/// Arbitrary constant: the advisory lock every copy takes around migrations, so
/// two copies starting at once do not both migrate.
const MIGRATION_LOCK: i64 = 0x6175_6469_745f_6d67;

/// Why the database could not be reached or created.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
}

/// Connects once, spawning the connection's driver task. Warnings the server
/// sends (`RAISE WARNING` in a migration: what an upgrade changed) are logged.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notice(n)) if n.severity() == "WARNING" => {
                    tracing::warn!("{}", n.message());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "database connection closed");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// Connects to the configured database, creating it first when it does not
/// exist and the role may create it.
pub async fn connect_or_create(config: &tokio_postgres::Config) -> Result<Client, DbError> {
    match connect(config).await {
        Ok(client) => return Ok(client),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => return Err(DbError::Connect(describe(&e))),
    }
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect(&admin)
        .await
        .map_err(|e| DbError::Connect(describe(&e)))?;
    let create = format!("CREATE DATABASE {}", quote_ident(&name));
    match client.batch_execute(&create).await {
        Ok(()) => tracing::info!(database = %name, "created database"),
        // Another copy created it a moment ago.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
        Err(e) => {
            return Err(DbError::Connect(format!(
                "database \"{name}\" does not exist and cannot be created: {}",
                describe(&e)
            )))
        }
    }
    connect(config)
        .await
        .map_err(|e| DbError::Connect(describe(&e)))
}

/// Applies pending migrations; safe when several copies start together.
pub async fn migrate(client: &mut Client) -> anyhow::Result<usize> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("Failed to take the migration lock")?;
    let report = match adopt_old_system(client).await {
        Ok(()) => embedded::migrations::runner()
            .set_abort_divergent(true)
            .run_async(client)
            .await
            .context("Failed to apply migrations"),
        Err(e) => Err(e),
    };
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("Failed to release the migration lock")?;
    let report = report?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(report.applied_migrations().len())
}

/// Before the first migration only: gives the tables of the old Python
/// system, when it created them, the shape migration 1 grows from.
async fn adopt_old_system(client: &mut Client) -> anyhow::Result<()> {
    let migrated: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .context("Failed to read the migration history")?
        .get(0);
    if migrated {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.batch_execute(include_str!("../db/adopt_old_system.sql"))
        .await
        .context("Failed to prepare the old system's tables for migration")?;
    tx.commit().await?;
    Ok(())
}

/// How many migrations this build carries.
pub fn migration_count() -> usize {
    embedded::migrations::runner().get_migrations().len()
}

/// A connection from `pool`, or an error that says so.
pub async fn client(pool: &Pool) -> anyhow::Result<deadpool_postgres::Object> {
    pool.get()
        .await
        .context("Failed to get a database connection")
}

/// A pool whose sessions carry `settings` from the start (added to whatever
/// options `config` has), so that a statement costs one round trip.
pub fn pool_with_settings(
    config: &tokio_postgres::Config,
    settings: &[(&str, &str)],
    size: usize,
) -> anyhow::Result<Pool> {
    pool(&with_settings(config, settings), size)
}

/// `config` with `settings` added to whatever options it has.
fn with_settings(
    config: &tokio_postgres::Config,
    settings: &[(&str, &str)],
) -> tokio_postgres::Config {
    let mut config = config.clone();
    let ours = settings
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ");
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    config.options(&options);
    config
}

/// The pool every query but LISTEN goes through.
pub fn pool(config: &tokio_postgres::Config, size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("Failed to build the database pool")
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A connection error in plain words, with the server's message when there is one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_join_the_options_of_the_database_url() {
        let settings = [("enable_sort", "off"), ("jit", "off")];
        let plain: tokio_postgres::Config = "postgres://u@h/db".parse().unwrap();
        let options = "-c enable_sort=off -c jit=off";
        assert_eq!(
            super::with_settings(&plain, &settings).get_options(),
            Some(options)
        );
        let theirs: tokio_postgres::Config = "postgres://u@h/db?options=-c%20search_path%3Dmod"
            .parse()
            .unwrap();
        assert_eq!(
            super::with_settings(&theirs, &settings).get_options(),
            Some(format!("-c search_path=mod {options}").as_str())
        );
    }
}
