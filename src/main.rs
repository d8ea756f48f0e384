//! The `audit-alert` command line.

use std::process::ExitCode;

use audit_alert::app::{self, App};
use audit_alert::auth::{self, Role};
use audit_alert::config::Config;
use audit_alert::{api, telemetry};
use clap::{Parser, Subcommand};

/// Turns content-moderation verdicts in PostgreSQL into e-mail alerts.
///
/// Configuration comes from the environment and a `.env` file in the working
/// directory: DATABASE_URL (or DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD),
/// DB_POOL_SIZE, SMTP_POOL_SIZE, API_HOST, API_PORT, LOG_LEVEL (or RUST_LOG),
/// LOG_FILE, LOG_FORMAT, ADMIN_TOKEN, SECRET_KEY, CORS_ALLOWED_ORIGINS,
/// TRUSTED_PROXIES, AUDIT_QUEUE_CAPACITY, AUDIT_CHECKPOINT_SECONDS.
#[derive(Parser)]
#[command(name = "audit-alert", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve the API and run the alert worker (the default).
    Serve,
    /// Create the database if needed and apply pending migrations, then exit.
    Migrate,
    /// Print the OpenAPI document (JSON unless --yaml).
    Openapi {
        /// Print YAML instead of JSON.
        #[arg(long)]
        yaml: bool,
    },
    /// Tell whether the database, triggers, SMTP server and recipients are in
    /// order, in plain words (exit code 1 when something is wrong).
    Check,
    /// Create or revoke API bearer tokens (needs only database access).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// The operation audit log.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that no entry was changed, inserted or removed: one line and
    /// exit 0 when the log verifies; otherwise the first entry found wrong
    /// and exit 3. Checkpoint signatures are checked with SECRET_KEY.
    Verify {
        /// Only entries from this time on: RFC 3339 (2026-12-01T00:00:00Z)
        /// or an age (24h, 7d).
        #[arg(long, value_parser = parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only entries before this time (same forms).
        #[arg(long, value_parser = parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// RFC 3339, or an age before now (`humantime`: 24h, 7d).
fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let age = humantime::parse_duration(s)
        .map_err(|_| format!("'{s}' is neither an RFC 3339 time nor an age like 24h or 7d"))?;
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        .ok_or_else(|| format!("'{s}' reaches too far back"))
}

/// Exit code when the audit log does not verify.
const EXIT_TAMPERED: u8 = 3;

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once (it cannot be shown again).
    Create {
        /// Operator id recorded in the audit log for calls made with it.
        #[arg(long)]
        operator: String,
        /// Organisation id recorded in the audit log.
        #[arg(long)]
        org: Option<String>,
        /// viewer, operator, auditor or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Lifetime, e.g. 90d or 12h (default: no expiry).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        /// What the token is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        /// The token id printed by `token create` (or listed by the API).
        id: i64,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("'{s}' is not a role (viewer, operator, auditor, admin)"))
}

/// Exit code for a bad setting.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi { yaml }) = cli.command {
        println!(
            "{}",
            if yaml {
                api::spec_yaml()
            } else {
                api::spec_json()
            }
        );
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env().and_then(|c| telemetry::init(&c).map(|()| c)) {
        Ok(config) => config,
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async {
        let result = match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => app::prepare_database(&config).await.map(|_| ()),
            Command::Token { action } => token(&config, action).await,
            Command::Audit {
                action: AuditCommand::Verify { since, until },
            } => return audit_verify(&config, since, until).await,
            Command::Check => check(&config).await,
            _ => serve(&config).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail_start(&e),
        }
    })
}

/// A start error's line, with the exit code of its kind.
fn fail_start(e: &app::StartError) -> ExitCode {
    match e {
        app::StartError::Config(_) => fail(EXIT_CONFIG, e),
        _ => fail(1, e),
    }
}

async fn serve(config: &Config) -> Result<(), app::StartError> {
    let app = App::start(config).await?;
    shutdown_signal().await;
    tracing::info!("stopping: finishing in-flight deliveries");
    app.stop().await;
    Ok(())
}

async fn token(config: &Config, action: TokenCommand) -> Result<(), app::StartError> {
    let (pool, _) = app::prepare_database(config).await?;
    match action {
        TokenCommand::Create {
            operator,
            org,
            role,
            expires,
            description,
        } => {
            let issued = auth::issue(
                &pool,
                &operator,
                org.as_deref(),
                role,
                expires,
                description.as_deref(),
            )
            .await?;
            eprintln!(
                "token {} for {operator} ({}){}; it is shown once:",
                issued.id,
                role.as_str(),
                issued
                    .expires_at
                    .map(|t| format!(", expires {}", t.to_rfc3339()))
                    .unwrap_or_default()
            );
            println!("{}", issued.token.expose());
        }
        TokenCommand::Revoke { id } => {
            if !auth::revoke(&pool, id).await? {
                return Err(
                    anyhow::anyhow!("token {id} does not exist or is already revoked").into(),
                );
            }
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

async fn audit_verify(
    config: &Config,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> ExitCode {
    let verified = async {
        let (pool, _) = app::prepare_database(config).await?;
        audit_alert::audit_log::verify::verify(&pool, config.secrets.as_ref(), since, until)
            .await
            .map_err(app::StartError::from)
    }
    .await;
    match verified {
        Ok(Ok(summary)) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(Err(tampering)) => fail(EXIT_TAMPERED, &format!("audit log: {tampering}")),
        Err(e) => fail_start(&e),
    }
}

async fn check(config: &Config) -> Result<(), app::StartError> {
    let findings = audit_alert::check::run(config).await?;
    for f in &findings {
        println!("{f}");
    }
    let failures = findings
        .iter()
        .filter(|f| matches!(f, audit_alert::check::Finding::Fail(_)))
        .count();
    if failures > 0 {
        return Err(anyhow::anyhow!("{failures} check(s) failed").into());
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// One clear line on stderr and a non-zero exit.
fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("audit-alert: error: {error:#}");
    ExitCode::from(code)
}
