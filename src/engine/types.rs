//! The engine's public vocabulary: records, answers, events, errors, as the local API shows them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::backend::Recovery;

/// A journal record's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Journaled, not yet answered (in flight, or the daemon died before the outcome).
    Pending,
    Approved,
    Declined,
    /// The outcome is unknown and recovery is owed (see `recovery`).
    Unknown,
    /// The effect was undone by recovery (or never happened).
    Reversed,
    /// Not sent or refused before it took effect; nothing is owed.
    Failed,
}

impl Status {
    /// The status word a POS app sees (`unknown` is shown as `pending`: recovery is still running).
    pub fn pos_word(self) -> &'static str {
        match self {
            Status::Pending | Status::Unknown => "pending",
            Status::Approved => "approved",
            Status::Declined => "declined",
            Status::Reversed => "reversed",
            Status::Failed => "failed",
        }
    }
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Unknown)
    }
}

/// Recovery owed for a record whose outcome was unknown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecoveryState {
    pub how: Recovery,
    pub attempts: u32,
    /// Unix milliseconds of the next attempt.
    pub next_at_ms: i64,
    /// True once retries ran out: a person must look at it ("needs attention").
    pub parked: bool,
    pub last_error: Option<String>,
}

/// One journal record. Holds no full card number, track data, PIN block or key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub profile: String,
    pub operation: String,
    pub class: String,
    pub status: Status,
    pub trace: String,
    pub batch: String,
    pub created_at: String,
    pub updated_at: String,
    pub amount_fen: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
    /// The POS request minus anything sensitive (vendor field names, money in fen).
    pub request: Map<String, Value>,
    /// Fields recovery needs again (card number), sealed with the journal's data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_en: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trans_time: Option<String>,
    #[serde(default)]
    pub result: Map<String, Value>,
    /// Batch-total deltas applied when approved.
    #[serde(default)]
    pub totals: Vec<(String, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// With an idempotency key: the keyed fingerprint of the operation and POS body
    /// (`Sealer::fingerprint`), so a key reused for another body is refused rather than answered
    /// with the first result. `None` in records written before it existed: those are not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryState>,
    /// Why it failed, when it did (not sent, rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backend slot (lottery station) the request was sent on; held while its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// What an unknown outcome holds back (see `Prepared::unit`); `None` is the whole terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The backend refused this request unapplied until the terminal signed on again; it was resent
    /// as this record (same POS request, fresh trace, new batch). Idempotency lookups follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u64>,
}

impl Record {
    /// A fresh `pending` record with nothing but its identity; the journal gives it an id (and trace).
    pub fn new(profile: &str, operation: &str, class: &str, batch: &str, now: &str) -> Record {
        Record {
            id: 0,
            profile: profile.to_string(),
            operation: operation.to_string(),
            class: class.to_string(),
            status: Status::Pending,
            trace: String::new(),
            batch: batch.to_string(),
            created_at: now.to_string(),
            updated_at: now.to_string(),
            amount_fen: 0,
            card: None,
            request: Map::new(),
            sealed: None,
            code: None,
            message: None,
            message_en: None,
            reference: None,
            trans_time: None,
            result: Map::new(),
            totals: Vec::new(),
            original: None,
            idempotency_key: None,
            request_fingerprint: None,
            pos_reference: None,
            recovery: None,
            error: None,
            slot: None,
            unit: None,
            superseded_by: None,
        }
    }

    /// The view a POS app gets: `status` in its words, the journal id, trace, batch, vendor code and fields.
    pub fn view(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("sealed");
            m.remove("request_fingerprint");
            m.insert("status".into(), Value::String(self.status.pos_word().into()));
            m.insert("state".into(), serde_json::to_value(self.status).unwrap_or(Value::Null));
        }
        v
    }
}

/// Filters for `GET /v1/journal`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JournalQuery {
    pub profile: Option<String>,
    pub batch: Option<String>,
    /// A POS status word or an internal state.
    pub status: Option<String>,
    /// `YYYY-MM-DD` (UTC date of creation).
    pub date: Option<String>,
    /// Newest first, at most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Only ids below this one (for paging backwards).
    pub before: Option<u64>,
}

/// Something subscribers of `GET /v1/events` hear.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// SSE event name: `transaction`, `recovery`, `device`, `scan`, `notification`.
    pub kind: &'static str,
    pub data: Value,
}

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
