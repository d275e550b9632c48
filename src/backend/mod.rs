//! The vendor-neutral face of a backend: what the engine may ask of any vendor, and what comes back.
//!
//! A backend owns its wire format (signing, encryption, field mapping, response codes) and knows
//! nothing of the journal. The engine knows nothing of any vendor: it sees operations, outcomes and
//! each operation's recovery policy.
pub mod callback;
pub mod common;
pub mod consign;
pub mod job;
pub mod lottery;
pub mod loyalty;
pub mod registry;
pub mod scenic;
pub mod wallet;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::config::Profile;
use crate::net::client::HttpsClient;

pub use crate::model::{Recovery, TerminalIdentity};

/// How the engine must treat an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// Sign-on: gets a batch number and session keys; journaled, no money.
    SignOn,
    /// A lookup or message that moves no money: journaled, never recovered, never blocked.
    Inquiry,
    /// Moves money: journal-before-send, blocked while recovery is owed, recovered on unknown.
    Financial(Recovery),
    /// Closes the batch with the engine's totals.
    Settle,
    /// A report over the journal's records of one day (for example reconciliation): journaled, no money.
    Report,
}

impl From<OpClass> for crate::model::Class {
    fn from(c: OpClass) -> Self {
        use crate::model::Class;
        match c {
            OpClass::SignOn => Class::SignOn,
            OpClass::Inquiry => Class::Inquiry,
            OpClass::Financial(_) => Class::Financial,
            OpClass::Settle => Class::Settle,
            OpClass::Report => Class::Report,
        }
    }
}

/// One operation a backend offers, named in kebab-case after the vendor interface.
#[derive(Debug, Clone, Copy)]
pub struct OpSpec {
    pub name: &'static str,
    pub class: OpClass,
    /// Whether the POS must name an original journal record (`"original": <id>`).
    pub needs_original: bool,
}

/// The POS request, split by how long each field may live.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Safe to journal and to show: vendor field names, money as integer fen, cards masked.
    pub public: Map<String, Value>,
    /// Needed again for recovery (for example the card number): journaled only encrypted.
    pub vault: Map<String, Value>,
    /// Needed for the first send only (track data, clear PIN): never written anywhere.
    pub transient: Map<String, Value>,
    /// The amount this operation moves, in fen (0 when none).
    pub amount_fen: i64,
    /// Card number masked first 6 + last 4, when the request names a card.
    pub card_masked: Option<String>,
    /// Deltas to the batch totals, applied when approved and taken back when reversed.
    pub totals: Vec<(String, i64)>,
    /// A POS-side reference for searching (for example `registerTraceNo`).
    pub pos_reference: Option<String>,
    /// What an unresolved outcome of this request holds back, when less than the whole terminal: a
    /// lottery ticket (`ticket:<barCode>`). `None`: the terminal (loyalty's batch), so every new
    /// financial request of the profile waits for its recovery. With `Some(u)`, only requests naming
    /// the same unit wait (and a second request for the unit answers from the first's outcome).
    pub unit: Option<String>,
}

/// The journal's memory of an original transaction, for cancel/refund style operations.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OriginalRef {
    pub id: u64,
    pub operation: String,
    pub trace: String,
    pub batch: String,
    pub amount_fen: i64,
    /// The backend's reference from the original answer (`serialNo`), if any.
    pub reference: Option<String>,
    /// The backend's transaction time from the original answer, as sent.
    pub trans_time: Option<String>,
    /// When the engine created the original record (RFC 3339).
    pub created_at: String,
    pub public: Map<String, Value>,
    pub vault: Map<String, Value>,
}

