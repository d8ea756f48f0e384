//! Which webhook addresses may be saved and reached.

use std::net::{IpAddr, Ipv4Addr};

use reqwest::Url;

use super::{ChannelKind, DEFAULT_ALLOWED_HOSTS};

/// Loopback, private, link-local, shared (100.64/10) or unspecified.
pub(super) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || first & 0xfe00 == 0xfc00
                    || first & 0xffc0 == 0xfe80
            }
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && b & 0xc0 == 64)
}

/// Whether `host` is listed, bare or with the URL's `port` (IPv6 in brackets).
fn listed(allowed: &[String], host: &str, port: Option<u16>) -> bool {
    let with_port = port.map(|port| format!("{host}:{port}"));
    allowed
        .iter()
        .map(|entry| entry.trim().to_ascii_lowercase())
        .any(|entry| entry.trim_end_matches('.') == host || Some(&entry) == with_port.as_ref())
}

fn query_has(url: &Url, name: &str) -> bool {
    url.query_pairs()
        .any(|(k, v)| k == name && !v.trim().is_empty())
}

/// Checks a webhook URL when it is saved. It must be http(s), without user
/// name or password, and its host must be in `allowed_hosts` (exact, any
/// letter case; an entry "host:port" allows that port only). Plain http is
/// refused for the public services and for hosts not listed; internal IP
/// addresses (loopback, private, link-local, 100.64/10, unspecified) only
/// when listed themselves. DingTalk URLs must carry `access_token`, WeCom
/// URLs `key`, Feishu / Lark paths start with `/open-apis/bot/v2/hook/`.
///
/// The error is one sentence naming the problem, without the URL's secret
/// parts (token, key, hook id).
pub fn check_url(kind: ChannelKind, url: &str, allowed_hosts: &[String]) -> Result<(), String> {
    let url =
        Url::parse(url.trim()).map_err(|_| "the webhook URL is not a valid URL".to_string())?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err("the webhook URL must start with https://".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the webhook URL must not carry a user name or password".into());
    }
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("the webhook URL has no host".into());
    }
    let port = url.port_or_known_default();
    let is_listed = listed(allowed_hosts, &host, port);
    // The parser has already normalised IPv4 literals ("0x7f.1" is 127.0.0.1).
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let public_service = DEFAULT_ALLOWED_HOSTS.contains(&host.as_str());
    if url.scheme() == "http" && ip.is_none() && (!is_listed || public_service) {
        return Err("the webhook URL must use https".into());
    }
    if ip.is_some_and(is_internal) && !is_listed {
        return Err(format!(
            "the webhook URL points to the internal address {host}, which is refused unless that address is listed among the allowed hosts"
        ));
    }
    if !is_listed {
        return Err(format!(
            "the host {host} is not among the allowed webhook hosts"
        ));
    }
    match kind {
        ChannelKind::DingTalk if !query_has(&url, "access_token") => {
            Err("a DingTalk webhook URL must carry its access_token parameter".into())
        }
        ChannelKind::WeCom if !query_has(&url, "key") => {
            Err("a WeCom webhook URL must carry its key parameter".into())
        }
        ChannelKind::Feishu => match url.path().strip_prefix("/open-apis/bot/v2/hook/") {
            Some(id) if !id.trim_matches('/').is_empty() => Ok(()),
            _ => Err("a Feishu / Lark webhook URL must have a path starting with /open-apis/bot/v2/hook/ followed by the hook id".into()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChannelKind::*;

    #[test]
    fn accepts_the_default_hosts() {
        let hosts: Vec<String> = DEFAULT_ALLOWED_HOSTS.map(String::from).to_vec();
        for (kind, url) in [
            (
                DingTalk,
                "https://oapi.dingtalk.com/robot/send?access_token=abc",
            ),
            (
                WeCom,
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
            ),
            (Feishu, "https://open.feishu.cn/open-apis/bot/v2/hook/abc"),
            (
                Feishu,
                "https://OPEN.LARKSUITE.COM/open-apis/bot/v2/hook/abc",
            ),
            (Webhook, "https://open.feishu.cn/anything"),
        ] {
            assert_eq!(check_url(kind, url, &hosts), Ok(()), "{url}");
        }
    }

    #[test]
    fn accepts_listed_addresses_and_relays() {
        let hosts = ["127.0.0.1:8080".to_string(), "relay.internal".to_string()];
        assert_eq!(
            check_url(Webhook, "http://127.0.0.1:8080/hook", &hosts),
            Ok(())
        );
        assert_eq!(
            check_url(Webhook, "http://relay.internal:8000/x", &hosts),
            Ok(())
        );
        let err = check_url(Webhook, "http://127.0.0.1:9090/hook", &hosts).unwrap_err();
        assert!(err.contains("internal address"), "{err}");
    }

    #[test]
    fn refusals() {
        let hosts: Vec<String> = DEFAULT_ALLOWED_HOSTS.map(String::from).to_vec();
        for (kind, url, expected) in [
            (Webhook, "https://evil.example/x", "not among the allowed"),
            (Webhook, "https://10.1.2.3/x", "internal address"),
            (Webhook, "https://[::1]/x", "internal address"),
            (Webhook, "https://[fd00::1]/x", "internal address"),
            (Webhook, "https://100.64.0.1/x", "internal address"),
            (
                Webhook,
                "https://user:pw@open.feishu.cn/x",
                "user name or password",
            ),
            (Webhook, "ftp://open.feishu.cn/x", "https"),
            (Webhook, "not a url", "not a valid URL"),
            (Webhook, "http://evil.example/x", "must use https"),
            (Webhook, "http://open.feishu.cn/x", "must use https"),
            (
                DingTalk,
                "https://oapi.dingtalk.com/robot/send?token=SECRET1",
                "access_token",
            ),
            (
                WeCom,
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?k=SECRET1",
                "key",
            ),
            (
                Feishu,
                "https://open.feishu.cn/open-apis/bot/v2/hook/",
                "/open-apis/",
            ),
            (Feishu, "https://open.feishu.cn/SECRET1", "/open-apis/"),
        ] {
            let err = check_url(kind, url, &hosts).unwrap_err();
            assert!(
                err.contains(expected) && !err.contains("SECRET1"),
                "{url}: {err}"
            );
        }
    }
}
