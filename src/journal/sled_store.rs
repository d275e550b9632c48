//! The sled implementation of `JournalStore`, with group-commit flush + fdatasync.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::watch;

use super::mark::{self, Mark, ProfileMark};
use super::{next_trace, Begun, Change, JournalError, JournalStore, NewRecord, ProfileState};
use crate::model::{JournalQuery, Record, Status};

/// sled's page cache. A store PC has little memory to spare and the hot set (open batches, owed
/// recovery, recent records) is small; sled's default is 1 GiB.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

type TxResult<T> = Result<T, ConflictableTransactionError<JournalError>>;

/// The journal's on-disk format version (`meta` tree, key `format`): see ARCHITECTURE.md, Boundaries.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &[u8] = b"format";

fn store_err<E: std::fmt::Display>(e: E) -> JournalError {
    JournalError::Store(e.to_string())
}

fn tx_err(e: TransactionError<JournalError>) -> JournalError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => store_err(e),
    }
}

fn abort(e: JournalError) -> ConflictableTransactionError<JournalError> {
    ConflictableTransactionError::Abort(e)
}

fn encode(rec: &Record) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(rec).map_err(|e| JournalError::Corrupt(rec.id.to_string(), e.to_string()))
}

fn decode(id: &[u8], bytes: &[u8]) -> Result<Record, JournalError> {
    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt(hex::encode(id), e.to_string()))
}

fn batch_key(profile: &str, batch: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(profile.len() + batch.len() + 1);
    k.extend_from_slice(profile.as_bytes());
    k.push(0);
    k.extend_from_slice(batch.as_bytes());
    k
}

