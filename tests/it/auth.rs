//! Access control: every operation needs a valid bearer token, roles decide
//! what it may do, and secrets appear in no response, log line or column.

use std::process::{Command, Stdio};

use crate::api::{client, client_with_token};
use crate::client::types;
use crate::helpers::*;

async fn call(
    app: &audit_alert::app::App,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(
        method.parse().unwrap(),
        format!("http://{}{path}", app.addr()),
    );
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status >= 400 {
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
    }
    (status, resp.json().await.unwrap_or_default())
}

async fn token(
    app: &audit_alert::app::App,
    role: types::RoleName,
    expires_in: Option<&str>,
) -> String {
    client(app)
        .token_create(&types::TokenRequest {
            operator_id: format!("{role:?}-user")
                .to_lowercase()
                .as_str()
                .try_into()
                .unwrap(),
            org_id: Some("org-7".try_into().unwrap()),
            role,
            expires_in: expires_in.map(|e| e.try_into().unwrap()),
            description: None,
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

#[tokio::test]
async fn every_operation_refuses_a_missing_token() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let spec: serde_json::Value = serde_json::from_str(&audit_alert::api::spec_json()).unwrap();
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let url = path
                .replace("{id}", "1")
                .replace("{minutes}", "5")
                .replace("{key}", "check_interval")
                .replace("{table_name}", "audit_results");
            let (status, _) = call(&app, &method.to_uppercase(), &url, None, Some("{}")).await;
            if op.get("security").is_some() {
                assert_eq!(status, 401, "{method} {path} without a token");
                checked += 1;
            } else {
                assert_eq!(path, "/health", "only /health is public");
            }
        }
    }
    assert!(checked >= 35, "{checked} operations checked");
    app.stop().await;
}

#[tokio::test]
async fn roles_decide_what_a_token_may_do() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let read = ("GET", "/api/config/recipients", None);
    let write = (
        "PUT",
        "/api/config/system/email_enabled",
        Some(r#"{"value":"true"}"#),
    );
    let tokens = ("GET", "/api/auth/tokens", None);
    let me = ("GET", "/api/auth/me", None);
    // role, then the status expected for: read, write, token management, me
    let table = [
        (types::RoleName::Viewer, [200, 403, 403, 200]),
        (types::RoleName::Operator, [200, 200, 403, 200]),
        (types::RoleName::Auditor, [200, 403, 403, 200]),
        (types::RoleName::Admin, [200, 200, 200, 200]),
    ];
    for (role, expected) in table {
        let bearer = format!("Bearer {}", token(&app, role, None).await);
        for ((method, path, body), want) in [read, write, tokens, me].into_iter().zip(expected) {
            let (status, problem) = call(&app, method, path, Some(&bearer), body).await;
            assert_eq!(status, want, "{role:?} {method} {path}: {problem}");
            if status == 403 {
                assert!(
                    problem["detail"].as_str().unwrap().contains("may not"),
                    "{problem}"
                );
            }
        }
        let who = client_with_token(&app, bearer.trim_start_matches("Bearer "))
            .auth_me()
            .await
            .unwrap()
            .into_inner();
        assert_eq!((who.role, who.org_id.as_deref()), (role, Some("org-7")));
    }
    let (status, _) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(status, 200, "/health is public");
    app.stop().await;
}

#[tokio::test]
async fn malformed_unknown_expired_and_revoked_tokens_are_refused() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let live = token(&app, types::RoleName::Viewer, None).await;
    let expired = token(&app, types::RoleName::Viewer, Some("1s")).await;
    let path = "/api/monitor/status";
    assert_eq!(
        call(&app, "GET", path, Some(&format!("Bearer {live}")), None)
            .await
            .0,
        200
    );
    for header in ["Basic abc", "Bearer", "Bearer not-a-token", "bearer"] {
        let (status, _) = call(&app, "GET", path, Some(header), None).await;
        assert_eq!(status, 401, "{header}");
    }

    // Expiry: the token stops working once its time has passed.
    let problem = eventually("never expired", async || {
        let (status, problem) =
            call(&app, "GET", path, Some(&format!("Bearer {expired}")), None).await;
        (status == 401).then_some(problem)
    })
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );

    // Revocation takes effect at once, even though the token was just verified.
    let list = client(&app)
        .token_list(None, None)
        .await
        .unwrap()
        .into_inner();
    let id = list
        .items
        .iter()
        .find(|t| t.expires_at.is_none())
        .unwrap()
        .id;
    client(&app).token_revoke(id).await.unwrap();
    let (status, problem) = call(&app, "GET", path, Some(&format!("Bearer {live}")), None).await;
    assert_eq!(status, 401);
    assert!(
        problem["detail"].as_str().unwrap().contains("revoked"),
        "{problem}"
    );
    let listed = client(&app)
        .token_list(None, None)
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .items
        .iter()
        .any(|t| t.id == id && t.revoked_at.is_some() && t.last_used_at.is_some()));
    app.stop().await;
}

