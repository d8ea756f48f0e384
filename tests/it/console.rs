//! The operator console (`/console`): in headless Chromium driven over
//! WebDriver (chromedriver + fantoccini), signing in, walking every page
//! (a screenshot of each in `target/console-<page>.png`), submitting each
//! form; and over plain HTTP for what a browser would not send: forged posts,
//! posts without the CSRF field, a revoked token's session.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use audit_alert::auth::{self, Role};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::*;

// ---------------------------------------------------------------------------
// The browser

/// `name` at `$ENV_VAR`, else in `/usr/bin` or on `PATH`.
fn find_program(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> = std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Headless Chromium under chromedriver, offline but for loopback.
struct Browser {
    client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// `None` (the test then passes, saying why) without Chromium or
    /// chromedriver, except under `CI`, where that fails the test.
    async fn start() -> Option<Self> {
        let chromium = find_program("CHROMIUM", &["chromium", "chromium-browser"]);
        let driver = find_program("CHROMEDRIVER", &["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no chromium or chromedriver: install Debian's chromium and chromium-driver"
            );
            println!(
                "skipped: no chromium/chromedriver (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        // Installs the TLS provider reqwest (checking on chromedriver) needs.
        init_tracing();
        let port = free_port();
        let profile = std::env::temp_dir().join(format!("aa-console-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromedriver.log")).unwrap();
        let mut driver = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/status");
        eventually("chromedriver answers", async || {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--no-first-run", "--lang=zh-CN",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.join("profile").display()),
                ],
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
        {
            Ok(client) => client,
            Err(e) => {
                let _ = driver.kill();
                let log = std::fs::read_to_string(profile.join("chromedriver.log"));
                panic!("no browser session: {e}\n{}", log.unwrap_or_default());
            }
        };
        Some(Self {
            client,
            driver,
            profile,
        })
    }

    async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    /// Waits until the page at `path` shows `css`.
    async fn wait_for(&self, path: &str, css: &str) {
        eventually(&format!("{path} shows {css}"), async || {
            let at = self.path().await;
            if at == path && self.has(css).await {
                Ok(())
            } else {
                Err(format!("at {at}"))
            }
        })
        .await
    }

    /// Fills the form `form_css` with `fields` and submits it.
    async fn submit(&self, form_css: &str, fields: &[(&str, &str)]) {
        let form = self.client.form(Locator::Css(form_css)).await.unwrap();
        for (name, value) in fields {
            form.set_by_name(name, value).await.unwrap();
        }
        form.submit().await.unwrap();
    }

    /// The `href` of the first element `css` finds.
    async fn href(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .unwrap()
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/console/login")).await;
        self.submit("form[action='/console/login']", &[("token", token)])
            .await;
        self.wait_for("/console/", "#chart").await;
    }

    async fn sign_out(&self) {
        self.submit("form[action='/console/logout']", &[]).await;
        self.wait_for("/console/login", "input[name=token]").await;
    }

    /// Saves `target/console-<page>.png` and checks it is a real page.
    async fn screenshot(&self, page: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        assert!(
            png.len() > 10_000,
            "{page}: a blank page? {} bytes",
            png.len()
        );
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join(format!("console-{page}.png")), png).unwrap();
    }

    /// Every URL the page loaded (itself and its resources) is on `base`.
    async fn assert_only_local(&self, base: &str) {
        let loaded = self
            .client
            .execute(
                "return [location.href].concat(performance.getEntriesByType('resource')
                     .map(function (e) { return e.name; }));",
                vec![],
            )
            .await
            .unwrap();
        let urls: Vec<&str> = loaded
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert!(
            urls.iter()
                .any(|u| u.ends_with("/console/static/console.css")),
            "the stylesheet was loaded: {urls:?}"
        );
        let outside: Vec<_> = urls
            .iter()
            .filter(|u| !u.starts_with(&format!("{base}/")))
            .collect();
        assert!(outside.is_empty(), "requests to another host: {outside:?}");
    }

    /// Visits `path`, checks what it loaded, saves its screenshot.
    async fn walk(&self, base: &str, path: &str, css: &str, page: &str) {
        self.goto(&format!("{base}{path}")).await;
        self.wait_for(path.split('?').next().unwrap(), css).await;
        self.assert_only_local(base).await;
        self.screenshot(page).await;
    }
}

// ---------------------------------------------------------------------------
// Plain HTTP, for what a browser would not send

/// A console session held by reqwest (no redirects followed).
struct Http {
    base: String,
    http: reqwest::Client,
    cookie: String,
}

/// The value of the first hidden `csrf` field of `html`.
fn csrf_field(html: &str) -> String {
    html.split_once(r#"name="csrf" value=""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_owned())
        .unwrap_or_else(|| panic!("no csrf field in:\n{html}"))
}

fn cookie_named(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

fn form_body(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).unwrap()
}

impl Http {
    async fn sign_in(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let login = http
            .get(format!("{base}/console/login"))
            .send()
            .await
            .unwrap();
        let login_cookie = cookie_named(&login, "aa_login").expect("the sign-in cookie");
        let csrf = csrf_field(&login.text().await.unwrap());
        let signed_in = http
            .post(format!("{base}/console/login"))
            .header("cookie", login_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("csrf", &csrf), ("token", token)]))
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303, "signed in");
        let set = signed_in
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with("aa_session="))
            .expect("a session cookie");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(set.contains(attribute), "{attribute} in {set}");
        }
        Self {
            base: base.to_owned(),
            http,
            cookie: set.split(';').next().unwrap().to_owned(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(fields))
            .send()
            .await
            .unwrap()
    }

    /// The session's CSRF token, as its pages carry it.
    async fn csrf(&self) -> String {
        csrf_field(&self.get("/console/").await.text().await.unwrap())
    }
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A failed alert: its only recipient's server refuses it for good.
async fn app_with_a_failed_alert() -> (TestApp, i64) {
    let app = TestApp::start(SmtpServer::rejecting(&["oncall@example.com"]), ONCALL).await;
    wait_until_listening(&app.app).await;
    insert_audit_rows(&app.client, 1, "不合格").await;
    let failed = "SELECT count(*) FROM email_sent_log WHERE status = 'failed'";
    wait_for_count_query(&app.client, failed, 1).await;
    let id: i64 = app
        .client
        .query_one("SELECT id FROM email_sent_log", &[])
        .await
        .unwrap()
        .get(0);
    (app, id)
}

