//! The hash chain of the audit log: the canonical form of an entry, its
//! hash, a chain's genesis, and the signed forms of checkpoints and cuts.
//!
//! Canonical form: the JSON object of every stored column but the two
//! hashes (`audit_id`, `chain_id` as a hyphenated uuid, `chain_seq`,
//! `duration_ms`, `error_msg`, `operation_desc`, `operation_ip`,
//! `operation_method`, `operation_result`, `operation_time` as RFC 3339 UTC
//! with microseconds, `operation_url`, `operator_id`, `operator_org_id`,
//! `request_params`, `response_result`, `role_id`; absent values `null`),
//! serialized by RFC 8785 (JSON Canonicalization Scheme). An entry's hash is
//! SHA-256 of the hash before it (32 bytes) followed by that serialization.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub type Hash = [u8; 32];

/// An entry's place in its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub chain_id: Uuid,
    pub seq: i64,
    pub prev: Hash,
    pub hash: Hash,
}

/// The stored columns of an entry, borrowed, in the shape that is hashed.
pub struct Canonical<'a> {
    pub audit_id: &'a str,
    pub chain_id: Uuid,
    pub chain_seq: i64,
    pub duration_ms: i32,
    pub error_msg: Option<&'a str>,
    pub operation_desc: &'a str,
    pub operation_ip: Option<&'a str>,
    pub operation_method: &'a str,
    pub operation_result: &'a str,
    pub operation_time: DateTime<Utc>,
    pub operation_url: &'a str,
    pub operator_id: Option<&'a str>,
    pub operator_org_id: Option<&'a str>,
    pub request_params: Option<&'a Value>,
    pub response_result: Option<&'a Value>,
    pub role_id: Option<&'a str>,
}

/// Writes `,"name":`, or `{"name":` for the first member.
fn key(out: &mut Vec<u8>, name: &str) {
    out.push(if out.is_empty() { b'{' } else { b',' });
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Writes a member whose value plain JSON writes as the RFC does.
fn member<T: Serialize + ?Sized>(out: &mut Vec<u8>, name: &str, value: &T) {
    key(out, name);
    serde_json::to_writer(&mut *out, value).expect("a column serializes");
}

impl Canonical<'_> {
    /// The RFC 8785 serialization. The members are written in the RFC's key
    /// order (the names are ASCII), hold only strings, integers and nulls at
    /// the top (which plain JSON writes as the RFC does), and the JSON values
    /// within are written by the RFC's implementation; a test holds this
    /// equal to the crate's serialization of the whole.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        member(&mut out, "audit_id", self.audit_id);
        member(&mut out, "chain_id", &self.chain_id);
        member(&mut out, "chain_seq", &self.chain_seq);
        member(&mut out, "duration_ms", &self.duration_ms);
        member(&mut out, "error_msg", &self.error_msg);
        member(&mut out, "operation_desc", self.operation_desc);
        member(&mut out, "operation_ip", &self.operation_ip);
        member(&mut out, "operation_method", self.operation_method);
        member(&mut out, "operation_result", self.operation_result);
        let time = self
            .operation_time
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        member(&mut out, "operation_time", &time);
        member(&mut out, "operation_url", self.operation_url);
        member(&mut out, "operator_id", &self.operator_id);
        member(&mut out, "operator_org_id", &self.operator_org_id);
        for (name, value) in [
            ("request_params", self.request_params),
            ("response_result", self.response_result),
        ] {
            key(&mut out, name);
            match value {
                None => out.extend_from_slice(b"null"),
                Some(v) => serde_json_canonicalizer::to_writer(v, &mut out)
                    .expect("a stored JSON value serializes"),
            }
        }
        member(&mut out, "role_id", &self.role_id);
        out.push(b'}');
        out
    }

    /// SHA-256 of `prev` followed by the canonical serialization.
    pub fn hash(&self, prev: &Hash) -> Hash {
        let bytes = self.to_vec();
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(&bytes);
        hasher.finalize().into()
    }
}

/// What a chain's first entry names as the hash before it.
pub fn genesis(chain_id: Uuid) -> Hash {
    Sha256::digest(format!("audit-alert audit-log chain {chain_id}")).into()
}

