//! The HTTP client of the channels, and sending.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::address::is_internal;
use super::answer::{failed, judge, Answer, FailureClass};
use super::{ChannelKind, Request};

/// Most of an answer's body that is read; the rest is not needed.
const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to internal addresses")]
struct AddressRefused(String);

/// Resolves names, leaving out loopback, private, link-local and
/// unspecified addresses unless the name is listed, so that a public host
/// name cannot be pointed at an internal service.
struct GuardedResolver {
    allowed: Vec<String>,
}

impl GuardedResolver {
    fn trusts(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.allowed.iter().any(|entry| {
            let entry = entry.trim().trim_end_matches('.');
            // An entry may carry a port ("relay.internal:8080"); the resolver sees names only.
            let host = match entry.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
                _ => entry,
            };
            host.eq_ignore_ascii_case(name)
        })
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_string();
        let trusted = self.trusts(&name);
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(format!("{name} has no addresses").into());
            }
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| trusted || !is_internal(addr.ip()))
                .collect();
            if kept.is_empty() {
                return Err(Box::new(AddressRefused(name)) as _);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client of the channels: rustls with the ring provider, no proxy,
/// no redirects followed, 5 s to connect and 10 s in all. Names resolving
/// only to internal addresses are refused unless listed in
/// `allow_private_hosts` (entries may carry a port, which is ignored here),
/// so an allowed host cannot be pointed at an internal service.
pub fn client(allow_private_hosts: &[String]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .dns_resolver(GuardedResolver {
            allowed: allow_private_hosts.to_vec(),
        })
        .build()
        .expect("the channels' HTTP client builds once a TLS provider is installed")
}

/// A transport error as an answer. The URL is left out of the message: it
/// carries the bots' tokens.
fn transport(err: reqwest::Error) -> Answer {
    let err = err.without_url();
    let timeout = err.is_timeout();
    let mut parts: Vec<String> = Vec::new();
    let mut refused = false;
    let mut next: Option<&(dyn Error + 'static)> = Some(&err);
    while let Some(e) = next {
        refused |= e.is::<AddressRefused>();
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    let message = parts.join(": ");
    if refused {
        failed(FailureClass::Permanent, "address refused", message)
    } else {
        failed(
            FailureClass::Transient,
            if timeout { "timeout" } else { "connect" },
            message,
        )
    }
}

/// POSTs a request and decodes the answer. Transport errors are `Transient`
/// ("timeout" or "connect"), except a name refused by the resolver, which is
/// `Permanent` ("address refused").
pub async fn send(client: &reqwest::Client, kind: ChannelKind, request: &Request) -> Answer {
    let Ok(url) = reqwest::Url::parse(&request.url) else {
        return failed(
            FailureClass::Permanent,
            "bad url",
            "the webhook URL cannot be parsed",
        );
    };
    let mut post = client.post(url).body(request.body.clone());
    for (name, value) in &request.headers {
        post = post.header(*name, value);
    }
    let mut response = match post.send().await {
        Ok(response) => response,
        Err(err) => return transport(err),
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while body.len() < BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(BODY_LIMIT - body.len())])
            }
            Ok(None) => break,
            // The webhook's body is not read for its meaning; the status decides.
            Err(_) if kind == ChannelKind::Webhook => break,
            Err(err) => return transport(err),
        }
    }
    judge(kind, status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_trusts_listed_names_with_or_without_port() {
        let resolver = GuardedResolver {
            allowed: vec!["Relay.internal:8080".into(), "other".into()],
        };
        assert!(resolver.trusts("relay.internal"));
        assert!(resolver.trusts("other."));
        assert!(!resolver.trusts("evil.example"));
    }

    #[tokio::test]
    async fn send_refuses_a_name_that_resolves_to_loopback() {
        let request = super::super::build_test(
            ChannelKind::Webhook,
            "http://localhost:9/",
            None,
            chrono::Utc::now(),
        );
        let answer = send(&client(&[]), ChannelKind::Webhook, &request).await;
        let Answer::Failed { class, code, .. } = answer else {
            panic!("delivered")
        };
        assert_eq!(
            (class, code.as_str()),
            (FailureClass::Permanent, "address refused")
        );
    }
}
