//! The vocabulary of long jobs (wallet delivery): a plan the engine journals, then steps and chunks it sends one at a time.
//!
//! The backend plans (pure, nothing sent) and sends one step or chunk per call; the engine journals the
//! plan before anything is sent and each outcome before the next call, so a restart resumes at the first
//! step or chunk without a journaled outcome (`engine::jobs`).
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::TerminalIdentity;

/// What the backend plans from.
#[derive(Debug, Clone, Copy)]
pub struct JobPlanRequest<'a> {
    pub journal_id: u64,
    pub operation: &'a str,
    pub identity: &'a TerminalIdentity,
    /// The job record's trace and batch (for identifiers the plan's steps need).
    pub trace: &'a str,
    pub batch: &'a str,
    /// The POS body.
    pub public: &'a Map<String, Value>,
    /// The profile's records of the job's day (public views, oldest first).
    pub records: &'a [Value],
    /// The profile's cached catalog (downloaded products), if any.
    pub catalog: Option<&'a Value>,
}

/// A job's plan: single steps first (each one request), then the items in chunks of `chunk_size`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobPlan {
    pub steps: Vec<Value>,
    pub items: Vec<Value>,
    pub chunk_size: usize,
    /// What a person must see whatever happens (unmatched parts, refused input).
    pub report: Map<String, Value>,
}

/// One request of a job: a step (`step` set) or a chunk of items.
#[derive(Debug, Clone, Copy)]
pub struct JobSend<'a> {
    pub journal_id: u64,
    pub operation: &'a str,
    pub identity: &'a TerminalIdentity,
    pub trace: &'a str,
    pub batch: &'a str,
    pub step: Option<&'a Value>,
    pub items: &'a [Value],
    /// The sealed fields of the record a step names in `vault_from` (a merge's personal fields).
    pub vault: &'a Map<String, Value>,
}

/// An item the backend did not take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobFailure {
    pub item: Value,
    pub reason: String,
    /// Worth sending again (the host was busy).
    pub transient: bool,
}

/// The definite answer to one job request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobOutcome {
    pub failed: Vec<JobFailure>,
    /// Items a step produced, to be sent in the chunks (a merge's new order).
    pub added: Vec<Value>,
    pub note: Map<String, Value>,
}
