//! The journal: a narrow store trait the engine writes through, and its sled implementation.
//!
//! Durability is the point of this module. A change is appended to the journal's own log and made
//! durable by one `fdatasync` of it, shared by every writer waiting at that moment (`group.rs`); sled
//! holds the indexes and state unsynced and is rebuilt from the log's tail after a crash.
pub mod archive;
pub mod codec;
mod group;
mod guard;
pub mod log;
pub mod mark;
mod retire;
pub mod seal;
mod sled_cache;
pub(crate) mod sled_store;
mod space;
pub mod verify;
mod write;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub use codec::{decode_record, encode_record, CodecError};
pub use retire::SettledBatch;
pub use sled_store::{SledJournal, EXIT_STORE_BROKEN, FORMAT_VERSION};
pub use space::JournalHealth;

use crate::model::{JournalQuery, Record};

#[derive(Debug, Error, Clone)]
pub enum JournalError {
    /// The data key that seals vault fields (missing, wrong size, or a field that does not open).
    #[error("{0}")]
    Seal(String),
    #[error("journal store: {0}")]
    Store(String),
    /// The journal cannot take new records now (low disk space); it takes them again by itself.
    #[error("{0}")]
    Unavailable(String),
    #[error("journal sync (fsync) failed: {0}")]
    Sync(String),
    #[error("journal record {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("journal high-water mark: {0}")]
    Mark(String),
    #[error("the journal's high-water mark {0} is corrupt ({1}); posgate cannot tell whether the journal lost records, so it does not start. Restore journal.hwm together with journal/ from the same backup, or check the journal with `posgate journal verify`")]
    MarkCorrupt(String, String),
    /// The journal holds less than its high-water mark says was made durable.
    #[error("{0}")]
    Behind(String),
    #[error("batch total {key:?} of profile {profile:?} batch {batch:?} would overflow: {current} + {delta}")]
    Overflow { profile: String, batch: String, key: String, current: i64, delta: i64 },
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
    /// How many times this state was written; kept by the journal (a caller's value is ignored), so
    /// the high-water mark can tell an older state from a newer one whatever the counters wrapped to.
    #[serde(default)]
    pub seq: u64,
    /// Idempotency keys this profile has used; kept by the journal.
    #[serde(default)]
    pub idem_keys: u64,
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
    /// its idempotency key and indexes, as one change (one log entry). Not yet durable: call `sync`.
    fn begin(&self, new: NewRecord) -> Result<Begun, JournalError>;
    /// Apply a change as one log entry (whole after a crash: replayed). Not yet durable: call `sync`.
    fn commit(&self, change: Change) -> Result<(), JournalError>;
    /// Make everything written so far durable (group commit: flush + fdatasync).
    async fn sync(&self) -> Result<(), JournalError>;
    /// [`JournalStore::sync`] for a caller already off the async runtime (a blocking-pool thread):
    /// it may lead the group commit itself, with no hand-off to another thread.
    fn sync_blocking(&self) -> Result<(), JournalError>;
    fn get(&self, id: u64) -> Result<Option<Record>, JournalError>;
    fn by_idempotency_key(&self, profile: &str, key: &str) -> Result<Option<Record>, JournalError>;
    /// The records of `profile` that carry the vendor's `reference`, oldest first.
    fn by_reference(&self, profile: &str, reference: &str) -> Result<Vec<Record>, JournalError>;
    fn totals(&self, profile: &str, batch: &str) -> Result<BTreeMap<String, i64>, JournalError>;
    /// Records of one batch, oldest first.
    fn batch_records(&self, profile: &str, batch: &str) -> Result<Vec<Record>, JournalError>;
    /// Records left in `pending` state (the daemon died before their outcome).
    fn pending(&self) -> Result<Vec<Record>, JournalError>;
    /// Records that owe recovery, parked or not.
    fn recovering(&self) -> Result<Vec<Record>, JournalError>;
    fn list(&self, q: &JournalQuery) -> Result<Vec<Record>, JournalError>;
    /// Retention: the settled batches whose settlement is older than `cutoff` (RFC 3339) and that may
    /// leave the hot journal, at most about `max_records` records (see `retire.rs`).
    fn plan_retention(&self, cutoff: &str, max_records: usize) -> Result<Vec<SettledBatch>, JournalError>;
    /// Retention: remove planned batches, already written to their day files, as one change (a batch
    /// changed since it was planned stays). Not yet durable: call `sync`. Returns the records removed.
    fn archive_batches(&self, batches: &[SettledBatch]) -> Result<usize, JournalError>;
    /// Records with an id above `after` created from day `from` to `to` (`YYYY-MM-DD`), oldest first.
    fn records_after(&self, after: u64, from: &str, to: &str, limit: usize) -> Result<Vec<Record>, JournalError>;
    /// Completed fsyncs since open (for status and tests).
    fn syncs(&self) -> u64;
    /// Whether the journal can write now, for status.
    fn health(&self) -> JournalHealth {
        JournalHealth::ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    fn rec(profile: &str, batch: &str, key: Option<&str>) -> Record {
        let mut r = Record::new(profile, "consume", crate::model::Class::Financial, batch, "2026-11-23T00:00:00.000Z");
        r.amount_fen = 100;
        r.totals = vec![("pointDebitAmount".into(), 100)];
        r.idempotency_key = key.map(str::to_string);
        r
    }

    /// `<scratch>/journal`, so the mark (`<scratch>/journal.hwm`) goes away with `cleanup`.
    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("journal")
    }

