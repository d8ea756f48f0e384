//! The old system's documented calls, as its users' scripts make them: the
//! same paths, bodies and field names, through plain HTTP.

use serde_json::json;

use crate::api::raw;
use crate::helpers::*;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[tokio::test]
async fn the_old_smtp_and_recipient_calls_work_unchanged() {
    let db = TestDb::new().await;
    let app = audit_alert::app::App::start(&db.config_with(&[("SECRET_KEY", KEY)]))
        .await
        .unwrap();

    // The first call of the old README, byte for byte.
    let body = r#"{"name":"公司邮箱","server":"smtp.163.com","port":587,"username":"your_email@163.com","password":"your_password"}"#;
    let (status, _, created) = raw(&app, "POST", "/api/config/smtp", Some(body)).await;
    assert_eq!(status, 200, "{created}");
    assert!(created["message"].is_string(), "{created}");
    let id = created["id"].as_i64().unwrap();
    for (field, value) in [
        ("name", json!("公司邮箱")),
        ("server", json!("smtp.163.com")),
        ("port", json!(587)),
        ("username", json!("your_email@163.com")),
        ("smtp_server", json!("smtp.163.com")),
        ("sender_email", json!("your_email@163.com")),
        ("security", json!("starttls")),
        ("is_active", json!(true)),
        ("password_set", json!(true)),
    ] {
        assert_eq!(created[field], value, "{field}: {created}");
    }
    assert!(created.get("password").is_none());

    // The old list shape: `data`, with the fields an old script reads.
    let (status, _, list) = raw(&app, "GET", "/api/config/smtp", None).await;
    assert_eq!(status, 200);
    let row = &list["data"][0];
    for field in [
        "id",
        "name",
        "server",
        "port",
        "username",
        "is_active",
        "created_at",
    ] {
        assert!(!row[field].is_null(), "{field}: {list}");
    }
    assert_eq!(list["data"], list["items"]);
    assert!(!list.to_string().contains("your_password"));

    // A PUT with a subset changes only those fields.
    let path = format!("/api/config/smtp/{id}");
    let (status, _, changed) = raw(&app, "PUT", &path, Some(r#"{"port":465}"#)).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (&changed["port"], &changed["security"]),
        (&json!(465), &json!("tls"))
    );
    for field in [
        "name",
        "server",
        "username",
        "sender_email",
        "password_set",
        "is_active",
    ] {
        assert_eq!(changed[field], created[field], "{field} kept");
    }
    let (_, _, changed) = raw(
        &app,
        "PUT",
        &path,
        Some(r#"{"username":"alerts@163.com","is_active":false}"#),
    )
    .await;
    assert_eq!(changed["username"], "alerts@163.com");
    assert_eq!(
        changed["sender_email"], "alerts@163.com",
        "login and sender stay one"
    );
    assert_eq!(changed["is_active"], false);
    assert_eq!(changed["server"], "smtp.163.com");
    let stored: Option<String> = db
        .client()
        .await
        .query_one(
            "SELECT password_encrypted FROM smtp_config WHERE id = $1",
            &[&(id as i32)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.is_some_and(|p| p.starts_with("v1:")),
        "password kept, encrypted"
    );
    let (status, _, problem) = raw(&app, "POST", "/api/config/smtp", Some(body)).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (409, Some("name")),
        "{problem}"
    );

    // Recipients: {table_name, email, name}, partial PUT, `data`.
    let (status, _, recipient) = raw(
        &app,
        "POST",
        "/api/config/recipients",
        Some(r#"{"table_name":"audit_results","email":"oncall@example.com","name":"张三"}"#),
    )
    .await;
    assert_eq!(status, 200, "{recipient}");
    assert!(
        recipient["message"].is_string() && recipient["id"].is_i64(),
        "{recipient}"
    );
    let path = format!("/api/config/recipients/{}", recipient["id"]);
    let (status, _, renamed) = raw(&app, "PUT", &path, Some(r#"{"name":"李四"}"#)).await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(
        (
            &renamed["name"],
            &renamed["email"],
            &renamed["table_name"],
            &renamed["is_active"]
        ),
        (
            &json!("李四"),
            &json!("oncall@example.com"),
            &json!("audit_results"),
            &json!(true)
        )
    );
    let (_, _, off) = raw(&app, "PUT", &path, Some(r#"{"is_active":false}"#)).await;
    assert_eq!(
        (&off["is_active"], &off["name"]),
        (&json!(false), &json!("李四"))
    );
    let (_, _, list) = raw(&app, "GET", "/api/config/recipients", None).await;
    assert_eq!(list["data"][0]["email"], "oncall@example.com");
    let (status, _, deleted) = raw(&app, "DELETE", &path, None).await;
    assert_eq!(status, 200);
    assert!(deleted["message"].is_string(), "{deleted}");
    app.stop().await;
}

/// A value of the wrong JSON type, out of range or null names its field on
/// every operation with a body, and nothing is written.
#[tokio::test]
async fn values_of_the_wrong_type_name_their_field() {
    let db = TestDb::new().await;
    let app = db.start().await;
    // path, method, body, the field the problem must name
    let cases = [
        (
            "/api/config/smtp",
            "POST",
            r#"{"server":"h","port":70000,"username":"a@b.c"}"#,
            "port",
        ),
        (
            "/api/config/smtp",
            "POST",
            r#"{"server":"h","port":"abc","username":"a@b.c"}"#,
            "port",
        ),
        (
            "/api/config/smtp",
            "POST",
            r#"{"smtp_server":"h","smtp_port":null,"sender_email":"a@b.c"}"#,
            "smtp_port",
        ),
        (
            "/api/config/smtp",
            "POST",
            r#"{"port":25,"username":"a@b.c"}"#,
            "smtp_server",
        ),
        (
            "/api/config/smtp",
            "POST",
            r#"{"server":"h","security":"ssl","username":"a@b.c"}"#,
            "security",
        ),
        (
            "/api/config/smtp/1",
            "PUT",
            r#"{"is_active":"yes"}"#,
            "is_active",
        ),
        (
            "/api/config/recipients",
            "POST",
            r#"{"table_name":"audit_results","email":null}"#,
            "email",
        ),
        (
            "/api/config/recipients/1",
            "PUT",
            r#"{"table_name":7}"#,
            "table_name",
        ),
        (
            "/api/config/recipients/batch",
            "POST",
            r#"{"recipients":[{"table_name":"audit_results","email":"a@b.c"},{"table_name":"audit_results","email":5}]}"#,
            "recipients[1].email",
        ),
        (
            "/api/config/system/check_interval",
            "PUT",
            r#"{"value":5}"#,
            "value",
        ),
        (
            "/api/config/tables",
            "POST",
            r#"{"table_name":"t","id_column":"id","verdict_column":"v","alert_verdicts":"不合格"}"#,
            "alert_verdicts",
        ),
        (
            "/api/auth/tokens",
            "POST",
            r#"{"operator_id":"x","role":"root"}"#,
            "role",
        ),
    ];
    for (path, method, body, field) in cases {
        let (status, content_type, problem) = raw(&app, method, path, Some(body)).await;
        assert_eq!(
            (status, content_type.as_str(), problem["field"].as_str()),
            (400, "application/problem+json", Some(field)),
            "{method} {path} {body}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.starts_with(&format!("{field}: ")), "{detail}");
    }
    let written: i64 = db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM smtp_config) + (SELECT count(*) FROM recipients_config)
                  + (SELECT count(*) FROM api_tokens)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0);
    app.stop().await;
}
