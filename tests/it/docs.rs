//! The `/docs` page in headless Chromium with every other host unreachable:
//! it works offline, shows every operation of the spec, and leaves a
//! screenshot in `target/docs-screenshot.png`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

/// How long one Chromium run may take before it is killed and the test fails.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(90);

/// `CHROMIUM`, else Debian's `chromium` (or `chromium-browser`) in `/usr/bin`
/// or on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> = std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .collect();
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs Chromium headless, offline but for loopback, with a profile of its
/// own; returns what it wrote to stdout. Fails the test on a non-zero exit
/// or when it overruns [`CHROMIUM_DEADLINE`] (it is killed then).
async fn chromium(browser: &Path, args: &[String]) -> String {
    let profile = std::env::temp_dir().join(format!("aa-chromium-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&profile).expect("create chromium profile dir");
    let stderr_log = profile.join("stderr.log");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).expect("create stderr log"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", browser.display()));
    let mut stdout = child.stdout.take().expect("chromium stdout");
    // stdout reaches end of file when Chromium exits.
    let reading = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let stderr = || std::fs::read_to_string(&stderr_log).unwrap_or_default();
    let out = match tokio::time::timeout(CHROMIUM_DEADLINE, reading).await {
        Ok(read) => read
            .expect("join stdout reader")
            .expect("read chromium stdout"),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {CHROMIUM_DEADLINE:?}; stderr:\n{}",
                stderr()
            );
        }
    };
    let status = child.wait().expect("wait for chromium");
    assert!(
        status.success(),
        "chromium {args:?}: {status}; stderr:\n{}",
        stderr()
    );
    let _ = std::fs::remove_dir_all(&profile);
    out
}

/// Every operation of an OpenAPI document as (`GET`, `/api/...`), sorted.
fn spec_operations(spec: &serde_json::Value) -> Vec<(String, String)> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut ops: Vec<_> = spec["paths"]
        .as_object()
        .expect("spec has paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    ops.sort();
    ops
}

/// Every operation Swagger UI rendered: each `opblock` with its
/// `opblock-summary-method` text and `opblock-summary-path`'s `data-path`.
fn rendered_operations(dom: &str) -> Vec<(String, String)> {
    let mut ops: Vec<_> = dom
        .split(r#"class="opblock opblock-"#)
        .skip(1)
        .filter_map(|block| {
            let method = block
                .split_once(r#"class="opblock-summary-method">"#)?
                .1
                .split_once('<')?
                .0;
            let path = block
                .split_once(r#"class="opblock-summary-path" data-path=""#)?
                .1
                .split_once('"')?
                .0;
            Some((method.to_owned(), path.replace("&amp;", "&")))
        })
        .collect();
    ops.sort();
    ops
}

#[tokio::test]
async fn docs_page_renders_every_operation_in_headless_chromium() {
    let Some(browser) = find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium at $CHROMIUM, /usr/bin/chromium or /usr/bin/chromium-browser: \
             install Debian's chromium (apt-get install chromium)"
        );
        println!("skipped: no chromium installed (apt-get install chromium to run this test)");
        return;
    };
    let db = TestDb::new().await;
    db.migrate().await;
    let app = db.start().await;
    let base = format!("http://{}", app.addr());

    let spec: serde_json::Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected = spec_operations(&spec);
    assert!(!expected.is_empty(), "the spec has operations");

    let dom = chromium(&browser, &["--dump-dom".into(), format!("{base}/docs")]).await;
    let rendered = rendered_operations(&dom);
    let missing: Vec<_> = expected
        .iter()
        .filter(|op| !rendered.contains(op))
        .collect();
    assert!(
        missing.is_empty(),
        "/docs does not show {} of {} operations: {missing:?}\nDOM starts: {}",
        missing.len(),
        expected.len(),
        dom.chars().take(2000).collect::<String>()
    );
    assert_eq!(
        rendered, expected,
        "/docs shows exactly the spec's operations"
    );
    println!("/docs shows all {} operations", rendered.len());

    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let screenshot = target.join("docs-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &browser,
        &[
            "--window-size=1280,2400".into(),
            format!("--screenshot={}", screenshot.display()),
            format!("{base}/docs"),
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 20_000,
        "a real page, not a blank one: {} bytes",
        png.len()
    );
    println!("screenshot of /docs: {}", screenshot.display());

    app.stop().await;
}