/// Everything a backend needs to build one request.
#[derive(Debug, Clone, Copy)]
pub struct TxRequest<'a> {
    pub journal_id: u64,
    pub operation: &'a str,
    pub identity: &'a TerminalIdentity,
    pub trace: &'a str,
    pub batch: &'a str,
    /// When the engine created the record (RFC 3339, UTC): stable across resends.
    pub created_at: &'a str,
    /// Opaque session state the backend returned at sign-on (for example encrypted working keys).
    pub session: &'a Value,
    pub public: &'a Map<String, Value>,
    pub vault: &'a Map<String, Value>,
    /// Empty when replaying from the journal.
    pub transient: &'a Map<String, Value>,
    pub original: Option<&'a OriginalRef>,
    /// The slot (lottery station) this request was journaled on, when the backend leases slots. The
    /// caller holds that slot's [`Lease`] for the whole call: the backend uses it without taking it.
    pub slot: Option<&'a str>,
}

/// A unit of a backend's capacity that one request occupies exclusively until its outcome is known
/// (a lottery station: the host is serial per station). The engine journals `slot` with the record
/// before sending, keeps the lease while the outcome is unknown (also across a restart, through
/// [`Backend::lease_slot`]), and drops it once the outcome is known.
pub struct Lease {
    pub slot: String,
    /// Whatever keeps the slot taken (a station guard); dropping it frees the slot.
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("slot", &self.slot).finish_non_exhaustive()
    }
}

/// A definite answer from the backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approved,
    Declined,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub verdict: Verdict,
    /// The vendor's response code, as sent.
    pub code: String,
    /// The vendor's message, or the code table's when the vendor sent none.
    pub message: String,
    /// English text for the code, from the code table.
    pub message_en: String,
    /// The vendor's result fields (money converted to fen, nothing sensitive).
    pub fields: Map<String, Value>,
    /// The backend's reference for this transaction (`serialNo` and the like).
    pub reference: Option<String>,
    /// The backend's transaction time, as sent.
    pub trans_time: Option<String>,
    /// The amount the backend says this moved, in fen, when only the answer knows it (a lottery prize).
    #[serde(default)]
    pub amount_fen: Option<i64>,
}

impl Reply {
    /// An approval made here, nothing sent (code `local`): the default sign-on and settlement.
    pub fn local(message_en: &str) -> Reply {
        Reply {
            verdict: Verdict::Approved,
            code: "local".into(),
            message: message_en.into(),
            message_en: message_en.into(),
            fields: Map::new(),
            reference: None,
            trans_time: None,
            amount_fen: None,
        }
    }
}

/// The result of one recovery attempt.
#[derive(Debug, Clone)]
pub enum Recovered {
    /// The effect is undone (or never happened).
    Reversed { code: String, message: String },
    /// A resend or query found the original approved or declined.
    Settled(Reply),
    /// Not resolved yet; try again later.
    Again(String),
}

/// What sign-on gives the terminal.
#[derive(Debug, Clone)]
pub struct SignOn {
    /// The batch number the backend assigned, if it assigns them.
    pub batch: Option<String>,
    /// Opaque state to keep for later requests (encrypted working keys and the like; no clear keys).
    pub session: Value,
    pub reply: Reply,
}

#[derive(Clone)]
pub struct SettleRequest<'a> {
    pub journal_id: u64,
    pub identity: &'a TerminalIdentity,
    pub trace: &'a str,
    pub batch: &'a str,
    pub session: &'a Value,
    /// The engine's running totals for the batch (counts and fen).
    pub totals: &'a BTreeMap<String, i64>,
    /// The batch's journal lines (public view), read only when a vendor wants them uploaded, so a
    /// balanced settlement costs the same however many records the batch holds.
    pub lines: &'a (dyn Fn() -> Result<Vec<Value>, String> + Send + Sync),
    pub public: &'a Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Settled {
    pub balanced: bool,
    /// True when the lines were uploaded because the totals did not balance.
    pub uploaded: bool,
    pub reply: Reply,
}

impl Stage {
    /// The stage in words, for error texts the POS app, the journal and the log show.
    pub fn words(self) -> &'static str {
        match self {
            Stage::NotSent => "not sent",
            Stage::SignOnFirst => "sign-on needed first",
            Stage::Rejected => "rejected",
            Stage::Unknown => "outcome unknown",
        }
    }
}

