//! The overview and the alert pages, with the re-send form.

use poem::http::{Method, StatusCode};
use poem::Response;
use serde_json::{json, Value};

use super::api_call::{segment, with_query};
use super::view::{self, Query};
use super::{chart, Inner, Visit};

/// Every alert state, in the order the pages list them.
pub const STATUSES: &[&str] = &[
    "pending",
    "sending",
    "sent",
    "failed",
    "suppressed",
    "silenced",
    "baseline",
];

/// `2024-05-01T08:00` (a `datetime-local` field, read as Beijing time, as
/// the pages show times) as RFC 3339.
pub fn local_time(value: &str) -> String {
    use chrono::TimeZone;
    let value = value.trim();
    if value.is_empty() {
        return String::new();
    }
    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S"))
        .ok()
        .and_then(|t| super::view::ZONE.from_local_datetime(&t).earliest())
        .map(|t| t.to_rfc3339())
        // Not a field's value: the API names it in its answer.
        .unwrap_or_else(|| value.to_owned())
}

/// Links to the neighbouring pages of a list at `base` with `filters`.
pub fn pager(base: &str, filters: &[(&str, String)], list: &Value) -> (Value, Value) {
    let page = list["page"].as_u64().unwrap_or(1);
    let size = list["page_size"].as_u64().unwrap_or(50).max(1);
    let total = list["total"].as_u64().unwrap_or(0);
    let link = |p: u64| {
        let mut pairs = filters.to_vec();
        pairs.push(("page", p.to_string()));
        Value::String(with_query(base, &pairs))
    };
    let prev = if page > 1 {
        link(page - 1)
    } else {
        Value::Null
    };
    let next = if page * size < total {
        link(page + 1)
    } else {
        Value::Null
    };
    (prev, next)
}

impl Inner {
    fn status_label(&self, visit: &Visit, status: &str) -> String {
        visit.lang.text(&format!("status_{status}")).to_owned()
    }

    pub(super) async fn overview(&self, visit: &Visit) -> Response {
        // The page stands for the status call (audited as such).
        let status = match self.get(visit, "/api/monitor/status").await {
            Ok(s) => s,
            Err(page) => return *page,
        };
        let figures = match chart::load(&self.state.pool).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "console: overview figures");
                return self
                    .views
                    .problem(visit, StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            }
        };
        let counts: Vec<Value> = ["pending", "failed", "sent"]
            .iter()
            .map(|s| {
                let (hour, day) = figures.counts.get(*s).copied().unwrap_or_default();
                json!({ "status": s, "label": self.status_label(visit, s), "hour": hour, "day": day })
            })
            .collect();
        let data = json!({
            "status": status,
            "counts": counts,
            "chart": chart::svg(&figures, visit.lang),
        });
        self.views.page(visit, "overview", data, StatusCode::OK)
    }

    pub(super) async fn alerts(&self, visit: &Visit, query: &Query) -> Response {
        // A chat message links to `alerts?table=...`.
        let table = query.text("table");
        let filters = [
            ("table", table.clone()),
            ("status", query.text("status")),
            ("verdict", query.text("verdict")),
            ("from", query.text("from")),
            ("to", query.text("to")),
        ];
        let api_query = [
            ("table_name", table),
            ("status", query.text("status")),
            ("verdict", query.text("verdict")),
            ("from", local_time(&query.text("from"))),
            ("to", local_time(&query.text("to"))),
            ("page", query.text("page")),
            ("page_size", "50".to_owned()),
        ];
        let mut list = match self
            .get(visit, &with_query("/api/alerts", &api_query))
            .await
        {
            Ok(list) => list,
            Err(page) => return *page,
        };
        if let Some(items) = list["items"].as_array_mut() {
            for item in items {
                let label = self.status_label(visit, item["status"].as_str().unwrap_or(""));
                item["status_label"] = label.into();
            }
        }
        let (prev, next) = pager("/console/alerts", &filters, &list);
        let statuses: Vec<Value> = STATUSES
            .iter()
            .map(|s| json!({ "value": s, "label": self.status_label(visit, s) }))
            .collect();
        let tables: Vec<String> = self
            .state
            .worker
            .snapshot()
            .tables
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let filter: serde_json::Map<String, Value> = filters
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        let data = json!({
            "list": list, "filter": filter, "statuses": statuses, "tables": tables,
            "prev": prev, "next": next,
        });
        self.views.page(visit, "alerts", data, StatusCode::OK)
    }

    pub(super) async fn alert(&self, visit: &Visit, id: &str, query: &Query) -> Response {
        let alert = match self
            .get(visit, &format!("/api/alerts/{}", segment(id)))
            .await
        {
            Ok(alert) => alert,
            Err(page) => return *page,
        };
        let status = alert["status"].as_str().unwrap_or("").to_owned();
        let row = self.row_of(&alert).await;
        let notice = match query.get("notice") {
            Some(key @ ("resent" | "acknowledged_now")) => {
                Value::String(visit.lang.text(key).into())
            }
            _ => Value::Null,
        };
        let data = json!({
            "alert": alert,
            "status_label": self.status_label(visit, &status),
            "resendable": matches!(status.as_str(), "failed" | "suppressed" | "silenced"),
            "row": row,
            "notice": notice,
        });
        self.views.page(visit, "alert", data, StatusCode::OK)
    }

    /// The flagged row as it is now (`None` when gone or its table unwatched).
    async fn row_of(&self, alert: &Value) -> Option<Value> {
        let snapshot = self.state.worker.snapshot();
        let table = snapshot.table(alert["table_name"].as_str()?)?;
        let id = alert["record_id"].as_str()?;
        match crate::monitor::fetch_rows(&self.state.pool, table, &[id]).await {
            Ok(rows) => rows.into_values().next().map(|row| {
                // Cells as text, so the page shows JSON values as they are.
                let cells: serde_json::Map<String, Value> = row
                    .into_iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s,
                            Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        (k, Value::String(text))
                    })
                    .collect();
                Value::Object(cells)
            }),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "console: the alert's row");
                None
            }
        }
    }

    /// Acknowledges the alert as the signed-in user, like the API's call.
    pub(super) async fn acknowledge(&self, visit: &Visit, id: &str) -> Response {
        let path = format!("/api/alerts/{}/ack", segment(id));
        let reply = self.api(visit, Method::POST, &path, None).await;
        match self.ok(visit, reply) {
            Ok(_) => view::redirect(&format!(
                "/console/alerts/{}?notice=acknowledged_now",
                segment(id)
            )),
            Err(page) => *page,
        }
    }

    pub(super) async fn resend(&self, visit: &Visit, id: &str) -> Response {
        let path = format!("/api/alerts/{}/resend", segment(id));
        let reply = self.api(visit, Method::POST, &path, None).await;
        match self.ok(visit, reply) {
            Ok(_) => view::redirect(&format!("/console/alerts/{}?notice=resent", segment(id))),
            Err(page) => *page,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_filters_read_in_beijing_time() {
        assert_eq!(
            super::local_time("2024-05-01T10:00"),
            "2024-05-01T10:00:00+08:00"
        );
        assert_eq!(super::local_time("soon"), "soon");
        assert_eq!(super::local_time(" "), "");
    }
}