    fn cleanup(d: &std::path::Path) {
        let _ = std::fs::remove_dir_all(d.parent().unwrap_or(d));
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// `n` approved consumes with keys `{tag}0..`, synced.
    async fn consumes(j: &SledJournal, tag: &str, n: usize) {
        for i in 0..n {
            let key = format!("{tag}{i}");
            let Begun::Created(mut r) = j.begin(NewRecord { record: rec("p", "000001", Some(&key)), allocate_trace: true }).unwrap() else {
                panic!("key reused")
            };
            r.status = Status::Approved;
            let change = Change { totals: vec![("p".into(), "000001".into(), "pointDebitAmount".into(), 100)], records: vec![r], ..Default::default() };
            j.commit(change).unwrap();
            j.sync().await.unwrap();
        }
    }

    /// A journal stamped with a newer format than this build reads is refused, naming both versions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_of_a_newer_format_is_refused() {
        let d = dir("format");
        drop(SledJournal::open(&d).unwrap());
        {
            let db = sled::open(&d).unwrap();
            let meta = db.open_tree("meta").unwrap();
            assert_eq!(meta.get(b"format").unwrap().as_deref(), Some(&FORMAT_VERSION.to_be_bytes()[..]), "stamped at first open");
            meta.insert(b"format", &(FORMAT_VERSION + 1).to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let e = SledJournal::open(&d).err().expect("refused").to_string();
        assert!(e.contains(&format!("format {}", FORMAT_VERSION + 1)) && e.contains("newer than this build"), "{e}");
        cleanup(&d);
    }

    /// The index by vendor reference finds exactly the records carrying it, and `list` uses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_are_found_by_the_vendors_reference() {
        let d = dir("byref");
        let j = SledJournal::open(&d).unwrap();
        let mut ids = Vec::new();
        for (profile, reference) in [("p", Some("ud001")), ("p", Some("ud0012")), ("q", Some("ud001")), ("p", None), ("p", Some("ud001"))] {
            let Begun::Created(mut r) = j.begin(NewRecord { record: rec(profile, "000001", None), allocate_trace: true }).unwrap() else { panic!() };
            r.status = Status::Approved;
            r.reference = reference.map(str::to_string);
            ids.push(r.id);
            j.commit(Change { records: vec![r], ..Default::default() }).unwrap();
        }
        j.sync().await.unwrap();
        let found: Vec<u64> = j.by_reference("p", "ud001").unwrap().iter().map(|r| r.id).collect();
        assert_eq!(found, vec![ids[0], ids[4]], "exact reference, this profile only");
        assert!(j.by_reference("p", "ud00").unwrap().is_empty(), "no prefix matches");
        let q = JournalQuery { reference: Some("ud001".into()), ..Default::default() };
        let listed: Vec<u64> = j.list(&q).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(listed, vec![ids[4], ids[2], ids[0]], "every profile, newest first");
        drop(j);
        cleanup(&d);
    }

    /// The review's case: the journal rolled back to an earlier state (here a copy taken after 2 of
    /// 5 consumes) used to open with fewer records and an older trace counter, and hand trace 000003
    /// out again. Now it is refused, naming the numbers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_behind_its_mark_is_refused() {
        let d = dir("behind");
        let old = d.with_file_name("old");
        {
            let j = SledJournal::open(&d).unwrap();
            consumes(&j, "a", 2).await;
            copy_dir(&d, &old);
            consumes(&j, "b", 3).await;
        }
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::rename(&old, &d).unwrap();
        let e = SledJournal::open(&d).err().expect("a journal behind its mark must not open");
        let msg = e.to_string();
        assert!(matches!(e, JournalError::Behind(_)), "{msg}");
        assert!(msg.contains("high-water mark") && msg.contains("journal.hwm"), "{msg}");
        assert!(msg.contains("trace 000002 < 000005"), "{msg}");
        assert!(msg.contains("2 idempotency keys < 5"), "{msg}");
        assert!(msg.contains("posgate journal verify"), "{msg}");
        cleanup(&d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_journal_with_a_mark_is_refused_and_a_new_one_starts() {
        let d = dir("missing");
        {
            let j = SledJournal::open(&d).unwrap();
            consumes(&j, "a", 1).await;
        }
        std::fs::remove_dir_all(&d).unwrap();
        let msg = SledJournal::open(&d).err().expect("missing journal").to_string();
        assert!(msg.contains("is missing") && msg.contains("journal.hwm") && msg.contains("trace 000001"), "{msg}");
        assert!(!d.exists(), "the refusal must not create an empty journal");
        // A new data dir (no mark, no journal) starts, and keeps a mark from then on.
        cleanup(&d);
        let j = SledJournal::open(&d).unwrap();
        assert!(mark::mark_path(&d).exists());
        drop(j);
        cleanup(&d);
    }

    /// The mark follows the group commits: after a sync it holds exactly the journal's counters.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_mark_follows_each_group_commit() {
        let d = dir("follows");
        let j = SledJournal::open(&d).unwrap();
        consumes(&j, "a", 3).await;
        // The mark is written by its own thread soon after its group's writers are released (at most
        // one write per `MARK_INTERVAL`, the newest values): wait for it to catch up.
        let mut m = mark::read(&mark::mark_path(&d)).unwrap().unwrap().mark;
        for _ in 0..200 {
            if m == j.mark_now().unwrap() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            m = mark::read(&mark::mark_path(&d)).unwrap().unwrap().mark;
        }
        assert_eq!(m, j.mark_now().unwrap());
        assert_eq!(m.profiles["p"].last_trace, 3);
        assert_eq!(m.profiles["p"].idem_keys, 3);
        assert!(m.last_id >= 3);
        drop(j);
        cleanup(&d);
    }

    /// Batch totals used to be added with `+=`: a debug build panicked, a release build wrapped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_total_overflow_is_an_error_not_a_wrap() {
        let d = dir("overflow");
        let j = SledJournal::open(&d).unwrap();
        let t = |d: i64| Change { totals: vec![("p".into(), "000001".into(), "pointDebitAmount".into(), d)], ..Default::default() };
        j.commit(t(i64::MAX - 1)).unwrap();
        let e = j.commit(t(2)).unwrap_err();
        assert!(matches!(e, JournalError::Overflow { .. }), "{e}");
        assert!(e.to_string().contains("would overflow"), "{e}");
        // Nothing of the failed change was applied.
        assert_eq!(j.totals("p", "000001").unwrap().get("pointDebitAmount"), Some(&(i64::MAX - 1)));
        j.commit(t(-5)).unwrap();
        assert_eq!(j.totals("p", "000001").unwrap().get("pointDebitAmount"), Some(&(i64::MAX - 6)));
        drop(j);
        cleanup(&d);
    }

