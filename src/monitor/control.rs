//! The worker's view of the configuration: switches from `system_config`, the
//! active SMTP server, watched tables and recipients. Loaded as one snapshot,
//! reloaded whenever a control notification says something changed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;

use super::retry::RetryPolicy;
use crate::config::Secret;
use crate::mail::transport::Security;
use crate::mail::SmtpSettings;

/// Switches and tunables from `system_config`.
#[derive(Clone, Debug, PartialEq)]
pub struct Switches {
    pub monitor_enabled: bool,
    pub email_enabled: bool,
    pub check_interval: Duration,
    pub digest_max_records: usize,
    pub retry: RetryPolicy,
    pub sending_lease: Duration,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            monitor_enabled: true,
            email_enabled: true,
            check_interval: Duration::from_secs(5 * 60),
            digest_max_records: 200,
            retry: RetryPolicy::default(),
            sending_lease: Duration::from_secs(300),
        }
    }
}

impl Switches {
    /// Reads the stored values; one that does not parse keeps its default
    /// (the API refuses such values, but SQL can write anything).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut s = Self::default();
        for (key, value) in pairs {
            let value = value.trim();
            let ok =
                match key {
                    "monitor_enabled" => parse_bool(value).map(|v| s.monitor_enabled = v),
                    "email_enabled" => parse_bool(value).map(|v| s.email_enabled = v),
                    "check_interval" => parse_in(value, 1, 60)
                        .map(|v| s.check_interval = Duration::from_secs(v * 60)),
                    "digest_max_records" => {
                        parse_in(value, 1, 10_000).map(|v| s.digest_max_records = v as usize)
                    }
                    "retry_max_attempts" => {
                        parse_in(value, 1, 100).map(|v| s.retry.max_attempts = v as u32)
                    }
                    "retry_base_ms" => parse_in(value, 1, 3_600_000)
                        .map(|v| s.retry.base = Duration::from_millis(v)),
                    "retry_max_ms" => parse_in(value, 1, 86_400_000)
                        .map(|v| s.retry.max = Duration::from_millis(v)),
                    "sending_lease_seconds" => {
                        parse_in(value, 1, 86_400).map(|v| s.sending_lease = Duration::from_secs(v))
                    }
                    _ => Some(()),
                };
            if ok.is_none() {
                tracing::warn!(key, value, "ignoring an invalid system_config value");
            }
        }
        s
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_in(v: &str, min: u64, max: u64) -> Option<u64> {
    v.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

/// A table whose flagged rows raise alerts.
#[derive(Clone, Debug)]
pub struct WatchedTable {
    pub id: i32,
    /// The name alerts and recipients use.
    pub name: String,
    /// The relation, already quoted for SQL (PostgreSQL's `regclass` text).
    pub relation: String,
    pub id_column: String,
    pub id_type: String,
    pub verdict_column: String,
    pub verdicts: Vec<String>,
}

impl WatchedTable {
    /// Integer ids let the sweep look only above a watermark.
    pub fn has_integer_ids(&self) -> bool {
        matches!(self.id_type.as_str(), "integer" | "bigint" | "smallint")
    }
}

/// An active recipient of one table's alerts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub email: String,
    pub name: Option<String>,
}

/// Everything the worker reads from configuration, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub switches: Switches,
    pub smtp: Option<SmtpSettings>,
    pub tables: Vec<WatchedTable>,
    pub recipients: HashMap<String, Vec<Recipient>>,
}

impl Snapshot {
    /// Enabled tables that have someone to mail.
    pub fn deliverable_tables(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter(|t| self.recipients.get(&t.name).is_some_and(|r| !r.is_empty()))
            .map(|t| t.name.clone())
            .collect()
    }

    pub fn table(&self, name: &str) -> Option<&WatchedTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Reads the whole snapshot in one repeatable-read transaction.
    pub async fn load(pool: &Pool) -> anyhow::Result<Self> {
        let mut client = pool
            .get()
            .await
            .context("Failed to get a database connection")?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .context("Failed to start the configuration read")?;
        let rows = tx
            .query("SELECT config_key, config_value FROM system_config", &[])
            .await
            .context("Failed to read system_config")?;
        let pairs: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let switches = Switches::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        let smtp = tx
            .query_opt(
                "SELECT id, smtp_server, smtp_port, security, sender_email, sender_name,
                        username, sender_password, timeout_seconds
                   FROM smtp_config WHERE is_active ORDER BY updated_at DESC, id DESC LIMIT 1",
                &[],
            )
            .await
            .context("Failed to read smtp_config")?
            .map(|r| {
                let port = u16::try_from(r.get::<_, i32>(2)).unwrap_or(25);
                SmtpSettings {
                    id: r.get(0),
                    host: r.get(1),
                    port,
                    security: Security::resolve(r.get::<_, Option<&str>>(3), port),
                    sender_email: r.get(4),
                    sender_name: r.get(5),
                    username: r.get(6),
                    password: r
                        .get::<_, Option<String>>(7)
                        .filter(|p| !p.is_empty())
                        .map(Secret::new),
                    timeout: Duration::from_secs(r.get::<_, i32>(8).clamp(1, 600) as u64),
                }
            });

        let tables = tx
            .query(
                "SELECT id, table_name, relation::text, id_column, id_type, verdict_column,
                        alert_verdicts
                   FROM watched_tables WHERE enabled ORDER BY id",
                &[],
            )
            .await
            .context("Failed to read watched_tables")?
            .iter()
            .map(|r| WatchedTable {
                id: r.get(0),
                name: r.get(1),
                relation: r.get(2),
                id_column: r.get(3),
                id_type: r.get(4),
                verdict_column: r.get(5),
                verdicts: r.get(6),
            })
            .collect();

        let mut recipients: HashMap<String, Vec<Recipient>> = HashMap::new();
        for r in tx
            .query(
                "SELECT table_name, email, name FROM recipients_config
                  WHERE is_active ORDER BY id",
                &[],
            )
            .await
            .context("Failed to read recipients_config")?
        {
            recipients.entry(r.get(0)).or_default().push(Recipient {
                email: r.get(1),
                name: r.get(2),
            });
        }
        tx.commit()
            .await
            .context("Failed to finish the configuration read")?;
        Ok(Self {
            switches,
            smtp,
            tables,
            recipients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse_and_ignore_garbage() {
        let s = Switches::from_pairs([
            ("monitor_enabled", "false"),
            ("check_interval", "2"),
            ("digest_max_records", "many"),
            ("retry_base_ms", "50"),
        ]);
        assert!(!s.monitor_enabled);
        assert_eq!(s.check_interval, Duration::from_secs(120));
        assert_eq!(s.digest_max_records, 200);
        assert_eq!(s.retry.base, Duration::from_millis(50));
        assert_eq!(
            Switches::from_pairs([("check_interval", "61")]).check_interval,
            Duration::from_secs(300)
        );
    }
}
