//! What the services answer, and what that means for the alert.

use serde_json::Value;

use super::ChannelKind;

/// What a service answered, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Delivered,
    /// Not delivered. `code`: the service's own code ("130101", "9499",
    /// "45009", "http 503", "timeout", ...); `message`: its message as given
    /// (errmsg / msg), or the transport error.
    Failed {
        class: FailureClass,
        code: String,
        message: String,
    },
}

/// Whether and when a failed delivery is worth another try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The bot is over its sending limit; try again after the window.
    RateLimited,
    /// The service or the network failed for now; try again.
    Transient,
    /// The message or the channel's settings are wrong; trying again is useless.
    Permanent,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
        }
    }
}

pub(super) fn failed(
    class: FailureClass,
    code: impl Into<String>,
    message: impl Into<String>,
) -> Answer {
    Answer::Failed {
        class,
        code: code.into(),
        message: message.into(),
    }
}

fn display_name(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::DingTalk => "DingTalk",
        ChannelKind::WeCom => "WeCom",
        ChannelKind::Feishu => "Feishu / Lark",
        ChannelKind::Webhook => "The webhook",
    }
}

/// The meaning of a code, where it is known.
fn explain(kind: ChannelKind, code: &str, message: &str) -> Option<&'static str> {
    let msg = message.to_ascii_lowercase();
    Some(match (kind, code) {
        (_, "timeout") => "no answer came in time",
        (_, "connect") => "the service could not be reached",
        (_, "address refused") => "the host resolves only to internal addresses, which are refused",
        (_, "redirect refused") => "it answered with a redirect, which is not followed",
        (_, "bad answer") => "its answer could not be read",
        (_, "bad url") => "the webhook URL cannot be used",
        (_, "http 429") => "too many messages were sent",
        (ChannelKind::DingTalk, "130101") | (ChannelKind::WeCom, "45009") => {
            "too many messages were sent"
        }
        (ChannelKind::Feishu, "9499" | "11232" | "230020") => "too many messages were sent",
        (ChannelKind::DingTalk | ChannelKind::WeCom, "-1") => "the service is busy",
        (ChannelKind::DingTalk, "310000") if msg.contains("sign") => "the signature does not match",
        (ChannelKind::DingTalk, "310000") if msg.contains("ip") => {
            "this server's IP address is not allowed"
        }
        (ChannelKind::DingTalk, "310000") if msg.contains("keyword") => {
            "the message lacks the bot's required keywords"
        }
        (ChannelKind::DingTalk, "310000") => "the bot's security settings refused it",
        (ChannelKind::DingTalk, "300001") => "the access_token is missing or invalid",
        (ChannelKind::DingTalk, c) if c.starts_with("400") => "the request is invalid",
        (ChannelKind::WeCom, "93000") => "the webhook key is invalid",
        (ChannelKind::WeCom, "40008") => "the message type is invalid",
        (ChannelKind::WeCom, "40058") => "the message is too long or a field is invalid",
        (ChannelKind::Feishu, "19021") => "the signature does not match or the clock is off",
        (ChannelKind::Feishu, "19022") => "this server's IP address is not allowed",
        (ChannelKind::Feishu, "19024") => "the message lacks the bot's required keywords",
        (ChannelKind::Feishu, "19001") => "the request or the webhook is invalid",
        (_, c) if c.starts_with("http 5") => "the service failed",
        (_, c) if c.starts_with("http ") => "the request was refused",
        _ => return None,
    })
}

impl Answer {
    /// One sentence in plain words for an operator, e.g. "DingTalk refused
    /// the message: the signature does not match (errcode 310000: sign not match)".
    pub fn describe(&self, kind: ChannelKind) -> String {
        let name = display_name(kind);
        let Answer::Failed {
            class,
            code,
            message,
        } = self
        else {
            return format!("{name} accepted the message");
        };
        let what = match class {
            FailureClass::RateLimited => "is limiting the rate and did not take the message",
            FailureClass::Transient => "could not take the message for now",
            FailureClass::Permanent => "refused the message",
        };
        let label = match kind {
            _ if code.parse::<i64>().is_err() => "",
            ChannelKind::Feishu => "code ",
            _ => "errcode ",
        };
        let detail = if message.is_empty() {
            format!("{label}{code}")
        } else {
            format!("{label}{code}: {message}")
        };
        match explain(kind, code, message) {
            Some(why) => format!("{name} {what}: {why} ({detail})"),
            None => format!("{name} {what} ({detail})"),
        }
    }
}

/// The start of a body as text, for messages about failed answers.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(200)
        .collect()
}

