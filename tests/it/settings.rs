//! Settings and the configuration a copy holds: every documented setting can
//! be set, SMTP state has one source, and a copy loads its own change once.

use serde_json::json;

use crate::api::raw;
use crate::helpers::*;

#[tokio::test]
async fn audit_retention_days_can_be_set_and_the_purge_keeps_that_long() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let (status, _, setting) = raw(
        &app,
        "PUT",
        "/api/config/system/audit_retention_days",
        Some(r#"{"value":"365"}"#),
    )
    .await;
    assert_eq!(status, 200, "{setting}");
    assert_eq!(
        (setting["minimum"].as_u64(), setting["maximum"].as_u64()),
        (Some(180), Some(3650))
    );
    assert_eq!(app.worker().snapshot().switches.audit_retention_days, 365);
    let (_, _, listed) = raw(&app, "GET", "/api/config/system", None).await;
    let retention = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "audit_retention_days")
        .unwrap();
    assert_eq!(
        (&retention["value"], &retention["default"]),
        (&json!("365"), &json!("180"))
    );
    let (status, _, problem) = raw(
        &app,
        "PUT",
        "/api/config/system/audit_retention_days",
        Some(r#"{"value":"30"}"#),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("value")));
    app.stop().await;

    // Entries 200 and 400 days old: a purge keeping 365 days takes the second only.
    let client = db.client().await;
    for (id, days) in [("a", 200), ("b", 400)] {
        client
            .execute(
                "INSERT INTO audit_log (audit_id, operation_time, operation_url, operation_method,
                                        operation_desc, operation_result, duration_ms)
                 VALUES (rpad($1, 32, '0'), now() - make_interval(days => $2), '/x', 'GET', 'x', '0', 1)",
                &[&id, &days],
            )
            .await
            .unwrap();
    }
    let app = db.start().await;
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM audit_log WHERE operation_time < now() - interval '365 days'",
        0,
    )
    .await;
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_log WHERE operation_time < now() - interval '180 days'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the entry of 200 days stays");
    app.stop().await;
}

#[tokio::test]
async fn an_smtp_configuration_that_cannot_be_used_is_reported_as_such() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.client()
        .await
        .execute(
            "INSERT INTO smtp_config (smtp_server, smtp_port, sender_email, security, is_active)
             VALUES ('127.0.0.1', 2525, 'not an address', 'none', true)",
            &[],
        )
        .await
        .unwrap();
    let app = db.start().await;
    let snapshot = app.worker().snapshot();
    assert!(snapshot.smtp.settings().is_none(), "{:?}", snapshot.smtp);
    let (status, _, body) = raw(&app, "GET", "/api/monitor/status", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["smtp_configured"], false, "{body}");
    assert_eq!(body["overall_status"], "degraded", "{body}");
    let problem = body["smtp_problem"].as_str().unwrap();
    assert!(
        problem.starts_with("SMTP configured but unusable: configuration 1: "),
        "{problem}"
    );
    app.stop().await;
}

/// The copy that changes a setting through the API loads it before it
/// answers; its own notification of the change then finds it loaded.
#[tokio::test]
async fn a_setting_changed_through_the_api_is_loaded_once() {
    let db = TestDb::new().await;
    let app = db.start().await;
    wait_until_listening(&app).await;
    let before = app.worker().control_notifications();
    let generation = app.worker().generation();
    let (status, _, _) = raw(
        &app,
        "PUT",
        "/api/config/system/digest_max_records",
        Some(r#"{"value":"50"}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.worker().generation(),
        generation + 1,
        "loaded before answering"
    );
    let after = eventually("the change's notification is handled", async || {
        let now = app.worker().control_notifications();
        (now != before).then_some(now)
    })
    .await;
    // Handled once: by the load the call shares (found loaded), or by the
    // load the call found done after its change.
    assert_eq!(
        (after.0 - before.0) + (after.1 - before.1),
        1,
        "(reloaded, found loaded): {after:?} after {before:?}"
    );
    assert_eq!(app.worker().generation(), generation + 1, "loaded once");

    // A change made elsewhere is loaded through its notification.
    db.client()
        .await
        .execute(
            "UPDATE system_config SET config_value = '60' WHERE config_key = 'digest_max_records'",
            &[],
        )
        .await
        .unwrap();
    eventually("the other change is loaded", async || {
        (app.worker().snapshot().switches.digest_max_records == 60).then_some(())
    })
    .await;
    let last = app.worker().control_notifications();
    assert_eq!((last.0 - after.0, last.1 - after.1), (1, 0));
    app.stop().await;
}