/// The signed statement of a checkpoint: chain `chain_id` had `seq` entries,
/// the last of them hashing to `head`, at `signed_at`.
pub fn checkpoint_message(
    chain_id: Uuid,
    seq: i64,
    head: &Hash,
    signed_at: DateTime<Utc>,
) -> Vec<u8> {
    statement(&serde_json::json!({
        "kind": "checkpoint",
        "chain_id": chain_id,
        "chain_seq": seq,
        "head_hash": hex(head),
        "signed_at": signed_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    }))
}

/// The signed statement of a retention purge: chain `chain_id` now starts at
/// `first_seq`, whose entry names `first_prev` as the hash before it.
pub fn cut_message(chain_id: Uuid, first_seq: i64, first_prev: &Hash) -> Vec<u8> {
    statement(&serde_json::json!({
        "kind": "cut",
        "chain_id": chain_id,
        "first_seq": first_seq,
        "first_prev": hex(first_prev),
    }))
}

fn statement(v: &Value) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(v).expect("a statement serializes")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored hash as one; `None` when it is not 32 bytes.
pub fn hash_of(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(params: &'a Value) -> Canonical<'a> {
        Canonical {
            audit_id: "0190f3c2a1b27c3d8e9f0a1b2c3d4e5f",
            chain_id: Uuid::nil(),
            chain_seq: 1,
            duration_ms: 3,
            error_msg: None,
            operation_desc: "新增收件人",
            operation_ip: Some("10.0.0.1"),
            operation_method: "POST",
            operation_result: "0",
            operation_time: DateTime::parse_from_rfc3339("2026-12-03T02:04:14.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            operation_url: "/api/config/recipients",
            operator_id: Some("alice"),
            operator_org_id: None,
            request_params: Some(params),
            response_result: None,
            role_id: Some("admin"),
        }
    }

    /// The entry as one JSON value, for the crate to serialize whole.
    fn whole(c: &Canonical<'_>) -> Value {
        serde_json::json!({
            "audit_id": c.audit_id, "chain_id": c.chain_id, "chain_seq": c.chain_seq,
            "duration_ms": c.duration_ms, "error_msg": c.error_msg,
            "operation_desc": c.operation_desc, "operation_ip": c.operation_ip,
            "operation_method": c.operation_method, "operation_result": c.operation_result,
            "operation_time": c.operation_time.to_rfc3339_opts(SecondsFormat::Micros, true),
            "operation_url": c.operation_url, "operator_id": c.operator_id,
            "operator_org_id": c.operator_org_id, "request_params": c.request_params,
            "response_result": c.response_result, "role_id": c.role_id,
        })
    }

    #[test]
    fn the_canonical_form_is_byte_exact_whatever_the_key_order_or_number_spelling() {
        let a: Value =
            serde_json::from_str(r#"{"body":{"name":"张*","n":1.50},"path":"/x"}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"path":"/x","body":{"n":1.5,"name":"张*"}}"#).unwrap();
        let bytes = serde_json_canonicalizer::to_string(&whole(&entry(&a))).unwrap();
        assert_eq!(
            bytes,
            serde_json_canonicalizer::to_string(&whole(&entry(&b))).unwrap()
        );
        assert_eq!(
            bytes.as_bytes(),
            entry(&a).to_vec(),
            "the fast form is the RFC's"
        );
        assert_eq!(bytes.as_bytes(), entry(&b).to_vec());
        let awkward: Value = serde_json::from_str(
            r#"{"é":1e21,"a\u001fb":[0.1,-0,1.7976931348623157e308,"\u2028"],"B":{"z":null,"a":true}}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json_canonicalizer::to_vec(&whole(&entry(&awkward))).unwrap(),
            entry(&awkward).to_vec()
        );
        assert!(bytes.starts_with(r#"{"audit_id":"0190f3c2a1b27c3d8e9f0a1b2c3d4e5f","chain_id":"00000000-0000-0000-0000-000000000000","chain_seq":1,"duration_ms":3,"error_msg":null,"#), "{bytes}");
        assert!(
            bytes.contains(r#""operation_time":"2026-12-03T02:04:14.123456Z""#),
            "{bytes}"
        );
        assert!(
            bytes.contains(r#""request_params":{"body":{"n":1.5,"name":"张*"},"path":"/x"}"#),
            "{bytes}"
        );
        let genesis = genesis(Uuid::nil());
        assert_eq!(entry(&a).hash(&genesis), entry(&b).hash(&genesis));
        assert_ne!(
            entry(&a).hash(&genesis),
            entry(&a).hash(&[0; 32]),
            "the hash before counts"
        );
    }
}
