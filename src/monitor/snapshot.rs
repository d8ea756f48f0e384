//! The worker's view of the configuration, read as one snapshot: the
//! switches, the active SMTP server, watched tables, recipients and templates.
//! Reloaded whenever a control notification says something changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;

use super::outbox::ClaimedAlert;
use super::schedule::Schedule;
use super::settings::Switches;
use super::silences::{Condition, Route, Silence};
use crate::channels::{BlockTemplate, ChannelKind};
use crate::crypto::{Secret, SecretBox};
use crate::mail::transport::Security;
use crate::mail::{Renderer, SmtpSettings};

/// The `smtp_config` columns [`smtp_settings`] reads.
const SMTP_COLUMNS: &str = "id, smtp_server, smtp_port, security, sender_email, sender_name,
    username, sender_password, timeout_seconds, password_encrypted";

/// An SMTP configuration row (selected with [`SMTP_COLUMNS`]) ready to send
/// with, its password decrypted.
fn smtp_settings(
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

/// One SMTP configuration as the mailer needs it, its password decrypted
/// (the API's test send): `None` when there is no such configuration, `Err`
/// saying why it cannot be used.
pub async fn smtp_configuration(
    pool: &Pool,
    id: i32,
    secrets: Option<&SecretBox>,
) -> anyhow::Result<Option<Result<SmtpSettings, String>>> {
    let row = crate::db::client(pool)
        .await?
        .query_opt(
            &format!("SELECT {SMTP_COLUMNS} FROM smtp_config WHERE id = $1"),
            &[&id],
        )
        .await
        .context("Failed to read smtp_config")?;
    Ok(row.map(|r| smtp_settings(&r, secrets)))
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
    /// Which of the table's alerts it takes.
    pub route: Route,
    /// When it takes them (`None`: at any time).
    pub schedule: Option<Arc<Schedule>>,
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

/// A chat-bot channel, its URL and secret opened.
#[derive(Clone)]
pub struct Channel {
    pub id: i32,
    pub kind: ChannelKind,
    pub name: Option<String>,
    pub url: String,
    pub secret: Option<String>,
    /// The bot's key for its send limits.
    pub bot: String,
    /// Which of the table's alerts it takes.
    pub route: Route,
    /// When it takes them (`None`: at any time).
    pub schedule: Option<Arc<Schedule>>,
}

impl Channel {
    /// Its key among an alert's destinations (`delivered_to`).
    pub fn destination(&self) -> String {
        format!("channel:{}", self.id)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Whom to tell when a table's sent alert stays unacknowledged, and after
/// how long.
#[derive(Clone, Debug)]
pub struct Escalation {
    pub recipients: Vec<Recipient>,
    pub after: Duration,
}

/// The `notification_channels` columns [`open_channel`] reads.
const CHANNEL_COLUMNS: &str =
    "id, table_name, kind, name, webhook_url_encrypted, secret_encrypted, bot, verdicts, conditions,
     schedule";

/// A channel row (selected with [`CHANNEL_COLUMNS`]), its URL and secret
/// opened.
fn open_channel(r: &tokio_postgres::Row, secrets: Option<&SecretBox>) -> Result<Channel, String> {
    let open = |stored: &str| match secrets {
        Some(secrets) => secrets
            .decrypt(stored)
            .map(|s| s.expose().to_owned())
            .map_err(|e| format!("cannot open its webhook URL or secret: {e}")),
        None => Err("SECRET_KEY is not set: its webhook URL cannot be opened".to_owned()),
    };
    let kind = ChannelKind::parse(r.get(2)).ok_or("unknown channel type")?;
    Ok(Channel {
        id: r.get(0),
        kind,
        name: r.get(3),
        url: open(r.get(4))?,
        secret: r.get::<_, Option<&str>>(5).map(open).transpose()?,
        bot: r.get(6),
        route: Route::from_columns(r.get(7), r.get(8)),
        schedule: read_schedule(r.get(9)),
    })
}

/// A stored schedule; one that cannot be read takes alerts at any time.
fn read_schedule(stored: Option<serde_json::Value>) -> Option<Arc<Schedule>> {
    let stored = stored?;
    match Schedule::from_json(stored) {
        Some(s) => Some(Arc::new(s)),
        None => {
            tracing::error!("stored schedule unusable; alerts go at any time");
            None
        }
    }
}

/// One channel, active or not, ready to send with (for a test message);
/// `None` when there is no such channel.
pub async fn channel(
    pool: &Pool,
    id: i32,
    secrets: Option<&SecretBox>,
) -> anyhow::Result<Option<Result<Channel, String>>> {
    let client = crate::db::client(pool).await?;
    let row = client
        .query_opt(
            &format!("SELECT {CHANNEL_COLUMNS} FROM notification_channels WHERE id = $1"),
            &[&id],
        )
        .await
        .context("Failed to read a channel")?;
    Ok(row.map(|r| open_channel(&r, secrets)))
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
    /// Active chat-bot channels of each table, ready to send with.
    pub channels: HashMap<String, Vec<Channel>>,
    /// Tables' escalation groups and delays.
    pub escalations: HashMap<String, Escalation>,
    /// Silences not yet ended (some may not have begun).
    pub silences: Vec<Silence>,
    /// Tables' own blocks for chat-bot messages, by (table, kind).
    pub channel_templates: HashMap<(String, ChannelKind), Arc<BlockTemplate>>,
    /// Compiled templates of tables that replaced the built-in ones.
    pub templates: HashMap<String, Arc<Renderer>>,
}

impl Snapshot {
    /// Enabled tables that have someone to mail (when `mail` can be sent)
    /// or a channel.
    pub fn deliverable_tables(&self, mail: bool) -> Vec<String> {
        self.tables
            .iter()
            .filter(|t| {
                (mail && self.recipients.get(&t.name).is_some_and(|r| !r.is_empty()))
                    || self.channels.get(&t.name).is_some_and(|c| !c.is_empty())
            })
            .map(|t| t.name.clone())
            .collect()
    }

    /// The recipients and channels an alert goes to: those of its table
    /// whose routes take it, or its table's escalation group when it is
    /// escalating.
    pub fn destinations(&self, alert: &ClaimedAlert) -> (&[Recipient], &[Channel]) {
        let table = alert.table_name.as_str();
        if alert.escalating {
            let group = self.escalations.get(table).map(|e| e.recipients.as_slice());
            return (group.unwrap_or_default(), &[]);
        }
        (
            self.recipients
                .get(table)
                .map(Vec::as_slice)
                .unwrap_or_default(),
            self.channels
                .get(table)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )
    }

    /// The destinations that take `alert` (whose row is `row`): recipients'
    /// addresses in lower case and `channel:<id>`, sorted.
    pub fn routed(
        &self,
        alert: &ClaimedAlert,
        row: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Vec<String> {
        let (recipients, channels) = self.destinations(alert);
        let verdict = alert.verdict.as_str();
        let mut to: Vec<String> = recipients
            .iter()
            .filter(|r| r.route.takes(verdict, row))
            .map(|r| r.email.to_lowercase())
            .chain(
                channels
                    .iter()
                    .filter(|c| c.route.takes(verdict, row))
                    .map(Channel::destination),
            )
            .collect();
        to.sort();
        to.dedup();
        to
    }

    /// Every destination's schedule, by table, in a stable order (to tell
    /// whether one changed).
    pub fn schedules(&self) -> Vec<(&str, String, &Schedule)> {
        let mut all: Vec<(&str, String, &Schedule)> = Vec::new();
        for (table, recipients) in &self.recipients {
            for r in recipients {
                if let Some(s) = &r.schedule {
                    all.push((table, r.email.to_lowercase(), s));
                }
            }
        }
        for (table, channels) in &self.channels {
            for c in channels {
                if let Some(s) = &c.schedule {
                    all.push((table, c.destination(), s));
                }
            }
        }
        all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        all
    }

    pub fn table(&self, name: &str) -> Option<&WatchedTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Reads the whole snapshot in one repeatable-read transaction;
    /// `secrets` decrypts the SMTP password.
    pub async fn load(pool: &Pool, secrets: Option<&SecretBox>) -> anyhow::Result<Self> {
        let mut client = crate::db::client(pool).await?;
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
                "SELECT table_name, email, name, verdicts, conditions, schedule
                   FROM recipients_config WHERE is_active ORDER BY id",
                &[],
            )
            .await
            .context("Failed to read recipients_config")?
        {
            recipients.entry(r.get(0)).or_default().push(Recipient {
                email: r.get(1),
                name: r.get(2),
                route: Route::from_columns(r.get(3), r.get(4)),
                schedule: read_schedule(r.get(5)),
            });
        }
        let mut channels: HashMap<String, Vec<Channel>> = HashMap::new();
        for r in tx
            .query(
                &format!(
                    "SELECT {CHANNEL_COLUMNS} FROM notification_channels WHERE is_active ORDER BY id"
                ),
                &[],
            )
            .await
            .context("Failed to read notification_channels")?
        {
            match open_channel(&r, secrets) {
                Ok(channel) => channels.entry(r.get(1)).or_default().push(channel),
                Err(why) => {
                    tracing::error!(channel = r.get::<_, i32>(0), error = %why, "channel not used")
                }
            }
        }
        let mut escalations = HashMap::new();
        for r in tx
            .query(
                "SELECT table_name, emails, after_minutes FROM table_escalations",
                &[],
            )
            .await
            .context("Failed to read table_escalations")?
        {
            escalations.insert(
                r.get::<_, String>(0),
                Escalation {
                    recipients: r
                        .get::<_, Vec<String>>(1)
                        .into_iter()
                        .map(|email| Recipient {
                            email,
                            name: None,
                            route: Route::default(),
                            schedule: None,
                        })
                        .collect(),
                    after: Duration::from_secs(60 * r.get::<_, i32>(2).max(1) as u64),
                },
            );
        }
        let mut silences = Vec::new();
        for r in tx
            .query(
                "SELECT id, table_name, verdicts, conditions, starts_at, ends_at
                   FROM silences WHERE ends_at > now() ORDER BY id",
                &[],
            )
            .await
            .context("Failed to read silences")?
        {
            match serde_json::from_value::<Vec<Condition>>(r.get(3)) {
                Ok(conditions) => silences.push(Silence {
                    id: r.get(0),
                    table_name: r.get(1),
                    verdicts: r.get(2),
                    conditions,
                    starts_at: r.get(4),
                    ends_at: r.get(5),
                }),
                Err(e) => {
                    tracing::error!(silence = r.get::<_, i32>(0), error = %e, "silence unreadable; not applied")
                }
            }
        }
        let mut channel_templates = HashMap::new();
        for r in tx
            .query("SELECT table_name, kind, block FROM channel_templates", &[])
            .await
            .context("Failed to read channel_templates")?
        {
            let table: String = r.get(0);
            let Some(kind) = ChannelKind::parse(r.get(1)) else {
                continue;
            };
            match BlockTemplate::new(r.get(2)) {
                Ok(t) => {
                    channel_templates.insert((table, kind), Arc::new(t));
                }
                Err(e) => {
                    tracing::error!(%table, kind = kind.as_str(), error = %e, "stored channel template unusable; using the built-in one")
                }
            }
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
            channels,
            escalations,
            silences,
            channel_templates,
            templates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_includes_what_committed_before_it() {
        let seen = SeenTransactions::parse("100:105:101,103").unwrap();
        assert!(seen.includes(99) && seen.includes(102) && seen.includes(104));
        assert!(!seen.includes(101) && !seen.includes(103) && !seen.includes(105));
        assert!(SeenTransactions::parse("7:7:").unwrap().includes(6));
        assert_eq!(SeenTransactions::parse("x"), None);
    }
}
