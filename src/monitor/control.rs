//! The worker's view of the configuration: switches from `system_config`, the
//! active SMTP server, watched tables and recipients. Loaded as one snapshot,
//! reloaded whenever a control notification says something changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;

use super::retry::RetryPolicy;
use crate::config::Secret;
use crate::crypto::SecretBox;
use crate::mail::transport::Security;
use crate::mail::{Renderer, SmtpSettings};

/// Switches and tunables from `system_config`.
#[derive(Clone, Debug, PartialEq)]
pub struct Switches {
    pub monitor_enabled: bool,
    pub email_enabled: bool,
    pub check_interval: Duration,
    pub digest_max_records: usize,
    pub retry: RetryPolicy,
    pub sending_lease: Duration,
    pub audit_retention_days: u64,
}

impl Default for Switches {
    /// Every setting at the default [`SETTINGS`] gives it.
    fn default() -> Self {
        let mut s = Self {
            monitor_enabled: false,
            email_enabled: false,
            check_interval: Duration::ZERO,
            digest_max_records: 0,
            retry: RetryPolicy::default(),
            sending_lease: Duration::ZERO,
            audit_retention_days: 0,
        };
        for setting in SETTINGS {
            s.set(setting.key, setting.default);
        }
        s
    }
}

/// The kind of value a setting holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingKind {
    Boolean,
    Integer { min: u64, max: u64 },
}

/// A key of `system_config`: its range, default and description, written
/// here only (migrations seed the defaults; the API lists them from here).
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub key: &'static str,
    pub kind: SettingKind,
    pub default: &'static str,
    pub description: &'static str,
}

const fn int(min: u64, max: u64) -> SettingKind {
    SettingKind::Integer { min, max }
}

/// Every key the service reads from `system_config`.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "monitor_enabled",
        default: "true",
        kind: SettingKind::Boolean,
        description: "Deliver alerts (false pauses delivery on every copy; alerts wait)",
    },
    Setting {
        key: "email_enabled",
        default: "true",
        kind: SettingKind::Boolean,
        description: "Send e-mail (false records new alerts as suppressed)",
    },
    Setting {
        key: "check_interval",
        default: "5",
        kind: int(1, 60),
        description: "Minutes between fallback sweeps (1-60)",
    },
    Setting {
        key: "digest_max_records",
        default: "200",
        kind: int(1, 10_000),
        description: "Most records one digest e-mail carries",
    },
    Setting {
        key: "retry_max_attempts",
        default: "8",
        kind: int(1, 100),
        description: "Delivery attempts before an alert is marked failed",
    },
    Setting {
        key: "retry_base_ms",
        default: "2000",
        kind: int(1, 3_600_000),
        description: "First retry delay in milliseconds; doubles per attempt",
    },
    Setting {
        key: "retry_max_ms",
        default: "600000",
        kind: int(1, 86_400_000),
        description: "Longest retry delay in milliseconds",
    },
    Setting {
        key: "sending_lease_seconds",
        default: "300",
        kind: int(1, 86_400),
        description: "Seconds after which an unfinished send is taken over by another worker",
    },
    Setting {
        key: "audit_retention_days",
        kind: int(180, 3650),
        default: "180",
        description: "Days the operation audit log is kept (180-3650)",
    },
];

/// Why a setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("unknown setting '{0}'")]
    UnknownKey(String),
    #[error("{0}")]
    Invalid(String),
}

/// Checks a value for `key` and returns it in its stored form.
pub fn validate_setting(key: &str, value: &str) -> Result<String, SettingError> {
    let setting = SETTINGS
        .iter()
        .find(|s| s.key == key)
        .ok_or_else(|| SettingError::UnknownKey(key.to_owned()))?;
    let value = value.trim();
    match setting.kind {
        SettingKind::Boolean => parse_bool(value).map(|b| b.to_string()).ok_or_else(|| {
            SettingError::Invalid(format!("{key} must be true or false, not '{value}'"))
        }),
        SettingKind::Integer { min, max } => parse_in(value, min, max)
            .map(|n| n.to_string())
            .ok_or_else(|| {
                SettingError::Invalid(format!(
                    "{key} must be a whole number from {min} to {max}, not '{value}'"
                ))
            }),
    }
}

