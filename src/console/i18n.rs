//! Every text of the console, in one table: Chinese first, English on
//! `?lang=en` (remembered in a cookie).

use poem::Request;
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Zh = 0,
    En = 1,
}

const COOKIE: &str = "aa_lang";

impl Lang {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "zh" | "zh-CN" => Some(Self::Zh),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    fn asked(req: &Request) -> Option<Self> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(req.uri().query().unwrap_or_default())
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "lang")
            .and_then(|(_, v)| Self::parse(&v))
    }

    /// `?lang=`, else the remembered choice, else Chinese.
    pub fn of(req: &Request) -> Self {
        Self::asked(req)
            .or_else(|| super::session::cookie(req, COOKIE).and_then(Self::parse))
            .unwrap_or(Self::Zh)
    }

    /// Whether this request chose the language (to be remembered).
    pub fn chosen_now(self, req: &Request) -> bool {
        Self::asked(req).is_some()
    }

    pub fn cookie(self) -> String {
        format!(
            "{COOKIE}={}; Path=/console; Max-Age=31536000; SameSite=Strict",
            self.short()
        )
    }

    fn short(self) -> &'static str {
        match self {
            Self::Zh => "zh",
            Self::En => "en",
        }
    }

    /// The page's `lang` attribute.
    pub fn code(self) -> &'static str {
        match self {
            Self::Zh => "zh-CN",
            Self::En => "en",
        }
    }

    /// The text of `key` (the key itself when the table lacks it).
    pub fn text(self, key: &str) -> &str {
        STRINGS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(key, |(_, zh, en)| match self {
                Self::Zh => zh,
                Self::En => en,
            })
    }
}

/// Every text in this language, for the templates (`t.key`).
pub fn table(lang: Lang) -> Map<String, Value> {
    STRINGS
        .iter()
        .map(|(k, zh, en)| {
            let text = if lang == Lang::Zh { zh } else { en };
            (k.to_string(), Value::String(text.to_string()))
        })
        .collect()
}

