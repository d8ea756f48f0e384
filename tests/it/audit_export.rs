//! Exporting the operation audit log: CSV a spreadsheet opens safely, JSON
//! Lines with every column, the list's filters, auditors only, itself audited.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::api::{client, client_with_token};
use crate::client::types;
use crate::helpers::*;

/// An entry written straight into `audit_log`.
struct Seed {
    operator: &'static str,
    /// Seconds after [`base`].
    second: u32,
    result: &'static str,
    desc: &'static str,
    url: &'static str,
    error: Option<&'static str>,
}

const fn seed(
    operator: &'static str,
    second: u32,
    result: &'static str,
    desc: &'static str,
    url: &'static str,
) -> Seed {
    Seed {
        operator,
        second,
        result,
        desc,
        url,
        error: None,
    }
}

/// Out of time order, as the export must not be.
const ENTRIES: &[Seed] = &[
    seed("alice", 3, "0", "-2", "@x"),
    seed("alice", 1, "0", "新增收件人 张三", "/api/config/recipients"),
    seed("bob", 2, "0", "bob's call", "/api/monitor/status"),
    Seed {
        error: Some("+1"),
        ..seed("alice", 2, "1", "=cmd|' /C calc'!A0", "/api/config/smtp")
    },
    seed("alice", 4, "0", "a, \"quoted\"\nnext line", "/api/alerts"),
];

/// alice's entries as the export orders them: oldest first.
const ALICE_IN_ORDER: [&str; 4] = [
    "新增收件人 张三",
    "=cmd|' /C calc'!A0",
    "-2",
    "a, \"quoted\"\nnext line",
];

