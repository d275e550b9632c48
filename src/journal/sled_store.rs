//! The journal store: sled trees for state and indexes beside the durable log, and its group commit.
//!
//! Writes go through `write::Writer` (log entry first, then sled, unsynced); the group commit
//! (`group.rs`) makes them durable with one `fdatasync` of the log per group; a checkpoint thread flushes sled
//! now and then so a start replays little of the log.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use super::group::Committer;
use super::guard::{behind, data_dir_of, describe_profiles, snapshot, Guard};
use super::mark::{self, Mark};
use super::space::{JournalHealth, Space};
use super::write::{self, Replayed, Writer};
use super::{Begun, Change, JournalError, JournalStore, NewRecord, ProfileState};
use crate::model::{JournalQuery, Record};

/// A checkpoint after this many changes (or `CHECKPOINT_TICKS` seconds with any): bounds what a start
/// after a crash replays. `POSGATE_JOURNAL_CHECKPOINT_EVERY` sets the count (tests).
const CHECKPOINT_ENTRIES: u64 = 20_000;
const CHECKPOINT_TICKS: u32 = 30;

/// A checkpoint after this many changes since sled was last opened also closes sled and opens it again
/// (`reopen`). sled 0.34 writes its own snapshot only while opening, and every open replays sled's log
/// since that snapshot: without a reopen, a start after months of running (clean or SIGKILL) replays
/// months of sled's log (1M records: about 2 s). `POSGATE_JOURNAL_REOPEN_EVERY` sets it (tests).
const REOPEN_ENTRIES: u64 = 200_000;
/// How long a reopen waits for readers still holding the old sled before it gives up (and tries at a
/// later checkpoint), and for sled's file lock to be free again.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The journal's on-disk format version (`meta` tree, key `format`): see ARCHITECTURE.md, Boundaries.
/// 4: records with packed strings (`codec.rs`, tag `0xB4`), batch totals and profile states in binary
/// (`codec::encode_totals`, `codec::encode_profile`).
/// 3: records in the compact binary form of `codec.rs`. 2: the durable record is the log under `log/`,
/// sled is written without syncing, records are JSON. 1: sled alone, synced per group. This build opens
/// 1, 2 and 3 and migrates them (see `migrate`).
pub const FORMAT_VERSION: u32 = 4;
const FORMAT_KEY: &[u8] = b"format";

/// The daemon's exit code when sled refused a change the log already holds (sled 0.34 then refuses
/// every later write until reopened) or the log's fdatasync failed (`group.rs`, `log_broken`): the
/// service manager starts it again and the log replays.
pub const EXIT_STORE_BROKEN: i32 = 75;

pub(super) fn store_err<E: std::fmt::Display>(e: E) -> JournalError {
    JournalError::Store(e.to_string())
}

/// A record as stored (format 4, `codec.rs`). Kept fallible: callers (retention) match on it.
pub(super) fn encode(rec: &Record) -> Result<Vec<u8>, JournalError> {
    Ok(super::codec::encode_record(rec))
}

/// A stored record of any format (format 3 and the JSON of formats 1 and 2 still read, see `codec::decode_any`).
pub(crate) fn decode(id: &[u8], bytes: &[u8]) -> Result<Record, JournalError> {
    super::codec::decode_any(bytes).map_err(|e| JournalError::Corrupt(hex::encode(id), e))
}

/// A batch's totals as stored (format 4 binary, or the JSON of older formats).
pub(super) fn decode_totals(bytes: &[u8]) -> Result<BTreeMap<String, i64>, JournalError> {
    super::codec::decode_totals(bytes).map_err(|e| JournalError::Corrupt("totals".into(), e))
}

/// A profile's state as stored (format 4 binary, or the JSON of older formats).
pub(super) fn decode_profile(profile: &[u8], bytes: &[u8]) -> Result<ProfileState, JournalError> {
    super::codec::decode_profile(bytes).map_err(|e| JournalError::Corrupt(format!("profile {}", String::from_utf8_lossy(profile)), e))
}

