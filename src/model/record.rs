//! The journal record: what one request to a backend was, is, and owes. Shared by engine, journal and reports.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Class, Recovery};

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
    pub class: Class,
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
    pub fn new(profile: &str, operation: &str, class: Class, batch: &str, now: &str) -> Record {
        Record {
            id: 0,
            profile: profile.to_string(),
            operation: operation.to_string(),
            class,
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
    /// The vendor's reference (`serialNo`, `orderId`, `transacId`), through the journal's index.
    pub reference: Option<String>,
}

impl JournalQuery {
    /// True when `r` passes every filter (`limit` aside): one rule for the hot journal and the day files.
    pub fn admits(&self, r: &Record) -> bool {
        self.profile.as_ref().is_none_or(|p| &r.profile == p)
            && self.batch.as_ref().is_none_or(|b| &r.batch == b)
            && self
                .status
                .as_ref()
                .is_none_or(|s| r.status.pos_word() == s || serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(|x| x == s)).unwrap_or(false))
            && self.date.as_ref().is_none_or(|d| r.created_at.starts_with(d.as_str()))
            && self.reference.as_ref().is_none_or(|x| r.reference.as_ref() == Some(x))
            && self.before.is_none_or(|b| r.id < b)
    }
}
