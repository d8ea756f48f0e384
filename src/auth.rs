//! Bearer tokens: 256-bit random, shown once, stored as SHA-256 digests, each
//! with an operator, an organisation, a role and an expiry. Verified tokens are
//! cached briefly, and only until the next configuration change (a revocation
//! is one), so a revoked token stops working on every copy at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Tokens start with this, so a leaked one is recognisable in a scan.
const PREFIX: &str = "aat_";
/// How long a verified token is trusted without asking the database again.
const CACHE_FOR: Duration = Duration::from_secs(30);

/// What a token may do. Each role includes `viewer`; `admin` includes all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads configuration, status and alerts.
    Viewer,
    /// Viewer, plus configuration changes, monitor control and re-sends.
    Operator,
    /// Viewer, plus the operation audit log.
    Auditor,
    /// Everything, tokens included.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "auditor" => Some(Self::Auditor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self == needed || self == Self::Admin || needed == Self::Viewer
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (`None` for `ADMIN_TOKEN`).
    pub token_id: Option<i64>,
    pub operator_id: String,
    pub org_id: Option<String>,
    pub role: Role,
}

/// A new token: the secret (shown once) and its id.
pub struct IssuedToken {
    pub id: i64,
    pub token: Secret,
    pub expires_at: Option<DateTime<Utc>>,
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Stores a new token and returns it; only its digest is kept.
pub async fn issue(
    pool: &Pool,
    operator_id: &str,
    org_id: Option<&str>,
    role: Role,
    expires_in: Option<Duration>,
    description: Option<&str>,
) -> anyhow::Result<IssuedToken> {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = format!("{PREFIX}{}", B64URL.encode(bytes));
    let expires_at = expires_in
        .map(|d| Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    let client = crate::db::client(pool).await?;
    let id: i64 = client
        .query_one(
            "INSERT INTO api_tokens (token_hash, operator_id, org_id, role, expires_at, description)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&digest(&token), &operator_id, &org_id, &role.as_str(), &expires_at, &description],
        )
        .await
        .context("Failed to store the token")?
        .get(0);
    Ok(IssuedToken {
        id,
        token: Secret::new(token),
        expires_at,
    })
}

/// Revokes a token; `false` when there is no such live token.
pub async fn revoke(pool: &Pool, id: i64) -> anyhow::Result<bool> {
    let client = crate::db::client(pool).await?;
    let n = client
        .execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await
        .context("Failed to revoke the token")?;
    Ok(n == 1)
}

/// Why a token was not accepted (all of these are 401 to the caller).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the bearer token is not valid")]
    Unknown,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token has been revoked")]
    Revoked,
    #[error(transparent)]
    Unavailable(#[from] anyhow::Error),
}

struct Cached {
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
    checked: Instant,
    /// The configuration generation it was verified in; any configuration
    /// change (a revocation included) starts a new one.
    generation: u64,
}

/// Verifies bearer tokens against `ADMIN_TOKEN` and the database.
pub struct Authenticator {
    admin_digest: Option<Vec<u8>>,
    // A std Mutex: held only to read or write the map, never across an await.
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
}

impl Authenticator {
    /// The SHA-256 of `ADMIN_TOKEN`, when it is set.
    pub fn admin_digest(&self) -> Option<&[u8]> {
        self.admin_digest.as_deref()
    }

    pub fn new(admin_token: Option<&Secret>) -> Self {
        Self {
            admin_digest: admin_token.map(|t| digest(t.expose())),
            cache: Mutex::default(),
        }
    }

    /// Checks a token; `generation` is the worker's configuration generation.
    pub async fn verify(
        &self,
        pool: &Pool,
        token: &str,
        generation: u64,
    ) -> Result<Principal, AuthError> {
        let hash = digest(token);
        if let Some(admin) = &self.admin_digest {
            if bool::from(admin.as_slice().ct_eq(&hash)) {
                return Ok(Principal {
                    token_id: None,
                    operator_id: "admin".into(),
                    org_id: None,
                    role: Role::Admin,
                });
            }
        }
        if let Some(c) = self.cache.lock().expect("token cache lock").get(&hash) {
            let fresh = c.generation == generation && c.checked.elapsed() < CACHE_FOR;
            if fresh && !c.expires_at.is_some_and(|at| at <= Utc::now()) {
                return Ok(c.principal.clone());
            }
        }
        let client = crate::db::client(pool).await?;
        // Recording the use on every check is cheap here: checks are cached.
        let row = client
            .query_opt(
                "UPDATE api_tokens SET last_used_at = now() WHERE token_hash = $1
                 RETURNING id, operator_id, org_id, role, expires_at, revoked_at",
                &[&hash],
            )
            .await
            .context("Failed to look up the token")?
            .ok_or(AuthError::Unknown)?;
        if row.get::<_, Option<DateTime<Utc>>>(5).is_some() {
            return Err(AuthError::Revoked);
        }
        let expires_at: Option<DateTime<Utc>> = row.get(4);
        if expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AuthError::Expired);
        }
        let principal = Principal {
            token_id: Some(row.get(0)),
            operator_id: row.get(1),
            org_id: row.get(2),
            role: Role::parse(row.get(3)).ok_or(AuthError::Unknown)?,
        };
        self.cache.lock().expect("token cache lock").insert(
            hash,
            Cached {
                principal: principal.clone(),
                expires_at,
                checked: Instant::now(),
                generation,
            },
        );
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::Role::*;

    #[test]
    fn roles_include_viewer_and_admin_includes_all() {
        for role in [Viewer, Operator, Auditor, Admin] {
            assert!(role.allows(Viewer));
            assert!(Admin.allows(role));
        }
        assert!(!Viewer.allows(Operator));
        assert!(!Operator.allows(Auditor));
        assert!(!Auditor.allows(Operator));
        assert!(!Operator.allows(Admin));
    }
}
