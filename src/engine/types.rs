//! The engine's public vocabulary: records, answers, events, errors, as the local API shows them.
use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

pub use crate::model::event::Event;
pub use crate::model::record::{JournalQuery, Record, RecoveryState, Status};
pub use crate::model::Class;

/// Per-profile state shown by `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileStatus {
    pub name: String,
    pub backend: String,
    pub batch: Option<String>,
    pub batch_open: bool,
    pub trace: String,
    /// True while the last backend exchange got an answer.
    pub online: bool,
    pub pending_recovery: usize,
    pub needs_attention: usize,
    /// The journal ids of the records that owe recovery (oldest first).
    pub owed_ids: Vec<u64>,
    /// Earlier batches holding approved records that the host refused to settle when a new batch was
    /// opened; settle each with `posgate settle PROFILE --batch N`.
    pub unsettled_batches: Vec<String>,
    pub totals: BTreeMap<String, i64>,
    /// True when the profile's backend is spoken to in plain HTTP (`allow_plain_http`): no TLS.
    pub plain_http: bool,
    /// Things a person should know about the profile's setup (plain HTTP, for one), one line each.
    pub warnings: Vec<String>,
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("no profile named {0:?}")]
    UnknownProfile(String),
    #[error("profile {profile:?} ({backend}) has no operation {operation:?}")]
    UnknownOperation { profile: String, backend: String, operation: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no journal record {0}")]
    NoRecord(u64),
    #[error("reversal pending: profile {profile:?} has {count} unresolved recovery entr(ies) ({parked} parked, needing attention), oldest journal id {oldest}; new financial requests wait until they are resolved{}", if *parked > 0 { " (`posgate reversals --retry ID` or `--resolve ID --outcome approved|reversed`)" } else { "" })]
    RecoveryPending { profile: String, count: usize, parked: usize, oldest: u64, retry_after_s: u64 },
    #[error("busy: {detail}")]
    Busy { profile: String, detail: String, retry_after_s: u64 },
    #[error("Idempotency-Key {key:?} was first used for {first_operation:?} on profile {first_profile:?}")]
    IdempotencyConflict { key: String, first_profile: String, first_operation: String },
    #[error("Idempotency-Key {key:?} was first used with another request body (journal id {first_id}); a retry must send the very same body, a new request needs a new key")]
    IdempotencyKeyReused { key: String, first_id: u64 },
    #[error("sign-on with the backend failed: {0}")]
    SignOnFailed(String),
    #[error("journal: {0}")]
    Journal(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("shutting down")]
    ShuttingDown,
}

impl EngineError {
    /// HTTP status for the local API.
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::UnknownProfile(_) | EngineError::UnknownOperation { .. } | EngineError::NoRecord(_) => 404,
            EngineError::BadRequest(_) => 400,
            EngineError::IdempotencyKeyReused { .. } => 422,
            EngineError::RecoveryPending { .. } | EngineError::IdempotencyConflict { .. } | EngineError::Busy { .. } => 409,
            EngineError::SignOnFailed(_) => 502,
            EngineError::Journal(_) | EngineError::Config(_) => 500,
            EngineError::ShuttingDown => 503,
        }
    }
    /// A stable slug for the problem `type` URI.
    pub fn slug(&self) -> &'static str {
        match self {
            EngineError::UnknownProfile(_) => "unknown-profile",
            EngineError::UnknownOperation { .. } => "unknown-operation",
            EngineError::BadRequest(_) => "bad-request",
            EngineError::NoRecord(_) => "no-record",
            EngineError::RecoveryPending { .. } => "reversal-pending",
            EngineError::Busy { .. } => "busy",
            EngineError::IdempotencyConflict { .. } => "idempotency-conflict",
            EngineError::IdempotencyKeyReused { .. } => "idempotency-key-reused",
            EngineError::SignOnFailed(_) => "sign-on-failed",
            EngineError::Journal(_) => "journal",
            EngineError::Config(_) => "configuration",
            EngineError::ShuttingDown => "shutting-down",
        }
    }
}

impl From<crate::journal::JournalError> for EngineError {
    fn from(e: crate::journal::JournalError) -> Self {
        EngineError::Journal(e.to_string())
    }
}
