//! The pipeline end to end: a row is written, an e-mail arrives.

use crate::helpers::*;

const FAIL: &str = "不合格";
const UNSURE: &str = "不确定";
const PASS: &str = "合格";

#[tokio::test]
async fn a_flagged_row_arrives_as_one_mail_carrying_its_fields() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;

    let id: i64 = t
        .client
        .query_one(
            "INSERT INTO audit_results (verdict, url, reason)
             VALUES ($1, 'https://example.com/p/42', '色情低俗') RETURNING id",
            &[&FAIL],
        )
        .await
        .unwrap()
        .get(0);

    let mails = t.smtp.wait_for_count(1).await;
    let mail = &mails[0];
    assert_eq!(mail.envelope_to, ["oncall@example.com"]);
    assert_eq!(
        mail.subject,
        format!("【内容审核告警】不合格 - audit_results 记录 {id}")
    );
    assert_eq!(mail.from, "审核告警 <alerts@example.com>");
    assert_eq!(mail.record_ids(), [id.to_string()]);
    for field in ["https://example.com/p/42", "色情低俗", FAIL, "created_at"] {
        assert!(
            mail.text.contains(field),
            "text part lacks {field}: {}",
            mail.text
        );
        assert!(mail.html.contains(field), "html part lacks {field}");
    }
    assert!(mail.html.contains("#d93025"), "不合格 is red");

    wait_for_count_query(
        &t.client,
        &format!(
            "SELECT count(*) FROM email_sent_log WHERE table_name = 'audit_results'
                AND record_id = '{id}' AND status = 'sent' AND message_id = '<{}>'",
            mail.message_id
        ),
        1,
    )
    .await;
    t.app.stop().await;
}

#[tokio::test]
async fn a_passing_row_sends_nothing() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;

    let passing = insert_audit_rows(&t.client, 3, PASS).await;
    // A flagged row written after them: once its mail is in, the passing rows
    // had every chance to produce one.
    let flagged = insert_audit_rows(&t.client, 1, UNSURE).await;
    let mails = t.smtp.wait_for_count(1).await;
    t.app.worker().deliver_once().await.unwrap();

    assert_eq!(t.smtp.received().len(), 1);
    assert_eq!(mails[0].record_ids(), [flagged[0].to_string()]);
    assert!(mails[0].html.contains("#f29900"), "不确定 is orange");
    let alerts: i64 = t
        .client
        .query_one(
            "SELECT count(*) FROM email_sent_log WHERE record_id = ANY($1)",
            &[&passing.iter().map(i64::to_string).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(alerts, 0, "passing rows leave no alert record");
    t.app.stop().await;
}

#[tokio::test]
async fn image_results_go_only_to_their_recipients() {
    let t = TestApp::start(
        SmtpServer::start(),
        &[
            ("audit_results", "text-team@example.com"),
            ("image_audit_results", "image-team@example.com"),
        ],
    )
    .await;

    let id: i64 = t
        .client
        .query_one(
            "INSERT INTO image_audit_results (audit_result, ip_address, mac_address, reasons)
             VALUES ($1, '10.1.2.3', 'aa:bb:cc:dd:ee:ff', '暴力血腥') RETURNING id",
            &[&FAIL],
        )
        .await
        .unwrap()
        .get(0);

    let mails = t.smtp.wait_for_count(1).await;
    t.app.worker().deliver_once().await.unwrap();
    assert_eq!(t.smtp.received().len(), 1);
    assert_eq!(mails[0].envelope_to, ["image-team@example.com"]);
    assert_eq!(mails[0].record_ids(), [id.to_string()]);
    for field in ["10.1.2.3", "aa:bb:cc:dd:ee:ff", "暴力血腥"] {
        assert!(mails[0].text.contains(field), "lacks {field}");
    }
    t.app.stop().await;
}

#[tokio::test]
async fn the_same_record_alerts_once_even_across_a_restart() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;

    let id = insert_audit_rows(&t.client, 1, FAIL).await[0];
    t.smtp.wait_for_count(1).await;
    // Same verdict written again, and another column touched.
    t.client
        .execute(
            "UPDATE audit_results SET verdict = $2, reason = 'x' WHERE id = $1",
            &[&id, &FAIL],
        )
        .await
        .unwrap();
    t.app.stop().await;

    let app = t.db.start().await;
    let swept = app.worker().sweep_once().await.unwrap();
    assert_eq!(swept.found, 0);
    assert_eq!(app.worker().deliver_once().await.unwrap(), 0);
    assert_eq!(t.smtp.received().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_verdict_change_from_uncertain_to_fail_alerts_again() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;

    let id = insert_audit_rows(&t.client, 1, UNSURE).await[0];
    t.smtp.wait_for_count(1).await;
    t.client
        .execute(
            "UPDATE audit_results SET verdict = $2 WHERE id = $1",
            &[&id, &FAIL],
        )
        .await
        .unwrap();
    let mails = t.smtp.wait_for_count(2).await;
    assert!(mails[0].subject.contains(UNSURE));
    assert!(mails[1].subject.contains(FAIL));
    assert_eq!(mails[1].record_ids(), [id.to_string()]);
    t.app.stop().await;
}

#[tokio::test]
async fn rows_written_while_the_service_was_down_are_mailed_at_start() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    let mut ids = insert_audit_rows(&client, 3, FAIL).await;
    ids.extend(insert_audit_rows_bypassing_triggers(&client, 2, FAIL).await);

    // A sweep tells the rows the trigger reported from the ones written with
    // triggers bypassed.
    let pool = audit_alert::db::pool(&db.config().database, 1).unwrap();
    let snapshot = audit_alert::monitor::Snapshot::load(&pool, None)
        .await
        .unwrap();
    let intake = audit_alert::monitor::intake_pool(&db.config().database).unwrap();
    let report = audit_alert::monitor::sweep(&pool, &intake, &snapshot.tables, true)
        .await
        .unwrap();
    assert_eq!(report.found, 2);
    // It took in what the trigger reported before it read the table.
    let reported: i64 = client
        .query_one("SELECT count(*) FROM alert_inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reported, 0);
    pool.close();
    intake.close();

    let app = db.start().await;
    let mails = smtp.wait_for_records(5).await;
    let counts = id_counts(&mails);
    for id in ids {
        assert_eq!(counts.get(&id.to_string()), Some(&1));
    }
    app.stop().await;
}

#[tokio::test]
async fn rows_written_with_triggers_bypassed_are_mailed_by_the_sweep() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;
    // Let the start-up sweep pass, so the rows below are found by a later one.
    wait_until_listening(&t.app).await;

    let ids = insert_audit_rows_bypassing_triggers(&t.client, 5, FAIL).await;
    let pending: i64 = t
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM email_sent_log) + (SELECT count(*) FROM alert_inbox)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "no trigger fired");

    let report = t.app.worker().sweep_once().await.unwrap();
    assert_eq!(report.found, 5);
    let mails = t.smtp.wait_for_records(5).await;
    let counts = id_counts(&mails);
    assert!(
        ids.iter().all(|id| counts.get(&id.to_string()) == Some(&1)),
        "{counts:?}"
    );
    // A second sweep finds nothing new.
    assert_eq!(t.app.worker().sweep_once().await.unwrap().found, 0);
    t.app.stop().await;
}