async fn token(app: &TestApp, operator: &str, role: Role) -> (i64, String) {
    let issued = auth::issue(app.app.pool(), operator, None, role, None, None)
        .await
        .unwrap();
    (issued.id, issued.token.expose().to_owned())
}

// ---------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn console_every_page_and_form_in_a_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (app, alert) = app_with_a_failed_alert().await;
    let base = format!("http://{}", app.app.addr());
    let b = &browser;
    b.sign_in(&base, ADMIN_TOKEN).await;
    assert!(b.text("h1").await.contains("概览"), "Chinese first");

    // Add a recipient through the form; it is in the database.
    b.walk(&base, "/console/config", "#add-recipient", "config")
        .await;
    b.submit(
        "#add-recipient",
        &[
            ("table_name", "audit_results"),
            ("email", "ops@example.com"),
        ],
    )
    .await;
    b.wait_for("/console/config", ".notice").await;
    let added = "SELECT count(*) FROM recipients_config
                 WHERE table_name = 'audit_results' AND email = 'ops@example.com'";
    assert_eq!(count(&app.client, added).await, 1);
    assert!(b.text("#recipients").await.contains("ops@example.com"));
    // Fixed: switched off and on again.
    let active = "SELECT count(*) FROM recipients_config
                  WHERE email = 'ops@example.com' AND is_active";
    let ops: i32 = app
        .client
        .query_one(
            "SELECT id FROM recipients_config WHERE email = 'ops@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for (now, want) in [("false", 0), ("true", 1)] {
        let toggle = format!(
            "form[action='/console/config/recipients/{ops}/active']:has(input[value={now}])"
        );
        b.submit(&toggle, &[]).await;
        eventually("the recipient is switched", async || {
            count(&app.client, active).await == want
        })
        .await;
        b.wait_for("/console/config", ".notice").await;
    }

    // "Send test mail": the server's answer is on the page, good and bad.
    b.submit("form[action$='/test']", &[("to", "ops@example.com")])
        .await;
    eventually("the answer is shown", async || b.has("#test-result").await).await;
    assert_eq!(b.text("#test-result .outcome").await, "sent");
    assert!(b
        .text("#test-result .detail")
        .await
        .contains("accepted the test mail"));
    app.smtp
        .wait_for("the test mail", |r| {
            r.iter().any(|m| m.subject.contains("test mail"))
        })
        .await;
    b.submit("form[action$='/test']", &[("to", "oncall@example.com")])
        .await;
    eventually("the refusal is shown", async || {
        b.has("#test-result").await && b.text("#test-result .outcome").await == "recipient_rejected"
    })
    .await;
    assert!(b.text("#test-result .detail").await.contains("550"));

    // The failed alert, its row and attempts; re-sent, the mail arrives.
    let alert_path = format!("/console/alerts/{alert}");
    b.walk(&base, &alert_path, "#resend", "alert").await;
    assert!(
        b.text("#attempts").await.contains("550"),
        "the attempt's error"
    );
    assert!(b.text("#row").await.contains("https://example.com/post/1"));
    assert!(b.text("#outcomes").await.contains("oncall@example.com"));
    b.client
        .find(Locator::Id("resend"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    app.smtp
        .wait_for("the re-sent alert", |r| {
            r.iter().any(|m| {
                m.envelope_to.iter().any(|t| t == "ops@example.com") && !m.record_ids().is_empty()
            })
        })
        .await;
    b.wait_for(&alert_path, ".notice").await;
    // Acknowledged from its page, as the signed-in user.
    b.client
        .find(Locator::Id("ack"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_for(&alert_path, ".notice").await;
    assert!(b.text("#acknowledged").await.contains("admin"));
    assert!(!b.has("#ack").await, "acknowledged once");
    let acked = format!(
        "SELECT count(*) FROM email_sent_log WHERE id = {alert} AND acknowledged_by = 'admin'"
    );
    assert_eq!(count(&app.client, &acked).await, 1);

    // Alerts of two tables, spread over the day (raised now, then dated
    // back), for the overview's chart.
    insert_audit_rows(&app.client, 5, "不确定").await;
    app.client
        .execute(
            "INSERT INTO image_audit_results (audit_result, ip_address, reasons)
             SELECT '不合格', '10.0.0.' || g, '图片违规' FROM generate_series(1, 3) g",
            &[],
        )
        .await
        .unwrap();
    wait_for_count_query(&app.client, "SELECT count(*) FROM email_sent_log", 9).await;
    app.client
        .execute(
            "UPDATE email_sent_log SET created_at = created_at - make_interval(hours => (id % 7)::int * 3)
              WHERE id <> $1",
            &[&alert],
        )
        .await
        .unwrap();

    // Every other page.
    b.walk(&base, "/console/", "#chart polyline", "overview")
        .await;
    assert_eq!(
        b.client
            .find_all(Locator::Css("#chart polyline"))
            .await
            .unwrap()
            .len(),
        2
    );
    let chart = b.text("#chart").await;
    assert!(chart.contains("audit_results (6)"), "{chart}");
    assert!(chart.contains("image_audit_results (3)"), "{chart}");
    b.walk(&base, "/console/alerts", "#alerts", "alerts").await;
    assert!(b.text("#alerts").await.contains("audit_results"));
    b.walk(
        &base,
        "/console/config/templates/audit_results",
        "#preview-html",
        "template",
    )
    .await;
    // The live preview follows the editor (the page's script).
    let subject = b
        .client
        .find(Locator::Css("#template-form input[name=subject]"))
        .await
        .unwrap();
    subject.clear().await.unwrap();
    subject.send_keys("控制台预览 {{table}}").await.unwrap();
    eventually("the live preview", async || {
        let shown = b.text("#preview-subject").await;
        if shown == "控制台预览 audit_results" {
            Ok(())
        } else {
            Err(shown)
        }
    })
    .await;
    b.walk(&base, "/console/audit", "#audit", "audit").await;
    let entry = b.href("#audit tbody a").await;
    b.walk(&base, &entry, "#entry", "audit-entry").await;
    b.walk(&base, "/console/tokens", "#create-token", "tokens")
        .await;
    b.submit(
        "#create-token",
        &[("operator_id", "zhang.san"), ("role", "viewer")],
    )
    .await;
    b.wait_for("/console/tokens", "#issued").await;
    assert!(b.text("#issued code").await.starts_with("aat_"));
    assert!(b.text("#tokens").await.contains("zhang.san"));

    // English, remembered.
    b.goto(&format!("{base}/console/alerts?lang=en")).await;
    assert_eq!(b.text("h1").await, "Alerts");
    b.goto(&format!("{base}/console/")).await;
    assert_eq!(b.text("h1").await, "Overview");

    // A phone-sized overview.
    b.client.set_window_size(390, 844).await.unwrap();
    b.walk(&base, "/console/", "#chart", "overview-phone").await;

    // The console's calls are in the audit log as the user's, marked.
    let marked = "SELECT count(*) FROM audit_log WHERE operator_id = 'admin'
                    AND operation_url = '/api/config/recipients' AND operation_method = 'POST'
                    AND operation_ip = '127.0.0.1' AND request_params->>'via' = 'console'";
    wait_for_count_query(&app.client, marked, 1).await;
    let resend = format!(
        "SELECT count(*) FROM audit_log WHERE operation_url = '/api/alerts/{alert}/resend'
           AND operator_id = 'admin' AND operation_result = '0'"
    );
    wait_for_count_query(&app.client, &resend, 1).await;

    b.sign_out().await;
    b.goto(&format!("{base}/console/alerts")).await;
    b.wait_for("/console/login", "input[name=token]").await;
    browser.stop().await;
    app.app.stop().await;
}

#[tokio::test]
async fn console_roles_see_and_may_do_what_the_api_lets_them() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (app, alert) = app_with_a_failed_alert().await;
    let base = format!("http://{}", app.app.addr());
    let (_, viewer) = token(&app, "viewer.li", Role::Viewer).await;
    let (_, auditor) = token(&app, "auditor.wang", Role::Auditor).await;
    let b = &browser;

    // A viewer: no operator buttons, no audit log, no tokens.
    b.sign_in(&base, &viewer).await;
    assert!(!b.has("a[href='/console/audit']").await);
    assert!(!b.has("a[href='/console/tokens']").await);
    b.goto(&format!("{base}/console/alerts/{alert}")).await;
    b.wait_for(&format!("/console/alerts/{alert}"), "#alert-status")
        .await;
    assert!(!b.has("#resend").await, "no re-send button for a viewer");
    b.goto(&format!("{base}/console/config")).await;
    b.wait_for("/console/config", "#recipients").await;
    assert!(!b.has("#add-recipient").await);
    assert!(!b.has("form[action$='/test']").await);
    b.goto(&format!("{base}/console/config/templates/audit_results"))
        .await;
    b.wait_for("/console/config/templates/audit_results", "#template-form")
        .await;
    assert!(!b.has("#template-form button").await, "no save or preview");
    b.goto(&format!("{base}/console/audit")).await;
    assert_eq!(b.text(".status").await.split(' ').next(), Some("403"));
    b.sign_out().await;

    // Posted anyway (with a valid session and CSRF token): 403, nothing done.
    let http = Http::sign_in(&base, &viewer).await;
    let csrf = http.csrf().await;
    let recipients = "SELECT count(*) FROM recipients_config";
    let before = count(&app.client, recipients).await;
    let forged = http
        .post(
            "/console/config/recipients",
            &[
                ("csrf", &csrf),
                ("table_name", "audit_results"),
                ("email", "x@example.com"),
            ],
        )
        .await;
    assert_eq!(forged.status(), 403);
    assert!(
        forged.text().await.unwrap().contains("operator"),
        "the API's reason"
    );
    assert_eq!(count(&app.client, recipients).await, before);
    let resend = http
        .post(
            &format!("/console/alerts/{alert}/resend"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(resend.status(), 403);
    let status = "SELECT count(*) FROM email_sent_log WHERE status = 'failed'";
    assert_eq!(count(&app.client, status).await, 1, "still failed");
    assert_eq!(http.get("/console/tokens").await.status(), 403);
    let template = [
        ("csrf", csrf.as_str()),
        ("subject", "s"),
        ("html", "h"),
        ("text", "t"),
    ];
    for action in ["", "/preview"] {
        let path = format!("/console/config/templates/audit_results{action}");
        assert_eq!(http.post(&path, &template).await.status(), 403, "{path}");
    }
    let templates = "SELECT count(*) FROM alert_templates";
    assert_eq!(count(&app.client, templates).await, 0, "no template saved");

    // An auditor: the audit log, an entry, the export as CSV.
    b.sign_in(&base, &auditor).await;
    assert!(b.has("a[href='/console/audit']").await);
    assert!(!b.has("a[href='/console/tokens']").await);
    b.goto(&format!(
        "{base}/console/audit?operator_id=viewer.li&result=1"
    ))
    .await;
    b.wait_for("/console/audit", "#audit").await;
    let rows = b.text("#audit tbody").await;
    assert!(
        rows.contains("viewer.li"),
        "the viewer's refused calls: {rows}"
    );
    assert!(!rows.contains("auditor.wang"), "filtered by operator");
    let export = b.href("#export").await;
    assert!(export.contains("operator_id=viewer.li"), "{export}");
    let csv = b
        .client
        .execute(
            // Decoded keeping the byte order mark (`text()` drops it).
            "return fetch(arguments[0]).then(function (r) { return r.arrayBuffer(); })
                 .then(function (b) { return new TextDecoder('utf-8', { ignoreBOM: true }).decode(b); });",
            vec![json!(export)],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with('\u{feff}'), "a byte order mark");
    let mut lines = csv.trim_start_matches('\u{feff}').lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("audit_id,operation_time,"));
    let entries: Vec<_> = lines.collect();
    assert!(!entries.is_empty());
    assert!(
        entries.iter().all(|l| l.contains("viewer.li")),
        "{entries:?}"
    );
    assert!(!b.has("#resend").await);
    browser.stop().await;
    app.app.stop().await;
}

#[tokio::test]
async fn console_session_ends_when_its_token_is_revoked_or_signed_out() {
    let app = TestApp::start(SmtpServer::start(), ONCALL).await;
    let base = format!("http://{}", app.app.addr());
    let (id, operator) = token(&app, "operator.zhao", Role::Operator).await;

    let http = Http::sign_in(&base, &operator).await;
    let page = http.get("/console/").await;
    assert_eq!(page.status(), 200);
    for (header, value) in [
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(page.headers()[header], value);
    }
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains(&operator), "the token is never on a page");
    assert!(!html.contains(http.cookie.trim_start_matches("aa_session=")));

    let revoked = reqwest::Client::new()
        .delete(format!("{base}/api/auth/tokens/{id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let after = http.get("/console/").await;
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/console/login");

    // Signing out ends the session row.
    let http = Http::sign_in(&base, ADMIN_TOKEN).await;
    let sessions = "SELECT count(*) FROM console_sessions WHERE token_id IS NULL";
    assert_eq!(count(&app.client, sessions).await, 1);
    let csrf = http.csrf().await;
    assert_eq!(
        http.post("/console/logout", &[("csrf", &csrf)])
            .await
            .status(),
        303
    );
    assert_eq!(count(&app.client, sessions).await, 0);
    let signed_out = "SELECT count(*) FROM audit_log WHERE operation_url = '/console/logout'
                        AND operator_id = 'admin' AND operation_ip = '127.0.0.1'";
    wait_for_count_query(&app.client, signed_out, 1).await;
    assert_eq!(http.get("/console/").await.status(), 303);

    // A wrong token: the sign-in page again, 401.
    let login = reqwest::Client::new()
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let cookie = cookie_named(&login, "aa_login").unwrap();
    let csrf = csrf_field(&login.text().await.unwrap());
    let wrong = reqwest::Client::new()
        .post(format!("{base}/console/login"))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("csrf", &csrf), ("token", "aat_not-a-token")]))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // Neither the token nor a session id reaches the audit log.
    let leaked = format!(
        "SELECT count(*) FROM audit_log WHERE request_params::text LIKE '%{operator}%'
            OR response_result::text LIKE '%{operator}%'"
    );
    assert_eq!(count(&app.client, &leaked).await, 0);

    // A session of ADMIN_TOKEN outlives a restart with the same token, and
    // ends when the service runs with another one.
    let http = Http::sign_in(&base, ADMIN_TOKEN).await;
    app.app.stop().await;
    for (admin_token, status) in [(ADMIN_TOKEN, 200), ("another-admin-token-9876543210", 303)] {
        let restarted =
            audit_alert::app::App::start(&app.db.config_with(&[("ADMIN_TOKEN", admin_token)]))
                .await
                .unwrap();
        let again = Http {
            base: format!("http://{}", restarted.addr()),
            http: http.http.clone(),
            cookie: http.cookie.clone(),
        };
        assert_eq!(
            again.get("/console/").await.status(),
            status,
            "{admin_token}"
        );
        restarted.stop().await;
    }
}

#[tokio::test]
async fn every_console_form_refuses_a_missing_csrf_token() {
    let (app, alert) = app_with_a_failed_alert().await;
    let base = format!("http://{}", app.app.addr());
    // A token, so the tokens page has a revoke form.
    token(&app, "someone", Role::Viewer).await;
    let http = Http::sign_in(&base, ADMIN_TOKEN).await;

    // Every form the pages show, found on them.
    let mut actions = std::collections::BTreeSet::new();
    for page in [
        "/console/".to_owned(),
        "/console/alerts".to_owned(),
        format!("/console/alerts/{alert}"),
        "/console/config".to_owned(),
        "/console/config/templates/audit_results".to_owned(),
        "/console/audit".to_owned(),
        "/console/tokens".to_owned(),
    ] {
        let html = http.get(&page).await.text().await.unwrap();
        for form in html.split("<form").skip(1) {
            let tag = form.split('>').next().unwrap();
            if !tag.contains(r#"method="post""#) {
                continue;
            }
            let action = tag
                .split_once(r#"action=""#)
                .and_then(|(_, a)| a.split_once('"'))
                .map(|(a, _)| a.to_owned())
                .unwrap();
            assert!(
                form.contains(r#"name="csrf""#),
                "{action} on {page} has a CSRF field"
            );
            actions.insert(action);
        }
    }
    // The preview button posts the editor to its own action.
    actions.insert("/console/config/templates/audit_results/preview".to_owned());
    assert!(actions.len() >= 8, "{actions:?}");

    let watched = [
        "SELECT count(*) FROM recipients_config",
        "SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL",
        "SELECT count(*) FROM email_sent_log WHERE status = 'failed'",
        "SELECT count(*) FROM alert_templates",
        "SELECT count(*) FROM console_sessions",
        "SELECT count(*) FROM recipients_config WHERE is_active",
        "SELECT count(*) FROM email_sent_log WHERE acknowledged_at IS NOT NULL",
    ];
    let mut before = Vec::new();
    for sql in watched {
        before.push(count(&app.client, sql).await);
    }
    let fields = [
        ("table_name", "audit_results"),
        ("email", "csrf@example.com"),
        ("to", "csrf@example.com"),
        ("subject", "s"),
        ("html", "h"),
        ("text", "t"),
        ("operator_id", "mallory"),
        ("role", "admin"),
    ];
    for action in &actions {
        let refused = http.post(action, &fields).await;
        assert_eq!(refused.status(), 403, "{action} without a CSRF token");
        let page = refused.text().await.unwrap();
        assert!(page.contains("CSRF"), "{action}: {page}");
        let mut wrong = fields.to_vec();
        wrong.push(("csrf", "not-the-token"));
        assert_eq!(http.post(action, &wrong).await.status(), 403, "{action}");
    }
    for (sql, was) in watched.iter().zip(before) {
        assert_eq!(count(&app.client, sql).await, was, "{sql}: nothing changed");
    }
    assert_eq!(http.get("/console/").await.status(), 200, "still signed in");

    // The sign-in form's own check: no double-submit cookie, refused.
    let login = reqwest::Client::new()
        .post(format!("{base}/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("csrf", "x"), ("token", ADMIN_TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 403);
    app.app.stop().await;
}

#[tokio::test]
async fn console_lists_filter_and_page() {
    let app = TestApp::start(SmtpServer::start(), ONCALL).await;
    let base = format!("http://{}", app.app.addr());
    wait_until_listening(&app.app).await;
    insert_audit_rows(&app.client, 55, "不合格").await;
    wait_for_count_query(&app.client, "SELECT count(*) FROM email_sent_log", 55).await;
    let http = Http::sign_in(&base, ADMIN_TOKEN).await;
    let rows = |html: &str| html.matches("<a href=\"/console/alerts/").count();

    // Handlebars writes `=` in attributes as `&#x3D;`.
    let first = http.get("/console/alerts").await.text().await.unwrap();
    let first = first.replace("&#x3D;", "=");
    assert_eq!(rows(&first), 50, "a page of 50");
    assert!(
        first.contains(r#"href="/console/alerts?page=2""#),
        "a next page"
    );
    let second = http
        .get("/console/alerts?page=2")
        .await
        .text()
        .await
        .unwrap();
    let second = second.replace("&#x3D;", "=");
    assert_eq!(rows(&second), 5);
    assert!(
        second.contains(r#"href="/console/alerts?page=1""#),
        "a previous page: {}",
        second.split("class=\"pager\"").nth(1).unwrap_or_default()
    );
    // The chat messages' link: `alerts?table=...`.
    let other = http
        .get("/console/alerts?table=image_audit_results")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(rows(&other), 0);
    let future = http
        .get("/console/alerts?from=2999-01-01T00:00")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(rows(&future), 0, "times filter");

    // The audit log's time and text filters reach the API.
    let total = |html: &str| {
        html.split_once(r#"<span id="total">"#)
            .and_then(|(_, rest)| rest.split_once('<'))
            .map(|(n, _)| n.parse::<u64>().unwrap())
            .unwrap()
    };
    eventually("the console's calls are in the audit log", async || {
        total(
            &http
                .get("/console/audit?text=/api/alerts")
                .await
                .text()
                .await
                .unwrap(),
        ) >= 4
    })
    .await;
    let before_2000 = http.get("/console/audit?to=2000-01-01T00:00").await;
    assert_eq!(total(&before_2000.text().await.unwrap()), 0);
    let failed_only = http
        .get("/console/audit?result=1")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(total(&failed_only), 0, "nothing failed");
    app.app.stop().await;
}
