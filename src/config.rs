//! Typed configuration read from the environment (and a `.env` file), validated
//! once at start. A bad value becomes a [`ConfigError`] naming the variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

pub use crate::crypto::Secret;
use crate::crypto::SecretBox;

/// Everything the service needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Connection settings (the password inside is never logged: tokio-postgres
    /// redacts it in `Debug`).
    pub database: tokio_postgres::Config,
    /// Largest number of pooled database connections.
    pub db_pool_size: usize,
    /// Most SMTP connections open at once (`SMTP_POOL_SIZE`).
    pub smtp_pool_size: u32,
    pub api_addr: SocketAddr,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    /// `LOG_FORMAT=json` writes one JSON object per line, for collectors.
    pub log_json: bool,
    pub admin_token: Option<Secret>,
    /// The cipher of `SECRET_KEY`, parsed once here; SMTP passwords at rest.
    pub secrets: Option<SecretBox>,
    /// Origins browsers may call the API from (`CORS_ALLOWED_ORIGINS`,
    /// comma-separated); none by default.
    pub cors_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<IpAddr>,
    /// Audit-log entries that may wait to be written (`AUDIT_QUEUE_CAPACITY`).
    pub audit_queue_capacity: usize,
    /// How often the head of the audit-log chain is signed while entries
    /// arrive (`AUDIT_CHECKPOINT_SECONDS`).
    pub audit_checkpoint_every: std::time::Duration,
    /// Hosts chat-bot webhook URLs may point to (`CHANNEL_ALLOWED_HOSTS`,
    /// comma-separated, `host` or `host:port`); the three services' hosts by
    /// default. A listed private or loopback address is allowed, no other.
    pub channel_allowed_hosts: Vec<String>,
    /// Where people reach this service (`PUBLIC_URL`, e.g.
    /// `https://alerts.example.com`): links in chat messages.
    pub public_url: Option<String>,
    /// Always true from the environment; the benchmarks turn it off to
    /// measure what auditing costs.
    pub audit_enabled: bool,
    /// Always true from the environment; a benchmark and a test turn it off
    /// to see delivery by the fallback sweep alone (polling).
    pub listen_for_alerts: bool,
}

/// One bad setting: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Reads the process environment, after loading `.env` from the working
    /// directory when there is one (real environment variables win).
    pub fn from_env() -> Result<Self, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError::new(".env", e.to_string())),
        }
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Builds the configuration from any variable source (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database = database_config(&get)?;
        let host = get("API_HOST").unwrap_or_else(|| "0.0.0.0".into());
        let host: IpAddr = host
            .trim()
            .parse()
            .map_err(|_| ConfigError::new("API_HOST", format!("'{host}' is not an IP address")))?;
        let port = parse_port("API_PORT", get("API_PORT"), 8000, true)?;
        let db_pool_size = match get("DB_POOL_SIZE") {
            None => 16,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(ConfigError::new(
                        "DB_POOL_SIZE",
                        format!("'{v}' is not a whole number from 1 to 1000"),
                    ))
                }
            },
        };
        let smtp_pool_size = match get("SMTP_POOL_SIZE") {
            None => 8,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=256).contains(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        "SMTP_POOL_SIZE",
                        format!("'{v}' is not a whole number from 1 to 256"),
                    )
                })?,
        };
        Ok(Self {
            database,
            db_pool_size,
            smtp_pool_size,
            api_addr: SocketAddr::new(host, port),
            log_level: get("LOG_LEVEL")
                .or_else(|| get("RUST_LOG"))
                .unwrap_or_else(|| "info".into()),
            log_file: get("LOG_FILE").map(PathBuf::from),
            log_json: match get("LOG_FORMAT").as_deref().map(str::trim) {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(ConfigError::new(
                        "LOG_FORMAT",
                        format!("'{other}' is not a log format (text or json)"),
                    ))
                }
            },
            trusted_proxies: match get("TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(v) => v
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        a.parse::<IpAddr>().map_err(|_| {
                            ConfigError::new(
                                "TRUSTED_PROXIES",
                                format!("'{a}' is not an IP address"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            audit_queue_capacity: match get("AUDIT_QUEUE_CAPACITY") {
                None => 10_000,
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000_000).contains(n))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "AUDIT_QUEUE_CAPACITY",
                            format!("'{v}' is not a whole number from 1 to 10000000"),
                        )
                    })?,
            },
            audit_checkpoint_every: match get("AUDIT_CHECKPOINT_SECONDS") {
                None => std::time::Duration::from_secs(60),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=3600).contains(n))
                    .map(std::time::Duration::from_secs)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "AUDIT_CHECKPOINT_SECONDS",
                            format!("'{v}' is not a whole number from 1 to 3600"),
                        )
                    })?,
            },
            audit_enabled: true,
            listen_for_alerts: true,
            channel_allowed_hosts: match get("CHANNEL_ALLOWED_HOSTS") {
                None => crate::channels::DEFAULT_ALLOWED_HOSTS
                    .iter()
                    .map(|h| (*h).to_owned())
                    .collect(),
                Some(v) => v
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
            },
            public_url: match get("PUBLIC_URL") {
                None => None,
                Some(v) => {
                    let v = v.trim().trim_end_matches('/').to_owned();
                    if !(v.starts_with("https://") || v.starts_with("http://")) {
                        return Err(ConfigError::new(
                            "PUBLIC_URL",
                            format!("'{v}' is not an http(s) URL"),
                        ));
                    }
                    Some(v)
                }
            },
            cors_origins: get("CORS_ALLOWED_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            admin_token: get("ADMIN_TOKEN").map(Secret::new),
            secrets: match get("SECRET_KEY").map(Secret::new) {
                Some(key) => match SecretBox::from_key(&key) {
                    Ok(secrets) => Some(secrets),
                    Err(e) => {
                        return Err(ConfigError::new(
                            "SECRET_KEY",
                            e.to_string().trim_start_matches("SECRET_KEY: ").to_owned(),
                        ))
                    }
                },
                None => None,
            },
        })
    }

    /// The database name the connection settings point at.
    pub fn database_name(&self) -> &str {
        self.database.get_dbname().unwrap_or("postgres")
    }
}

