//! Turns alert records into an e-mail: subject, HTML and plain text, each a
//! handlebars template compiled once. The defaults follow the old system's
//! look: red for 不合格, orange for 不确定, and every column of the row.

use std::collections::BTreeMap;

use handlebars::Handlebars;
use serde::Serialize;
use serde_json::{Map, Value};

const SUBJECT: &str = "subject";
const HTML: &str = "html";
const TEXT: &str = "text";

/// The built-in templates.
pub const DEFAULT_SUBJECT: &str = "{{#if digest}}【内容审核告警】{{table}}: {{count}} 条记录 ({{#each verdict_counts}}{{@key}} {{this}}{{#unless @last}}, {{/unless}}{{/each}}){{else}}{{#with (lookup records 0)}}【内容审核告警】{{verdict}} - {{../table}} 记录 {{id}}{{/with}}{{/if}}";
pub const DEFAULT_HTML: &str = include_str!("templates/alert.html.hbs");
pub const DEFAULT_TEXT: &str = include_str!("templates/alert.txt.hbs");

/// One flagged record to report.
#[derive(Clone, Debug)]
pub struct AlertRecord {
    pub record_id: String,
    pub verdict: String,
    /// The row as it is now (`None` when it was deleted meanwhile).
    pub row: Option<Map<String, Value>>,
    /// When the alert was raised (used when the row has no `created_at`).
    pub alerted_at: chrono::DateTime<chrono::Utc>,
    /// The link that acknowledges it for this mail's recipient, if any.
    pub ack_url: Option<String>,
}

/// A rendered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl RenderedMail {
    /// The bodies with CRLF line endings, as they go on the wire. Given bare
    /// LFs, lettre inserts each CR in place, which is quadratic in the size
    /// of a digest.
    pub fn with_crlf(self) -> Self {
        let crlf = |s: String| s.replace("\r\n", "\n").replace('\n', "\r\n");
        Self {
            subject: self.subject,
            html: crlf(self.html),
            text: crlf(self.text),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{name}: the template does not compile: {reason}")]
    Compile { name: &'static str, reason: String },
    #[error("template does not render: {0}")]
    Render(#[from] handlebars::RenderError),
}

/// Compiled templates: HTML escapes values, subject and text do not.
pub struct Renderer {
    sources: TemplateSources,
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
}

/// The source of a template set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSources {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("sources", &self.sources)
            .finish()
    }
}

#[derive(Serialize)]
struct MailContext<'a> {
    table: &'a str,
    count: usize,
    digest: bool,
    verdict_counts: BTreeMap<&'a str, usize>,
    records: Vec<RecordContext<'a>>,
}

#[derive(Serialize)]
struct RecordContext<'a> {
    id: &'a str,
    verdict: &'a str,
    color: &'static str,
    time: String,
    url: Option<String>,
    ip_address: Option<String>,
    mac_address: Option<String>,
    reason: Option<String>,
    fields: Vec<Field>,
    ack_url: Option<&'a str>,
}

#[derive(Serialize)]
struct Field {
    name: String,
    value: String,
}

impl Renderer {
    /// The built-in templates.
    pub fn default_templates() -> Self {
        Self::new(DEFAULT_SUBJECT, DEFAULT_HTML, DEFAULT_TEXT)
            .expect("the built-in templates compile")
    }

    /// Compiles a template set; an error names the template that failed.
    pub fn new(subject: &str, html: &str, text: &str) -> Result<Self, RenderError> {
        let compile =
            |name: &'static str, escape: bool, source: &str, h: &mut Handlebars<'static>| {
                if !escape {
                    h.register_escape_fn(handlebars::no_escape);
                }
                h.register_template_string(name, source)
                    .map_err(|e| RenderError::Compile {
                        name,
                        reason: e.to_string(),
                    })
            };
        let mut html_registry = Handlebars::new();
        let mut plain = Handlebars::new();
        compile(HTML, true, html, &mut html_registry)?;
        compile(SUBJECT, false, subject, &mut plain)?;
        compile(TEXT, false, text, &mut plain)?;
        Ok(Self {
            sources: TemplateSources {
                subject: subject.to_owned(),
                html: html.to_owned(),
                text: text.to_owned(),
            },
            html: html_registry,
            plain,
        })
    }

    pub fn sources(&self) -> &TemplateSources {
        &self.sources
    }

    /// Renders one e-mail for the records of one table.
    pub fn render(
        &self,
        table: &str,
        records: &[AlertRecord],
    ) -> Result<RenderedMail, RenderError> {
        let mut verdict_counts = BTreeMap::new();
        for r in records {
            *verdict_counts.entry(r.verdict.as_str()).or_insert(0) += 1;
        }
        let context = MailContext {
            table,
            count: records.len(),
            digest: records.len() > 1,
            verdict_counts,
            records: records.iter().map(record_context).collect(),
        };
        // Turned into JSON once for the three templates, not once each.
        let context = handlebars::Context::wraps(&context)?;
        let subject = self.plain.render_with_context(SUBJECT, &context)?;
        Ok(RenderedMail {
            // A subject is one line whatever the template did.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            html: self.html.render_with_context(HTML, &context)?,
            text: self.plain.render_with_context(TEXT, &context)?,
        })
    }
}

