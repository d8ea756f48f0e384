//! `audit-alert check`: whether the database, the migrations, the triggers,
//! the SMTP server and the recipients are in order, in plain words.

use anyhow::Context;

use crate::config::Config;
use crate::db;
use crate::mail::Mailer;
use crate::monitor::{AlertStatus, Snapshot};

/// One finding.
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Warn(String),
    Fail(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok(m) => write!(f, "ok    {m}"),
            Self::Warn(m) => write!(f, "warn  {m}"),
            Self::Fail(m) => write!(f, "FAIL  {m}"),
        }
    }
}

/// Runs every check; the database must at least be reachable.
pub async fn run(config: &Config) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let client = match db::connect(&config.database).await {
        Ok(c) => {
            findings.push(Finding::Ok(format!(
                "database \"{}\" is reachable",
                config.database_name()
            )));
            c
        }
        Err(e) => {
            findings.push(Finding::Fail(format!(
                "database \"{}\" cannot be reached: {} (check DATABASE_URL)",
                config.database_name(),
                db::describe(&e)
            )));
            return Ok(findings);
        }
    };
    let applied: Option<i64> = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .ok()
        .map(|r| r.get(0));
    let known = db::migration_count() as i64;
    findings.push(match applied {
        Some(n) if n >= known => {
            Finding::Ok(format!("schema is up to date ({n} migrations applied)"))
        }
        Some(n) => Finding::Fail(format!(
            "{} of {known} migrations are not applied: run `audit-alert migrate`",
            known - n
        )),
        None => Finding::Fail("the schema is not installed: run `audit-alert migrate`".into()),
    });
    if applied.is_none() {
        return Ok(findings);
    }
    let pool = db::pool(&config.database, 2)?;
    let snapshot = Snapshot::load(&pool, config.secrets.as_ref())
        .await
        .context("Failed to read the configuration")?;

    for table in &snapshot.tables {
        let triggers: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::text::regclass
                    AND tgname IN ('audit_alert_insert', 'audit_alert_update') AND tgenabled <> 'D'",
                &[&table.relation],
            )
            .await?
            .get(0);
        findings.push(if triggers == 2 {
            Finding::Ok(format!("{}: triggers installed (alerting on {})", table.name, table.verdicts.join(", ")))
        } else {
            Finding::Fail(format!(
                "{}: its alert triggers are missing or disabled; rows are found only by the sweep (re-save it: PUT /api/config/tables/{})",
                table.name, table.name
            ))
        });
        let missing: Vec<String> = client
            .query_one(
                "SELECT ARRAY(SELECT c FROM unnest(ARRAY[$2::text, $3::text]) c
                               WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                                                  WHERE a.attrelid = $1::text::regclass
                                                    AND a.attname = c AND a.attnum > 0
                                                    AND NOT a.attisdropped))",
                &[&table.relation, &table.id_column, &table.verdict_column],
            )
            .await?
            .get(0);
        if !missing.is_empty() {
            findings.push(Finding::Fail(format!(
                "{}: column {} no longer exists; its trigger fails on flagged rows and the sweep skips the table (watch it again with its columns: PUT /api/config/tables/{})",
                table.name,
                missing.join(", "),
                table.name
            )));
        }
        let n = snapshot.recipients.get(&table.name).map_or(0, Vec::len);
        findings.push(if n > 0 {
            Finding::Ok(format!("{}: {n} active recipient(s)", table.name))
        } else {
            Finding::Warn(format!(
                "{}: no active recipient; its alerts wait as pending",
                table.name
            ))
        });
    }

    match snapshot.smtp.settings() {
        None => findings.push(Finding::Fail(format!(
            "{}; alerts wait as pending (POST /api/config/smtp)",
            snapshot.smtp.problem().unwrap_or_default()
        ))),
        Some(settings) => {
            let target = format!("{}:{}", settings.host, settings.port);
            let result = match Mailer::new(settings.clone(), 1) {
                Ok(mailer) => mailer.check().await,
                Err(e) => Err(e),
            };
            findings.push(match result {
                Ok(()) => Finding::Ok(format!("SMTP server {target} accepts connections")),
                Err(e) => Finding::Fail(format!("SMTP server {target}: {e}")),
            });
        }
    }
    let switches = &snapshot.switches;
    if !switches.monitor_enabled {
        findings.push(Finding::Warn(
            "delivery is paused (monitor_enabled = false)".into(),
        ));
    }
    if !switches.email_enabled {
        findings.push(Finding::Warn(
            "e-mail is off (email_enabled = false): new alerts are suppressed".into(),
        ));
    }
    let counts = crate::monitor::count_by_status(&pool).await?;
    let count = |status| counts.get(&status).copied().unwrap_or(0);
    let (pending, failed) = (count(AlertStatus::Pending), count(AlertStatus::Failed));
    findings.push(if failed > 0 {
        Finding::Warn(format!(
            "{failed} alert(s) failed; see GET /api/alerts?status=failed"
        ))
    } else {
        Finding::Ok(format!("no failed alerts; {pending} pending"))
    });
    // Rows stay in the inbox for milliseconds while a copy of the service
    // runs; so do the ranges of ids that bulk writes report.
    for (table, what) in [
        ("alert_inbox", "alert(s) reported by the triggers"),
        (
            "alert_inbox_ranges",
            "range(s) of ids reported by bulk writes",
        ),
    ] {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(min(reported_at) < now() - interval '1 minute', false)
                       FROM {table}"
                ),
                &[],
            )
            .await?;
        let (waiting, stale): (i64, bool) = (row.get(0), row.get(1));
        if stale {
            findings.push(Finding::Warn(format!(
                "{waiting} {what} wait in {table}, the oldest for over a minute: no copy of the service is taking them in (is one running?)"
            )));
        }
    }
    pool.close();
    Ok(findings)
}