/// A wake-up that never arrives (here the listener does not listen for
/// alerts at all) delays an alert only until the next sweep, which hands
/// what waits to the dispatcher; the dispatcher's own idle re-check comes
/// only every minute, later than this test's deadline.
#[tokio::test]
async fn an_alert_whose_notify_was_missed_goes_out_with_the_next_sweep() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let mut config = db.config();
    config.listen_for_alerts = false;
    let app = audit_alert::app::App::start(&config).await.unwrap();
    wait_until_listening(&app).await;

    let ids = insert_audit_rows(&db.client().await, 2, FAIL).await;
    let report = app.worker().sweep_once().await.unwrap();
    assert_eq!(report.found, 0, "the trigger did record the alerts");
    let mails = smtp.wait_for_records(2).await;
    let counts = id_counts(&mails);
    assert!(
        ids.iter().all(|id| counts.get(&id.to_string()) == Some(&1)),
        "{counts:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_smtp_outage_is_retried_until_the_server_is_back() {
    let db = TestDb::new().await;
    let port = free_port();
    db.migrate().await;
    configure(&db, port, &[("audit_results", "oncall@example.com")]).await;
    let app = db.start().await;
    let client = db.client().await;

    let id = insert_audit_rows(&client, 1, FAIL).await[0];
    // Attempts are made and fail while nothing listens.
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM email_sent_log
          WHERE status = 'pending' AND attempts >= 2 AND error_message IS NOT NULL",
        1,
    )
    .await;

    let smtp = SmtpServer::start_on_port(port);
    let mails = smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [id.to_string()]);
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM email_sent_log WHERE status = 'sent'",
        1,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_recipient_refused_for_good_does_not_hold_back_the_others() {
    let t = TestApp::start(
        SmtpServer::rejecting(&["gone@example.com"]),
        &[
            ("audit_results", "gone@example.com"),
            ("audit_results", "oncall@example.com"),
        ],
    )
    .await;

    insert_audit_rows(&t.client, 1, FAIL).await;
    let mails = t.smtp.wait_for_count(1).await;
    assert_eq!(mails[0].envelope_to, ["oncall@example.com"]);
    wait_for_count_query(
        &t.client,
        "SELECT count(*) FROM email_sent_log WHERE status = 'sent'
            AND delivered_to = '{oncall@example.com}' AND failed_recipients ? 'gone@example.com'
            AND error_message LIKE 'gone@example.com: %550%'",
        1,
    )
    .await;
    t.app.stop().await;
}

