//! Chat-bot channels beside e-mail: WeCom, DingTalk, Feishu / Lark and a
//! generic webhook.

mod address;
mod answer;
mod http;
mod message;
mod sign;
mod template;

use std::time::Duration;

pub use address::check_url;
pub use answer::{judge, Answer, FailureClass};
pub use http::{client, send};
pub use message::{build, build_test, preview_block, Message};
pub use template::{default_source, BlockTemplate};

/// The services a channel can send to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    DingTalk,
    WeCom,
    /// Feishu and its international edition Lark.
    Feishu,
    /// Any HTTPS endpoint taking the alerts as JSON.
    Webhook,
}

const PER_MINUTE_20: &[(u32, Duration)] = &[(20, Duration::from_secs(60))];
const FEISHU_LIMITS: &[(u32, Duration)] =
    &[(100, Duration::from_secs(60)), (5, Duration::from_secs(1))];

impl ChannelKind {
    pub const ALL: [ChannelKind; 4] = [
        ChannelKind::DingTalk,
        ChannelKind::WeCom,
        ChannelKind::Feishu,
        ChannelKind::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::DingTalk => "dingtalk",
            ChannelKind::WeCom => "wecom",
            ChannelKind::Feishu => "feishu",
            ChannelKind::Webhook => "webhook",
        }
    }

    /// The kind named by [`ChannelKind::as_str`], in any letter case.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Send limits per bot: (messages, window). DingTalk 20 a minute, WeCom
    /// 20 a minute, Feishu 100 a minute and 5 a second, the webhook none.
    pub fn limits(self) -> &'static [(u32, Duration)] {
        match self {
            ChannelKind::DingTalk | ChannelKind::WeCom => PER_MINUTE_20,
            ChannelKind::Feishu => FEISHU_LIMITS,
            ChannelKind::Webhook => &[],
        }
    }

    /// Largest message the service accepts, in bytes: for WeCom the markdown
    /// content, for the others the whole JSON body.
    pub fn max_bytes(self) -> usize {
        match self {
            ChannelKind::DingTalk => 20_000,
            ChannelKind::WeCom => 4_096,
            ChannelKind::Feishu => 20 * 1024,
            ChannelKind::Webhook => 1_000_000,
        }
    }

    /// Whether the channel may have a signing secret (always optional).
    pub fn takes_secret(self) -> bool {
        self != ChannelKind::WeCom
    }
}

/// Hosts webhook URLs may point to when the operator has not said otherwise.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 4] = [
    "oapi.dingtalk.com",
    "qyapi.weixin.qq.com",
    "open.feishu.cn",
    "open.larksuite.com",
];

/// An alert in a message.
#[derive(Clone, Debug)]
pub struct AlertLine {
    pub id: i64,
    pub record_id: String,
    pub verdict: String,
    pub alerted_at: chrono::DateTime<chrono::Utc>,
    pub row: Option<serde_json::Map<String, serde_json::Value>>,
    /// The link that acknowledges it, if the service makes links.
    pub ack_url: Option<String>,
}

/// What goes to one bot: the URL to POST (with DingTalk's timestamp and
/// sign query added), the body, the headers.
///
/// A generic webhook with a secret gets `X-Audit-Alert-Signature:
/// sha256=<hex HMAC-SHA256 of the body>` and `X-Audit-Alert-Timestamp:
/// <unix seconds>`; the signature covers the body only, not the timestamp.
#[derive(Clone, Debug)]
pub struct Request {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// How many alerts are listed in full, and how many only counted ("and N more").
    pub listed: usize,
    pub counted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_limits() {
        for kind in ChannelKind::ALL {
            assert_eq!(ChannelKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ChannelKind::parse("FeiShu"), Some(ChannelKind::Feishu));
        assert_eq!(ChannelKind::parse("slack"), None);
        assert_eq!(ChannelKind::Feishu.limits()[1], (5, Duration::from_secs(1)));
        assert!(ChannelKind::Webhook.limits().is_empty());
        assert!(!ChannelKind::WeCom.takes_secret() && ChannelKind::DingTalk.takes_secret());
    }
}