impl Switches {
    /// Reads the stored values; one that does not parse keeps its default
    /// (the API refuses such values, but SQL can write anything).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut s = Self::default();
        for (key, value) in pairs {
            let value = match validate_setting(key, value) {
                Ok(v) => v,
                Err(SettingError::UnknownKey(_)) => continue,
                Err(e) => {
                    tracing::warn!(key, value, error = %e, "ignoring an invalid system_config value");
                    continue;
                }
            };
            s.set(key, &value);
        }
        s
    }

    /// Takes a value [`validate_setting`] accepted.
    fn set(&mut self, key: &str, value: &str) {
        let number = || value.parse::<u64>().unwrap_or_default();
        match key {
            "monitor_enabled" => self.monitor_enabled = value == "true",
            "email_enabled" => self.email_enabled = value == "true",
            "check_interval" => self.check_interval = Duration::from_secs(number() * 60),
            "digest_max_records" => self.digest_max_records = number() as usize,
            "retry_max_attempts" => self.retry.max_attempts = number() as u32,
            "retry_base_ms" => self.retry.base = Duration::from_millis(number()),
            "retry_max_ms" => self.retry.max = Duration::from_millis(number()),
            "sending_lease_seconds" => self.sending_lease = Duration::from_secs(number()),
            "audit_retention_days" => self.audit_retention_days = number(),
            _ => {}
        }
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

/// The `smtp_config` columns [`smtp_settings`] reads.
pub const SMTP_COLUMNS: &str = "id, smtp_server, smtp_port, security, sender_email, sender_name,
    username, sender_password, timeout_seconds, password_encrypted";

/// An SMTP configuration row (selected with [`SMTP_COLUMNS`]) ready to send
/// with, its password decrypted.
pub fn smtp_settings(
    r: &tokio_postgres::Row,
    secrets: Option<&SecretBox>,
) -> Result<SmtpSettings, String> {
    let port = u16::try_from(r.get::<_, i32>(2)).unwrap_or(25);
    let password = match (r.get::<_, Option<&str>>(9), secrets) {
        (Some(stored), Some(secrets)) => Some(secrets.decrypt(stored).map_err(|e| e.to_string())?),
        (Some(_), None) => {
            return Err(format!(
                "the stored password is encrypted and SECRET_KEY is not set: {}",
                crate::crypto::KEY_HINT
            ))
        }
        // Left in clear by the old system.
        (None, _) => r
            .get::<_, Option<String>>(7)
            .filter(|p| !p.is_empty())
            .map(Secret::new),
    };
    Ok(SmtpSettings {
        id: r.get(0),
        host: r.get(1),
        port,
        security: Security::resolve(r.get::<_, Option<&str>>(3), port),
        sender_email: r.get(4),
        sender_name: r.get(5),
        username: r.get(6),
        password,
        timeout: Duration::from_secs(r.get::<_, i32>(8).clamp(1, 600) as u64),
    })
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

/// The active SMTP configuration as the worker can use it: the one place that
/// says whether mail can go out, and why not.
#[derive(Clone, Debug, Default)]
pub enum SmtpState {
    /// No configuration is active.
    #[default]
    NotConfigured,
    Usable(SmtpSettings),
    /// The active configuration cannot be used (its password cannot be
    /// decrypted, its sender is not an address…).
    Unusable {
        id: i32,
        why: String,
    },
}

impl SmtpState {
    /// What to send with, when mail can go out.
    pub fn settings(&self) -> Option<&SmtpSettings> {
        match self {
            Self::Usable(settings) => Some(settings),
            _ => None,
        }
    }

    /// Why no mail can go out, when none can.
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Usable(_) => None,
            Self::NotConfigured => Some("no active SMTP configuration".into()),
            Self::Unusable { id, why } => Some(format!(
                "SMTP configured but unusable: configuration {id}: {why}"
            )),
        }
    }
}