#[tokio::test]
async fn two_copies_on_one_database_send_every_record_exactly_once() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    // Small digests so that both copies get plenty of claims.
    set_config(&client, "digest_max_records", "5").await;
    let first = db.start().await;
    let second = db.start().await;

    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.extend(insert_audit_rows(&client, 10, FAIL).await);
    }
    let mails = smtp.wait_for_records(1000).await;
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM email_sent_log WHERE status <> 'sent'",
        0,
    )
    .await;
    first.stop().await;
    second.stop().await;

    let counts = id_counts(&smtp.received());
    assert_eq!(counts.len(), 1000);
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "mailed more than once: {doubled:?}");
    assert!(ids.iter().all(|id| counts.contains_key(&id.to_string())));
    assert!(
        mails.iter().all(|m| m.record_ids().len() <= 5),
        "digests stay bounded"
    );
}

#[tokio::test]
async fn a_burst_of_ten_thousand_rows_goes_out_as_bounded_digests() {
    let t = TestApp::start(SmtpServer::start(), ONCALL).await;

    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(insert_audit_rows(&t.client, 1000, FAIL).await);
    }
    let mails = t.smtp.wait_for_records(10_000).await;
    wait_for_count_query(
        &t.client,
        "SELECT count(*) FROM email_sent_log WHERE status <> 'sent'",
        0,
    )
    .await;
    t.app.stop().await;

    let counts = id_counts(&t.smtp.received());
    assert_eq!(counts.len(), 10_000);
    assert!(
        counts.values().all(|n| *n == 1),
        "every record exactly once"
    );
    assert!(ids.iter().all(|id| counts.contains_key(&id.to_string())));
    let largest = mails.iter().map(|m| m.record_ids().len()).max().unwrap();
    assert!(
        largest <= 200,
        "a digest carries at most digest_max_records"
    );
    assert!(
        t.smtp.received().len() <= 200,
        "{} mails for 10000 records",
        t.smtp.received().len()
    );
}

#[tokio::test]
async fn without_smtp_or_recipients_alerts_wait_then_go_out() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    let app = db.start().await;
    let client = db.client().await;

    let id = insert_audit_rows(&client, 1, FAIL).await[0];
    assert_eq!(app.worker().deliver_once().await.unwrap(), 0);
    configure(&db, smtp.port, &[]).await;
    app.worker().reload().await.unwrap();
    assert_eq!(
        app.worker().deliver_once().await.unwrap(),
        0,
        "no recipient yet"
    );
    let status: String = client
        .query_one("SELECT status FROM email_sent_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "pending");

    client
        .execute(
            "INSERT INTO recipients_config (table_name, email) VALUES ('audit_results', 'late@example.com')",
            &[],
        )
        .await
        .unwrap();
    let mails = smtp.wait_for_count(1).await;
    assert_eq!(mails[0].record_ids(), [id.to_string()]);
    app.stop().await;
}

#[tokio::test]
async fn monitor_disabled_holds_alerts_and_email_disabled_suppresses_them() {
    let db = TestDb::new().await;
    let smtp = SmtpServer::start();
    db.migrate().await;
    configure(&db, smtp.port, &[("audit_results", "oncall@example.com")]).await;
    let client = db.client().await;
    set_config(&client, "monitor_enabled", "false").await;
    let app = db.start().await;

    let held = insert_audit_rows(&client, 2, FAIL).await;
    assert_eq!(app.worker().deliver_once().await.unwrap(), 0);
    set_config(&client, "monitor_enabled", "true").await;
    let mails = smtp.wait_for_records(2).await;
    assert!(held
        .iter()
        .all(|id| id_counts(&mails).contains_key(&id.to_string())));

    set_config(&client, "email_enabled", "false").await;
    app.worker().reload().await.unwrap();
    insert_audit_rows(&client, 1, FAIL).await;
    wait_for_count_query(
        &client,
        "SELECT count(*) FROM email_sent_log WHERE status = 'suppressed'",
        1,
    )
    .await;
    assert_eq!(
        id_counts(&smtp.received()).len(),
        2,
        "suppressed alerts are not mailed"
    );
    app.stop().await;
}

