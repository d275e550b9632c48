//! The seam for vendors that call the shop back (scenic gate check-ins, consignment results) and for
//! polling when they cannot: what a backend declares, verifies and answers; the engine journals.
//!
//! The engine (`engine::callbacks`) owns the listener's bookkeeping: it hands the backend the bounded
//! request, journals the verified [`Notification`] idempotently under its `key` (the same notification
//! twice is stored once and answered the same way twice), applies its [`Effect`] to the order found by
//! `reference` through the journal's index, publishes it as an event, and only then sends the backend's
//! answer. A backend never touches the journal.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a callback's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackBody {
    Json,
    Form,
}

/// One path a backend serves on the callback listener.
#[derive(Debug, Clone, Copy)]
pub struct CallbackSpec {
    /// The path under the profile's prefix: the listener serves `/callbacks/<profile>/<path>`.
    pub path: &'static str,
    /// What it is, for logs and events (`check-in`, `result`).
    pub name: &'static str,
    pub body: CallbackBody,
}

/// A callback as received: already bounded in size and time by the listener.
#[derive(Debug, Clone, Copy)]
pub struct CallbackRequest<'a> {
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// What a verified notification does to the order it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Progress on an order that stays as it is (scenic: tickets checked, some still unused): the fields
    /// are merged into the order's `result`.
    Progress(Map<String, Value>),
    /// The order's final result arrived (consignment: success or failure, settled amounts): merged into
    /// the order's `result`, with `final` set and the order no longer awaiting a result.
    Final { success: bool, fields: Map<String, Value> },
}

/// A notification the backend verified (its signature per its document, its types per its table).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The same notification delivered again has the same key (the vendor's retries are deduplicated on it).
    pub key: String,
    /// The vendor reference of the order it is about, as the order's journal record carries it in
    /// `reference` (the journal's index finds the order by it).
    pub reference: String,
    /// The notification's defined fields, scrubbed: journaled and published as the event's data.
    pub fields: Map<String, Value>,
    pub effect: Effect,
}

/// Why a callback was refused. The text names what was wrong and never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefusal {
    #[error("malformed callback body: {0}")]
    Malformed(String),
    #[error("callback signature does not verify")]
    BadSign,
    #[error("callback names an order this terminal does not know: {0}")]
    UnknownOrder(String),
    #[error("callback source address {0} is not allowed for this profile")]
    Source(String),
    #[error("no callback is served at {0}")]
    NoSuchPath(String),
}

/// The bytes the vendor's document wants back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// What a poll of an order awaiting its result found.
#[derive(Debug, Clone, PartialEq)]
pub enum Polled {
    /// Still in progress at the vendor: ask again later.
    Pending,
    /// The same as a notification would have said (its `key` deduplicates it against a callback that
    /// arrives too).
    Done(Notification),
}
