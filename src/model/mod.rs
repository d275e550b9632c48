//! The bottom of the crate: the vocabulary every layer shares (records, statuses, events, the clock,
//! who a terminal is), so the journal, engine, devices, config and backends depend on it and not on each other.
pub mod clock;
pub mod event;
pub mod idempotency;
pub mod record;

use serde::{Deserialize, Serialize};

pub use event::Event;
pub use record::{JournalQuery, Record, RecoveryState, Status};

/// Who is speaking: the identity fields every vendor request carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TerminalIdentity {
    pub store: String,
    pub terminal: String,
    pub operator: String,
}

/// What to do when the outcome of a financial request is unknown.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Recovery {
    /// Send the backend's reversal of the original until it answers "reversed".
    Reverse,
    /// Send the very same request again (the backend deduplicates it).
    Resend,
    /// Ask the backend what became of it before doing anything else.
    Query,
    /// Nothing automatic is safe: park it for a person at once.
    Manual,
}

/// What kind of request a journal record is: decides how an unknown outcome is treated (see
/// `engine::outcome`). Journaled as the kebab-case word.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Sign-on (check-in): no money; never recovered.
    SignOn,
    /// A lookup that moves no money: never recovered.
    Inquiry,
    /// Moves money: journaled before send, recovered when its outcome is unknown.
    Financial,
    /// Closes a batch: resent when its outcome is unknown.
    Settle,
    /// A report over the journal (reconciliation): no money.
    Report,
    /// A long job (a wallet delivery): its plan and each step's outcome are journaled in the record,
    /// and it resumes where the journal says (`engine::jobs`), never through recovery.
    Job,
    /// A vendor's notification about an order (a callback, or a poll's answer): journaled once under
    /// `cb:<key>`, its effect applied to the order in the same commit (`engine::callbacks`); refused
    /// ones are journaled `failed` with the refusal. Never recovered.
    Notification,
}

impl Class {
    pub fn word(self) -> &'static str {
        match self {
            Class::SignOn => "sign-on",
            Class::Inquiry => "inquiry",
            Class::Financial => "financial",
            Class::Settle => "settle",
            Class::Report => "report",
            Class::Job => "job",
            Class::Notification => "notification",
        }
    }
}
