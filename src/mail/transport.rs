//! A pool of SMTP connections per active SMTP configuration, and the
//! classification of what went wrong when a send fails.

use std::time::Duration;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::Error as SmtpError;
use lettre::Message;
use tokio::sync::Semaphore;

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
    /// Whether `other` is the same configuration (a changed one gets a new pool).
    fn same_as(&self, other: &SmtpSettings) -> bool {
        self.id == other.id
            && self.host == other.host
            && self.sender_email == other.sender_email
            && self.sender_name == other.sender_name
            && self.port == other.port
            && self.security == other.security
            && self.username == other.username
            && self.password.as_ref().map(Secret::expose)
                == other.password.as_ref().map(Secret::expose)
            && self.timeout == other.timeout
    }
}

/// What kind of trouble a send ran into, for operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The server could not be reached or dropped the connection.
    Connection,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The server refused the login.
    Authentication,
    /// The server refused a recipient.
    RecipientRejected,
    /// The server did not answer in time.
    Timeout,
    /// Anything else (a refused message, a bad configuration…).
    Other,
}

impl FailureKind {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Tls => "tls",
            Self::Authentication => "authentication",
            Self::RecipientRejected => "recipient_rejected",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

/// A failed send: its kind and the details in plain words.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

/// Why one message did not reach one recipient.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The server refused for good (5xx): retrying will not help.
    #[error("{}", .0.detail)]
    Permanent(Failure),
    /// Worth retrying: 4xx, timeouts, connection or TLS trouble.
    #[error("{}", .0.detail)]
    Transient(Failure),
}

impl DeliveryError {
    pub fn permanent(detail: impl Into<String>) -> Self {
        Self::Permanent(Failure {
            kind: FailureKind::Other,
            detail: detail.into(),
        })
    }

    pub fn transient(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self::Transient(Failure {
            kind,
            detail: detail.into(),
        })
    }

    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Permanent(f) | Self::Transient(f) => f.kind,
        }
    }

    fn from_smtp(e: SmtpError) -> Self {
        let detail = describe_smtp_error(&e);
        let code = e.status().map(|c| c.to_string());
        let kind = if e.is_tls() || is_tls_failure(&e) {
            FailureKind::Tls
        } else if e.is_timeout() {
            FailureKind::Timeout
        } else if matches!(code.as_deref(), Some("530" | "534" | "535" | "454")) {
            FailureKind::Authentication
        } else if matches!(code.as_deref(), Some("550" | "551" | "552" | "553")) {
            FailureKind::RecipientRejected
        } else if e.is_response() || e.is_transient() || e.is_permanent() {
            FailureKind::Other
        } else {
            FailureKind::Connection
        };
        let failure = Failure { kind, detail };
        if e.is_permanent() {
            Self::Permanent(failure)
        } else {
            Self::Transient(failure)
        }
    }
}

/// The SMTP error in plain words, with the server's reply when there is one.
pub fn describe_smtp_error(e: &SmtpError) -> String {
    use std::error::Error as _;
    let mut words = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // lettre's messages often repeat their cause already.
        if !words.contains(&text) {
            words.push_str(": ");
            words.push_str(&text);
        }
        source = cause.source();
    }
    words
}