/// Whatever the shape of the insert (mixed verdicts, several statements in
/// one transaction, a statement rolled back to a savepoint, one statement
/// writing both tables, COPY), exactly the flagged rows that committed are
/// mailed.
#[tokio::test]
async fn every_shape_of_insert_reports_exactly_its_committed_flagged_rows() {
    use futures_util::SinkExt;
    use std::collections::BTreeSet;

    let mut t = TestApp::start(
        SmtpServer::start(),
        &[
            ("audit_results", "text@example.com"),
            ("image_audit_results", "image@example.com"),
        ],
    )
    .await;
    let mut expected = BTreeSet::new();
    let text = |id: i64| ("text@example.com".to_owned(), id.to_string());
    let image = |id: i64| ("image@example.com".to_owned(), id.to_string());

    // Mixed verdicts in one statement.
    let verdicts = vec![PASS, FAIL, PASS, UNSURE, FAIL];
    for row in t.client
        .query(
            "INSERT INTO audit_results (verdict, url)
             SELECT v, 'https://example.com/mixed/' || n FROM unnest($1::text[]) WITH ORDINALITY u(v, n)
             RETURNING id, verdict",
            &[&verdicts],
        )
        .await
        .unwrap()
    {
        if row.get::<_, String>(1) != PASS {
            expected.insert(text(row.get(0)));
        }
    }

    // Two statements in one transaction, and one rolled back between them.
    let tx = t.client.transaction().await.unwrap();
    let insert = "INSERT INTO audit_results (verdict, url) VALUES ($1, 'https://example.com/tx') RETURNING id";
    let first: i64 = tx.query_one(insert, &[&FAIL]).await.unwrap().get(0);
    tx.batch_execute("SAVEPOINT s").await.unwrap();
    let rolled_back: i64 = tx.query_one(insert, &[&FAIL]).await.unwrap().get(0);
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    let second: i64 = tx.query_one(insert, &[&UNSURE]).await.unwrap().get(0);
    tx.commit().await.unwrap();
    expected.extend([text(first), text(second)]);

    // One statement, both watched tables.
    let row = t.client
        .query_one(
            "WITH a AS (INSERT INTO audit_results (verdict, url) VALUES ($1, 'https://example.com/cte') RETURNING id),
                  i AS (INSERT INTO image_audit_results (audit_result, ip_address) VALUES ($1, '10.0.0.1') RETURNING id)
             SELECT (SELECT id FROM a), (SELECT id FROM i)",
            &[&FAIL],
        )
        .await
        .unwrap();
    expected.extend([text(row.get(0)), image(row.get(1))]);

    // Bulk loading.
    let sink = t
        .client
        .copy_in("COPY audit_results (verdict, url) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(
        "合格\thttps://example.com/copy/1\n不合格\thttps://example.com/copy/2\n不确定\thttps://example.com/copy/3\n"
            .as_bytes(),
    )
    .await
    .unwrap();
    sink.finish().await.unwrap();
    for row in t.client
        .query(
            "SELECT id FROM audit_results WHERE url LIKE 'https://example.com/copy/%' AND verdict <> '合格'",
            &[],
        )
        .await
        .unwrap()
    {
        expected.insert(text(row.get(0)));
    }

    let received = |mails: &[Received]| -> BTreeSet<(String, String)> {
        mails
            .iter()
            .flat_map(|m| {
                m.record_ids()
                    .into_iter()
                    .map(|id| (m.envelope_to.join(","), id))
            })
            .collect()
    };
    t.smtp
        .wait_for(&format!("{} records", expected.len()), |mails| {
            received(mails).len() >= expected.len()
        })
        .await;
    // Anything still on its way would be delivered by this call.
    t.app.worker().deliver_once().await.unwrap();
    let arrived = received(&t.smtp.received());
    assert!(
        !arrived.contains(&text(rolled_back)),
        "the row rolled back to its savepoint was mailed"
    );
    assert_eq!(arrived, expected);
    let alerts: i64 = t
        .client
        .query_one("SELECT count(*) FROM email_sent_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(alerts, expected.len() as i64);
    t.app.stop().await;
}

/// The nodes of the plan of `sql` on one of delivery's own connections, run
/// in a transaction that is rolled back.
async fn plan_nodes(
    delivery: &deadpool_postgres::Pool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<serde_json::Value> {
    fn walk(node: &serde_json::Value, into: &mut Vec<serde_json::Value>) {
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, into);
        }
        let mut node = node.clone();
        node.as_object_mut().unwrap().remove("Plans");
        into.push(node);
    }
    let client = delivery.get().await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let plan: serde_json::Value = client
        .query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), params)
        .await
        .unwrap()
        .get(0);
    client.batch_execute("ROLLBACK").await.unwrap();
    // A plan with a switched-off step costs enough for JIT, 200 ms a statement.
    assert!(plan[0].get("JIT").is_none(), "compiled with JIT: {plan}");
    let mut nodes = Vec::new();
    walk(&plan[0]["Plan"], &mut nodes);
    nodes
}