pub(super) fn batch_key(profile: &str, batch: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(profile.len() + batch.len() + 1);
    k.extend_from_slice(profile.as_bytes());
    k.push(0);
    k.extend_from_slice(batch.as_bytes());
    k
}

pub(super) fn profile_index_key(profile: &str, id: u64) -> Vec<u8> {
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
pub(super) fn reference_index_key(profile: &str, reference: &str, id: u64) -> Vec<u8> {
    batch_index_key(profile, reference, id)
}

pub(super) fn batch_index_key(profile: &str, batch: &str, id: u64) -> Vec<u8> {
    let mut k = batch_key(profile, batch);
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// One open sled: the database and its trees. A checkpoint may close it and open a new one (`reopen`),
/// so it is reached through `SledJournal::s`, never kept.
pub(crate) struct Stores {
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
    /// Every tree in the order a log entry numbers them (`log::entry::TREES`), `meta` last.
    pub(super) trees: Vec<sled::Tree>,
}

/// The open sled, replaced whole by `reopen` (`None` only when a reopen failed: the daemon then exits).
pub(super) type StoreSlot = std::sync::RwLock<Option<Arc<Stores>>>;

/// The current sled of `slot`.
pub(super) fn stores_of(slot: &StoreSlot) -> Result<Arc<Stores>, JournalError> {
    slot.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| JournalError::Store("the journal's store is closed (a reopen failed)".into()))
}

pub struct SledJournal {
    stores: Arc<StoreSlot>,
    dir: PathBuf,
    pub(super) writer: Arc<Mutex<Writer>>,
    /// What replaying the log at open did (a gap makes `open` refuse and `verify` complain).
    pub(super) replayed: Replayed,
    /// Group commit (`group.rs`): the first writer to ask syncs for everybody waiting.
    committer: Arc<Committer>,
    checkpoints: Arc<Stop>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Free-space guard and the last write error (`space.rs`).
    space: Arc<Space>,
}

/// Tells a journal thread to stop.
#[derive(Default)]
struct Stop {
    stop: Mutex<bool>,
    wake: Condvar,
}

impl SledJournal {
    /// Open (or create) the journal in `dir`, check it against its high-water mark, and start its
    /// mark thread. Refuses a journal behind its mark, a missing journal folder whose mark exists and
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
        if let Some(t) = &j.replayed.torn {
            tracing::warn!("journal log: {t}");
        }
        let mut now = j.mark_now()?;
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
                if let Some(gap) = &j.replayed.gap {
                    return Err(JournalError::Behind(format!(
                        "the journal {} cannot be brought up to date: {gap}. Restore the journal folder (with journal.key) from a backup and check it with `posgate journal verify --data-dir {}`",
                        dir.display(),
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
                    j.s()?.db.flush().map_err(store_err)?;
                    crate::platform::open_syncable(&dir.join("db")).and_then(|f| f.sync_data()).map_err(|e| JournalError::Sync(e.to_string()))?;
                    now = j.mark_now()?;
                }
                mark::MarkFile::create(&mark_at, &now)?
            }
        };
        j.start_sync(dir, Some(markfile))?;
        Ok(Arc::new(j))
    }

    /// Refuse a journal written by a newer format than this build reads; the format found otherwise
    /// (every journal before the stamp existed is version 1).
    fn check_format(meta: &sled::Tree, dir: &Path) -> Result<u32, JournalError> {
        match meta.get(FORMAT_KEY).map_err(store_err)? {
            None => Ok(1),
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
                Ok(found)
            }
        }
    }

    /// Bring an older journal to this build's format, after its log was replayed (an older log holds
    /// records of its own format). Version 1 is sled alone, every change synced; version 2 adds the log
    /// beside the same trees; version 3 stores records in the binary form of `codec.rs`; version 4 packs
    /// their strings and stores batch totals and profile states in binary. Every key and index stays as it is, so every
    /// older version migrates the same way: each record, profile state and batch's totals not yet in this build's
    /// form rewritten in place, sled synced, then the stamp (a crash before it migrates again, which is
    /// harmless: `decode` and `decode_totals` read every form).
    fn migrate(dir: &Path, db: &sled::Db, trees: &[sled::Tree], found: u32) -> Result<(), JournalError> {
        if found >= FORMAT_VERSION {
            return Ok(());
        }
        let records = &trees[usize::from(super::log::entry::RECORDS)];
        let mut n = 0u64;
        for kv in records.iter() {
            let (k, v) = kv.map_err(store_err)?;
            if !super::codec::is_current(&v) {
                let rec = decode(&k, &v)?;
                records.insert(k, encode(&rec)?).map_err(store_err)?;
                n += 1;
            }
        }
        let profiles = &trees[usize::from(super::log::entry::PROFILES)];
        for kv in profiles.iter() {
            let (k, v) = kv.map_err(store_err)?;
            if v.first() != Some(&super::codec::PROFILE_TAG) {
                profiles.insert(&k, super::codec::encode_profile(&decode_profile(&k, &v)?)).map_err(store_err)?;
            }
        }
        let totals = &trees[usize::from(super::log::entry::TOTALS)];
        for kv in totals.iter() {
            let (k, v) = kv.map_err(store_err)?;
            if v.first() != Some(&super::codec::TOTALS_TAG) {
                totals.insert(k, super::codec::encode_totals(&decode_totals(&v)?)).map_err(store_err)?;
            }
        }
        write::sync_sled(dir, db)?;
        trees[write::META].insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes()).map_err(store_err)?;
        write::sync_sled(dir, db)?;
        if found > 1 || n > 0 {
            tracing::info!(journal = %dir.display(), from = found, to = FORMAT_VERSION, records = n, "journal format migrated (records in the compact binary form)");
        }
        Ok(())
    }

    /// Open the sled store alone: no mark check and no mark thread (for `journal verify`, which
    /// reads a copy and never syncs).
    pub(super) fn open_db(dir: &Path) -> Result<SledJournal, JournalError> {
        if !dir.exists() {
            crate::fsmode::private_dir(dir).map_err(store_err)?;
        }
        let stores = open_stores(dir)?;
        let found = Self::check_format(&stores.trees[write::META], dir)?;
        let (writer, replayed) = write::open_and_replay(dir, &stores.db, &stores.trees)?;
        Self::migrate(dir, &stores.db, &stores.trees, found)?;
        let writer = Arc::new(Mutex::new(writer));
        let space = Arc::new(Space::new(dir));
        Ok(SledJournal {
            committer: Arc::new(Committer::new(writer.clone(), space.clone())),
            stores: Arc::new(std::sync::RwLock::new(Some(Arc::new(stores)))),
            dir: dir.to_path_buf(),
            writer,
            replayed,
            checkpoints: Arc::new(Stop::default()),
            checkpointer: Mutex::new(None),
            space,
        })
    }

    /// The sled open now (see `Stores`).
    pub(crate) fn s(&self) -> Result<Arc<Stores>, JournalError> {
        stores_of(&self.stores)
    }

    fn start_sync(&mut self, dir: &Path, mark: Option<mark::MarkFile>) -> Result<(), JournalError> {
        // The folder itself, so files created at first start are durable too.
        crate::platform::sync_dir(dir).map_err(|e| JournalError::Sync(e.to_string()))?;
        if let Some(m) = mark {
            self.committer.start_mark(Guard { stores: self.stores.clone(), mark: m })?;
        }
        let (dir, stores, writer, stop) = (dir.to_path_buf(), self.stores.clone(), self.writer.clone(), self.checkpoints.clone());
        let space = self.space.clone();
        let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default).max(1);
        let every = env("POSGATE_JOURNAL_CHECKPOINT_EVERY", CHECKPOINT_ENTRIES);
        let reopen_every = env("POSGATE_JOURNAL_REOPEN_EVERY", REOPEN_ENTRIES);
        let handle = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || checkpoint_loop(&dir, &stores, &writer, &stop, every, reopen_every, &space))
            .map_err(store_err)?;
        if let Ok(mut t) = self.checkpointer.lock() {
            *t = Some(handle);
        }
        Ok(())
    }

    /// Set every profile's idempotency-key count from the `idem` tree (adopting a journal that
    /// predates the count).
    fn recount_idempotency_keys(&self) -> Result<(), JournalError> {
        let s = self.s()?;
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for kv in s.idem.iter() {
            let (k, _) = kv.map_err(store_err)?;
            let profile = k.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            *counts.entry(profile).or_insert(0) += 1;
        }
        for (profile, n) in counts {
            let mut st: ProfileState = match s.profiles.get(&profile).map_err(store_err)? {
                Some(v) => decode_profile(&profile, &v)?,
                None => ProfileState::default(),
            };
            if st.idem_keys != n {
                st.idem_keys = n;
                st.seq += 1;
                s.profiles.insert(profile, super::codec::encode_profile(&st)).map_err(store_err)?;
            }
        }
        Ok(())
    }

    /// True when any record holds a sealed field (so the data key that sealed it must exist).
    pub fn has_sealed_records(&self) -> Result<bool, JournalError> {
        for kv in self.s()?.records.iter() {
            let (k, v) = kv.map_err(store_err)?;
            if super::codec::has_sealed(&v).map_err(|e| JournalError::Corrupt(hex::encode(&k), e.to_string()))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every change still in the log after change `seq`, oldest first, each with the exact writes it
    /// made (a record's new value is its `records` write). The log keeps the changes since the last
    /// checkpoint; a relay (issue 15) must keep its cursor within that.
    pub fn changes_since(&self, seq: u64) -> Result<Vec<super::log::Entry>, JournalError> {
        super::log::changes_since(&self.dir.join("log"), seq).map_err(|e| JournalError::Store(e.to_string()))
    }

    /// The last change written (its `change_seq`).
    pub fn change_seq(&self) -> u64 {
        self.writer.lock().map(|w| w.seq).unwrap_or(0)
    }

    /// What the high-water mark would say about this journal now.
    pub fn mark_now(&self) -> Result<Mark, JournalError> {
        let s = self.s()?;
        snapshot(&s.records, &s.profiles)
    }

    /// Note a failed write for status; when sled itself failed, exit (see `EXIT_STORE_BROKEN`).
    pub(super) fn after_write<T>(&self, w: &Writer, r: Result<T, JournalError>) -> Result<T, JournalError> {
        if let Err(e) = &r {
            if matches!(e, JournalError::Store(_) | JournalError::Sync(_)) {
                self.space.failed(&e.to_string());
            }
        }
        if let Some(e) = &w.sled_failed {
            store_broken(e);
        }
        r
    }

    fn collect(&self, s: &Stores, iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        for kv in iter {
            let (k, _) = kv.map_err(store_err)?;
            if let Some(v) = s.records.get(&k).map_err(store_err)? {
                out.push(decode(&k, &v)?);
            }
        }
        Ok(out)
    }
}

impl Drop for SledJournal {
    fn drop(&mut self) {
        // The mark thread writes the newest values it holds, then ends.
        self.committer.stop_mark();
        if let Ok(mut s) = self.checkpoints.stop.lock() {
            *s = true;
        }
        self.checkpoints.wake.notify_all();
        let ran = self.checkpointer.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = ran {
            let _ = t.join();
            // A clean stop: sled takes everything and the log empties, so the next start replays nothing.
            let closed = self.s().and_then(|s| write::close(&self.dir, &s.db, &s.trees[write::META], &self.writer));
            if let Err(e) = closed {
                tracing::error!("journal: last checkpoint at stop: {e}");
            }
        }
    }
}

/// Open sled in `dir` with its trees.
fn open_stores(dir: &Path) -> Result<Stores, JournalError> {
    let db = super::sled_cache::config(dir).open().map_err(store_err)?;
    let tree = |n: &str| db.open_tree(n).map_err(store_err);
    let trees: Vec<sled::Tree> = super::log::entry::TREES.iter().map(|n| tree(n)).collect::<Result<_, _>>()?;
    Ok(Stores {
        records: tree("records")?,
        pending: tree("pending")?,
        recovery: tree("recovery")?,
        batchidx: tree("batchidx")?,
        profidx: tree("profidx")?,
        totals: tree("totals")?,
        profiles: tree("profiles")?,
        idem: tree("idem")?,
        refidx: tree("refidx")?,
        trees,
        db,
    })
}

/// A checkpoint that also closes sled and opens it again, so sled writes a new snapshot (see
/// `REOPEN_ENTRIES`). Holds the write lock throughout (no change while sled is closed) and the store
/// slot's write lock (no reader). sled is flushed and synced and the log position recorded before it
/// closes, so the reopened sled holds every change; a crash while it is closed (`IN_REOPEN`) starts
/// from that checkpoint like any other. The last change's number; `Ok(None)` when readers held the old
/// sled too long (it stays open; a later checkpoint tries again).
#[allow(clippy::disallowed_methods)] // bounded waits on sled's own handles, not engine time
fn reopen(dir: &Path, slot: &StoreSlot, writer: &Mutex<Writer>) -> Result<Option<u64>, JournalError> {
    let w = writer.lock().map_err(|_| JournalError::Store("journal writer poisoned".into()))?;
    let mut held = slot.write().unwrap_or_else(|p| p.into_inner());
    let pos = w.log.position();
    {
        let old = held.as_ref().ok_or_else(|| JournalError::Store("the journal's store is closed (a reopen failed)".into()))?;
        write::sync_sled(dir, &old.db)?;
        old.trees[write::META].insert(write::CHECKPOINT_KEY, &pos.to_bytes()).map_err(store_err)?;
        write::sync_sled(dir, &old.db)?;
    }
    super::log::remove_before(&dir.join("log"), pos.seg).map_err(|e| JournalError::Store(e.to_string()))?;
    let Some(old) = held.take() else { return Err(JournalError::Store("the journal's store is closed".into())) };
    // Readers that took the old sled before the lock finish with it; new ones wait for the new one.
    let waited = std::time::Instant::now();
    while Arc::strong_count(&old) > 1 {
        if waited.elapsed() > REOPEN_WAIT {
            tracing::warn!("journal: sled not reopened (still in use after {REOPEN_WAIT:?}); the next checkpoint tries again");
            *held = Some(old);
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(old);
    crate::testhook::point_blocking(crate::testhook::IN_REOPEN);
    // sled releases its file lock when its last internal handle goes, which may be a moment after ours.
    let opened = std::time::Instant::now();
    let new = loop {
        match open_stores(dir) {
            Ok(s) => break s,
            Err(e) if opened.elapsed() < REOPEN_WAIT => {
                tracing::debug!("journal: reopening sled: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(took_ms = opened.elapsed().as_millis() as u64, "journal: sled reopened (its snapshot written)");
    *held = Some(Arc::new(new));
    Ok(Some(w.seq))
}

/// Checkpoints every `every` changes, or every `CHECKPOINT_TICKS` seconds when anything changed; the
/// first checkpoint `reopen_every` changes after sled was opened reopens it (`reopen`).
fn checkpoint_loop(dir: &Path, stores: &StoreSlot, writer: &Mutex<Writer>, stop: &Stop, every: u64, reopen_every: u64, space: &Space) {
    let seq_now = || writer.lock().map(|w| w.seq).unwrap_or(0);
    let (mut last, mut ticks) = (seq_now(), 0u32);
    let mut opened_at = last;
    loop {
        {
            let Ok(g) = stop.stop.lock() else { return };
            let Ok((g, _)) = stop.wake.wait_timeout(g, std::time::Duration::from_millis(if every < CHECKPOINT_ENTRIES { 20 } else { 1000 })) else { return };
            if *g {
                return;
            }
        }
        ticks += 1;
        let now = seq_now();
        if now.saturating_sub(last) >= every || (now > last && ticks >= CHECKPOINT_TICKS) {
            // Below the reserve a sled flush could hit ENOSPC, which sled never forgives: wait (the
            // log holds everything meanwhile).
            if space.low() {
                continue;
            }
            let done = if now.saturating_sub(opened_at) >= reopen_every {
                match reopen(dir, stores, writer) {
                    Ok(Some(seq)) => {
                        opened_at = seq;
                        Ok(seq)
                    }
                    Ok(None) => stores_of(stores).and_then(|s| write::checkpoint(dir, &s.db, &s.trees[write::META], writer)),
                    Err(e) => Err(e),
                }
            } else {
                stores_of(stores).and_then(|s| write::checkpoint(dir, &s.db, &s.trees[write::META], writer))
            };
            match done {
                Ok(seq) => last = seq,
                Err(e) => {
                    tracing::error!("journal checkpoint: {e}");
                    space.failed(&format!("checkpoint: {e}"));
                    // With space to spare, a failed sled flush is sled's sticky error (or a broken
                    // disk): only a restart mends it. While space is low, wait for it to come back.
                    if !space.low() {
                        store_broken(&format!("checkpoint: {e}"));
                    }
                }
            }
            ticks = 0;
        }
    }
}

#[async_trait::async_trait]
impl JournalStore for SledJournal {
    fn profile_state(&self, profile: &str) -> Result<ProfileState, JournalError> {
        match self.s()?.profiles.get(profile.as_bytes()).map_err(store_err)? {
            Some(v) => decode_profile(profile.as_bytes(), &v),
            None => Ok(ProfileState::default()),
        }
    }

    fn begin(&self, new: NewRecord) -> Result<Begun, JournalError> {
        // New work only: the reserve below this line is kept for the outcomes already owed.
        self.space.admit()?;
        let mut w = self.writer.lock().map_err(|_| JournalError::Store("journal writer poisoned".into()))?;
        let r = self.s().and_then(|s| w.begin(&s.trees, new));
        self.after_write(&w, r)
    }

    /// Never refused for space: the outcome of a record already sent is owed (see `space.rs`).
    fn commit(&self, change: Change) -> Result<(), JournalError> {
        let mut w = self.writer.lock().map_err(|_| JournalError::Store("journal writer poisoned".into()))?;
        let r = self.s().and_then(|s| w.commit(&s.trees, change));
        // A commit carries an outcome that is owed (a record already sent): if even the reserve did
        // not hold it, the record stays `pending` in the log, and only a start turns it into recovery.
        if let Err(e @ JournalError::Store(_)) = &r {
            store_broken(&format!("an outcome could not be journaled: {e}"));
        }
        self.after_write(&w, r)
    }

    fn health(&self) -> JournalHealth {
        let mut h = self.space.health();
        if let Some(e) = self.writer.lock().ok().and_then(|w| w.sled_failed.clone()) {
            h.state = "unavailable";
            h.error = Some(format!("journal unavailable: its store refused a write ({e}); posgate restarts to replay its log"));
        }
        h
    }

    async fn sync(&self) -> Result<(), JournalError> {
        let c = self.committer.clone();
        tokio::task::spawn_blocking(move || c.sync_blocking()).await.map_err(|e| JournalError::Sync(format!("sync task: {e}")))?
    }

    fn sync_blocking(&self) -> Result<(), JournalError> {
        self.committer.sync_blocking()
    }

    fn get(&self, id: u64) -> Result<Option<Record>, JournalError> {
        let key = id.to_be_bytes();
        match self.s()?.records.get(key).map_err(store_err)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    fn by_idempotency_key(&self, profile: &str, key: &str) -> Result<Option<Record>, JournalError> {
        let s = self.s()?;
        match s.idem.get(batch_key(profile, key)).map_err(store_err)? {
            Some(id) => match s.records.get(&id).map_err(store_err)? {
                Some(v) => Ok(Some(decode(&id, &v)?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    fn by_reference(&self, profile: &str, reference: &str) -> Result<Vec<Record>, JournalError> {
        let s = self.s()?;
        let mut prefix = batch_key(profile, reference);
        prefix.push(0);
        let mut out = Vec::new();
        for kv in s.refidx.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(store_err)?;
            // Exact reference only: the id is the last 8 bytes after the separator.
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let id = &k[k.len() - 8..];
            if let Some(v) = s.records.get(id).map_err(store_err)? {
                out.push(decode(id, &v)?);
            }
        }
        Ok(out)
    }

    fn totals(&self, profile: &str, batch: &str) -> Result<BTreeMap<String, i64>, JournalError> {
        match self.s()?.totals.get(batch_key(profile, batch)).map_err(store_err)? {
            Some(v) => decode_totals(&v),
            None => Ok(BTreeMap::new()),
        }
    }

    fn batch_records(&self, profile: &str, batch: &str) -> Result<Vec<Record>, JournalError> {
        let s = self.s()?;
        let mut prefix = batch_key(profile, batch);
        prefix.push(0);
        let mut out = Vec::new();
        for kv in s.batchidx.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(store_err)?;
            let id = &k[prefix.len()..];
            if let Some(v) = s.records.get(id).map_err(store_err)? {
                out.push(decode(id, &v)?);
            }
        }
        Ok(out)
    }

    fn pending(&self) -> Result<Vec<Record>, JournalError> {
        let s = self.s()?;
        self.collect(&s, s.pending.iter())
    }

    fn recovering(&self) -> Result<Vec<Record>, JournalError> {
        let s = self.s()?;
        self.collect(&s, s.recovery.iter())
    }

    fn list(&self, q: &JournalQuery) -> Result<Vec<Record>, JournalError> {
        let s = self.s()?;
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        let keep = |r: &Record| q.admits(r);
        let mut out = Vec::new();
        let before = q.before.unwrap_or(u64::MAX);
        if let Some(reference) = &q.reference {
            // By the vendor's reference: the index names the few records that carry it.
            let mut found = Vec::new();
            let profiles: Vec<String> = match &q.profile {
                Some(p) => vec![p.clone()],
                None => s.profiles.iter().keys().filter_map(|k| k.ok()).map(|k| String::from_utf8_lossy(&k).into_owned()).collect(),
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
            for kv in s.profidx.range(lower..upper).rev() {
                let (k, _) = kv.map_err(store_err)?;
                let id = &k[k.len() - 8..];
                let Some(v) = s.records.get(id).map_err(store_err)? else { continue };
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
        for kv in s.records.range(..before.to_be_bytes()).rev() {
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
        self.committer.count.load(Ordering::Relaxed)
    }

    fn plan_retention(&self, cutoff: &str, max_records: usize) -> Result<Vec<super::SettledBatch>, JournalError> {
        self.plan_retention_now(cutoff, max_records)
    }

    fn archive_batches(&self, batches: &[super::SettledBatch]) -> Result<usize, JournalError> {
        self.archive_batches_now(batches)
    }

    fn records_after(&self, after: u64, from: &str, to: &str, limit: usize) -> Result<Vec<Record>, JournalError> {
        self.records_after_now(after, from, to, limit)
    }
}

/// sled refused a change the log holds: it is behind the log and refuses every later write until
/// reopened. Exit with `EXIT_STORE_BROKEN` after saying so; everything the log holds is in the OS
/// (written, so it survives the process) and is replayed by the next start, which the service manager
/// makes (systemd `Restart=always`, the Windows service's recovery actions).
fn store_broken(e: &str) {
    exit_broken(&format!(
        "journal store failed ({e}): sled refuses every write from now on; exiting so the service manager restarts posgate and the journal log replays"
    ));
}

/// Say `why` and exit with `EXIT_STORE_BROKEN` (returns only under `POSGATE_JOURNAL_NO_EXIT`, in tests).
pub(super) fn exit_broken(why: &str) {
    if std::env::var_os("POSGATE_JOURNAL_NO_EXIT").is_some() {
        return;
    }
    tracing::error!(code = EXIT_STORE_BROKEN, "{why}");
    std::process::exit(EXIT_STORE_BROKEN);
}