/// The transactions a configuration read saw: PostgreSQL's snapshot
/// (`xmin:xmax:xip,…`) of the read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenTransactions {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl SeenTransactions {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        };
        Some(Self {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether the changes of committed transaction `xid` were visible to
    /// the read.
    pub fn includes(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
}

/// Everything the worker reads from configuration, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// What the read saw (none for a snapshot never read).
    pub seen: Option<SeenTransactions>,
    pub switches: Switches,
    pub smtp: SmtpState,
    pub tables: Vec<WatchedTable>,
    pub recipients: HashMap<String, Vec<Recipient>>,
    /// Compiled templates of tables that replaced the built-in ones.
    pub templates: HashMap<String, Arc<Renderer>>,
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

    /// Reads the whole snapshot in one repeatable-read transaction;
    /// `secrets` decrypts the SMTP password.
    pub async fn load(pool: &Pool, secrets: Option<&SecretBox>) -> anyhow::Result<Self> {
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
        // The first statement fixes the transaction's snapshot.
        let seen: String = tx
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .context("Failed to start the configuration read")?
            .get(0);
        let rows = tx
            .query("SELECT config_key, config_value FROM system_config", &[])
            .await
            .context("Failed to read system_config")?;
        let pairs: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let switches = Switches::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        let smtp = tx
            .query_opt(
                &format!(
                    "SELECT {SMTP_COLUMNS} FROM smtp_config WHERE is_active
                      ORDER BY updated_at DESC, id DESC LIMIT 1"
                ),
                &[],
            )
            .await
            .context("Failed to read smtp_config")?
            .map_or(SmtpState::NotConfigured, |row| match smtp_settings(&row, secrets) {
                Ok(settings) => SmtpState::Usable(settings),
                Err(why) => {
                    let id = row.get::<_, i32>(0);
                    tracing::error!(smtp_config = id, error = %why, "cannot use the active SMTP configuration");
                    SmtpState::Unusable { id, why }
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
        let mut templates = HashMap::new();
        for r in tx
            .query(
                "SELECT table_name, subject, html, text FROM alert_templates",
                &[],
            )
            .await
            .context("Failed to read alert_templates")?
        {
            let table: String = r.get(0);
            match Renderer::new(r.get(1), r.get(2), r.get(3)) {
                Ok(renderer) => {
                    templates.insert(table, Arc::new(renderer));
                }
                Err(e) => {
                    tracing::error!(%table, error = %e, "stored template unusable; using the built-in one")
                }
            }
        }
        tx.commit()
            .await
            .context("Failed to finish the configuration read")?;
        Ok(Self {
            seen: SeenTransactions::parse(&seen),
            switches,
            smtp,
            tables,
            recipients,
            templates,
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
        assert_eq!(
            Switches::from_pairs([("audit_retention_days", "400")]).audit_retention_days,
            400
        );
        assert_eq!(
            Switches::from_pairs([("audit_retention_days", "30")]).audit_retention_days,
            180,
            "below the least kept"
        );
    }

    #[test]
    fn a_read_includes_what_committed_before_it() {
        let seen = SeenTransactions::parse("100:105:101,103").unwrap();
        assert!(seen.includes(99) && seen.includes(102) && seen.includes(104));
        assert!(!seen.includes(101) && !seen.includes(103) && !seen.includes(105));
        assert!(SeenTransactions::parse("7:7:").unwrap().includes(6));
        assert_eq!(SeenTransactions::parse("x"), None);
    }

    #[test]
    fn defaults_are_the_catalogue_s() {
        let d = Switches::default();
        assert!(d.monitor_enabled && d.email_enabled);
        assert_eq!(d.check_interval, Duration::from_secs(300));
        assert_eq!(d.digest_max_records, 200);
        assert_eq!(d.retry, RetryPolicy::default());
        assert_eq!(d.sending_lease, Duration::from_secs(300));
        assert_eq!(d.audit_retention_days, 180);
        for setting in SETTINGS {
            assert!(
                validate_setting(setting.key, setting.default).is_ok(),
                "{}",
                setting.key
            );
        }
    }
}
