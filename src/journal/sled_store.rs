//! The sled implementation of `JournalStore`, with group-commit flush + fdatasync.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::watch;

use super::{next_trace, Begun, Change, JournalError, JournalStore, NewRecord, ProfileState};
use crate::engine::types::{JournalQuery, Record, Status};

/// sled's page cache. A store PC has little memory to spare and the hot set (open batches, owed
/// recovery, recent records) is small; sled's default is 1 GiB.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

type TxResult<T> = Result<T, ConflictableTransactionError<JournalError>>;

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
    db: sled::Db,
    records: sled::Tree,
    pending: sled::Tree,
    recovery: sled::Tree,
    batchidx: sled::Tree,
    /// profile \0 id → (): one profile's records in id (= creation) order.
    profidx: sled::Tree,
    totals: sled::Tree,
    profiles: sled::Tree,
    idem: sled::Tree,
    syncer: Arc<Syncer>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SledJournal {
    /// Open (or create) the journal in `dir` and start its sync thread.
    pub fn open(dir: &Path) -> Result<Arc<SledJournal>, JournalError> {
        std::fs::create_dir_all(dir).map_err(store_err)?;
        // No background flusher: every commit is flushed and synced by the group-commit thread below.
        let db = sled::Config::new().path(dir).mode(sled::Mode::LowSpace).flush_every_ms(None).cache_capacity(CACHE_BYTES).open().map_err(store_err)?;
        let tree = |n: &str| db.open_tree(n).map_err(store_err);
        let j = SledJournal {
            records: tree("records")?,
            pending: tree("pending")?,
            recovery: tree("recovery")?,
            batchidx: tree("batchidx")?,
            profidx: tree("profidx")?,
            totals: tree("totals")?,
            profiles: tree("profiles")?,
            idem: tree("idem")?,
            syncer: Arc::new(Syncer {
                state: Mutex::new(SyncState { requested: 0, stop: false }),
                wake: Condvar::new(),
                done: watch::channel((0, None)).0,
                count: AtomicU64::new(0),
            }),
            db,
            thread: Mutex::new(None),
        };
        // The log file sled writes; fdatasync on our own handle syncs the same inode.
        let log = File::open(dir.join("db")).map_err(|e| JournalError::Store(format!("{}: {e}", dir.join("db").display())))?;
        // The folder itself, so the log file created at first start is durable too. sled 0.34 keeps
        // one log file in `Mode::LowSpace`, so later commits only need the log's fdatasync.
        let folder = File::open(dir).map_err(store_err)?;
        folder.sync_all().map_err(|e| JournalError::Sync(e.to_string()))?;
        let db = j.db.clone();
        let syncer = j.syncer.clone();
        let handle = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || sync_loop(db, log, syncer))
            .map_err(store_err)?;
        if let Ok(mut t) = j.thread.lock() {
            *t = Some(handle);
        }
        Ok(Arc::new(j))
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

fn sync_loop(db: sled::Db, log: File, s: Arc<Syncer>) {
    let mut synced = 0u64;
    loop {
        let target = {
            let Ok(mut st) = s.state.lock() else { return };
            while st.requested == synced && !st.stop {
                st = match s.wake.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            if st.stop && st.requested == synced {
                return;
            }
            st.requested
        };
        let result = db
            .flush()
            .map_err(|e| format!("sled flush: {e}"))
            .and_then(|_| log.sync_data().map_err(|e| format!("fdatasync of the journal log: {e}")));
        synced = target;
        s.count.fetch_add(1, Ordering::Relaxed);
        let _ = s.done.send((target, result.err()));
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
                        let v = records.get(&first)?.ok_or_else(|| abort(JournalError::Corrupt(hex::encode(&first), "idempotency key names a missing record".into())))?;
                        return Ok(Begun::Existing(decode(&first, &v).map_err(abort)?));
                    }
                }
                let mut rec = new.record.clone();
                rec.id = id;
                if new.allocate_trace {
                    let mut st = Self::read_state(profiles, &rec.profile)?;
                    st.last_trace = next_trace(st.last_trace);
                    rec.trace = format!("{:06}", st.last_trace);
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
        (&self.records, &self.pending, &self.recovery, &self.batchidx, &self.totals, &self.profiles)
            .transaction(|(records, pending, recovery, batchidx, totals, profiles)| {
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
                        *map.entry(k.to_string()).or_insert(0) += d;
                    }
                    totals.insert(bk, serde_json::to_vec(&map).map_err(|e| abort(store_err(e)))?)?;
                }
                for (p, st) in &change.profile_states {
                    // Never move the trace counter backwards: concurrent begins may have advanced it.
                    let cur = Self::read_state(profiles, p)?;
                    let mut st = st.clone();
                    st.last_trace = st.last_trace.max(cur.last_trace);
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
                && q.status.as_ref().is_none_or(|s| r.status.pos_word() == s || serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(|x| x == s)).unwrap_or(false))
                && q.date.as_ref().is_none_or(|d| r.created_at.starts_with(d.as_str()))
        };
        let mut out = Vec::new();
        let before = q.before.unwrap_or(u64::MAX);
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
