//! The operation audit log: who did what through the API, from where, when,
//! with which (masked) parameters, and whether it worked.
//!
//! Every operation is audited through one [`Audit`] declaration kept beside
//! the operations of its module; the HTTP layer does the recording, so no
//! handler contains audit code. A test walks the spec so that an operation
//! without a declaration cannot be added by accident.

pub mod chain;
pub mod mask;
pub mod verify;
pub mod writer;

use mask::Strategy;

/// How one operation is audited.
#[derive(Clone, Copy, Debug)]
pub struct Audit {
    pub operation_id: &'static str,
    /// What the operation does, in the operator's words.
    pub description: &'static str,
    /// Record the path, query and body (default on).
    pub record_params: bool,
    /// Record the response body (default off).
    pub record_result: bool,
    /// Record the error of a failed call (default on).
    pub record_exception: bool,
    /// Mask the recorded values (default on).
    pub sensitive: bool,
    /// Fields of the request and response DTOs and how to mask them.
    pub masks: &'static [(&'static str, Strategy)],
}

impl Audit {
    pub const fn new(operation_id: &'static str, description: &'static str) -> Self {
        Self {
            operation_id,
            description,
            record_params: true,
            record_result: false,
            record_exception: true,
            sensitive: true,
            masks: &[],
        }
    }

    pub const fn record_result(mut self) -> Self {
        self.record_result = true;
        self
    }

    pub const fn without_params(mut self) -> Self {
        self.record_params = false;
        self
    }

    pub const fn masks(mut self, masks: &'static [(&'static str, Strategy)]) -> Self {
        self.masks = masks;
        self
    }
}

/// Masking declared on a DTO: which of its fields hold what.
pub trait Masked {
    const MASKS: &'static [(&'static str, Strategy)];
}

/// A 32-character id that sorts by time and is unique across copies: a UUIDv7
/// whose 12 bits after the millisecond count up within this process (entries
/// of one copy keep their order) and whose last 62 bits are random, from a
/// fast per-thread generator (a system call for randomness on every request
/// would cost more than the rest of the entry).
pub fn new_audit_id() -> String {
    use std::sync::atomic::{AtomicU16, Ordering};
    static SEQUENCE: AtomicU16 = AtomicU16::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut bytes = [0u8; 10];
    bytes[..2].copy_from_slice(&(SEQUENCE.fetch_add(1, Ordering::Relaxed) & 0x0fff).to_be_bytes());
    bytes[2..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes)
        .into_uuid()
        .simple()
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn audit_ids_are_unique_uuid_v7_in_time_order() {
        let ids: Vec<String> = (0..100_000).map(|_| super::new_audit_id()).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert_eq!(&id[12..13], "7", "version 7: {id}");
        }
        // A later millisecond sorts later; within one, ids count up, but for
        // the wrap of the 12-bit counter every 4,096 ids.
        let inversions = ids.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(
            inversions <= ids.len() / 4096 + 1,
            "{inversions} out of order"
        );
    }
}
