//! The configuration page (SMTP servers and their test mail, recipients,
//! watched tables) and the template editor with its live preview.

use poem::http::{Method, StatusCode};
use poem::Response;
use serde_json::{json, Value};

use super::api_call::segment;
use super::view::{self, Form, Query};
use super::{Inner, Visit};

/// Notices a redirect after a change may ask for (`?notice=`).
const NOTICES: &[&str] = &[
    "recipient_added",
    "recipient_deleted",
    "recipient_changed",
    "template_saved",
];

fn notice(visit: &Visit, query: &Query) -> Value {
    match query.get("notice") {
        Some(key) if NOTICES.contains(&key) => Value::String(visit.lang.text(key).into()),
        _ => Value::Null,
    }
}

impl Inner {
    /// Every list of the page, as its API lists give them.
    async fn config_lists(&self, visit: &Visit) -> Result<[Value; 3], Box<Response>> {
        let mut lists = [Value::Null, Value::Null, Value::Null];
        for (slot, path) in lists.iter_mut().zip([
            "/api/config/smtp?page_size=500",
            "/api/config/recipients?page_size=500",
            "/api/config/tables?page_size=500",
        ]) {
            *slot = self.get(visit, path).await?["items"].take();
        }
        Ok(lists)
    }

    /// The page; `test` is the answer of a test mail just sent.
    pub(super) async fn config(
        &self,
        visit: &Visit,
        query: &Query,
        test: Option<Value>,
    ) -> Response {
        let [smtp, recipients, tables] = match self.config_lists(visit).await {
            Ok(lists) => lists,
            Err(page) => return *page,
        };
        let data = json!({
            "smtp": smtp, "recipients": recipients, "tables": tables,
            "test": test, "notice": notice(visit, query),
        });
        self.views.page(visit, "config", data, StatusCode::OK)
    }

    pub(super) async fn add_recipient(&self, visit: &Visit, form: &Form) -> Response {
        let mut body =
            json!({ "table_name": form.text("table_name"), "email": form.text("email") });
        if !form.text("name").is_empty() {
            body["name"] = form.text("name").into();
        }
        let reply = self
            .api(visit, Method::POST, "/api/config/recipients", Some(&body))
            .await;
        match self.ok(visit, reply) {
            Ok(_) => view::redirect("/console/config?notice=recipient_added#recipients"),
            Err(page) => *page,
        }
    }

    pub(super) async fn delete_recipient(&self, visit: &Visit, id: &str) -> Response {
        let path = format!("/api/config/recipients/{}", segment(id));
        let reply = self.api(visit, Method::DELETE, &path, None).await;
        match self.ok(visit, reply) {
            Ok(_) => view::redirect("/console/config?notice=recipient_deleted#recipients"),
            Err(page) => *page,
        }
    }

    /// Turns a recipient on or off (`active` = `true` / `false`).
    pub(super) async fn set_recipient_active(
        &self,
        visit: &Visit,
        id: &str,
        form: &Form,
    ) -> Response {
        let path = format!("/api/config/recipients/{}", segment(id));
        let body = json!({ "is_active": form.text("active") == "true" });
        let reply = self.api(visit, Method::PUT, &path, Some(&body)).await;
        match self.ok(visit, reply) {
            Ok(_) => view::redirect("/console/config?notice=recipient_changed#recipients"),
            Err(page) => *page,
        }
    }

    /// Sends a test mail and shows the server's answer on the page.
    pub(super) async fn test_smtp(&self, visit: &Visit, id: &str, form: &Form) -> Response {
        let path = format!("/api/config/smtp/{}/test", segment(id));
        let body = json!({ "to": form.text("to") });
        let reply = self.api(visit, Method::POST, &path, Some(&body)).await;
        let answer = match self.ok(visit, reply) {
            Ok(answer) => answer,
            Err(page) => return *page,
        };
        let test = json!({
            "server": id, "to": form.text("to"),
            "success": answer["success"], "outcome": answer["outcome"], "detail": answer["detail"],
        });
        self.config(visit, &Query::empty(), Some(test)).await
    }