/// A burst arrives faster than autovacuum analyzes: the planner's statistics
/// still describe a nearly empty outbox. The claim must read each table's due
/// alerts in index order anyway, instead of collecting and sorting every due
/// alert each time, and not walk past the due alerts of other tables.
#[tokio::test]
async fn due_alerts_are_claimed_in_index_order_whatever_the_statistics() {
    use audit_alert::monitor::{self, statements};
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE email_sent_log SET (autovacuum_enabled = off)")
        .await
        .unwrap();
    // Two transactions, so the first one's alerts are due first.
    let first = insert_audit_rows(&client, 10_000, FAIL).await;
    insert_audit_rows(&client, 10_000, FAIL).await;
    let images: Vec<i64> = client
        .query(
            "INSERT INTO image_audit_results (audit_result) SELECT $1 FROM generate_series(1, 3)
             RETURNING id",
            &[&FAIL],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let delivery = monitor::delivery_pool(&db.config().database, 1).unwrap();
    let intake = monitor::intake_pool(&db.config().database).unwrap();
    let watched = watched_tables(&db).await;
    let mut taken_in = 0;
    loop {
        let taken = monitor::take_in(&intake, &watched).await.unwrap();
        taken_in += taken.added;
        if !taken.more() {
            break;
        }
    }
    assert_eq!(taken_in, 20_003);
    let both = vec!["audit_results".to_owned(), "image_audit_results".to_owned()];
    let images_only = vec!["image_audit_results".to_owned()];

    for tables in [&both, &images_only] {
        let params: [Param; 4] = [tables, &800i64, &"tester", &60.0f64];
        let nodes = plan_nodes(&delivery, statements::CLAIM, &params).await;
        let text = serde_json::Value::Array(nodes.clone()).to_string();
        assert!(!text.contains("Bitmap"), "the claim collects: {text}");
        let scans: Vec<_> = nodes
            .iter()
            .filter(|n| n["Alias"] == "email_sent_log")
            .collect();
        assert!(!scans.is_empty(), "{text}");
        for scan in scans {
            assert_eq!(scan["Index Name"], "email_sent_log_due", "{text}");
            let cond = scan["Index Cond"].as_str().unwrap_or_default();
            assert!(cond.contains("table_name"), "reads other tables: {text}");
        }
        // The one sort left orders the few alerts taken from each table.
        for sort in nodes.iter().filter(|n| n["Node Type"] == "Sort") {
            assert_eq!(
                sort["Sort Key"],
                serde_json::json!(["d.next_attempt_at"]),
                "{text}"
            );
        }
    }
    let ids: Vec<i64> = (1..=200).collect();
    let refused = serde_json::json!({});
    let delivered = vec!["oncall@example.com"];
    let none: Option<i64> = None;
    let outcome: [Param; 12] = [
        &"tester",
        &ids,
        &"sent",
        &delivered,
        &refused,
        &None::<String>,
        &None::<String>,
        &0i64,
        &false,
        &refused,
        &none,
        &refused,
    ];
    let nodes = plan_nodes(&delivery, statements::RECORD_OUTCOME, &outcome).await;
    let text = serde_json::Value::Array(nodes).to_string();
    assert!(text.contains("\"email_sent_log_pkey\""), "{text}");
    assert!(
        !text.contains("email_sent_log_due"),
        "recording an outcome reads the due index: {text}"
    );

    let lease = std::time::Duration::from_secs(60);
    let claimed = monitor::claim(&delivery, &images_only, 800, "tester", lease)
        .await
        .unwrap();
    let mut got: Vec<String> = claimed.iter().map(|a| a.record_id.clone()).collect();
    got.sort_by_key(|id| id.parse::<i64>().unwrap());
    let images: Vec<String> = images.iter().map(i64::to_string).collect();
    assert_eq!(got, images);
    let claimed = monitor::claim(&delivery, &both, 800, "tester", lease)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 800);
    let first: std::collections::HashSet<String> = first.iter().map(|id| id.to_string()).collect();
    assert!(
        claimed.iter().all(|a| first.contains(&a.record_id)),
        "the earliest due alerts come first"
    );
    let due = monitor::next_due(&delivery, &both).await.unwrap();
    assert!(due.is_some(), "19,200 alerts are still due");
    // What is left of the images' alerts: the lease just taken.
    let lease_end = monitor::next_due(&delivery, &images_only)
        .await
        .unwrap()
        .unwrap();
    assert!(lease_end > chrono::Utc::now() + chrono::Duration::seconds(50));
}