    /// A copy of the folder taken while the journal runs is what a SIGKILL leaves: sled holds whatever
    /// it wrote on its own, the log every synced change. The copy opens with every change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_killed_between_checkpoints_is_replayed_from_its_log() {
        let d = dir("replay");
        let j = SledJournal::open(&d).unwrap();
        consumes(&j, "a", 50).await;
        let seq = j.change_seq();
        assert_eq!(seq, 100, "one change per durable point: begin and commit of 50 consumes");
        let changes = j.changes_since(98).unwrap();
        assert_eq!(changes.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![99, 100]);
        let copy = d.with_file_name("copy");
        copy_dir(&d, &copy);
        std::fs::copy(mark::mark_path(&d), mark::mark_path(&copy)).unwrap();
        drop(j);
        let j = SledJournal::open(&copy).unwrap();
        assert_eq!(j.profile_state("p").unwrap().last_trace, 50);
        assert_eq!(j.totals("p", "000001").unwrap().get("pointDebitAmount"), Some(&5000));
        assert_eq!(j.batch_records("p", "000001").unwrap().len(), 50);
        assert!(j.pending().unwrap().is_empty());
        assert_eq!(j.by_idempotency_key("p", "a49").unwrap().map(|r| r.trace), Some("000050".into()));
        assert_eq!(j.change_seq(), 100);
        consumes(&j, "b", 1).await;
        assert_eq!(j.change_seq(), 102, "numbering goes on after the replay");
        drop(j);
        cleanup(&d);
        let _ = std::fs::remove_dir_all(copy.parent().unwrap());
    }

    /// Regression: each change was applied to sled in a sled transaction, and sled 0.34 seals and writes
    /// its IO buffer twice per transaction (a `pwrite` and a `sync_file_range` that waits for the disk
    /// each): two device writes per durable point beside the log's one fdatasync. Now a durable point
    /// writes the log and nothing else: sled's own file does not change between checkpoints.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_points_write_nothing_to_sleds_own_file() {
        let d = dir("sledquiet");
        let j = SledJournal::open(&d).unwrap();
        let before = std::fs::read(d.join("db")).unwrap();
        consumes(&j, "a", 20).await;
        assert_eq!(j.change_seq(), 40);
        let after = std::fs::read(d.join("db")).unwrap();
        assert!(before == after, "sled's file changed on the durable path ({} -> {} bytes)", before.len(), after.len());
        drop(j);
        let j = SledJournal::open(&d).unwrap();
        assert_eq!(j.batch_records("p", "000001").unwrap().len(), 20, "the changes are all there after a clean stop");
        drop(j);
        cleanup(&d);
    }

    /// A clean stop checkpoints and empties the log: the next start replays nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_stop_leaves_an_empty_log() {
        let d = dir("clean");
        {
            let j = SledJournal::open(&d).unwrap();
            consumes(&j, "a", 5).await;
        }
        let j = SledJournal::open(&d).unwrap();
        assert_eq!(j.replayed.entries, 0);
        assert!(j.changes_since(0).unwrap().is_empty());
        assert_eq!(j.change_seq(), 10);
        assert_eq!(j.batch_records("p", "000001").unwrap().len(), 5);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "journal folder 0700");
        drop(j);
        cleanup(&d);
    }

    /// A version-1 journal (sled alone, no log) opens, keeps every record and is stamped this build's version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_1_journal_is_migrated_on_open() {
        let d = dir("v1");
        {
            let j = SledJournal::open(&d).unwrap();
            consumes(&j, "a", 3).await;
        }
        {
            let db = sled::open(&d).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert(b"format", &1u32.to_be_bytes()).unwrap();
            meta.remove(b"applied").unwrap();
            meta.remove(b"checkpoint").unwrap();
            db.flush().unwrap();
        }
        std::fs::remove_dir_all(d.join("log")).unwrap();
        let j = SledJournal::open(&d).unwrap();
        assert_eq!(j.batch_records("p", "000001").unwrap().len(), 3);
        assert_eq!(j.profile_state("p").unwrap().last_trace, 3);
        consumes(&j, "b", 1).await;
        assert_eq!(j.changes_since(0).unwrap().len(), 2, "new changes go to the log");
        drop(j);
        let db = sled::open(&d).unwrap();
        assert_eq!(db.open_tree("meta").unwrap().get(b"format").unwrap().as_deref(), Some(&FORMAT_VERSION.to_be_bytes()[..]));
        drop(db);
        cleanup(&d);
    }

    /// A version-2 journal (JSON records) opens, keeps every record, and leaves with every record in
    /// the binary form of `codec.rs` and the stamp of this build.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_2_journal_is_migrated_to_compact_records_on_open() {
        let d = dir("v2");
        {
            let j = SledJournal::open(&d).unwrap();
            consumes(&j, "a", 3).await;
        }
        let json_bytes = {
            let db = sled::open(&d).unwrap();
            let records = db.open_tree("records").unwrap();
            let mut n = 0;
            for kv in records.iter() {
                let (k, v) = kv.unwrap();
                let json = serde_json::to_vec(&decode_record(&v).unwrap()).unwrap();
                n += json.len();
                records.insert(k, json).unwrap();
            }
            db.open_tree("meta").unwrap().insert(b"format", &2u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
            n
        };
        let j = SledJournal::open(&d).unwrap();
        let recs = j.batch_records("p", "000001").unwrap();
        assert_eq!(recs.len(), 3);
        assert!(recs.iter().all(|r| r.status == Status::Approved && r.idempotency_key.is_some()));
        assert_eq!(j.by_idempotency_key("p", "a1").unwrap().map(|r| r.id), Some(recs[1].id));
        consumes(&j, "b", 1).await;
        drop(j);
        let db = sled::open(&d).unwrap();
        assert_eq!(db.open_tree("meta").unwrap().get(b"format").unwrap().as_deref(), Some(&FORMAT_VERSION.to_be_bytes()[..]));
        let stored: Vec<sled::IVec> = db.open_tree("records").unwrap().iter().values().map(|v| v.unwrap()).collect();
        assert_eq!(stored.len(), 4);
        assert!(stored.iter().all(|v| v.first() == Some(&codec::TAG)), "every record rewritten");
        assert!(stored[..3].iter().map(|v| v.len()).sum::<usize>() * 2 < json_bytes, "compact records are less than half the JSON");
        drop(db);
        cleanup(&d);
    }

    /// A version-3 journal (records in the first binary form, batch totals and profile states as JSON) opens as format 4 and
    /// keeps every record, index, idempotency key and total; a record already rewritten before a crash
    /// (half-migrated, stamp still 3) is left as it is and the rest migrate. New in format 4: fails on
    /// the old code, which stamps 4 nowhere and keeps format-3 records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_3_journal_is_migrated_on_open_and_keeps_every_record_index_and_key() {
        let d = dir("v3");
        {
            let j = SledJournal::open(&d).unwrap();
            for i in 0..4 {
                let key = format!("a{i}");
                let mut r = rec("p", "000001", Some(&key));
                r.card = Some("622202*********0008".into());
                r.request = serde_json::json!({"cardNo": "622202*********0008", "registerTraceNo": format!("{i:06}")}).as_object().cloned().unwrap_or_default();
                let Begun::Created(mut r) = j.begin(NewRecord { record: r, allocate_trace: true }).unwrap() else { panic!("key reused") };
                r.status = Status::Approved;
                r.reference = Some(format!("5000000000{i:02}"));
                r.trans_time = Some("20261123120000".into());
                let change = Change { totals: vec![("p".into(), "000001".into(), "pointDebitAmount".into(), 100)], records: vec![r], ..Default::default() };
                j.commit(change).unwrap();
                j.sync().await.unwrap();
            }
        }
        let before: Vec<Record> = {
            let db = sled::open(&d).unwrap();
            let records = db.open_tree("records").unwrap();
            let mut out = Vec::new();
            for (n, kv) in records.iter().enumerate() {
                let (k, v) = kv.unwrap();
                let r = decode_record(&v).unwrap();
                // The first record was rewritten before a crash; the others are still format 3.
                if n > 0 {
                    records.insert(k, codec::encode_record_v3(&r)).unwrap();
                }
                out.push(r);
            }
            let totals = db.open_tree("totals").unwrap();
            for kv in totals.iter() {
                let (k, v) = kv.unwrap();
                totals.insert(k, serde_json::to_vec(&codec::decode_totals(&v).unwrap()).unwrap()).unwrap();
            }
            let profiles = db.open_tree("profiles").unwrap();
            for kv in profiles.iter() {
                let (k, v) = kv.unwrap();
                profiles.insert(k, serde_json::to_vec(&codec::decode_profile(&v).unwrap()).unwrap()).unwrap();
            }
            db.open_tree("meta").unwrap().insert(b"format", &3u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
            out
        };
        let j = SledJournal::open(&d).unwrap();
        let same = |a: &Record, b: &Record| serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap();
        for r in &before {
            assert!(same(&j.get(r.id).unwrap().unwrap(), r), "record {} kept", r.id);
            let key = r.idempotency_key.as_deref().unwrap();
            assert_eq!(j.by_idempotency_key("p", key).unwrap().map(|x| x.id), Some(r.id), "idempotency key {key}");
            let found = j.by_reference("p", r.reference.as_deref().unwrap()).unwrap();
            assert_eq!(found.iter().map(|x| x.id).collect::<Vec<_>>(), vec![r.id], "reference index");
        }
        assert_eq!(j.batch_records("p", "000001").unwrap().len(), 4, "batch index");
        let q = JournalQuery { profile: Some("p".into()), ..Default::default() };
        assert_eq!(j.list(&q).unwrap().len(), 4, "profile index");
        assert_eq!(j.totals("p", "000001").unwrap().get("pointDebitAmount"), Some(&400));
        assert_eq!(j.profile_state("p").unwrap().last_trace, 4);
        assert_eq!(j.profile_state("p").unwrap().idem_keys, 4);
        let Begun::Existing(again) = j.begin(NewRecord { record: rec("p", "000001", Some("a2")), allocate_trace: true }).unwrap() else {
            panic!("a key used before migration must be found after it")
        };
        assert_eq!(again.id, before[2].id);
        drop(j);
        let db = sled::open(&d).unwrap();
        assert_eq!(db.open_tree("meta").unwrap().get(b"format").unwrap().as_deref(), Some(&4u32.to_be_bytes()[..]));
        assert!(db.open_tree("records").unwrap().iter().values().all(|v| v.unwrap().first() == Some(&codec::TAG)), "every record rewritten");
        assert!(db.open_tree("totals").unwrap().iter().values().all(|v| v.unwrap().first() == Some(&codec::TOTALS_TAG)), "every total rewritten");
        assert!(db.open_tree("profiles").unwrap().iter().values().all(|v| v.unwrap().first() == Some(&codec::PROFILE_TAG)), "every profile state rewritten");
        drop(db);
        cleanup(&d);
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
                let Begun::Created(mut r) = j.begin(NewRecord { record: rec("p", "000001", Some(&key)), allocate_trace: true }).unwrap() else {
                    panic!("new key seen")
                };
                assert_eq!(r.trace, format!("{:06}", i + 1));
                r.status = Status::Approved;
                let change =
                    Change { totals: vec![("p".into(), "000001".into(), "pointDebitAmount".into(), 100)], records: vec![r.clone()], ..Default::default() };
                j.commit(change).unwrap();
                ids.push(r.id);
            }
            j.sync().await.unwrap();
            assert!(j.syncs() >= 1);
            let Begun::Existing(first) = j.begin(NewRecord { record: rec("p", "000001", Some("k0")), allocate_trace: true }).unwrap() else {
                panic!("key reused")
            };
            assert_eq!(first.id, ids[0]);
        }
        let j = SledJournal::open(&d).unwrap();
        assert_eq!(j.totals("p", "000001").unwrap().get("pointDebitAmount"), Some(&300));
        assert_eq!(j.profile_state("p").unwrap().last_trace, 3);
        assert!(j.pending().unwrap().is_empty());
        assert_eq!(j.batch_records("p", "000001").unwrap().len(), 3);
        drop(j);
        cleanup(&d);
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
        drop(j);
        cleanup(&d);
    }
}