#[tokio::test]
async fn the_command_line_bootstraps_a_token() {
    let db = TestDb::new().await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_audit-alert"))
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("LOG_LEVEL", "warn")
            .output()
            .unwrap()
    };
    let out = run(&[
        "token",
        "create",
        "--operator",
        "ops-1",
        "--org",
        "acme",
        "--role",
        "operator",
        "--expires",
        "90d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("aat_") && token.len() > 40, "{token}");

    let app = db.start().await;
    let me = client_with_token(&app, &token)
        .auth_me()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.operator_id.as_str(), me.role),
        ("ops-1", types::RoleName::Operator)
    );
    let stored: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM api_tokens WHERE token_hash = sha256($1::text::bytea)",
            &[&token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "stored as its SHA-256 digest");
    let plain: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM api_tokens t WHERE t::text LIKE '%' || $1 || '%'",
            &[&token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "never stored in clear");

    let bad = run(&["token", "create", "--operator", "x", "--role", "root"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a role"));
    let id = me.token_id.unwrap().to_string();
    assert!(run(&["token", "revoke", &id]).status.success());
    // Another process revoked it: the running service hears of it through a
    // notification, within moments.
    eventually("the revoked token still works", async || {
        client_with_token(&app, &token).auth_me().await.is_err()
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_password_appears_in_no_response_log_line_or_column() {
    const PASSWORD: &str = "Kn0wn-P@ssw0rd-for-leak-check";
    let db = TestDb::new().await;
    db.migrate().await;
    let smtp = SmtpServer::start();
    let log = std::env::temp_dir().join(format!("{}.log", db.name));
    let port = free_port();
    let mut service = Command::new(env!("CARGO_BIN_EXE_audit-alert"))
        .env("DATABASE_URL", &db.url)
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", port.to_string())
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SECRET_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
        .env("LOG_LEVEL", "trace")
        .env("LOG_FILE", &log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("service did not start", async || {
        http.get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let mut bodies = String::new();
    let send = |method: &str, path: &str, body: Option<String>| {
        let mut req = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        req.send()
    };
    let config = format!(
        r#"{{"smtp_server":"127.0.0.1","smtp_port":{},"security":"none","sender_email":"a@example.com","username":"u","password":"{PASSWORD}","is_active":true}}"#,
        smtp.port
    );
    for (method, path, body) in [
        ("POST", "/api/config/smtp", Some(config.clone())),
        ("GET", "/api/config/smtp", None),
        ("GET", "/api/config/smtp/1", None),
        ("PUT", "/api/config/smtp/1", Some(config.clone())),
        (
            "POST",
            "/api/config/smtp/1/test",
            Some(r#"{"to":"x@example.com"}"#.into()),
        ),
        ("POST", "/api/config/smtp/1/activate", None),
        ("GET", "/api/monitor/status", None),
        ("GET", "/api/monitor/logs?lines=1000", None),
        ("GET", "/api/config/system", None),
    ] {
        let resp = send(method, path, body).await.unwrap();
        bodies.push_str(&resp.text().await.unwrap());
    }
    service.kill().unwrap();
    let out = service.wait_with_output().unwrap();
    let logs = format!(
        "{}{}{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&log);
    assert!(bodies.contains("password_set"), "the calls ran: {bodies}");
    assert!(logs.contains("audit_alert"), "logs were captured");
    assert!(!bodies.contains(PASSWORD), "a response leaked the password");
    assert!(!logs.contains(PASSWORD), "a log line leaked the password");
    let client = db.client().await;
    let tables: Vec<String> = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables {
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM \"{table}\" t WHERE t::text LIKE '%' || $1 || '%'"),
                &[&PASSWORD],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} holds the password in clear");
    }
}

#[tokio::test]
async fn cors_is_closed_unless_origins_are_configured() {
    let db = TestDb::new().await;
    let preflight = |app: &audit_alert::app::App| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{}/api/monitor/status", app.addr()),
            )
            .header("origin", "https://ops.example.com")
            .header("access-control-request-method", "GET")
            .send()
    };
    let app = db.start().await;
    let resp = preflight(&app).await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    app.stop().await;

    let config = db.config_with(&[("CORS_ALLOWED_ORIGINS", "https://ops.example.com")]);
    let app = audit_alert::app::App::start(&config).await.unwrap();
    let resp = preflight(&app).await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
    app.stop().await;
}