/// Where a backend failure happened, which decides whether recovery is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Nothing left the host (bad input, no connection, TLS refused): nothing is owed.
    NotSent,
    /// The backend refused it, unapplied, because the terminal must sign on again first (loyalty
    /// `77`: outside the host's current batch). The engine signs on once and resends it with a fresh
    /// trace number in the new batch, inside the same POS request.
    SignOnFirst,
    /// The backend answered that it did not take the request (HTTP 4xx, bad signature): nothing is owed.
    Rejected,
    /// It may or may not have happened (timeout, reset, 5xx, garbage): recovery is owed.
    Unknown,
}

#[derive(Debug, Clone, Error)]
#[error("{backend} backend, {}: {detail}", stage.words())]
pub struct BackendError {
    pub backend: &'static str,
    pub stage: Stage,
    pub detail: String,
}

impl BackendError {
    pub fn new(backend: &'static str, stage: Stage, detail: impl Into<String>) -> Self {
        BackendError { backend, stage, detail: detail.into() }
    }

    /// The stage an HTTPS failure means: nothing left the host, or the outcome is unknown.
    pub fn from_net(backend: &'static str, e: crate::net::client::NetError) -> Self {
        use crate::net::client::NetError;
        match e {
            NetError::NotSent(d) | NetError::Setup(d) => Self::new(backend, Stage::NotSent, d),
            NetError::Unknown(d) => Self::new(backend, Stage::Unknown, d),
        }
    }
}

/// The POS request was wrong before anything was sent.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PrepareError {
    #[error("missing field `{0}`")]
    Missing(String),
    #[error("field `{field}`: {why}")]
    Invalid { field: String, why: String },
    #[error("field `{0}` is set by the daemon and may not be sent")]
    DaemonOwned(String),
}

impl PrepareError {
    pub fn invalid(field: &str, why: impl Into<String>) -> Self {
        PrepareError::Invalid { field: field.to_string(), why: why.into() }
    }
}

/// One earlier record of the same profile, for backends with local risk rules.
#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub id: u64,
    pub operation: String,
    /// The POS status word: approved, declined, reversed, pending, failed.
    pub status: &'static str,
    pub code: Option<String>,
    pub amount_fen: i64,
    /// Unix milliseconds of creation.
    pub created_at_ms: i64,
    pub public: Map<String, Value>,
    pub result: Map<String, Value>,
}

/// A swiped card, held by the daemon and handed to `prepare` when the POS sends `"scan": "<id>"`.
/// Tracks are without sentinels. `Debug` shows the PAN masked and no track data.
#[derive(Clone, PartialEq, Eq)]
pub struct CardData {
    pub pan: String,
    pub track1: Option<String>,
    pub track2: Option<String>,
    pub track3: Option<String>,
}

impl std::fmt::Debug for CardData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardData").field("pan", &mask_card(&self.pan)).field("tracks", &"<redacted>").finish()
    }
}

/// What the engine knows that `prepare` may use.
#[derive(Debug, Clone, Copy)]
pub struct PrepareContext<'a> {
    /// The engine clock's now, Unix milliseconds.
    pub now_ms: i64,
    /// This profile's records of the last 48 hours, oldest first (empty unless `wants_history`).
    pub recent: &'a [HistoryItem],
    /// The swiped card the POS referenced with `"scan": "<id>"`, if any.
    pub card: Option<&'a CardData>,
}

/// One journal record as a report sees it: what the POS was told, what was asked, what came back.
/// Deserializes from the API's record view (`GET /v1/journal`), whose `request` is `public` here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportRecord {
    pub id: u64,
    pub operation: String,
    /// The POS status word: approved, declined, reversed, pending, failed.
    pub status: String,
    /// The amount the record moved, in fen (for a lottery redeem: the prize, once known).
    pub amount_fen: i64,
    /// When the engine created it (RFC 3339, UTC).
    pub created_at: String,
    pub trace: String,
    pub batch: String,
    /// The vendor's response code, once answered.
    pub code: Option<String>,
    /// The vendor's reference for it (`serialNo`, a ticket number), once answered.
    pub reference: Option<String>,
    /// The POS request as journaled (cards and bar codes masked).
    #[serde(rename = "request")]
    pub public: Map<String, Value>,
    /// The answer's fields as journaled.
    pub result: Map<String, Value>,
}