/// Decodes a service's answer. HTTP 429 is `RateLimited`, 5xx `Transient`,
/// a redirect `Permanent` ("redirect refused"), other non-2xx `Permanent`
/// ("http N"). In a 2xx answer the bots' own codes decide: 0 is delivered,
/// their rate-limit codes are `RateLimited`, "system busy" (-1) is
/// `Transient`, everything else `Permanent`; a body that is not JSON is
/// `Transient` ("bad answer"). The generic webhook is delivered on any 2xx.
pub fn judge(kind: ChannelKind, status: u16, body: &[u8]) -> Answer {
    use FailureClass::*;
    match status {
        200..=299 => {}
        300..=399 => return failed(Permanent, "redirect refused", format!("HTTP {status}")),
        429 => return failed(RateLimited, "http 429", snippet(body)),
        500..=599 => return failed(Transient, format!("http {status}"), snippet(body)),
        _ => return failed(Permanent, format!("http {status}"), snippet(body)),
    }
    if kind == ChannelKind::Webhook {
        return Answer::Delivered;
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return failed(Transient, "bad answer", snippet(body));
    };
    let (code_key, msg_key) = match kind {
        ChannelKind::Feishu if json.get("code").is_none() => ("StatusCode", "StatusMessage"),
        ChannelKind::Feishu => ("code", "msg"),
        _ => ("errcode", "errmsg"),
    };
    let Some(code) = json.get(code_key).and_then(Value::as_i64) else {
        return failed(Transient, "bad answer", snippet(body));
    };
    if code == 0 {
        return Answer::Delivered;
    }
    let class = match (kind, code) {
        (ChannelKind::DingTalk, 130101) | (ChannelKind::WeCom, 45009) => RateLimited,
        (ChannelKind::Feishu, 9499 | 11232 | 230020) => RateLimited,
        (ChannelKind::DingTalk | ChannelKind::WeCom, -1) => Transient,
        _ => Permanent,
    };
    let message = json
        .get(msg_key)
        .and_then(Value::as_str)
        .unwrap_or_default();
    failed(class, code.to_string(), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChannelKind::*;
    use FailureClass::*;

    fn class(kind: ChannelKind, status: u16, body: &str) -> Option<FailureClass> {
        match judge(kind, status, body.as_bytes()) {
            Answer::Delivered => None,
            Answer::Failed { class, .. } => Some(class),
        }
    }

    #[test]
    fn judge_http_statuses() {
        for kind in ChannelKind::ALL {
            let classes = [429, 503, 404, 302].map(|status| class(kind, status, ""));
            assert_eq!(
                classes,
                [RateLimited, Transient, Permanent, Permanent].map(Some)
            );
        }
        assert_eq!(
            judge(WeCom, 404, b"gone"),
            failed(Permanent, "http 404", "gone")
        );
        assert_eq!(judge(Webhook, 204, b"not json"), Answer::Delivered);
        for kind in [DingTalk, WeCom, Feishu] {
            assert_eq!(
                judge(kind, 200, b"<html>"),
                failed(Transient, "bad answer", "<html>")
            );
        }
    }

    #[test]
    fn judge_service_codes() {
        let cases: &[(ChannelKind, &[i64], Option<FailureClass>)] = &[
            (DingTalk, &[0], None),
            (DingTalk, &[130101], Some(RateLimited)),
            (DingTalk, &[-1], Some(Transient)),
            (DingTalk, &[310000, 300001, 400013, 123], Some(Permanent)),
            (WeCom, &[0], None),
            (WeCom, &[45009], Some(RateLimited)),
            (WeCom, &[-1], Some(Transient)),
            (WeCom, &[93000, 40008, 40058, 1], Some(Permanent)),
            (Feishu, &[0], None),
            (Feishu, &[9499, 11232, 230020], Some(RateLimited)),
            (
                Feishu,
                &[19021, 19022, 19024, 19001, 19002, -1],
                Some(Permanent),
            ),
        ];
        for &(kind, codes, expected) in cases {
            for code in codes {
                let body = match kind {
                    Feishu => format!(r#"{{"code":{code},"msg":"x"}}"#),
                    _ => format!(r#"{{"errcode":{code},"errmsg":"x"}}"#),
                };
                assert_eq!(class(kind, 200, &body), expected, "{kind:?} {code}");
            }
        }
        assert_eq!(
            class(Feishu, 200, r#"{"StatusCode":0,"StatusMessage":"success"}"#),
            None
        );
        let answer = judge(Feishu, 200, br#"{"code":9499,"msg":"too many request"}"#);
        assert_eq!(answer, failed(RateLimited, "9499", "too many request"));
    }

    #[test]
    fn describe_names_the_cause() {
        let answer = judge(
            DingTalk,
            200,
            br#"{"errcode":310000,"errmsg":"sign not match"}"#,
        );
        let expected = "DingTalk refused the message: the signature does not match \
                        (errcode 310000: sign not match)";
        assert_eq!(answer.describe(DingTalk), expected);
        let answer = failed(Transient, "timeout", "operation timed out");
        let expected = "WeCom could not take the message for now: no answer came in time \
                        (timeout: operation timed out)";
        assert_eq!(answer.describe(WeCom), expected);
    }
}
