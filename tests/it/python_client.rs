//! A Python client generated from `openapi/openapi.json` by
//! openapi-python-client drives the running service
//! (`tests/python/drive_client.py`). Without `openapi-python-client` on `PATH`
//! the test says so and passes, except under CI, where it fails
//! (`.ci/generate-clients` installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::helpers::*;

/// How long generating the client, or driving the service with it, may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(120);

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `command` off the runtime, which the service under test shares; fails
/// the test when it overruns [`TOOL_DEADLINE`].
async fn run(what: &str, mut command: Command) -> Output {
    command.stdin(Stdio::null());
    let running = tokio::task::spawn_blocking(move || command.output());
    match tokio::time::timeout(TOOL_DEADLINE, running).await {
        Ok(output) => output
            .expect("join")
            .unwrap_or_else(|e| panic!("start {what}: {e}")),
        Err(_) => panic!("{what} did not finish within {TOOL_DEADLINE:?}"),
    }
}

fn shown(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn a_generated_python_client_drives_the_service() {
    let Some(generator) = on_path("openapi-python-client") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no openapi-python-client on PATH: .ci/generate-clients installs it \
             (pip install -r tests/python/requirements.txt)"
        );
        println!(
            "skipped: no openapi-python-client on PATH \
             (pip install -r tests/python/requirements.txt to run this test)"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("aa-python-client-{}", uuid::Uuid::new_v4()));
    let mut generate = Command::new(generator);
    generate
        .args(["generate", "--path"])
        .arg(root.join("openapi/openapi.json"))
        .arg("--output-path")
        .arg(&out);
    let generated = run("openapi-python-client", generate).await;
    println!("openapi-python-client: {}", shown(&generated));
    assert!(generated.status.success(), "openapi-python-client failed");

    let db = TestDb::new().await;
    db.migrate().await;
    let rows = db.client().await;
    let record_id = insert_audit_rows(&rows, 1, "不合格").await[0].to_string();
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", key)]))
        .await
        .unwrap();
    // Recorded, and pending (no recipient yet), before the client lists it.
    wait_for_count_query(
        &rows,
        &format!("SELECT count(*) FROM email_sent_log WHERE record_id = '{record_id}'"),
        1,
    )
    .await;

    // Nothing listens there: the configuration carries a password, which the
    // test SMTP server cannot take, so deliveries fail and are retried.
    let smtp_port = free_port();
    let mut drive = Command::new("python3");
    drive
        .arg(root.join("tests/python/drive_client.py"))
        .env("BASE_URL", format!("http://{}", app.addr()))
        .env("TOKEN", ADMIN_TOKEN)
        .env("SMTP_PORT", smtp_port.to_string())
        .env("RECORD_ID", &record_id)
        .env("PYTHONPATH", &out);
    let driven = run("tests/python/drive_client.py", drive).await;
    println!("drive_client.py: {}", shown(&driven));
    assert!(
        driven.status.success(),
        "the generated Python client failed against the service"
    );
    let stdout = String::from_utf8_lossy(&driven.stdout);
    let created: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .expect("drive_client.py ends with a JSON line of what it created");

    // What the client created is in the database as it said.
    let id = |key: &str| {
        created[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key} in {created}"))
    };
    let recipient = rows
        .query_one(
            "SELECT table_name, email, name, is_active FROM recipients_config WHERE id = $1",
            &[&i32::try_from(id("recipient_id")).unwrap()],
        )
        .await
        .expect("the recipient the client created");
    assert_eq!(
        (
            recipient.get::<_, String>(0),
            recipient.get::<_, String>(1),
            recipient.get::<_, Option<String>>(2),
            recipient.get::<_, bool>(3)
        ),
        (
            "audit_results".to_owned(),
            "py-client@example.com".to_owned(),
            Some("值班".to_owned()),
            true
        )
    );
    let smtp = rows
        .query_one(
            "SELECT smtp_port, is_active, password_encrypted FROM smtp_config WHERE id = $1",
            &[&i32::try_from(id("smtp_id")).unwrap()],
        )
        .await
        .expect("the SMTP configuration the client created");
    assert_eq!(smtp.get::<_, i32>(0), i32::from(smtp_port));
    assert!(smtp.get::<_, bool>(1), "active");
    let encrypted: Option<String> = smtp.get(2);
    assert!(
        encrypted.is_some_and(|p| p.starts_with("v1:")),
        "the password is stored encrypted"
    );
    let alerted: String = rows
        .query_one(
            "SELECT record_id FROM email_sent_log WHERE id = $1",
            &[&id("alert_id")],
        )
        .await
        .expect("the alert the client listed")
        .get(0);
    assert_eq!(alerted, record_id);

    app.stop().await;
    let _ = std::fs::remove_dir_all(&out);
}