/// A report over one day's records (for `OpClass::Report` operations).
#[derive(Debug, Clone)]
pub struct ReportRequest<'a> {
    pub journal_id: u64,
    pub operation: &'a str,
    pub identity: &'a TerminalIdentity,
    pub trace: &'a str,
    pub created_at: &'a str,
    /// The day reported on: the backend's business day.
    pub date: chrono::NaiveDate,
    /// The profile's records created from the local day before `date` to the local day after it, oldest
    /// first. The backend keeps those of its own business day.
    pub records: &'a [ReportRecord],
    /// The POS body (minus `date`).
    pub public: &'a Map<String, Value>,
}

/// An operation the engine runs by itself every day (for example the 01:00 reconciliation).
#[derive(Debug, Clone, Copy)]
pub struct DailyJob {
    /// Local time of day.
    pub at: chrono::NaiveTime,
    /// An `OpClass::Report` operation, run for the previous local day.
    pub operation: &'static str,
}

/// A vendor backend. Implementations hold their profile's wire settings and an HTTPS client.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The profile `backend =` value.
    fn kind(&self) -> &'static str;
    /// Every operation this backend offers.
    fn operations(&self) -> &'static [OpSpec];
    /// Validate the POS body and split it into what may be journaled, vaulted or only sent.
    fn prepare(&self, operation: &str, body: &Map<String, Value>, original: Option<&OriginalRef>, ctx: &PrepareContext<'_>) -> Result<Prepared, PrepareError>;
    /// Sign the terminal on. The default, for vendors without a sign-on, is local: nothing is sent, the
    /// engine opens a fresh batch of its own, and the reply is approved with code `local`.
    async fn sign_on(&self, _identity: &TerminalIdentity, _journal_id: u64, _trace: &str) -> Result<SignOn, BackendError> {
        Ok(SignOn { batch: None, session: Value::Null, reply: Reply::local("signed on locally: this backend has no sign-on") })
    }
    /// Send one operation. `Ok` means a definite answer.
    async fn execute(&self, tx: TxRequest<'_>) -> Result<Reply, BackendError>;
    /// One recovery attempt for an operation whose outcome was unknown.
    async fn recover(&self, tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError>;
    /// Close the batch. The default, for vendors without a settlement, is a local close: nothing is sent,
    /// the batch is balanced by definition (the engine's totals are the only ones).
    async fn settle(&self, _req: SettleRequest<'_>) -> Result<Settled, BackendError> {
        Ok(Settled { balanced: true, uploaded: false, reply: Reply::local("batch closed locally: this backend has no settlement") })
    }
    /// Whether `prepare` needs `PrepareContext::recent` (local risk rules).
    fn wants_history(&self) -> bool {
        false
    }
    /// Run an `OpClass::Report` operation.
    async fn report(&self, req: ReportRequest<'_>) -> Result<Reply, BackendError> {
        Err(BackendError::new(self.kind(), Stage::NotSent, format!("{} has no reports", req.operation)))
    }
    /// A report the engine should run by itself every day.
    fn daily_job(&self) -> Option<DailyJob> {
        None
    }
    /// The paths this backend serves on the daemon's callback listener (none by default).
    fn callbacks(&self) -> &'static [callback::CallbackSpec] {
        &[]
    }
    /// Verify a callback (its signature per the document, its fields per the table) and say what it means.
    fn verify_callback(&self, req: &callback::CallbackRequest<'_>) -> Result<callback::Notification, callback::CallbackRefusal> {
        Err(callback::CallbackRefusal::NoSuchPath(req.path.to_string()))
    }
    /// The answer the document demands for a callback at `spec`: accepted (`Ok`, sent only once the
    /// notification is journaled) or refused.
    fn callback_answer(&self, _spec: &callback::CallbackSpec, outcome: Result<(), &callback::CallbackRefusal>) -> callback::CallbackAnswer {
        let (status, body) = match outcome {
            Ok(()) => (200, b"ok".to_vec()),
            Err(e) => (400, e.to_string().into_bytes()),
        };
        callback::CallbackAnswer { status, content_type: "text/plain; charset=utf-8", body }
    }
    /// Whether an approved `operation` leaves its order awaiting a result that arrives later, by callback
    /// or by [`Backend::poll`] (a consigned card: accepted now, its result later).
    fn awaits_result(&self, _operation: &str, _reply: &Reply) -> bool {
        false
    }
    /// Ask the vendor what became of an order awaiting its result. `Ok(None)`: the document offers no
    /// such query (the order stays awaiting and says so).
    async fn poll(&self, _order: TxRequest<'_>) -> Result<Option<callback::Polled>, BackendError> {
        Ok(None)
    }
    /// Take a slot for a financial request before it is journaled, waiting at most `wait`.
    /// `Ok(None)`: this backend has no slots. `Err` with `Stage::NotSent`: every slot stayed busy.
    async fn lease(&self, _operation: &str, _public: &Map<String, Value>, _wait: std::time::Duration) -> Result<Option<Lease>, BackendError> {
        Ok(None)
    }
    /// Take one named slot (at start-up, for the recovery of a record journaled on it). `Ok(None)`:
    /// this backend has no slots, or no slot of that name.
    async fn lease_slot(&self, _slot: &str) -> Result<Option<Lease>, BackendError> {
        Ok(None)
    }
    /// Whether `operation` is a long job (`engine::jobs`): planned with [`Backend::job_plan`], sent with
    /// [`Backend::job_send`].
    fn is_job(&self, _operation: &str) -> bool {
        false
    }
    /// Plan a job; nothing is sent.
    fn job_plan(&self, req: job::JobPlanRequest<'_>) -> Result<job::JobPlan, BackendError> {
        Err(BackendError::new(self.kind(), Stage::NotSent, format!("{} is not a job", req.operation)))
    }
    /// Send one step or chunk of a job. `Ok`: a definite answer.
    async fn job_send(&self, req: job::JobSend<'_>) -> Result<job::JobOutcome, BackendError> {
        Err(BackendError::new(self.kind(), Stage::NotSent, format!("{} is not a job", req.operation)))
    }
    /// The answer field an approved `operation` fills the profile's catalog with (wallet `products`).
    fn catalog_field(&self, _operation: &str) -> Option<&'static str> {
        None
    }
}

impl dyn Backend {
    pub fn spec(&self, operation: &str) -> Option<OpSpec> {
        self.operations().iter().find(|s| s.name == operation).copied()
    }
}

/// Build the backend a profile names, through [`registry::KINDS`].
pub fn build(profile: &Profile, http: HttpsClient) -> Result<Arc<dyn Backend>, crate::config::ConfigError> {
    (registry::check(profile)?.build)(profile, http)
}

/// Mask a card number as first 6 + last 4; shorter numbers keep only the last 4.
pub fn mask_card(pan: &str) -> String {
    let n = pan.chars().count();
    if n >= 13 {
        let head: String = pan.chars().take(6).collect();
        let tail: String = pan.chars().skip(n - 4).collect();
        format!("{head}{}{tail}", "*".repeat(n - 10))
    } else if n > 4 {
        let tail: String = pan.chars().skip(n - 4).collect();
        format!("{}{tail}", "*".repeat(n - 4))
    } else {
        "*".repeat(n)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks_first_six_last_four() {
        assert_eq!(super::mask_card("6222021234567890123"), "622202*********0123");
        assert_eq!(super::mask_card("12345678"), "****5678");
    }
}