/// A worker whose lease ran out and was taken over records nothing: only the
/// worker that holds the lease now (`locked_by`) may record the outcome.
#[tokio::test]
async fn a_late_outcome_from_a_worker_whose_lease_was_taken_over_changes_nothing() {
    use audit_alert::monitor::{self, AlertStatus, Outcome};

    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    insert_audit_rows(&client, 5, FAIL).await;
    let pool = monitor::delivery_pool(&db.config().database, 1).unwrap();
    let intake = monitor::intake_pool(&db.config().database).unwrap();
    let watched = watched_tables(&db).await;
    let taken = monitor::take_in(&intake, &watched).await.unwrap();
    assert_eq!(
        (taken.reports, taken.ranges, taken.added),
        (1, 1, 5),
        "the first reported on its own, the rest as a range"
    );
    let tables = vec!["audit_results".to_owned()];
    let expired = std::time::Duration::ZERO;
    let first = monitor::claim(&pool, &tables, 10, "first", expired)
        .await
        .unwrap();
    assert_eq!(first.len(), 5);
    let second = monitor::claim(&pool, &tables, 10, "second", expired)
        .await
        .unwrap();
    assert_eq!(second.len(), 5, "the expired lease is taken over");
    let ids: Vec<i64> = first.iter().map(|a| a.id).collect();
    let outcome = |status: AlertStatus, to: &str| Outcome {
        ids: ids.clone(),
        status,
        delivered_to: vec![to.to_owned()],
        refused: serde_json::json!({}),
        last_error: None,
        retry_in_ms: 0,
        message_id: Some(format!("<{to}>")),
        smtp_errors: Vec::new(),
        created_at: Vec::new(),
        uncounted: false,
        channels: serde_json::json!({}),
        escalate_in_ms: None,
        held: serde_json::json!({}),
    };

    let late = [outcome(AlertStatus::Sent, "late@example.com")];
    assert_eq!(monitor::complete(&pool, "first", &late).await.unwrap(), 0);
    assert_eq!(
        monitor::unclaim(&pool, "first", &ids, false).await.unwrap(),
        0
    );
    let holders: Vec<(String, Option<String>)> = client
        .query("SELECT status, locked_by FROM email_sent_log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        holders
            .iter()
            .all(|(s, w)| s == "sending" && w.as_deref() == Some("second")),
        "{holders:?}"
    );

    let current = [outcome(AlertStatus::Sent, "oncall@example.com")];
    assert_eq!(
        monitor::complete(&pool, "second", &current).await.unwrap(),
        5
    );
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM email_sent_log WHERE status = 'sent' AND locked_by IS NULL
                AND message_id = '<oncall@example.com>'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 5);
    assert_eq!(
        monitor::complete(&pool, "second", &current).await.unwrap(),
        0,
        "recorded once"
    );
}

