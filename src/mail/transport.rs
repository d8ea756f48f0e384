//! One pooled lettre transport per active SMTP configuration, and the
//! classification of what went wrong when a send fails.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::Secret;

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
    /// No encryption (a relay on a trusted network, a test server).
    None,
}

impl Security {
    /// Parses the stored value; when none is stored, port 465 means implicit
    /// TLS and any other port STARTTLS, as the old system did.
    pub fn resolve(stored: Option<&str>, port: u16) -> Self {
        match stored {
            Some("tls") => Self::Tls,
            Some("none") => Self::None,
            Some("starttls") => Self::StartTls,
            _ if port == 465 => Self::Tls,
            _ => Self::StartTls,
        }
    }
}

/// An SMTP configuration as the worker uses it.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub sender_email: String,
    pub sender_name: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
}

impl SmtpSettings {
    /// Whether `other` needs a new transport (anything but the sender changed).
    fn same_server(&self, other: &SmtpSettings) -> bool {
        self.id == other.id
            && self.host == other.host
            && self.port == other.port
            && self.security == other.security
            && self.username == other.username
            && self.password.as_ref().map(Secret::expose)
                == other.password.as_ref().map(Secret::expose)
            && self.timeout == other.timeout
    }
}

/// Why one message did not reach one recipient.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The server refused for good (5xx): retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// Worth retrying: 4xx, timeouts, connection or TLS trouble.
    #[error("{0}")]
    Transient(String),
}

impl DeliveryError {
    fn from_smtp(e: lettre::transport::smtp::Error) -> Self {
        let words = describe_smtp_error(&e);
        if e.is_permanent() {
            Self::Permanent(words)
        } else {
            Self::Transient(words)
        }
    }
}

/// The SMTP error in plain words, with the server's reply when there is one.
pub fn describe_smtp_error(e: &lettre::transport::smtp::Error) -> String {
    use std::error::Error as _;
    let mut words = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        words.push_str(": ");
        words.push_str(&cause.to_string());
        source = cause.source();
    }
    words
}

/// A pooled transport bound to one SMTP configuration.
#[derive(Clone)]
pub struct Mailer {
    settings: SmtpSettings,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// Builds the transport (connections are opened lazily, on first send).
    pub fn new(settings: SmtpSettings, pool_size: u32) -> Result<Self, DeliveryError> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            DeliveryError::Permanent(format!("invalid SMTP configuration ({what}): {e}"))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .timeout(Some(settings.timeout))
            .pool_config(
                PoolConfig::new()
                    .max_size(pool_size)
                    .idle_timeout(Duration::from_secs(60)),
            );
        let tls = |host: &str| TlsParameters::new(host.to_owned()).map_err(|e| invalid("TLS", &e));
        builder = match settings.security {
            Security::None => builder.tls(Tls::None),
            Security::StartTls => builder.tls(Tls::Required(tls(&settings.host)?)),
            Security::Tls => builder.tls(Tls::Wrapper(tls(&settings.host)?)),
        };
        if let Some(password) = &settings.password {
            let user = settings
                .username
                .clone()
                .unwrap_or_else(|| settings.sender_email.clone());
            builder = builder.credentials(Credentials::new(user, password.expose().to_owned()));
        }
        let from = Mailbox::new(
            settings.sender_name.clone().filter(|n| !n.is_empty()),
            settings
                .sender_email
                .parse()
                .map_err(|e| invalid("sender_email", &e))?,
        );
        Ok(Self {
            settings,
            transport: builder.build(),
            from,
        })
    }

    /// Reuses this mailer when `settings` name the same server, else builds anew.
    pub fn reuse_or_new(
        current: Option<&Mailer>,
        settings: SmtpSettings,
        pool_size: u32,
    ) -> Result<Self, DeliveryError> {
        match current {
            Some(m) if m.settings.same_server(&settings) => {
                let mut m = m.clone();
                m.from = Self::new(settings.clone(), pool_size)?.from;
                m.settings = settings;
                Ok(m)
            }
            _ => Self::new(settings, pool_size),
        }
    }

    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    pub fn settings(&self) -> &SmtpSettings {
        &self.settings
    }

    /// Sends one message; the envelope comes from its headers.
    pub async fn send(&self, message: Message) -> Result<(), DeliveryError> {
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(DeliveryError::from_smtp)
    }
}

#[cfg(test)]
mod tests {
    use super::Security;

    #[test]
    fn port_465_defaults_to_implicit_tls() {
        assert_eq!(Security::resolve(None, 465), Security::Tls);
        assert_eq!(Security::resolve(None, 587), Security::StartTls);
        assert_eq!(Security::resolve(None, 25), Security::StartTls);
        assert_eq!(Security::resolve(Some("none"), 465), Security::None);
        assert_eq!(Security::resolve(Some("tls"), 2525), Security::Tls);
    }
}