    /// The editor of a table's mail template, with its preview beside it.
    pub(super) async fn template(
        &self,
        visit: &Visit,
        table: &str,
        query: Option<&Query>,
    ) -> Response {
        let path = format!("/api/config/tables/{}/template", segment(table));
        let template = match self.get(visit, &path).await {
            Ok(t) => t,
            Err(page) => return *page,
        };
        // Previews are the operator's (the API's role); others see the editor alone.
        let preview = if visit
            .session
            .principal
            .role
            .allows(crate::auth::Role::Operator)
        {
            self.preview(visit, table, None).await.1
        } else {
            Value::Null
        };
        let notice = query.map(|q| notice(visit, q)).unwrap_or(Value::Null);
        let data =
            json!({ "table": table, "template": template, "preview": preview, "notice": notice });
        self.views.page(visit, "template", data, StatusCode::OK)
    }

    /// The API's preview of `form`'s template (the saved one without a form):
    /// `{subject, html, text}`, or `{error}` saying why not, with its status.
    async fn preview(
        &self,
        visit: &Visit,
        table: &str,
        form: Option<&Form>,
    ) -> (StatusCode, Value) {
        let path = format!("/api/config/tables/{}/template/preview", segment(table));
        let mut body = json!({});
        if let Some(form) = form {
            body["template"] = json!({
                "subject": form.text("subject"), "html": form.get("html").unwrap_or_default(),
                "text": form.get("text").unwrap_or_default(),
            });
            if !form.text("record_id").is_empty() {
                body["record_id"] = form.text("record_id").into();
            }
        }
        let reply = self.api(visit, Method::POST, &path, Some(&body)).await;
        if reply.status.is_success() {
            (reply.status, reply.json)
        } else {
            (reply.status, json!({ "error": reply.detail() }))
        }
    }

    /// The preview of the posted template: JSON for the page's script, else
    /// the editor again with the preview. Previews are the operator's (as in
    /// the API): anyone else gets 403.
    pub(super) async fn preview_template(
        &self,
        visit: &Visit,
        table: &str,
        form: &Form,
    ) -> Response {
        let (status, preview) = self.preview(visit, table, Some(form)).await;
        if form.get("format") == Some("json") {
            return Response::builder()
                .status(status)
                .content_type("application/json")
                .body(preview.to_string());
        }
        if matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
            let detail = preview["error"].as_str().unwrap_or_default().to_owned();
            return self.views.problem(visit, status, &detail);
        }
        self.editor_again(visit, table, form, preview, None, StatusCode::OK)
    }

    pub(super) async fn save_template(&self, visit: &Visit, table: &str, form: &Form) -> Response {
        let path = format!("/api/config/tables/{}/template", segment(table));
        let body = json!({
            "subject": form.text("subject"), "html": form.get("html").unwrap_or_default(),
            "text": form.get("text").unwrap_or_default(),
        });
        let reply = self.api(visit, Method::PUT, &path, Some(&body)).await;
        match reply.status {
            s if s.is_success() => view::redirect(&format!(
                "/console/config/templates/{}?notice=template_saved",
                segment(table)
            )),
            // A template that does not compile: the editor again, with why.
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                let error = reply.detail();
                self.editor_again(visit, table, form, Value::Null, Some(error), reply.status)
            }
            status => self.views.problem(visit, status, &reply.detail()),
        }
    }

    fn editor_again(
        &self,
        visit: &Visit,
        table: &str,
        form: &Form,
        preview: Value,
        error: Option<String>,
        status: StatusCode,
    ) -> Response {
        let template = json!({
            "subject": form.text("subject"), "html": form.get("html").unwrap_or_default(),
            "text": form.get("text").unwrap_or_default(), "is_default": false,
        });
        let data = json!({
            "table": table, "template": template, "preview": preview, "error": error,
            "record_id": form.text("record_id"),
        });
        self.views.page(visit, "template", data, status)
    }
}
