//! Test scaffolding: a fresh database per test, a real SMTP server that
//! records what arrives, and the service started against both.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use audit_alert::app::{self, App};
use audit_alert::config::Config;
use mailin_embedded::response::{self, Response};
use mailin_embedded::{Handler, Server};
use tokio::sync::watch;
use tokio_postgres::NoTls;

/// The `ADMIN_TOKEN` every test service runs with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // reqwest's TLS needs a provider; the service installs the same.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// A database of its own, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        init_tracing();
        let name = format!("aa_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let mut config = tokio_postgres::Config::from_str(&admin_url()).unwrap();
        config.dbname(&name);
        let url = format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0);
        Self { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    pub fn config(&self) -> Config {
        self.config_with(&[])
    }

    /// Service configuration on this database, API on an ephemeral port.
    pub fn config_with(&self, extra: &[(&str, &str)]) -> Config {
        let mut vars: BTreeMap<String, String> = [
            ("DATABASE_URL", self.url.as_str()),
            ("API_HOST", "127.0.0.1"),
            ("API_PORT", "0"),
            ("DB_POOL_SIZE", "8"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        Config::from_lookup(|k| vars.get(k).cloned()).expect("test configuration")
    }

    /// Creates the schema without starting the service.
    pub async fn migrate(&self) {
        app::prepare_database(&self.config())
            .await
            .expect("migrate");
    }

    pub async fn start(&self) -> App {
        App::start(&self.config()).await.expect("start the service")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime we may block on; use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// One message as the SMTP server received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub envelope_to: Vec<String>,
    pub subject: String,
    pub from: String,
    pub text: String,
    pub html: String,
    pub message_id: String,
    /// When the server had the whole message (the benchmarks time with it).
    #[allow(dead_code)]
    pub at: std::time::Instant,
    ids: Vec<String>,
}

impl Received {
    /// Record ids listed in the plain-text part ("[verdict] 记录 <id>" lines).
    pub fn record_ids(&self) -> Vec<String> {
        self.ids.clone()
    }
}

/// Everything that arrived, with the distinct record ids kept up to date so
/// that waiting on large bursts stays cheap.
#[derive(Default)]
pub struct Inbox {
    pub mails: Vec<Received>,
    pub distinct_ids: std::collections::HashSet<String>,
}

#[derive(Clone, Default)]
struct Recorder {
    inbox: Arc<Mutex<Inbox>>,
    count: Arc<Option<watch::Sender<usize>>>,
    rejected: Arc<Vec<String>>,
    /// RCPTs still to be answered 451 (try again later).
    transient: Arc<std::sync::atomic::AtomicUsize>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Recorder {
    fn rcpt(&mut self, to: &str) -> Response {
        use std::sync::atomic::Ordering;
        let transient = self
            .transient
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if transient.is_ok() {
            return response::INTERNAL_ERROR;
        }
        if self.rejected.iter().any(|r| r.eq_ignore_ascii_case(to)) {
            response::NO_MAILBOX
        } else {
            response::OK
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let at = std::time::Instant::now();
        let Some(message) = mail_parser::MessageParser::default().parse(&self.data) else {
            return response::TRANSACTION_FAILED;
        };
        let received = Received {
            envelope_to: self.to.clone(),
            subject: message.subject().unwrap_or_default().to_owned(),
            from: message
                .from()
                .and_then(|f| f.first())
                .map(|a| {
                    format!(
                        "{} <{}>",
                        a.name().unwrap_or_default(),
                        a.address().unwrap_or_default()
                    )
                })
                .unwrap_or_default(),
            text: message
                .body_text(0)
                .map(|t| t.into_owned())
                .unwrap_or_default(),
            html: message
                .body_html(0)
                .map(|t| t.into_owned())
                .unwrap_or_default(),
            message_id: message.message_id().unwrap_or_default().to_owned(),
            at,
            ids: Vec::new(),
        };
        let ids: Vec<String> = received
            .text
            .lines()
            .filter_map(|l| l.split_once("] 记录 ").map(|(_, id)| id.trim().to_owned()))
            .collect();
        let mut inbox = self.inbox.lock().unwrap();
        inbox.distinct_ids.extend(ids.iter().cloned());
        inbox.mails.push(Received { ids, ..received });
        if let Some(count) = self.count.as_ref() {
            count.send_replace(inbox.mails.len());
        }
        response::OK
    }
}

/// A real SMTP server (mailin-embedded) on loopback, recording every message.
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Inbox>>,
    transient: Arc<std::sync::atomic::AtomicUsize>,
    count: watch::Receiver<usize>,
}

impl SmtpServer {
    pub fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), &[])
    }

    /// A server that answers 550 to RCPT for the given addresses.
    pub fn rejecting(addresses: &[&str]) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), addresses)
    }

    /// Starts on a port found free earlier (see [`free_port`]).
    pub fn start_on_port(port: u16) -> Self {
        Self::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), &[])
    }

    /// A server that answers the first `n` RCPTs with 451, then accepts.
    pub fn flaky(n: usize) -> Self {
        let server = Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), &[]);
        server
            .transient
            .store(n, std::sync::atomic::Ordering::SeqCst);
        server
    }

    fn start_on(listener: TcpListener, rejected: &[&str]) -> Self {
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(0);
        let recorder = Recorder {
            count: Arc::new(Some(tx)),
            rejected: Arc::new(rejected.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let inbox = recorder.inbox.clone();
        let transient = recorder.transient.clone();
        let mut server = Server::new(recorder);
        server
            .with_name("mail.test")
            .with_num_threads(32)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self {
            port,
            inbox,
            count: rx,
            transient,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().mails.clone()
    }

    /// Waits until `done` holds for what has arrived, or fails the test.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.wait_until(what, |inbox| done(&inbox.mails)).await
    }

    /// Waits until `n` distinct records have been mailed.
    pub async fn wait_for_records(&self, n: usize) -> Vec<Received> {
        self.wait_until(&format!("{n} records"), |inbox| {
            inbox.distinct_ids.len() >= n
        })
        .await
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&Inbox) -> bool) -> Vec<Received> {
        let mut count = self.count.clone();
        let waited = tokio::time::timeout(DEADLINE, async {
            loop {
                {
                    let inbox = self.inbox.lock().unwrap();
                    if done(&inbox) {
                        return inbox.mails.clone();
                    }
                }
                count.changed().await.expect("smtp server alive");
            }
        })
        .await;
        match waited {
            Ok(received) => received,
            Err(_) => panic!(
                "timed out waiting for {what}; received: {:#?}",
                self.received()
            ),
        }
    }

    /// Waits until `n` messages have arrived.
    pub async fn wait_for_count(&self, n: usize) -> Vec<Received> {
        self.wait_for(&format!("{n} messages"), |r| r.len() >= n)
            .await
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Points the service at `smtp_port` and adds recipients per table; quick
/// retries so tests of failures stay short.
pub async fn configure(db: &TestDb, smtp_port: u16, recipients: &[(&str, &str)]) {
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO smtp_config (smtp_server, smtp_port, sender_email, sender_name, security, is_active)
             VALUES ('127.0.0.1', $1, 'alerts@example.com', '审核告警', 'none', true)",
            &[&i32::from(smtp_port)],
        )
        .await
        .unwrap();
    for (table, email) in recipients {
        client
            .execute(
                "INSERT INTO recipients_config (table_name, email, name) VALUES ($1, $2, '值班')",
                &[table, email],
            )
            .await
            .unwrap();
    }
    set_config(&client, "retry_base_ms", "50").await;
    set_config(&client, "retry_max_ms", "400").await;
}

/// The recipients most tests configure: one address for `audit_results`.
pub const ONCALL: &[(&str, &str)] = &[("audit_results", "oncall@example.com")];

/// The service started on a fresh database that sends to `smtp`, and a
/// connection of the test's own. Fields drop in order, the database last.
pub struct TestApp {
    pub client: tokio_postgres::Client,
    pub app: App,
    pub smtp: SmtpServer,
    pub db: TestDb,
}

impl TestApp {
    /// Creates the schema, points the service at `smtp` with `recipients`
    /// (see [`configure`]) and starts it.
    pub async fn start(smtp: SmtpServer, recipients: &[(&str, &str)]) -> Self {
        let db = TestDb::new().await;
        db.migrate().await;
        configure(&db, smtp.port, recipients).await;
        let app = db.start().await;
        let client = db.client().await;
        Self {
            client,
            app,
            smtp,
            db,
        }
    }
}

pub async fn set_config(client: &tokio_postgres::Client, key: &str, value: &str) {
    let n = client
        .execute(
            "UPDATE system_config SET config_value = $2, updated_at = now() WHERE config_key = $1",
            &[&key, &value],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "system_config key {key}");
}

/// Inserts `n` rows into audit_results with `verdict` in one transaction; returns their ids.
pub async fn insert_audit_rows(client: &tokio_postgres::Client, n: i64, verdict: &str) -> Vec<i64> {
    client
        .query(
            "INSERT INTO audit_results (verdict, url, reason)
             SELECT $2, 'https://example.com/post/' || g, '涉嫌违规 ' || g FROM generate_series(1, $1::bigint) g
             RETURNING id",
            &[&n, &verdict],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// [`insert_audit_rows`] with the triggers bypassed
/// (`session_replication_role = replica`), as a replication tool writes.
pub async fn insert_audit_rows_bypassing_triggers(
    client: &tokio_postgres::Client,
    n: i64,
    verdict: &str,
) -> Vec<i64> {
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let ids = insert_audit_rows(client, n, verdict).await;
    client
        .batch_execute("SET session_replication_role = origin")
        .await
        .unwrap();
    ids
}

/// The watched tables as a copy of the service loads them.
pub async fn watched_tables(db: &TestDb) -> Vec<audit_alert::monitor::WatchedTable> {
    let pool = audit_alert::db::pool(&db.config().database, 1).unwrap();
    let tables = audit_alert::monitor::Snapshot::load(&pool, None)
        .await
        .unwrap()
        .tables
        .clone();
    pool.close();
    tables
}

/// Polls the outbox until `sql` (a count query) returns `expected`, or fails.
pub async fn wait_for_count_query(client: &tokio_postgres::Client, sql: &str, expected: i64) {
    eventually(&format!("`{sql}`"), async || {
        let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        if n == expected {
            Ok(())
        } else {
            Err(format!("is {n}, want {expected}"))
        }
    })
    .await
}

/// Waits until the listener of `app` is connected and its catch-up sweep done.
pub async fn wait_until_listening(app: &App) {
    eventually("the listener never connected", async || {
        let status = app.worker().status();
        status.listener_connected() && status.times().last_sweep.is_some()
    })
    .await
}

/// What one poll of [`eventually`] found: `true`, `Some(value)` or
/// `Ok(value)` once the condition holds; an `Err` says what was seen instead.
pub trait Polled {
    type Value;
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Polled for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<T> Polled for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: std::fmt::Display> Polled for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|seen| seen.to_string())
    }
}

/// Polls `f` until its condition holds and returns what it yields then, or
/// fails the test after [`DEADLINE`] naming `what` and what the last poll saw.
pub async fn eventually<P: Polled>(what: &str, mut f: impl AsyncFnMut() -> P) -> P::Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let seen = match f().await.into_result() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {what}{}{seen}",
            if seen.is_empty() { "" } else { ": " }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every record id across `mails`, with how often it was mailed.
pub fn id_counts(mails: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in mails {
        for id in m.record_ids() {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}