fn profile_index_key(profile: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(profile.len() + 9);
    k.extend_from_slice(profile.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn split_batch_key(k: &[u8]) -> (String, String) {
    let mut parts = k.splitn(2, |&b| b == 0);
    let profile = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let batch = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (profile, batch)
}

/// `profile \0 reference \0 id`: the vendor's reference for a record (`serialNo`, `orderId`, a lottery
/// `transacId`), so an answer, a notification or a person naming only the vendor's number finds the record.
fn reference_index_key(profile: &str, reference: &str, id: u64) -> Vec<u8> {
    batch_index_key(profile, reference, id)
}

fn batch_index_key(profile: &str, batch: &str, id: u64) -> Vec<u8> {
    let mut k = batch_key(profile, batch);
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Group commit: writers bump `requested` and wait until `done` reaches their number.
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
    done: watch::Sender<(u64, Option<String>)>,
    count: AtomicU64,
}

struct SyncState {
    requested: u64,
    stop: bool,
}

pub struct SledJournal {
    pub(super) db: sled::Db,
    pub(super) records: sled::Tree,
    pub(super) pending: sled::Tree,
    pub(super) recovery: sled::Tree,
    pub(super) batchidx: sled::Tree,
    /// profile \0 id → (): one profile's records in id (= creation) order.
    pub(super) profidx: sled::Tree,
    pub(super) totals: sled::Tree,
    pub(super) profiles: sled::Tree,
    pub(super) idem: sled::Tree,
    /// Vendor reference → records (see `reference_index_key`).
    pub(super) refidx: sled::Tree,
    syncer: Arc<Syncer>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SledJournal {
    /// Open (or create) the journal in `dir`, check it against its high-water mark, and start its
    /// sync thread. Refuses a journal behind its mark, a missing journal folder whose mark exists and
    /// a corrupt mark: starting on any of them would reuse trace numbers and idempotency keys.
    pub fn open(dir: &Path) -> Result<Arc<SledJournal>, JournalError> {
        let mark_at = mark::mark_path(dir);
        let found = mark::read(&mark_at)?;
        if let Some(w) = found.as_ref().and_then(|f| f.warning.as_ref()) {
            tracing::warn!("journal high-water mark: {w}");
        }
        if let Some(f) = &found {
            if !dir.join("db").exists() {
                return Err(JournalError::Behind(format!(
                    "the journal {} is missing (no {}), but its high-water mark {} says it held records up to id {}{}. posgate does not start a new, empty journal in a used data directory: it would restart trace numbers at 000001 and forget which Idempotency-Keys were already approved. Restore the journal folder (with journal.key) from a backup, then check it with `posgate journal verify --data-dir {}`",
                    dir.display(),
                    dir.join("db").display(),
                    mark_at.display(),
                    f.mark.last_id,
                    describe_profiles(&f.mark),
                    data_dir_of(dir).display()
                )));
            }
        }
        let mut j = Self::open_db(dir)?;
        j.check_format(dir)?;
        let mut now = snapshot(&j.records, &j.profiles)?;
        let markfile = match found {
            Some(f) => {
                let behind = behind(&f.mark, &now);
                if !behind.is_empty() {
                    return Err(JournalError::Behind(format!(
                        "the journal {} is behind its high-water mark {}: {}. Records that were committed and synced are gone (damaged or replaced journal files); starting would hand out trace numbers again and treat already approved Idempotency-Keys as new sales. Stop here: restore the journal folder (with journal.key) from a backup taken at or after the mark, check it with `posgate journal verify --data-dir {}`, and start again. Without such a backup, reconcile the lost transactions with the vendor before anything else",
                        dir.display(),
                        mark_at.display(),
                        behind.join("; "),
                        data_dir_of(dir).display()
                    )));
                }
                let mut m = mark::MarkFile::open(&mark_at, &f)?;
                m.update(&now)?;
                m
            }
            None => {
                if now.last_id > 0 || !now.profiles.is_empty() {
                    // A journal from before the mark existed (or whose mark was removed by hand).
                    tracing::warn!(journal = %dir.display(), mark = %mark_at.display(), last_id = now.last_id, "journal has no high-water mark; adopting it as it is and starting one");
                    j.recount_idempotency_keys()?;
                    j.db.flush().map_err(store_err)?;
                    crate::platform::open_syncable(&dir.join("db")).and_then(|f| f.sync_data()).map_err(|e| JournalError::Sync(e.to_string()))?;
                    now = snapshot(&j.records, &j.profiles)?;
                }
                mark::MarkFile::create(&mark_at, &now)?
            }
        };
        j.start_sync(dir, Some(markfile))?;
        Ok(Arc::new(j))
    }

    /// Refuse a journal written by a newer format than this build reads; stamp an unstamped one (every
    /// journal before the stamp existed is version 1) with this build's version.
    fn check_format(&self, dir: &Path) -> Result<(), JournalError> {
        let meta = self.db.open_tree("meta").map_err(store_err)?;
        match meta.get(FORMAT_KEY).map_err(store_err)? {
            None => {
                meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes()).map_err(store_err)?;
                Ok(())
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| JournalError::Corrupt("meta/format".into(), format!("{} bytes, want 4", v.len())))?;
                if found > FORMAT_VERSION {
                    return Err(JournalError::Store(format!(
                        "the journal {} is format {found}, newer than this build reads ({FORMAT_VERSION}): it was written by a newer posgate. Run that version, or restore the journal from before the upgrade",
                        dir.display()
                    )));
                }
                Ok(())
            }
        }
    }

    /// Open the sled store alone: no mark check and no sync thread (for `journal verify`, which
    /// reads a copy and never syncs).
    pub(super) fn open_db(dir: &Path) -> Result<SledJournal, JournalError> {
        std::fs::create_dir_all(dir).map_err(store_err)?;
        // No background flusher: every commit is flushed and synced by the group-commit thread below.
        let db = sled::Config::new().path(dir).mode(sled::Mode::LowSpace).flush_every_ms(None).cache_capacity(CACHE_BYTES).open().map_err(store_err)?;
        let tree = |n: &str| db.open_tree(n).map_err(store_err);
        Ok(SledJournal {
            records: tree("records")?,
            pending: tree("pending")?,
            recovery: tree("recovery")?,
            batchidx: tree("batchidx")?,
            profidx: tree("profidx")?,
            totals: tree("totals")?,
            profiles: tree("profiles")?,
            idem: tree("idem")?,
            refidx: tree("refidx")?,
            syncer: Arc::new(Syncer {
                state: Mutex::new(SyncState { requested: 0, stop: false }),
                wake: Condvar::new(),
                done: watch::channel((0, None)).0,
                count: AtomicU64::new(0),
            }),
            db,
            thread: Mutex::new(None),
        })
    }

    fn start_sync(&mut self, dir: &Path, mark: Option<mark::MarkFile>) -> Result<(), JournalError> {
        // The log file sled writes; fdatasync on our own handle syncs the same inode.
        let log = crate::platform::open_syncable(&dir.join("db")).map_err(|e| JournalError::Store(format!("{}: {e}", dir.join("db").display())))?;
        // The folder itself, so the log file created at first start is durable too. sled 0.34 keeps
        // one log file in `Mode::LowSpace`, so later commits only need the log's fdatasync.
        crate::platform::sync_dir(dir).map_err(|e| JournalError::Sync(e.to_string()))?;
        let db = self.db.clone();
        let syncer = self.syncer.clone();
        let guard = mark.map(|m| Guard { records: self.records.clone(), profiles: self.profiles.clone(), mark: m });
        let handle = std::thread::Builder::new().name("journal-sync".into()).spawn(move || sync_loop(db, log, syncer, guard)).map_err(store_err)?;
        if let Ok(mut t) = self.thread.lock() {
            *t = Some(handle);
        }
        Ok(())
    }

    /// Set every profile's idempotency-key count from the `idem` tree (adopting a journal that
    /// predates the count).
    fn recount_idempotency_keys(&self) -> Result<(), JournalError> {
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for kv in self.idem.iter() {
            let (k, _) = kv.map_err(store_err)?;
            let profile = k.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            *counts.entry(profile).or_insert(0) += 1;
        }
        for (profile, n) in counts {
            let mut st: ProfileState = match self.profiles.get(&profile).map_err(store_err)? {
                Some(v) => {
                    serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt(format!("profile {}", String::from_utf8_lossy(&profile)), e.to_string()))?
                }
                None => ProfileState::default(),
            };
            if st.idem_keys != n {
                st.idem_keys = n;
                st.seq += 1;
                self.profiles.insert(profile, serde_json::to_vec(&st).map_err(store_err)?).map_err(store_err)?;
            }
        }
        Ok(())
    }

    /// True when any record holds a sealed field (so the data key that sealed it must exist).
    pub fn has_sealed_records(&self) -> Result<bool, JournalError> {
        const NEEDLE: &[u8] = b"\"sealed\":";
        for kv in self.records.iter() {
            let (_, v) = kv.map_err(store_err)?;
            if v.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What the high-water mark would say about this journal now.
    pub fn mark_now(&self) -> Result<Mark, JournalError> {
        snapshot(&self.records, &self.profiles)
    }

    fn read_state(t: &TransactionalTree, profile: &str) -> TxResult<ProfileState> {
        match t.get(profile.as_bytes())? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| abort(JournalError::Corrupt(format!("profile {profile}"), e.to_string()))),
            None => Ok(ProfileState::default()),
        }
    }

    fn collect(&self, iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        for kv in iter {
            let (k, _) = kv.map_err(store_err)?;
            if let Some(v) = self.records.get(&k).map_err(store_err)? {
                out.push(decode(&k, &v)?);
            }
        }
        Ok(out)
    }
}

