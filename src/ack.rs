//! Acknowledge links: a signed, expiring URL for one alert and the one
//! recipient it was made for. The signature is HMAC-SHA256 under the key
//! `SECRET_KEY` derives for signing (the audit log's checkpoints use it too),
//! over a statement that names what it is for, so that no other signed thing
//! can pass for a link. A link needs `PUBLIC_URL` to point anywhere.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};

use crate::crypto::SecretBox;

/// How long a link acknowledges.
pub const LINK_LIFETIME: Duration = Duration::days(7);

/// Makes and checks the links of one service.
#[derive(Clone)]
pub struct AckLinks {
    secrets: SecretBox,
    public_url: String,
}

/// Why a link does not acknowledge.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this link is not one this service made, or it was changed")]
    Forged,
    #[error("this link expired on {0}")]
    Expired(DateTime<Utc>),
}

/// What a valid link is for.
#[derive(Debug, PartialEq, Eq)]
pub struct LinkFor {
    pub alert_id: i64,
    pub recipient: String,
}

fn statement(alert_id: i64, expires: i64, recipient: &str) -> Vec<u8> {
    format!("audit-alert acknowledge\n{alert_id}\n{expires}\n{recipient}").into_bytes()
}

impl AckLinks {
    pub fn new(secrets: SecretBox, public_url: &str) -> Self {
        Self {
            secrets,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The link acknowledging `alert_id` for `recipient`, valid until
    /// `now + LINK_LIFETIME`.
    pub fn link(&self, alert_id: i64, recipient: &str, now: DateTime<Utc>) -> String {
        let expires = (now + LINK_LIFETIME).timestamp();
        let signature = self.secrets.sign(&statement(alert_id, expires, recipient));
        format!(
            "{}/ack/{alert_id}.{expires}.{}.{}",
            self.public_url,
            URL_SAFE_NO_PAD.encode(recipient),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// What the token of a link (the part after `/ack/`) is for.
    pub fn check(&self, token: &str, now: DateTime<Utc>) -> Result<LinkFor, LinkError> {
        let mut parts = token.split('.');
        let (Some(id), Some(expires), Some(recipient), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(LinkError::Forged);
        };
        let alert_id: i64 = id.parse().map_err(|_| LinkError::Forged)?;
        let expires: i64 = expires.parse().map_err(|_| LinkError::Forged)?;
        let recipient = URL_SAFE_NO_PAD
            .decode(recipient)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(LinkError::Forged)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::Forged)?;
        if !self
            .secrets
            .verify_signature(&statement(alert_id, expires, &recipient), &signature)
        {
            return Err(LinkError::Forged);
        }
        let expires = DateTime::from_timestamp(expires, 0).ok_or(LinkError::Forged)?;
        if now >= expires {
            return Err(LinkError::Expired(expires));
        }
        Ok(LinkFor {
            alert_id,
            recipient,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;

    fn links(key: &str) -> AckLinks {
        let secrets = SecretBox::from_key(&Secret::new(key)).unwrap();
        AckLinks::new(secrets, "https://alerts.example.com/")
    }

    #[test]
    fn a_link_acknowledges_its_alert_for_its_recipient_until_it_expires() {
        let l = links("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=");
        let now = Utc::now();
        let url = l.link(42, "oncall@example.com", now);
        assert!(
            url.starts_with("https://alerts.example.com/ack/42."),
            "{url}"
        );
        let token = url.rsplit('/').next().unwrap();
        let for_ = l.check(token, now).unwrap();
        assert_eq!(
            (for_.alert_id, for_.recipient.as_str()),
            (42, "oncall@example.com")
        );
        assert!(matches!(
            l.check(token, now + LINK_LIFETIME),
            Err(LinkError::Expired(_))
        ));
        // Another alert, another recipient, another key: refused.
        let other_alert = token.replacen("42.", "43.", 1);
        assert_eq!(l.check(&other_alert, now), Err(LinkError::Forged));
        let mut parts: Vec<&str> = token.split('.').collect();
        let someone = URL_SAFE_NO_PAD.encode("boss@example.com");
        parts[2] = &someone;
        assert_eq!(l.check(&parts.join("."), now), Err(LinkError::Forged));
        let other_key = links("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=");
        assert_eq!(other_key.check(token, now), Err(LinkError::Forged));
        assert_eq!(l.check("nonsense", now), Err(LinkError::Forged));
    }
}
