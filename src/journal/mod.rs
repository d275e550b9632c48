//! The journal: a narrow store trait the engine writes through, and its sled implementation.
//!
//! Durability is the point of this module. sled's `flush()` only issues `sync_file_range` (sled
//! issue #1452), so every commit here is followed by a real `fdatasync` of the store's log file,
//! done as group commit: one flush + sync covers every writer waiting at that moment.
mod sled_store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub use sled_store::SledJournal;

use crate::engine::types::{JournalQuery, Record};

#[derive(Debug, Error, Clone)]
pub enum JournalError {
    #[error("journal store: {0}")]
    Store(String),
    #[error("journal sync (fsync) failed: {0}")]
    Sync(String),
    #[error("journal record {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// A terminal's durable counters and session.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ProfileState {
    /// The current batch number, once signed on.
    pub batch: Option<String>,
    /// False once the batch is settled; the next operation signs on again.
    pub batch_open: bool,
    /// The last trace number handed out (0 before the first).
    pub last_trace: u32,
    /// The engine's own batch counter, for backends that do not assign batches.
    pub last_batch: u32,
    /// What the backend returned at sign-on (no clear keys).
    pub session: Value,
    /// Earlier batches that hold approved records the host refused to settle when a new batch was
    /// opened: shown in status until `posgate settle PROFILE --batch N` settles them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsettled: Vec<String>,
}

/// Next trace number: 000001..999999, wrapping to 000001.
pub fn next_trace(last: u32) -> u32 {
    if last >= 999_999 {
        1
    } else {
        last + 1
    }
}

/// A record about to be journaled for the first time.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub record: Record,
    /// Allocate a trace number for it from the profile's counter.
    pub allocate_trace: bool,
}

/// What `begin` found.
#[derive(Debug, Clone)]
pub enum Begun {
    Created(Record),
    /// The idempotency key was already used; here is the first record.
    Existing(Record),
}

/// A set of changes made atomically together.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Records to store (indexes follow their status and recovery state).
    pub records: Vec<Record>,
    /// (profile, batch, key, delta) additions to batch totals.
    pub totals: Vec<(String, String, String, i64)>,
    pub profile_states: Vec<(String, ProfileState)>,
}

/// The narrow interface the engine uses; sled stays behind it.
#[async_trait::async_trait]
pub trait JournalStore: Send + Sync + 'static {
    fn profile_state(&self, profile: &str) -> Result<ProfileState, JournalError>;
    /// Store a new record (with its trace number and batch from the profile state when asked),
    /// its idempotency key and indexes, in one transaction. Not yet durable: call `sync`.
    fn begin(&self, new: NewRecord) -> Result<Begun, JournalError>;
    /// Apply a change atomically. Not yet durable: call `sync`.
    fn commit(&self, change: Change) -> Result<(), JournalError>;
    /// Make everything written so far durable (group commit: flush + fdatasync).
    async fn sync(&self) -> Result<(), JournalError>;
    fn get(&self, id: u64) -> Result<Option<Record>, JournalError>;
    fn by_idempotency_key(&self, profile: &str, key: &str) -> Result<Option<Record>, JournalError>;
    fn totals(&self, profile: &str, batch: &str) -> Result<BTreeMap<String, i64>, JournalError>;
    /// Records of one batch, oldest first.
    fn batch_records(&self, profile: &str, batch: &str) -> Result<Vec<Record>, JournalError>;
    /// Records left in `pending` state (the daemon died before their outcome).
    fn pending(&self) -> Result<Vec<Record>, JournalError>;
    /// Records that owe recovery, parked or not.
    fn recovering(&self) -> Result<Vec<Record>, JournalError>;
    fn list(&self, q: &JournalQuery) -> Result<Vec<Record>, JournalError>;
    /// Completed fsyncs since open (for status and tests).
    fn syncs(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::Status;

    fn rec(profile: &str, batch: &str, key: Option<&str>) -> Record {
        let mut r = Record::new(profile, "consume", "financial", batch, "2026-11-23T00:00:00.000Z");
        r.amount_fen = 100;
        r.totals = vec![("pointDebitAmount".into(), 100)];
        r.idempotency_key = key.map(str::to_string);
        r
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn trace_numbers_wrap_from_999999_to_000001() {
        assert_eq!(next_trace(0), 1);
        assert_eq!(next_trace(41), 42);
        assert_eq!(next_trace(999_999), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_totals_and_traces_survive_reopening() {
        let d = dir("reopen");
        {
            let j = SledJournal::open(&d).unwrap();
            let mut ids = Vec::new();
            for i in 0..3 {
                let key = format!("k{i}");
                let Begun::Created(mut r) = j.begin(NewRecord { record: rec("p", "000001", Some(&key)), allocate_trace: true }).unwrap() else { panic!("new key seen") };
                assert_eq!(r.trace, format!("{:06}", i + 1));
                r.status = Status::Approved;
                let change = Change { totals: vec![("p".into(), "000001".into(), "pointDebitAmount".into(), 100)], records: vec![r.clone()], ..Default::default() };
                j.commit(change).unwrap();
                ids.push(r.id);
            }
            j.sync().await.unwrap();
            assert!(j.syncs() >= 1);
            let Begun::Existing(first) = j.begin(NewRecord { record: rec("p", "000001", Some("k0")), allocate_trace: true }).unwrap() else { panic!("key reused") };
            assert_eq!(first.id, ids[0]);
        }
        let j = SledJournal::open(&d).unwrap();
        assert_eq!(j.totals("p", "000001").unwrap().get("pointDebitAmount"), Some(&300));
        assert_eq!(j.profile_state("p").unwrap().last_trace, 3);
        assert!(j.pending().unwrap().is_empty());
        assert_eq!(j.batch_records("p", "000001").unwrap().len(), 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_syncs() {
        let d = dir("group");
        let j = SledJournal::open(&d).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                j.begin(NewRecord { record: rec("p", "000001", None), allocate_trace: true }).unwrap();
                j.sync().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 64 writers, and every one waited for a sync covering its record, in fewer syncs than writers.
        assert!(j.syncs() < 64, "syncs {}", j.syncs());
        assert_eq!(j.pending().unwrap().len(), 64);
        let traces: std::collections::HashSet<String> = j.pending().unwrap().into_iter().map(|r| r.trace).collect();
        assert_eq!(traces.len(), 64, "trace numbers must be unique");
        let _ = std::fs::remove_dir_all(&d);
    }
}