impl Drop for SledJournal {
    fn drop(&mut self) {
        if let Ok(mut s) = self.syncer.state.lock() {
            s.stop = true;
        }
        self.syncer.wake.notify_all();
        // Join, so the store's file lock is released when the journal is dropped.
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// The sync thread's view of the high-water mark: the trees it reads and the file it writes.
struct Guard {
    records: sled::Tree,
    profiles: sled::Tree,
    mark: mark::MarkFile,
}

/// The latest durable mark values, handed from the sync thread to the mark thread.
#[derive(Default)]
struct MarkSlot {
    state: std::sync::Mutex<MarkSlotState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct MarkSlotState {
    latest: Option<Mark>,
    stop: bool,
    /// A mark update that failed: the next group commit reports it (the disk is failing).
    error: Option<String>,
}

/// The least time between two mark writes. The mark is written by a thread of its own, so its
/// fdatasync never delays a group commit (on this kind of disk a small write + fdatasync costs as
/// much as 4 ms, which serialised with the log's sync cut durable throughput to a third); at most one
/// write per interval, with the newest values. The mark so lags the journal by at most this much, and
/// never runs ahead of it.
const MARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

fn mark_loop(mut file: mark::MarkFile, slot: Arc<MarkSlot>) {
    loop {
        let (next, stop) = {
            let Ok(mut st) = slot.state.lock() else { return };
            while st.latest.is_none() && !st.stop {
                st = match slot.wake.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            (st.latest.take(), st.stop)
        };
        if let Some(m) = next {
            if let Err(e) = file.update(&m) {
                tracing::error!("journal high-water mark: {e}");
                if let Ok(mut st) = slot.state.lock() {
                    st.error = Some(e.to_string());
                }
            }
        }
        if stop {
            return;
        }
        std::thread::sleep(MARK_INTERVAL);
    }
}

fn sync_loop(db: sled::Db, log: File, s: Arc<Syncer>, guard: Option<Guard>) {
    let mut synced = 0u64;
    let (trees, marker) = match guard {
        Some(g) => {
            let slot = Arc::new(MarkSlot::default());
            let for_thread = slot.clone();
            let handle = std::thread::Builder::new().name("journal-mark".into()).spawn(move || mark_loop(g.mark, for_thread)).ok();
            (Some((g.records, g.profiles)), handle.map(|h| (slot, h)))
        }
        None => (None, None),
    };
    // The next sync target, or `None` once stopped with nothing left to sync.
    let next_target = |synced: u64| -> Option<u64> {
        let mut st = s.state.lock().ok()?;
        while st.requested == synced && !st.stop {
            st = s.wake.wait(st).ok()?;
        }
        if st.stop && st.requested == synced {
            return None;
        }
        Some(st.requested)
    };
    while let Some(target) = next_target(synced) {
        // Read the mark's values before the flush: everything read here was committed, so the flush
        // below makes it durable, and the mark written after it never runs ahead of the journal.
        let snap = trees.as_ref().map(|(records, profiles)| snapshot(records, profiles));
        let mut result = crate::metrics::time_group_commit(target - synced, || {
            db.flush().map_err(|e| format!("sled flush: {e}")).and_then(|_| log.sync_data().map_err(|e| format!("fdatasync of the journal log: {e}")))
        });
        let mark_err = marker.as_ref().and_then(|(slot, _)| slot.state.lock().ok().and_then(|mut st| st.error.take()));
        if let (Ok(()), Some(e)) = (&result, mark_err) {
            result = Err(format!("the journal's high-water mark could not be written: {e}"));
        }
        let durable = result.is_ok();
        synced = target;
        s.count.fetch_add(1, Ordering::Relaxed);
        let _ = s.done.send((target, result.err()));
        // The writers are released as soon as their records are durable; the mark thread writes the
        // newest durable values on its own time.
        if let (true, Some((slot, _)), Some(snap)) = (durable, marker.as_ref(), snap) {
            match snap {
                Ok(m) => {
                    if let Ok(mut st) = slot.state.lock() {
                        st.latest = Some(m);
                    }
                    slot.wake.notify_one();
                }
                Err(e) => tracing::error!("journal high-water mark: {e}"),
            }
        }
    }
    // Stopping: the mark thread writes what it still holds, then ends.
    if let Some((slot, handle)) = marker {
        if let Ok(mut st) = slot.state.lock() {
            st.stop = true;
        }
        slot.wake.notify_one();
        let _ = handle.join();
    }
}

/// The high-water mark's values as the trees hold them now.
fn snapshot(records: &sled::Tree, profiles: &sled::Tree) -> Result<Mark, JournalError> {
    let last_id = match records.last().map_err(store_err)? {
        Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().map_err(|_| JournalError::Corrupt(hex::encode(&k), "record key is not 8 bytes".into()))?),
        None => 0,
    };
    let mut out = Mark { last_id, profiles: BTreeMap::new() };
    for kv in profiles.iter() {
        let (k, v) = kv.map_err(store_err)?;
        let name = String::from_utf8_lossy(&k).into_owned();
        let st: ProfileState = serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt(format!("profile {name}"), e.to_string()))?;
        out.profiles.insert(
            name,
            ProfileMark {
                seq: st.seq,
                last_trace: st.last_trace,
                last_batch: st.last_batch,
                batch: st.batch,
                batch_open: st.batch_open,
                idem_keys: st.idem_keys,
            },
        );
    }
    Ok(out)
}

/// True when counter `now` is behind `mark` on the 000001..999999 cycle (a wrap is not "behind":
/// the mark is at most one group commit older than the journal).
fn counter_behind(now: u32, mark: u32) -> bool {
    if mark == 0 || now == mark {
        return false;
    }
    if now == 0 {
        return true;
    }
    let ahead = (i64::from(now) - i64::from(mark)).rem_euclid(999_999);
    ahead > 499_999
}

/// How `now` falls short of `mark`, one line per finding; empty when it does not.
pub(super) fn behind(mark: &Mark, now: &Mark) -> Vec<String> {
    let mut out = Vec::new();
    if now.last_id < mark.last_id {
        out.push(format!("last record id {} < {} in the mark", now.last_id, mark.last_id));
    }
    for (name, m) in &mark.profiles {
        let Some(n) = now.profiles.get(name) else {
            out.push(format!(
                "profile {name}: no state at all (the mark has trace {:06}, batch {}, {} idempotency keys)",
                m.last_trace,
                m.batch.as_deref().unwrap_or("-"),
                m.idem_keys
            ));
            continue;
        };
        let mut p = Vec::new();
        if n.seq < m.seq {
            p.push(format!("state version {} < {}", n.seq, m.seq));
        }
        if counter_behind(n.last_trace, m.last_trace) {
            p.push(format!("trace {:06} < {:06}", n.last_trace, m.last_trace));
        }
        if counter_behind(n.last_batch, m.last_batch) {
            p.push(format!("batch counter {:06} < {:06}", n.last_batch, m.last_batch));
        }
        if n.idem_keys < m.idem_keys {
            p.push(format!("{} idempotency keys < {}", n.idem_keys, m.idem_keys));
        }
        if n.seq < m.seq && (n.batch != m.batch || n.batch_open != m.batch_open) {
            p.push(format!(
                "batch {} ({}) where the mark has {} ({})",
                n.batch.as_deref().unwrap_or("-"),
                open_word(n.batch_open),
                m.batch.as_deref().unwrap_or("-"),
                open_word(m.batch_open)
            ));
        }
        if n.seq == m.seq && n != m {
            p.push("state differs from the mark at the same version".into());
        }
        if !p.is_empty() {
            out.push(format!("profile {name}: {}", p.join(", ")));
        }
    }
    out
}

fn open_word(open: bool) -> &'static str {
    if open {
        "open"
    } else {
        "settled"
    }
}

fn describe_profiles(m: &Mark) -> String {
    let p: Vec<String> = m
        .profiles
        .iter()
        .map(|(n, p)| format!("{n}: trace {:06}, batch {}, {} idempotency keys", p.last_trace, p.batch.as_deref().unwrap_or("-"), p.idem_keys))
        .collect();
    if p.is_empty() {
        String::new()
    } else {
        format!(" ({})", p.join("; "))
    }
}

/// The data directory a journal folder sits in (for the messages).
fn data_dir_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[async_trait::async_trait]
impl JournalStore for SledJournal {
    fn profile_state(&self, profile: &str) -> Result<ProfileState, JournalError> {
        match self.profiles.get(profile.as_bytes()).map_err(store_err)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt(format!("profile {profile}"), e.to_string())),
            None => Ok(ProfileState::default()),
        }
    }

    fn begin(&self, new: NewRecord) -> Result<Begun, JournalError> {
        let id = self.db.generate_id().map_err(store_err)? + 1;
        let idem_key = new.record.idempotency_key.as_ref().map(|k| batch_key(&new.record.profile, k));
        (&self.records, &self.pending, &self.batchidx, &self.profiles, &self.idem, &self.profidx)
            .transaction(|(records, pending, batchidx, profiles, idem, profidx)| {
                if let Some(k) = &idem_key {
                    if let Some(first) = idem.get(k)? {
                        let v = records
                            .get(&first)?
                            .ok_or_else(|| abort(JournalError::Corrupt(hex::encode(&first), "idempotency key names a missing record".into())))?;
                        return Ok(Begun::Existing(decode(&first, &v).map_err(abort)?));
                    }
                }
                let mut rec = new.record.clone();
                rec.id = id;
                if new.allocate_trace || idem_key.is_some() {
                    let mut st = Self::read_state(profiles, &rec.profile)?;
                    if new.allocate_trace {
                        st.last_trace = next_trace(st.last_trace);
                        rec.trace = format!("{:06}", st.last_trace);
                    }
                    if idem_key.is_some() {
                        st.idem_keys += 1;
                    }
                    st.seq += 1;
                    let bytes = serde_json::to_vec(&st).map_err(|e| abort(store_err(e)))?;
                    profiles.insert(rec.profile.as_bytes(), bytes)?;
                }
                let key = id.to_be_bytes();
                records.insert(&key, encode(&rec).map_err(abort)?)?;
                if rec.status == Status::Pending {
                    pending.insert(&key, &[])?;
                }
                batchidx.insert(batch_index_key(&rec.profile, &rec.batch, id), &[])?;
                profidx.insert(profile_index_key(&rec.profile, id), &[])?;
                if let Some(k) = &idem_key {
                    idem.insert(k.as_slice(), &key)?;
                }
                Ok(Begun::Created(rec))
            })
            .map_err(tx_err)
    }

    fn commit(&self, change: Change) -> Result<(), JournalError> {
        (&self.records, &self.pending, &self.recovery, &self.batchidx, &self.totals, &self.profiles, &self.refidx)
            .transaction(|(records, pending, recovery, batchidx, totals, profiles, refidx)| {
                for rec in &change.records {
                    let key = rec.id.to_be_bytes();
                    records.insert(&key, encode(rec).map_err(abort)?)?;
                    if rec.status == Status::Pending {
                        pending.insert(&key, &[])?;
                    } else {
                        pending.remove(&key)?;
                    }
                    if rec.status == Status::Unknown && rec.recovery.is_some() {
                        recovery.insert(&key, &[])?;
                    } else {
                        recovery.remove(&key)?;
                    }
                    batchidx.insert(batch_index_key(&rec.profile, &rec.batch, rec.id), &[])?;
                    if let Some(r) = rec.reference.as_deref().filter(|r| !r.is_empty()) {
                        refidx.insert(reference_index_key(&rec.profile, r, rec.id), &[])?;
                    }
                }
                let mut grouped: BTreeMap<Vec<u8>, Vec<(&str, i64)>> = BTreeMap::new();
                for (p, b, k, d) in &change.totals {
                    grouped.entry(batch_key(p, b)).or_default().push((k.as_str(), *d));
                }
                for (bk, deltas) in grouped {
                    let mut map: BTreeMap<String, i64> = match totals.get(&bk)? {
                        Some(v) => serde_json::from_slice(&v).map_err(|e| abort(JournalError::Corrupt("totals".into(), e.to_string())))?,
                        None => BTreeMap::new(),
                    };
                    for (k, d) in deltas {
                        // Checked: a total that wrapped would settle a wrong batch without a word.
                        let total = map.entry(k.to_string()).or_insert(0);
                        *total = total.checked_add(d).ok_or_else(|| {
                            let (profile, batch) = split_batch_key(&bk);
                            abort(JournalError::Overflow { profile, batch, key: k.to_string(), current: *total, delta: d })
                        })?;
                    }
                    totals.insert(bk, serde_json::to_vec(&map).map_err(|e| abort(store_err(e)))?)?;
                }
                for (p, st) in &change.profile_states {
                    // The trace counter, the key count and the version are the journal's own: concurrent
                    // begins may have advanced them since the caller read the state (and a `max` would
                    // move a counter that just wrapped to 000001 back to 999999).
                    let cur = Self::read_state(profiles, p)?;
                    let mut st = st.clone();
                    st.last_trace = cur.last_trace;
                    st.idem_keys = cur.idem_keys;
                    st.seq = cur.seq + 1;
                    profiles.insert(p.as_bytes(), serde_json::to_vec(&st).map_err(|e| abort(store_err(e)))?)?;
                }
                Ok(())
            })
            .map_err(tx_err)
    }

    async fn sync(&self) -> Result<(), JournalError> {
        let mut rx = self.syncer.done.subscribe();
        let mine = {
            let mut st = self.syncer.state.lock().map_err(|_| JournalError::Sync("sync state poisoned".into()))?;
            st.requested += 1;
            st.requested
        };
        self.syncer.wake.notify_one();
        let got = rx.wait_for(|(done, _)| *done >= mine).await.map_err(|_| JournalError::Sync("sync thread stopped".into()))?;
        match &got.1 {
            None => Ok(()),
            Some(e) => Err(JournalError::Sync(e.clone())),
        }
    }

    fn get(&self, id: u64) -> Result<Option<Record>, JournalError> {
        let key = id.to_be_bytes();
        match self.records.get(key).map_err(store_err)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    fn by_idempotency_key(&self, profile: &str, key: &str) -> Result<Option<Record>, JournalError> {
        match self.idem.get(batch_key(profile, key)).map_err(store_err)? {
            Some(id) => match self.records.get(&id).map_err(store_err)? {
                Some(v) => Ok(Some(decode(&id, &v)?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    fn by_reference(&self, profile: &str, reference: &str) -> Result<Vec<Record>, JournalError> {
        let mut prefix = batch_key(profile, reference);
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.refidx.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(store_err)?;
            // Exact reference only: the id is the last 8 bytes after the separator.
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let id = &k[k.len() - 8..];
            if let Some(v) = self.records.get(id).map_err(store_err)? {
                out.push(decode(id, &v)?);
            }
        }
        Ok(out)
    }

    fn totals(&self, profile: &str, batch: &str) -> Result<BTreeMap<String, i64>, JournalError> {
        match self.totals.get(batch_key(profile, batch)).map_err(store_err)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt("totals".into(), e.to_string())),
            None => Ok(BTreeMap::new()),
        }
    }

    fn batch_records(&self, profile: &str, batch: &str) -> Result<Vec<Record>, JournalError> {
        let mut prefix = batch_key(profile, batch);
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.batchidx.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(store_err)?;
            let id = &k[prefix.len()..];
            if let Some(v) = self.records.get(id).map_err(store_err)? {
                out.push(decode(id, &v)?);
            }
        }
        Ok(out)
    }

    fn pending(&self) -> Result<Vec<Record>, JournalError> {
        self.collect(self.pending.iter())
    }

    fn recovering(&self) -> Result<Vec<Record>, JournalError> {
        self.collect(self.recovery.iter())
    }

    fn list(&self, q: &JournalQuery) -> Result<Vec<Record>, JournalError> {
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        let keep = |r: &Record| {
            q.profile.as_ref().is_none_or(|p| &r.profile == p)
                && q.batch.as_ref().is_none_or(|b| &r.batch == b)
                && q.status
                    .as_ref()
                    .is_none_or(|s| r.status.pos_word() == s || serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(|x| x == s)).unwrap_or(false))
                && q.date.as_ref().is_none_or(|d| r.created_at.starts_with(d.as_str()))
        };
        let mut out = Vec::new();
        let before = q.before.unwrap_or(u64::MAX);
        if let Some(reference) = &q.reference {
            // By the vendor's reference: the index names the few records that carry it.
            let mut found = Vec::new();
            let profiles: Vec<String> = match &q.profile {
                Some(p) => vec![p.clone()],
                None => self.profiles.iter().keys().filter_map(|k| k.ok()).map(|k| String::from_utf8_lossy(&k).into_owned()).collect(),
            };
            for p in profiles {
                found.extend(self.by_reference(&p, reference)?.into_iter().filter(|r| r.id < before && keep(r)));
            }
            found.sort_by_key(|r| std::cmp::Reverse(r.id));
            found.truncate(limit);
            return Ok(found);
        }
        if let Some(p) = &q.profile {
            // One profile: walk its index, so other profiles' records cost nothing.
            let lower = profile_index_key(p, 0);
            let upper = profile_index_key(p, before);
            for kv in self.profidx.range(lower..upper).rev() {
                let (k, _) = kv.map_err(store_err)?;
                let id = &k[k.len() - 8..];
                let Some(v) = self.records.get(id).map_err(store_err)? else { continue };
                let rec = decode(id, &v)?;
                if keep(&rec) {
                    out.push(rec);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        for kv in self.records.range(..before.to_be_bytes()).rev() {
            let (k, v) = kv.map_err(store_err)?;
            let rec = decode(&k, &v)?;
            if keep(&rec) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn syncs(&self) -> u64 {
        self.syncer.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_behind_their_mark_across_the_wrap() {
        assert!(counter_behind(14, 22));
        assert!(!counter_behind(22, 22));
        assert!(!counter_behind(23, 22));
        assert!(!counter_behind(0, 0));
        assert!(counter_behind(0, 5));
        // 999999 → 000001 is ahead, not behind; 000001 seen against a mark of 000003 is behind.
        assert!(!counter_behind(1, 999_999));
        assert!(counter_behind(999_999, 1));
        assert!(counter_behind(1, 3));
    }
}