/// A TLS handshake or certificate failure that lettre reports as a
/// connection error (implicit TLS).
fn is_tls_failure(e: &SmtpError) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(cause) = source {
        let io_inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if cause.is::<rustls::Error>() || io_inner {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A bounded pool of SMTP connections to one configured server.
///
/// lettre's own pool connects without `TCP_NODELAY`, so the final `.` of every
/// message waits for the server's delayed ACK (about 40 ms on Linux). These
/// connections set it; lettre still speaks the protocol.
#[derive(Clone)]
pub struct Mailer(Arc<MailerInner>);

struct MailerInner {
    settings: SmtpSettings,
    from: Mailbox,
    credentials: Option<Credentials>,
    tls: Option<TlsParameters>,
    hello: ClientId,
    idle: Mutex<Vec<Idle>>,
    slots: Semaphore,
}

struct Idle {
    connection: AsyncSmtpConnection,
    since: Instant,
}

/// Idle connections older than this are closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections older than this are checked with NOOP before reuse.
const IDLE_CHECK: Duration = Duration::from_secs(5);

impl Mailer {
    /// Prepares the pool (connections are opened on first send).
    pub fn new(settings: SmtpSettings, pool_size: u32) -> Result<Self, DeliveryError> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            DeliveryError::permanent(format!("invalid SMTP configuration ({what}): {e}"))
        };
        let tls = match settings.security {
            Security::None => None,
            Security::StartTls | Security::Tls => {
                Some(TlsParameters::new(settings.host.clone()).map_err(|e| invalid("TLS", &e))?)
            }
        };
        let credentials = settings.password.as_ref().map(|password| {
            let user = settings
                .username
                .clone()
                .unwrap_or_else(|| settings.sender_email.clone());
            Credentials::new(user, password.expose().to_owned())
        });
        let from = Mailbox::new(
            settings.sender_name.clone().filter(|n| !n.is_empty()),
            settings
                .sender_email
                .parse()
                .map_err(|e| invalid("sender_email", &e))?,
        );
        Ok(Self(Arc::new(MailerInner {
            settings,
            from,
            credentials,
            tls,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(pool_size.max(1) as usize),
        })))
    }

    /// Keeps this pool when `settings` name the same server and sender.
    pub fn reuse_or_new(
        current: Option<&Mailer>,
        settings: SmtpSettings,
        pool_size: u32,
    ) -> Result<Self, DeliveryError> {
        match current {
            Some(m) if m.0.settings.same_as(&settings) => Ok(m.clone()),
            _ => Self::new(settings, pool_size),
        }
    }

    pub fn from(&self) -> &Mailbox {
        &self.0.from
    }

    pub fn settings(&self) -> &SmtpSettings {
        &self.0.settings
    }

    /// Sends one message; the envelope comes from its headers.
    pub async fn send(&self, message: Message) -> Result<(), DeliveryError> {
        let _slot = self
            .0
            .slots
            .acquire()
            .await
            .expect("the pool is never closed");
        let timeout = self.0.settings.timeout;
        let sent = tokio::time::timeout(timeout, async {
            let mut connection = self.connection().await?;
            let result = connection
                .send(message.envelope(), &message.formatted())
                .await
                .map(|_| ())
                .map_err(DeliveryError::from_smtp);
            if result.is_ok() && !connection.has_broken() {
                self.0.idle.lock().expect("idle lock").push(Idle {
                    connection,
                    since: Instant::now(),
                });
            }
            result
        })
        .await;
        match sent {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::transient(
                FailureKind::Timeout,
                format!(
                    "timed out after {}s talking to {}:{}",
                    timeout.as_secs(),
                    self.0.settings.host,
                    self.0.settings.port
                ),
            )),
        }
    }

    /// Connects and greets the server (TLS and login included) without
    /// sending anything: tells whether this configuration can send at all.
    pub async fn check(&self) -> Result<(), DeliveryError> {
        let timeout = self.0.settings.timeout;
        match tokio::time::timeout(timeout, self.connect()).await {
            Ok(Ok(mut connection)) => {
                let _ = connection.quit().await;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DeliveryError::transient(
                FailureKind::Timeout,
                format!("timed out after {}s", timeout.as_secs()),
            )),
        }
    }

    /// A live idle connection, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        loop {
            let idle = self.0.idle.lock().expect("idle lock").pop();
            let Some(Idle {
                mut connection,
                since,
            }) = idle
            else {
                return self.connect().await;
            };
            let age = since.elapsed();
            if age < IDLE_CHECK || (age < IDLE_TIMEOUT && connection.test_connected().await) {
                return Ok(connection);
            }
            connection.abort().await;
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let inner = &self.0;
        let (host, port) = (inner.settings.host.as_str(), inner.settings.port);
        let mut connection = match inner.settings.security {
            Security::Tls => AsyncSmtpConnection::connect_tokio1(
                (host, port),
                Some(inner.settings.timeout),
                &inner.hello,
                inner.tls.clone(),
                None,
            )
            .await
            .map_err(DeliveryError::from_smtp)?,
            Security::None | Security::StartTls => {
                let unreachable = |e: std::io::Error| {
                    DeliveryError::transient(
                        FailureKind::Connection,
                        format!("cannot connect to {host}:{port}: {e}"),
                    )
                };
                let stream = tokio::net::TcpStream::connect((host, port))
                    .await
                    .map_err(unreachable)?;
                stream.set_nodelay(true).map_err(unreachable)?;
                let mut connection =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &inner.hello)
                        .await
                        .map_err(DeliveryError::from_smtp)?;
                if let Some(tls) = &inner.tls {
                    connection
                        .starttls(tls.clone(), &inner.hello)
                        .await
                        .map_err(DeliveryError::from_smtp)?;
                }
                connection
            }
        };
        if let Some(credentials) = &inner.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(DeliveryError::from_smtp)?;
        }
        Ok(connection)
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