/// The trigger only reports an alert, into the inbox, in the writer's
/// transaction; taking it in makes it an alert. A record reported twice, or
/// reported while it has its alert already, is still one alert, and what was
/// taken in leaves the inbox. Until then it counts as pending, once.
#[tokio::test]
async fn reported_alerts_are_taken_in_once_whatever_was_reported_twice() {
    use audit_alert::monitor::{self, statements};

    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    // Statistics that say the inbox is empty, as they mostly do.
    client.batch_execute("ANALYZE alert_inbox").await.unwrap();
    let inbox = |id: i64| {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM alert_inbox WHERE record_id = $1::bigint::text",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    let ids = insert_audit_rows(&client, 2, FAIL).await;
    let (twice, earlier) = (ids[0], ids[1]);
    // Reported again by the update back to 不合格.
    for verdict in [PASS, FAIL] {
        client
            .execute(
                "UPDATE audit_results SET verdict = $1 WHERE id = $2",
                &[&verdict, &twice],
            )
            .await
            .unwrap();
    }
    assert_eq!(inbox(twice).await, 2);
    let outbox: i64 = client
        .query_one("SELECT count(*) FROM email_sent_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0, "nothing is an alert before it is taken in");
    // This one has its alert already (as if the sweep had found it first).
    client
        .execute(
            "INSERT INTO email_sent_log (table_name, record_id, verdict, status)
             VALUES ('audit_results', $1::bigint::text, $2, 'sent')",
            &[&earlier, &FAIL],
        )
        .await
        .unwrap();

    // Reported and not yet taken in counts as pending, each alert once.
    let pool = audit_alert::db::pool(&db.config().database, 1).unwrap();
    let counts = monitor::count_by_status(&pool).await.unwrap();
    assert_eq!(
        (
            counts[&monitor::AlertStatus::Pending],
            counts[&monitor::AlertStatus::Sent]
        ),
        (1, 1),
        "{counts:?}"
    );

    let intake = monitor::intake_pool(&db.config().database).unwrap();
    let watched = watched_tables(&db).await;
    // Those taken are deleted by their place, not by testing every row; a
    // range is read from its table's index for that range alone.
    let params = statements::take_in_params(&watched);
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let nodes = plan_nodes(&intake, &statements::take_in_statement(&watched), &params).await;
    for inbox in ["alert_inbox_1", "alert_inbox_ranges_1"] {
        let deleted_by: Vec<_> = nodes
            .iter()
            .filter(|n| n["Alias"] == inbox && n["Node Type"] != "ModifyTable")
            .map(|n| n["Node Type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(deleted_by, ["Tid Scan"], "{inbox}: {nodes:?}");
    }
    let text = serde_json::Value::Array(nodes.clone()).to_string();
    assert!(!text.contains("Seq Scan on audit_results"), "{text}");
    let by_range: Vec<_> = nodes
        .iter()
        .filter(|n| n["Index Name"] == "audit_results_pkey")
        .map(|n| n["Index Cond"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        by_range,
        ["((id >= r.from_id) AND (id <= r.through_id))"],
        "{text}"
    );
    let taken = monitor::take_in(&intake, &watched).await.unwrap();
    assert_eq!(
        (taken.reports, taken.ranges, taken.added),
        (2, 1, 1),
        "the first row reported twice, the second in a range, with its alert already"
    );
    assert_eq!(
        monitor::take_in(&intake, &watched).await.unwrap(),
        monitor::TakenIn::default()
    );
    assert_eq!((inbox(twice).await, inbox(earlier).await), (0, 0));
    let alerts: Vec<(String, String)> = client
        .query(
            "SELECT record_id, status FROM email_sent_log ORDER BY record_id::bigint",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        alerts,
        [
            (twice.to_string(), "pending".to_owned()),
            (earlier.to_string(), "sent".to_owned())
        ]
    );
}

/// A transaction that writes many flagged rows reports its first on its own
/// and the rest as ranges of ids, which taking in reads back from the table.
/// Whatever the shape of the writes (ids out of order, past a range's width,
/// a savepoint rolled back, constraints set immediate, several statements),
/// every flagged row becomes one alert and no passing row does; the sweep
/// finds nothing missed; and a range waits for a copy that knows its table.
#[tokio::test]
async fn bulk_writes_report_ranges_and_every_flagged_row_alerts_once() {
    use audit_alert::monitor;

    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    let reported = async || -> (i64, i64) {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM alert_inbox), (SELECT count(*) FROM alert_inbox_ranges)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };

    // 1,000 rows in one statement, two in three flagged.
    let ids: Vec<i64> = client
        .query(
            "INSERT INTO audit_results (verdict, url)
             SELECT (ARRAY[$1, $2, $3])[g % 3 + 1], 'https://example.com/' || g
               FROM generate_series(1, 1000) g RETURNING id",
            &[&PASS, &FAIL, &UNSURE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reported().await, (1, 1));
    let range: (i64, i64) = client
        .query_one("SELECT from_id, through_id FROM alert_inbox_ranges", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        range,
        (ids[1], ids[999]),
        "from the second flagged row to the last row"
    );

    // Ids chosen by the writer: one below the open range and one past its
    // width are reported on their own or open the next range; a savepoint
    // rolled back takes its range with it.
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO audit_results (id, verdict) VALUES
                 (500000, '{FAIL}'), (500001, '{PASS}'), (500002, '{UNSURE}'), (400000, '{FAIL}'),
                 (520000, '{FAIL}'), (520001, '{FAIL}');
             SAVEPOINT s;
             INSERT INTO audit_results (id, verdict) VALUES (530000, '{FAIL}'), (530001, '{FAIL}');
             ROLLBACK TO s;
             INSERT INTO audit_results (id, verdict) VALUES (530005, '{FAIL}'), (530006, '{PASS}'),
                 (530007, '{FAIL}');
             COMMIT;"
        ))
        .await
        .unwrap();
    assert_eq!(
        reported().await,
        (3, 4),
        "500000 and 400000; 500002, 520000, 530005"
    );
    // Constraints set immediate: ranges close at the end of each statement.
    client
        .batch_execute(&format!(
            "BEGIN; SET CONSTRAINTS ALL IMMEDIATE;
             INSERT INTO audit_results (verdict) SELECT '{FAIL}' FROM generate_series(1, 3);
             INSERT INTO audit_results (verdict) SELECT '{UNSURE}' FROM generate_series(1, 3);
             COMMIT;"
        ))
        .await
        .unwrap();
    // More ranges than one taking in takes.
    insert_audit_rows(&client, 25_000, FAIL).await;

    let intake = monitor::intake_pool(&db.config().database).unwrap();
    let (_, ranges) = reported().await;
    let taken = monitor::take_in(&intake, &[]).await.unwrap();
    assert_eq!(
        taken.ranges, 0,
        "no range of a table this copy does not know"
    );
    assert_eq!(reported().await, (0, ranges));
    let watched = watched_tables(&db).await;
    let mut rounds = 0;
    while monitor::take_in(&intake, &watched).await.unwrap().more() {
        rounds += 1;
    }
    assert!(rounds >= 1, "{ranges} ranges in one taking in");
    assert_eq!(reported().await, (0, 0));

    let pool = audit_alert::db::pool(&db.config().database, 1).unwrap();
    let report = monitor::sweep(&pool, &intake, &watched, true)
        .await
        .unwrap();
    assert_eq!(report.found, 0, "a flagged row no report covered");
    let ids = async |sql: &str| -> std::collections::BTreeSet<String> {
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    let alerted =
        ids("SELECT record_id FROM email_sent_log WHERE table_name = 'audit_results'").await;
    let flagged = ids(&format!(
        "SELECT id::text FROM audit_results WHERE verdict IN ('{FAIL}', '{UNSURE}')"
    ))
    .await;
    assert_eq!(flagged.len(), 667 + 7 + 6 + 25_000);
    assert_eq!(
        (
            alerted.difference(&flagged).collect::<Vec<_>>(),
            flagged.difference(&alerted).collect::<Vec<_>>()
        ),
        (Vec::<&String>::new(), Vec::<&String>::new()),
        "alerts for passing rows, and flagged rows without one"
    );
    pool.close();
    intake.close();
}

/// After a burst the inbox holds a dead row for each alert it took in, and
/// every taking in would read them all until autovacuum came (here it never
/// does): the end of the burst vacuums it. (Re-reviews are reported one row
/// at a time, even in one statement.)
#[tokio::test]
async fn the_inbox_is_vacuumed_after_a_burst() {
    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE alert_inbox SET (autovacuum_enabled = off)")
        .await
        .unwrap();
    insert_audit_rows(&client, 12_000, PASS).await;
    let app = db.start().await;
    wait_until_listening(&app).await;
    client
        .execute("UPDATE audit_results SET verdict = $1", &[&FAIL])
        .await
        .unwrap();
    wait_for_count_query(&client, "SELECT count(*) FROM email_sent_log", 12_000).await;
    wait_for_count_query(
        &client,
        "SELECT (pg_relation_size('alert_inbox') = 0)::int::bigint",
        1,
    )
    .await;
    app.stop().await;
}

/// A row reported while the sweep runs, after it took in and before it read
/// the table, is recorded by the sweep (once) but was not missed: it does not
/// count as found, and its report is then taken in as nothing new. Here the
/// report is held by a lock so that taking in skips it.
#[tokio::test]
async fn a_reported_row_the_sweep_records_first_is_not_counted_as_found() {
    use audit_alert::monitor::{self, Snapshot};

    let db = TestDb::new().await;
    db.migrate().await;
    let client = db.client().await;
    let reported = insert_audit_rows(&client, 1, FAIL).await[0];
    let bypassed = insert_audit_rows_bypassing_triggers(&client, 1, FAIL).await[0];
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM alert_inbox FOR UPDATE")
        .await
        .unwrap();

    let pool = audit_alert::db::pool(&db.config().database, 1).unwrap();
    let intake = monitor::intake_pool(&db.config().database).unwrap();
    let snapshot = Snapshot::load(&pool, None).await.unwrap();
    let report = monitor::sweep(&pool, &intake, &snapshot.tables, true)
        .await
        .unwrap();
    assert_eq!(report.found, 1, "only the row no trigger reported");
    let recorded: Vec<String> = client
        .query(
            "SELECT record_id FROM email_sent_log ORDER BY record_id::bigint",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, [reported.to_string(), bypassed.to_string()]);

    holder.batch_execute("COMMIT").await.unwrap();
    let taken = monitor::take_in(&intake, &snapshot.tables).await.unwrap();
    assert_eq!((taken.reports, taken.added), (1, 0));
}