/// The short mail telling those who got an uncertain alert that its row was
/// re-reviewed to a verdict that does not alert (`records` carry the new
/// verdicts).
pub fn notice(table: &str, records: &[AlertRecord]) -> RenderedMail {
    use handlebars::html_escape as esc;
    let intro = "以下记录此前的「不确定」告警已解除，复核后的结论不再告警：";
    let text: Vec<String> = records
        .iter()
        .map(|r| format!("记录 {}：不确定 → {}", r.record_id, r.verdict))
        .collect();
    let html: String = records
        .iter()
        .map(|r| {
            format!(
                "<li>记录 <b>{}</b>：不确定 → <span style=\"color:#188038\">{}</span></li>",
                esc(&r.record_id),
                esc(&r.verdict)
            )
        })
        .collect();
    let subject = format!("【告警已解除】{table} {} 条记录复核通过", records.len());
    RenderedMail {
        subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
        html: format!(
            "<html><body><p>{intro}</p><ul>{html}</ul><p>表：{}</p></body></html>",
            esc(table)
        ),
        text: format!("{intro}\n\n{}\n\n表：{table}\n", text.join("\n")),
    }
}

fn record_context(r: &AlertRecord) -> RecordContext<'_> {
    let column = |names: &[&str]| {
        let row = r.row.as_ref()?;
        names
            .iter()
            .find_map(|n| row.get(*n))
            .and_then(|v| match v {
                Value::Null => None,
                v => Some(plain_value(v)),
            })
    };
    let fields = r
        .row
        .iter()
        .flat_map(|row| row.iter())
        .map(|(name, value)| Field {
            name: name.clone(),
            value: plain_value(value),
        })
        .collect();
    RecordContext {
        id: &r.record_id,
        verdict: &r.verdict,
        color: verdict_color(&r.verdict),
        time: column(&["created_at"]).unwrap_or_else(|| r.alerted_at.to_rfc3339()),
        url: column(&["url"]),
        ip_address: column(&["ip_address"]),
        mac_address: column(&["mac_address"]),
        reason: column(&["reason", "reasons"]),
        fields,
        ack_url: r.ack_url.as_deref(),
    }
}

/// Red for a failing verdict, orange for an uncertain one, grey otherwise.
fn verdict_color(verdict: &str) -> &'static str {
    match verdict {
        "不合格" => "#d93025",
        "不确定" => "#f29900",
        _ => "#5f6368",
    }
}

fn plain_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, verdict: &str, row: Value) -> AlertRecord {
        AlertRecord {
            record_id: id.into(),
            verdict: verdict.into(),
            row: row.as_object().cloned(),
            alerted_at: chrono::Utc::now(),
            ack_url: None,
        }
    }

    #[test]
    fn bodies_go_out_with_crlf_line_endings() {
        let mail = RenderedMail {
            subject: "s".into(),
            html: "<p>a</p>\n<p>b</p>\r\n".into(),
            text: "记录 1\n\n原因：x\r\nend".into(),
        }
        .with_crlf();
        assert_eq!(mail.html, "<p>a</p>\r\n<p>b</p>\r\n");
        assert_eq!(mail.text, "记录 1\r\n\r\n原因：x\r\nend");
    }

    #[test]
    fn single_record_mail_carries_its_fields() {
        let r = Renderer::default_templates();
        let mail = r
            .render(
                "audit_results",
                &[record(
                    "7",
                    "不合格",
                    json!({"id": 7, "verdict": "不合格", "url": "http://x/<b>", "reason": "违规"}),
                )],
            )
            .unwrap();
        assert_eq!(
            mail.subject,
            "【内容审核告警】不合格 - audit_results 记录 7"
        );
        assert!(mail.html.contains("#d93025"));
        assert!(
            mail.html.contains("http://x/&lt;b&gt;"),
            "HTML escapes values"
        );
        assert!(mail.text.contains("http://x/<b>"), "text does not");
        assert!(mail.text.contains("违规"));
    }

    #[test]
    fn digest_counts_verdicts() {
        let r = Renderer::default_templates();
        let recs = [
            record("1", "不合格", json!({})),
            record("2", "不确定", json!({})),
            record("3", "不合格", json!(null)),
        ];
        let mail = r.render("t", &recs).unwrap();
        assert_eq!(
            mail.subject,
            "【内容审核告警】t: 3 条记录 (不合格 2, 不确定 1)"
        );
        assert!(mail.html.contains("#f29900"));
    }

    proptest::proptest! {
        /// Any template text either compiles or is refused; any row renders.
        #[test]
        fn rendering_never_panics(source in "\\PC{0,80}", key in "\\PC{0,10}", value in "\\PC{0,40}", n in proptest::num::i64::ANY) {
            if let Ok(r) = Renderer::new(&source, &source, &source) {
                let _ = r.render("t", &[record("1", &value, json!({ key.clone(): value.clone(), "n": n }))]);
            }
            let built_in = Renderer::default_templates();
            let mail = built_in.render(&key, &[record(&value, &value, json!({ key.clone(): value, "n": n }))]);
            proptest::prop_assert!(mail.is_ok());
        }
    }

    #[test]
    fn broken_template_is_rejected_by_name() {
        let e = Renderer::new("{{#if}}", "x", "y").err().unwrap();
        assert!(e.to_string().contains("subject"), "{e}");
    }
}