fn database_config(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<tokio_postgres::Config, ConfigError> {
    if let Some(url) = get("DATABASE_URL") {
        return tokio_postgres::Config::from_str(url.trim()).map_err(|e| {
            ConfigError::new(
                "DATABASE_URL",
                format!("not a valid PostgreSQL URL ({e}); expected postgres://user:password@host:port/database"),
            )
        });
    }
    let mut config = tokio_postgres::Config::new();
    config.host(get("DB_HOST").as_deref().map_or("localhost", str::trim));
    config.port(parse_port("DB_PORT", get("DB_PORT"), 5432, false)?);
    config.dbname(get("DB_NAME").as_deref().map_or("audit_alert", str::trim));
    config.user(get("DB_USER").as_deref().map_or("postgres", str::trim));
    if let Some(password) = get("DB_PASSWORD") {
        config.password(password);
    }
    Ok(config)
}

fn parse_port(
    variable: &'static str,
    value: Option<String>,
    default: u16,
    allow_zero: bool,
) -> Result<u16, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<u32>() {
        Ok(0) if allow_zero => Ok(0),
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(ConfigError::new(
            variable,
            format!("'{value}' is not a port number (1-65535)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_point_at_the_local_database() {
        let c = config(&[]).unwrap();
        assert_eq!(c.database_name(), "audit_alert");
        assert_eq!(c.api_addr.port(), 8000);
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn database_url_is_built_from_parts() {
        let c = config(&[("DB_HOST", "db"), ("DB_PORT", "6543"), ("DB_NAME", "x")]).unwrap();
        assert_eq!(c.database.get_ports(), &[6543]);
        assert_eq!(c.database.get_hosts().len(), 1);
        assert_eq!(c.database_name(), "x");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = config(&[("API_PORT", "70000")]).unwrap_err();
        assert_eq!(e.variable, "API_PORT");
        assert!(e.to_string().starts_with("API_PORT: '70000'"), "{e}");
        assert_eq!(
            config(&[("DATABASE_URL", "nope://")]).unwrap_err().variable,
            "DATABASE_URL"
        );
        assert_eq!(config(&[("DB_PORT", "0")]).unwrap_err().variable, "DB_PORT");
        assert_eq!(
            config(&[("API_HOST", "here")]).unwrap_err().variable,
            "API_HOST"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = config(&[("ADMIN_TOKEN", "hunter2"), ("DB_PASSWORD", "pw-1234")]).unwrap();
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("pw-1234"),
            "{printed}"
        );
    }
}