/// (key, Chinese, English).
const STRINGS: &[(&str, &str, &str)] = &[
    ("app", "审核告警控制台", "audit-alert console"),
    ("title_login", "登录", "Sign in"),
    ("title_overview", "概览", "Overview"),
    ("title_alerts", "告警", "Alerts"),
    ("title_alert", "告警详情", "Alert"),
    ("title_config", "配置", "Configuration"),
    ("title_template", "邮件模板", "Mail template"),
    ("title_audit", "审计日志", "Audit log"),
    ("title_audit_entry", "审计详情", "Audit entry"),
    ("title_tokens", "令牌", "Tokens"),
    ("title_message", "提示", "Notice"),
    // Sign-in and refusals
    (
        "login_intro",
        "请输入 API 令牌登录（与调用 API 使用的令牌相同）。",
        "Sign in with an API token (the one you use with the API).",
    ),
    ("token", "令牌", "Token"),
    ("sign_in", "登录", "Sign in"),
    ("sign_out", "退出", "Sign out"),
    ("token_missing", "请输入令牌。", "Enter a token."),
    (
        "token_invalid",
        "令牌无效、已过期或已吊销。",
        "The token is not valid, has expired or has been revoked.",
    ),
    ("forbidden", "无权操作", "Forbidden"),
    ("not_found", "页面不存在", "Not found"),
    ("refused", "请求被拒绝", "Refused"),
    ("error", "错误", "Error"),
    (
        "csrf_refused",
        "表单已失效（缺少或错误的 CSRF 令牌），未执行任何操作。请刷新页面后重试。",
        "The form is not valid (missing or wrong CSRF token); nothing was done. Reload the page and try again.",
    ),
    (
        "no_session",
        "未登录或会话已结束，未执行任何操作。",
        "Not signed in, or the session has ended; nothing was done.",
    ),
    (
        "unavailable",
        "服务暂不可用，请稍后再试。",
        "The service is unavailable; try again shortly.",
    ),
    ("back_home", "返回概览", "Back to the overview"),
    // Roles
    ("role", "角色", "Role"),
    ("role_viewer", "查看者", "viewer"),
    ("role_operator", "操作员", "operator"),
    ("role_auditor", "审计员", "auditor"),
    ("role_admin", "管理员", "admin"),
    // Overview
    ("listener", "通知监听", "Listener"),
    ("connected", "已连接", "connected"),
    ("disconnected", "未连接", "disconnected"),
    ("last_notification", "最近通知", "Last notification"),
    ("overall", "总体状态", "Overall"),
    ("sweep", "兜底扫描", "Sweep"),
    ("last_sweep", "上次扫描", "Last sweep"),
    ("next_sweep", "下次扫描", "Next sweep"),
    ("found", "上次发现", "Found last time"),
    ("counts", "告警数量", "Alerts"),
    ("last_hour", "最近 1 小时", "Last hour"),
    ("last_day", "最近 24 小时", "Last 24 hours"),
    ("chart_title", "每小时告警数（按表，最近 24 小时，北京时间）", "Alerts per hour by table (last 24 h, Beijing time)"),
    ("chart_empty", "最近 24 小时没有告警", "No alerts in the last 24 hours"),
    // Alert states
    ("status_pending", "待发送", "pending"),
    ("status_sending", "发送中", "sending"),
    ("status_sent", "已发送", "sent"),
    ("status_failed", "发送失败", "failed"),
    ("status_suppressed", "已抑制", "suppressed"),
    ("status_silenced", "已静默", "silenced"),
    ("status_baseline", "基线", "baseline"),
    // Lists and filters
    ("table", "表", "Table"),
    ("status", "状态", "Status"),
    ("verdict", "结论", "Verdict"),
    ("from", "起始时间", "From"),
    ("to", "截止时间", "To"),
    ("any", "全部", "any"),
    ("filter", "筛选", "Filter"),
    ("total", "共", "Total"),
    ("times_zone", "时间均为北京时间（UTC+8）", "times in Beijing time (UTC+8)"),
    ("zone", "北京时间", "Beijing time"),
    ("none", "暂无记录", "Nothing here"),
    ("page", "第", "Page"),
    ("prev", "上一页", "Previous"),
    ("next", "下一页", "Next"),
    ("record", "记录", "Record"),
    ("attempts", "尝试", "Attempts"),
    ("created", "创建时间", "Created"),
    // One alert
    ("sent_at", "发送时间", "Sent"),
    ("last_error", "最近错误", "Last error"),
    ("acknowledged", "确认", "Acknowledged"),
    ("resend", "重新发送", "Re-send"),
    ("resent", "已重新排队发送。", "Queued to be sent again."),
    ("acknowledge", "确认已处理", "Acknowledge"),
    ("acknowledged_now", "已确认。", "Acknowledged."),
    ("silenced_by", "静默规则", "Silenced by"),
    ("escalated", "已升级", "Escalated"),
    ("escalates_at", "无人确认时升级于", "Escalates if unacknowledged at"),
    ("held_until", "免打扰时段，将于此时发送：", "Quiet hours; goes out at"),
    ("held_dropped", "免打扰期间已处理，不再发送", "Settled during quiet hours; not sent"),
    ("row", "被标记的记录", "The flagged row"),
    ("row_missing", "记录已不存在，或该表已不再监控。", "The row is gone, or its table is no longer watched."),
    ("recipients_outcome", "收件人结果", "Recipients"),
    ("recipient", "收件人", "Recipient"),
    ("outcome", "结果", "Outcome"),
    ("delivered", "已送达", "delivered"),
    ("no_failed_attempts", "没有失败的尝试", "No failed attempts"),
    ("time", "时间", "Time"),
    // Configuration
    ("smtp_servers", "SMTP 服务器", "SMTP servers"),
    ("name", "名称", "Name"),
    ("server", "服务器", "Server"),
    ("security", "加密", "Security"),
    ("sender", "发件人", "Sender"),
    ("active", "启用", "Active"),
    ("test_mail", "测试邮件", "Test mail"),
    ("test_to", "收件地址", "send to"),
    ("send_test_mail", "发送测试邮件", "Send test mail"),
    ("server_answer", "服务器应答", "Server's answer"),
    ("recipients", "收件人", "Recipients"),
    ("email", "邮箱", "E-mail"),
    ("delete", "删除", "Delete"),
    ("add_recipient", "添加收件人", "Add recipient"),
    ("recipient_added", "收件人已添加。", "Recipient added."),
    ("recipient_deleted", "收件人已删除。", "Recipient deleted."),
    ("recipient_changed", "收件人已更新。", "Recipient updated."),
    ("deactivate", "停用", "Deactivate"),
    ("activate", "启用", "Activate"),
    ("watched_tables", "监控表", "Watched tables"),
    ("id_column", "主键列", "Id column"),
    ("verdict_column", "结论列", "Verdict column"),
    ("alert_verdicts", "告警结论", "Alerting verdicts"),
    ("enabled", "启用", "Enabled"),
    ("template", "模板", "Template"),
    ("edit_template", "编辑模板", "Edit template"),
    // Template editor
    ("default_template", "默认模板", "default template"),
    ("custom_template", "自定义模板", "custom template"),
    ("subject", "主题", "Subject"),
    ("text_part", "纯文本", "Plain text"),
    ("record_id", "预览记录编号（可选）", "Record id to preview (optional)"),
    ("preview", "预览", "Preview"),
    ("save", "保存", "Save"),
    ("template_saved", "模板已保存。", "Template saved."),
    // Audit log
    ("operator", "操作人", "Operator"),
    ("org", "组织", "Organisation"),
    ("result", "结果", "Result"),
    ("success", "成功", "success"),
    ("failure", "失败", "failure"),
    ("text", "包含文字", "Text"),
    ("export_csv", "导出 CSV", "Export CSV"),
    ("operation", "操作", "Operation"),
    ("request_params", "请求参数", "Request parameters"),
    ("response_result", "响应结果", "Response"),
    // Tokens
    ("description", "说明", "Description"),
    ("expires", "过期时间", "Expires"),
    ("expires_in", "有效期（如 90d）", "Lifetime (e.g. 90d)"),
    ("last_used", "最近使用", "Last used"),
    ("revoke", "吊销", "Revoke"),
    ("revoked", "已吊销", "revoked"),
    ("create_token", "创建令牌", "Create token"),
    (
        "token_issued",
        "新令牌如下，仅显示这一次，请立即妥善保存：",
        "The new token, shown this once only; store it now:",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_both_languages_once() {
        let mut keys: Vec<_> = STRINGS.iter().map(|(k, _, _)| *k).collect();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "a key is listed twice");
        for (k, zh, en) in STRINGS {
            assert!(!zh.is_empty() && !en.is_empty(), "{k}");
        }
    }
}