/// The start of yesterday (UTC): recent enough for the retention purge to
/// keep the entries, earlier than any call the test makes.
fn base() -> DateTime<Utc> {
    Utc::now()
        .date_naive()
        .pred_opt()
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

/// How the export writes `base() + seconds`.
fn at(seconds: i64) -> String {
    (base() + chrono::Duration::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn insert_entries(db: &TestDb) {
    let client = db.client().await;
    for (i, e) in ENTRIES.iter().enumerate() {
        let params = serde_json::json!({"path": e.url, "body": {"name": "张*三", "n": i}});
        client
            .execute(
                "INSERT INTO audit_log (audit_id, operation_time, operation_ip, operator_id,
                     operator_org_id, role_id, request_params, operation_url, operation_method,
                     operation_desc, operation_result, error_msg, duration_ms)
                 VALUES (lpad($1::text, 32, '0'), $9::timestamptz + make_interval(secs => $2),
                     '10.0.0.1', $3, 'org-1', 'operator', $4, $5, 'POST', $6, $7, $8, 12)",
                &[
                    &i.to_string(),
                    &f64::from(e.second),
                    &e.operator,
                    &params,
                    &e.url,
                    &e.desc,
                    &e.result,
                    &e.error,
                    &base(),
                ],
            )
            .await
            .unwrap();
    }
}

/// `audit_log`'s columns in table order: what every export row carries.
async fn columns(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_name = 'audit_log' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

struct Download {
    status: u16,
    content_type: String,
    disposition: String,
    body: Vec<u8>,
}

async fn export(app: &audit_alert::app::App, token: &str, query: &str) -> Download {
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/api/audit-logs/export?{query}",
            app.addr()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    Download {
        status: resp.status().as_u16(),
        content_type,
        disposition,
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

/// A strict RFC 4180 reader: quotes only around whole fields, CRLF after
/// every record, a bare line break only inside quotes.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            '"' => panic!("a quote inside an unquoted field: {field}"),
            ',' => record.push(std::mem::take(&mut field)),
            '\r' => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF");
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            '\n' => panic!("a bare LF outside quotes after {record:?}"),
            c => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "ends with CRLF"
    );
    records
}

/// A token of `role` for operator `u-<role>`.
async fn token(app: &audit_alert::app::App, role: types::RoleName) -> String {
    client(app)
        .token_create(&types::TokenRequest {
            operator_id: format!("u-{role:?}")
                .to_lowercase()
                .as_str()
                .try_into()
                .unwrap(),
            org_id: Some("org-9".try_into().unwrap()),
            role,
            expires_in: None,
            description: None,
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

#[tokio::test]
async fn csv_opens_in_a_spreadsheet_intact_and_inert() {
    let db = TestDb::new().await;
    let app = db.start().await;
    insert_entries(&db).await;
    let columns = columns(&db).await;

    let csv = export(&app, ADMIN_TOKEN, "operator_id=alice").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    assert!(
        csv.disposition
            .starts_with("attachment; filename=\"audit-log-")
            && csv.disposition.ends_with(".csv\""),
        "{}",
        csv.disposition
    );
    assert_eq!(&csv.body[..3], b"\xEF\xBB\xBF", "a byte order mark first");
    let text = String::from_utf8(csv.body[3..].to_vec()).unwrap();
    let records = parse_csv(&text);
    assert_eq!(records[0], columns, "the header names every column");
    let rows: Vec<std::collections::HashMap<&str, &str>> = records[1..]
        .iter()
        .map(|r| {
            assert_eq!(r.len(), columns.len());
            columns
                .iter()
                .map(String::as_str)
                .zip(r.iter().map(String::as_str))
                .collect()
        })
        .collect();

    // Oldest first; formulas guarded; commas, quotes and line breaks kept.
    let guarded: Vec<String> = ALICE_IN_ORDER
        .iter()
        .map(|d| match d.chars().next() {
            Some('=' | '+' | '-' | '@') => format!("'{d}"),
            _ => d.to_string(),
        })
        .collect();
    let descs: Vec<&str> = rows.iter().map(|r| r["operation_desc"]).collect();
    assert_eq!(descs, guarded);
    assert_eq!(rows[0]["operation_desc"], "新增收件人 张三");
    assert_eq!(rows[1]["error_msg"], "'+1");
    assert_eq!(rows[2]["operation_url"], "'@x");
    assert_eq!(rows[3]["error_msg"], "", "NULL is an empty cell");
    assert_eq!(rows[0]["operation_time"], at(1));
    assert_eq!(rows[0]["duration_ms"], "12");
    let params: serde_json::Value = serde_json::from_str(rows[0]["request_params"]).unwrap();
    assert_eq!(
        params,
        serde_json::json!({"path": "/api/config/recipients", "body": {"name": "张*三", "n": 1}}),
        "JSON columns as their JSON text"
    );
    assert!(text.contains("\"a, \"\"quoted\"\"\nnext line\""), "{text}");

    // The list's filters apply.
    let failed = export(&app, ADMIN_TOKEN, "operator_id=alice&result=1").await;
    let failed = parse_csv(std::str::from_utf8(&failed.body[3..]).unwrap());
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(
        failed[1][columns.iter().position(|c| c == "operator_id").unwrap()],
        "alice"
    );
    let by_time = export(
        &app,
        ADMIN_TOKEN,
        &format!("from={}&to={}&text=%2Fapi%2Fmonitor", at(2), at(3)),
    )
    .await;
    let by_time = parse_csv(std::str::from_utf8(&by_time.body[3..]).unwrap());
    assert_eq!(by_time.len(), 2, "{by_time:?}");
    assert!(by_time[1].contains(&"bob's call".to_owned()));
    app.stop().await;
}

#[tokio::test]
async fn json_lines_carry_every_column_one_entry_a_line() {
    let db = TestDb::new().await;
    let app = db.start().await;
    insert_entries(&db).await;
    let columns = columns(&db).await;

    let jsonl = export(&app, ADMIN_TOKEN, "format=jsonl&operator_id=alice").await;
    assert_eq!(jsonl.status, 200);
    assert_eq!(jsonl.content_type, "application/x-ndjson");
    assert!(
        jsonl.disposition.ends_with(".jsonl\""),
        "{}",
        jsonl.disposition
    );
    let text = String::from_utf8(jsonl.body).unwrap();
    assert!(text.ends_with('\n'));
    let entries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(entries.len(), 4, "{text}");
    for entry in &entries {
        let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            columns.iter().collect::<Vec<_>>(),
            "every column, in order"
        );
    }
    let descs: Vec<&str> = entries
        .iter()
        .map(|e| e["operation_desc"].as_str().unwrap())
        .collect();
    assert_eq!(descs, ALICE_IN_ORDER, "oldest first, as stored");
    let first = &entries[0];
    assert_eq!(first["audit_id"], format!("{:0>32}", 1));
    assert_eq!(first["operation_time"], at(1));
    assert_eq!(first["operation_ip"], "10.0.0.1");
    assert_eq!(first["operator_org_id"], "org-1");
    assert_eq!(first["role_id"], "operator");
    assert_eq!(
        first["request_params"],
        serde_json::json!({"path": "/api/config/recipients", "body": {"name": "张*三", "n": 1}})
    );
    assert_eq!(first["response_result"], serde_json::Value::Null);
    assert_eq!(first["operation_method"], "POST");
    assert_eq!(first["operation_result"], "0");
    assert_eq!(first["duration_ms"], 12);
    assert_eq!(entries[1]["error_msg"], "+1");

    let none = export(&app, ADMIN_TOKEN, "format=jsonl&operator_id=nobody").await;
    assert_eq!((none.status, none.body.len()), (200, 0));
    app.stop().await;
}

#[tokio::test]
async fn only_auditors_and_admins_export_and_exporting_is_audited() {
    let db = TestDb::new().await;
    let app = db.start().await;
    insert_entries(&db).await;
    let viewer = token(&app, types::RoleName::Viewer).await;
    let auditor = token(&app, types::RoleName::Auditor).await;

    let refused = client_with_token(&app, &viewer)
        .audit_log_export(None, None, None, None, None, None, None, None)
        .await
        .err()
        .expect("a viewer may not export");
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    let refused = export(&app, &viewer, "format=jsonl").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.content_type, "application/problem+json");

    let exported = export(&app, &auditor, "format=jsonl&operator_id=alice").await;
    assert_eq!(exported.status, 200);
    let exported = String::from_utf8(exported.body).unwrap();
    assert_eq!(exported.lines().count(), 4, "{exported}");
    // Through the generated client, as a byte stream.
    let csv = client_with_token(&app, &auditor)
        .audit_log_export(
            Some(types::ExportFormat::Csv),
            None,
            None,
            Some("bob"),
            None,
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .into_inner()
        .into_inner();
    let csv = futures_util::TryStreamExt::try_fold(csv, Vec::new(), |mut all, chunk| async move {
        all.extend_from_slice(&chunk);
        Ok(all)
    })
    .await
    .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(parse_csv(csv.trim_start_matches('\u{feff}')).len(), 2);

    let db_client = db.client().await;
    let audited = "SELECT count(*) FROM audit_log WHERE operation_desc = '导出操作审计日志'
                     AND operation_url = '/api/audit-logs/export'";
    wait_for_count_query(
        &db_client,
        &format!("{audited} AND role_id = 'viewer' AND operation_result = '1'"),
        2,
    )
    .await;
    let by_auditor = format!(
        "{audited} AND role_id = 'auditor' AND operator_id = 'u-auditor' AND operation_result = '0'"
    );
    wait_for_count_query(&db_client, &by_auditor, 2).await;
    let as_jsonl: i64 = db_client
        .query_one(
            &format!("{by_auditor} AND request_params -> 'query' ->> 'format' = 'jsonl'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(as_jsonl, 1, "the query is recorded");

    // The export's own entries are in the next export.
    let own = export(
        &app,
        &auditor,
        "format=jsonl&text=%E5%AF%BC%E5%87%BA&result=0",
    )
    .await;
    let own: Vec<serde_json::Value> = String::from_utf8(own.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(own.len(), 2, "{own:?}");
    assert!(own
        .iter()
        .all(|e| e["operation_desc"] == "导出操作审计日志"));
    app.stop().await;
}

#[tokio::test]
async fn a_bad_format_is_a_400_naming_it() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let bad = export(&app, ADMIN_TOKEN, "format=xlsx").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(problem["field"], "format", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("format"),
        "{problem}"
    );
    app.stop().await;
}

/// A client that leaves mid-export ends the query on the server, and the
/// service goes on answering.
#[tokio::test]
async fn an_abandoned_export_ends_its_query() {
    let db = TestDb::new().await;
    let app = db.start().await;
    let db_client = db.client().await;
    db_client
        .execute(
            "INSERT INTO audit_log (audit_id, operation_time, request_params, operation_url,
                 operation_method, operation_desc, operation_result, duration_ms)
             SELECT lpad(g::text, 32, '0'), now() - make_interval(secs => g),
                 jsonb_build_object('path', '/api/alerts', 'n', g), '/api/alerts', 'GET',
                 '查询告警记录 ' || repeat('长', 100), '0', 1
               FROM generate_series(1, 100000) g",
            &[],
        )
        .await
        .unwrap();
    let mut resp = reqwest::Client::new()
        .get(format!(
            "http://{}/api/audit-logs/export?format=jsonl",
            app.addr()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);

    let running = "SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND pid <> pg_backend_pid()
                      AND state = 'active' AND query LIKE '%ORDER BY operation_time, audit_id%'";
    wait_for_count_query(&db_client, running, 0).await;
    let listed = client(&app)
        .audit_log_list(None, None, None, None, None, None, None, None, None)
        .await
        .unwrap()
        .into_inner();
    assert!(listed.total >= 100_000);
    app.stop().await;
}
