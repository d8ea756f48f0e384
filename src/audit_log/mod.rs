//! The operation audit log: who did what through the API, from where, when,
//! with which (masked) parameters, and whether it worked.
//!
//! Every operation is audited through one [`Audit`] declaration kept beside
//! the operations of its module; the HTTP layer does the recording, so no
//! handler contains audit code. A test walks the spec so that an operation
//! without a declaration cannot be added by accident.

pub mod mask;
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

/// A 32-character id that sorts by time and is unique across copies.
pub fn new_audit_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
