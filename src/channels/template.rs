//! The block each alert takes in a chat-bot message: a handlebars template
//! per channel kind, the built-in one or a table's own. It gets `id`,
//! `record_id`, `verdict`, `color` (the kind's colour for the verdict),
//! `time` (UTC+8), `table`, `fields` (the row's non-null columns as
//! `name`/`value`, values cut to 200 characters) and `more_fields` (columns
//! left out to fit the service's size limit) and `ack_url` (the link that
//! acknowledges it, with `PUBLIC_URL`). Values are made safe for
//! markdown before the template sees them; nothing is escaped after.

use handlebars::Handlebars;
use serde_json::{json, Value};

use super::ChannelKind;

const DINGTALK: &str = "**<font color=\"{{color}}\">{{verdict}}</font>** 告警编号 {{id}}\n\n记录：{{record_id}}\n\n时间：{{time}}{{#each fields}}\n\n{{name}}: {{value}}{{/each}}{{#if more_fields}}\n\n（其余 {{more_fields}} 个字段未列出）{{/if}}{{#if ack_url}}\n\n[确认已处理]({{ack_url}}){{/if}}";
const WECOM: &str = "**<font color=\"{{color}}\">{{verdict}}</font>** 告警编号 {{id}}\n记录：{{record_id}}\n时间：{{time}}{{#each fields}}\n{{name}}: {{value}}{{/each}}{{#if more_fields}}\n（其余 {{more_fields}} 个字段未列出）{{/if}}{{#if ack_url}}\n[确认已处理]({{ack_url}}){{/if}}";
const FEISHU: &str = "**<font color='{{color}}'>{{verdict}}</font>** 告警编号 {{id}}\n记录：{{record_id}}\n时间：{{time}}{{#each fields}}\n{{name}}: {{value}}{{/each}}{{#if more_fields}}\n（其余 {{more_fields}} 个字段未列出）{{/if}}{{#if ack_url}}\n[确认已处理]({{ack_url}}){{/if}}";

/// A compiled block template.
pub struct BlockTemplate {
    registry: Handlebars<'static>,
    source: String,
}

impl std::fmt::Debug for BlockTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockTemplate").finish_non_exhaustive()
    }
}

/// The built-in block of a kind; `None` for the webhook, whose alerts are JSON.
pub fn default_source(kind: ChannelKind) -> Option<&'static str> {
    match kind {
        ChannelKind::DingTalk => Some(DINGTALK),
        ChannelKind::WeCom => Some(WECOM),
        ChannelKind::Feishu => Some(FEISHU),
        ChannelKind::Webhook => None,
    }
}

impl BlockTemplate {
    /// Compiles `source` and renders it once for a sample alert, so that a
    /// template saved is one that renders. The error names what is wrong.
    pub fn new(source: &str) -> Result<Self, String> {
        let mut registry = Handlebars::new();
        registry.register_escape_fn(handlebars::no_escape);
        registry
            .register_template_string("block", source)
            .map_err(|e| e.to_string())?;
        let template = Self {
            registry,
            source: source.to_owned(),
        };
        let sample = json!({
            "id": 1, "record_id": "1", "verdict": "不合格", "color": "red",
            "time": "2026-01-01 08:00:00", "table": "audit_results",
            "fields": [{"name": "url", "value": "https://example.com/1"}], "more_fields": 0,
        });
        let rendered = template.render(&sample)?;
        if rendered.trim().is_empty() {
            return Err("the template renders nothing".into());
        }
        Ok(template)
    }

    /// The built-in block of `kind` (the webhook's is never rendered).
    pub fn builtin(kind: ChannelKind) -> &'static Self {
        use std::sync::OnceLock;
        static BUILTIN: [OnceLock<BlockTemplate>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let (i, source) = match kind {
            ChannelKind::DingTalk => (0, DINGTALK),
            ChannelKind::WeCom => (1, WECOM),
            _ => (2, FEISHU),
        };
        BUILTIN[i].get_or_init(|| Self::new(source).expect("the built-in blocks render"))
    }

    /// The block of a resolution notice, the same for every kind.
    pub fn notice() -> &'static Self {
        use std::sync::OnceLock;
        static NOTICE: OnceLock<BlockTemplate> = OnceLock::new();
        NOTICE.get_or_init(|| {
            Self::new("**已解除** 记录 {{record_id}}：不确定 → {{verdict}}（告警编号 {{id}}）")
                .expect("the notice block renders")
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders one alert's context.
    pub fn render(&self, context: &Value) -> Result<String, String> {
        self.registry
            .render("block", context)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_that_does_not_compile_or_render_is_refused() {
        assert!(BlockTemplate::new("{{#each fields}}").is_err());
        assert!(BlockTemplate::new("{{> missing}}").is_err());
        assert!(BlockTemplate::new("   ").is_err());
        let t = BlockTemplate::new("{{verdict}} #{{id}} <{{record_id}}>").unwrap();
        assert_eq!(
            t.render(&json!({"verdict": "不合格", "id": 7, "record_id": "a&b"}))
                .unwrap(),
            "不合格 #7 <a&b>"
        );
    }
}
