//! The journal's one write path: a change becomes a log entry (written first) and then the same writes
//! in sled (not synced); replay after a crash and checkpoints keep the two together.
//!
//! Every change is made under one lock, in this order: read what it needs from sled, build the exact
//! writes (`Op`s), append them to the log as one entry numbered `change_seq`, apply them to sled as plain
//! writes with `meta/applied = change_seq` last (see [`apply_entry`]: no sled transaction). The log entry
//! is in the OS before sled holds any of it, so after a SIGKILL the log always holds at least what sled
//! holds; the group commit (`group.rs`) makes entries durable with one `fdatasync` of the log. sled is
//! flushed only by checkpoints.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::log::entry::{BATCHIDX, IDEM, PENDING, PROFIDX, PROFILES, RECORDS, RECOVERY, REFIDX, TOTALS, TREES};
use super::log::{self, Entry, Log, Op, Pos};
use super::sled_store::{
    batch_index_key, batch_key, decode_profile, decode_totals, encode, profile_index_key, reference_index_key, split_batch_key, store_err,
};
use super::{next_trace, Begun, Change, JournalError, NewRecord, ProfileState};
use crate::model::Status;

/// `meta` keys: the last change applied to sled, and the log position a checkpoint made redundant.
pub(super) const APPLIED_KEY: &[u8] = b"applied";
pub(super) const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// The meta tree's number (after the trees an entry names).
pub(super) const META: usize = TREES.len() - 1;

/// What the write lock guards.
pub(super) struct Writer {
    pub(super) log: Log,
    /// The last change written (to the log, and to sled unless that failed).
    pub(super) seq: u64,
    /// The highest record id handed out.
    pub(super) last_id: u64,
    /// sled refused a change the log already holds: sled is behind the log and (sled 0.34) refuses
    /// every later write until reopened. Only a restart (which replays the log) mends it.
    pub(super) sled_failed: Option<String>,
}

fn log_err(e: log::LogError) -> JournalError {
    match e {
        log::LogError::Corrupt(m) => JournalError::Corrupt("log".into(), m),
        other => JournalError::Store(other.to_string()),
    }
}

fn get(trees: &[sled::Tree], tree: u8, key: &[u8]) -> Result<Option<sled::IVec>, JournalError> {
    trees[usize::from(tree)].get(key).map_err(store_err)
}

fn read_state(trees: &[sled::Tree], profile: &str, overlay: &BTreeMap<String, ProfileState>) -> Result<ProfileState, JournalError> {
    if let Some(st) = overlay.get(profile) {
        return Ok(st.clone());
    }
    match get(trees, PROFILES, profile.as_bytes())? {
        Some(v) => decode_profile(profile.as_bytes(), &v),
        None => Ok(ProfileState::default()),
    }
}

impl Writer {
    /// Append `ops` as the next change and apply them to sled.
    pub(super) fn write(&mut self, trees: &[sled::Tree], ops: Vec<Op>) -> Result<(), JournalError> {
        if ops.is_empty() {
            return Ok(());
        }
        let entry = Entry { seq: self.seq + 1, ops };
        self.log.append(&entry).map_err(log_err)?;
        // The entry is in the log: its number is used whatever sled does next (replay applies it).
        self.seq = entry.seq;
        apply_entry(trees, &entry).inspect_err(|e| self.sled_failed = Some(e.to_string()))
    }

    pub(super) fn begin(&mut self, trees: &[sled::Tree], new: NewRecord) -> Result<Begun, JournalError> {
        let idem_key = new.record.idempotency_key.as_ref().map(|k| batch_key(&new.record.profile, k));
        if let Some(k) = &idem_key {
            if let Some(first) = get(trees, IDEM, k)? {
                let v =
                    get(trees, RECORDS, &first)?.ok_or_else(|| JournalError::Corrupt(hex::encode(&first), "idempotency key names a missing record".into()))?;
                return Ok(Begun::Existing(super::sled_store::decode(&first, &v)?));
            }
        }
        let id = self.last_id + 1;
        let mut rec = new.record;
        rec.id = id;
        let mut ops = Vec::with_capacity(6);
        if new.allocate_trace || idem_key.is_some() {
            let mut st = read_state(trees, &rec.profile, &BTreeMap::new())?;
            if new.allocate_trace {
                st.last_trace = next_trace(st.last_trace);
                rec.trace = format!("{:06}", st.last_trace);
            }
            if idem_key.is_some() {
                st.idem_keys += 1;
            }
            st.seq += 1;
            ops.push(Op::put(PROFILES, rec.profile.as_bytes(), super::codec::encode_profile(&st)));
        }
        let key = id.to_be_bytes();
        ops.push(Op::put(RECORDS, key, encode(&rec)?));
        if rec.status == Status::Pending {
            ops.push(Op::put(PENDING, key, []));
        }
        ops.push(Op::put(BATCHIDX, batch_index_key(&rec.profile, &rec.batch, id), []));
        ops.push(Op::put(PROFIDX, profile_index_key(&rec.profile, id), []));
        if let Some(k) = idem_key {
            ops.push(Op::put(IDEM, k, key));
        }
        self.write(trees, ops)?;
        self.last_id = id;
        Ok(Begun::Created(rec))
    }

    pub(super) fn commit(&mut self, trees: &[sled::Tree], change: Change) -> Result<(), JournalError> {
        let mut ops = Vec::new();
        for rec in &change.records {
            let key = rec.id.to_be_bytes();
            ops.push(Op::put(RECORDS, key, encode(rec)?));
            let pending = get(trees, PENDING, &key)?.is_some();
            match (rec.status == Status::Pending, pending) {
                (true, false) => ops.push(Op::put(PENDING, key, [])),
                (false, true) => ops.push(Op::del(PENDING, key)),
                _ => {}
            }
            let recovering = get(trees, RECOVERY, &key)?.is_some();
            match (rec.status == Status::Unknown && rec.recovery.is_some(), recovering) {
                (true, false) => ops.push(Op::put(RECOVERY, key, [])),
                (false, true) => ops.push(Op::del(RECOVERY, key)),
                _ => {}
            }
            let bk = batch_index_key(&rec.profile, &rec.batch, rec.id);
            if get(trees, BATCHIDX, &bk)?.is_none() {
                ops.push(Op::put(BATCHIDX, bk, []));
            }
            if let Some(r) = rec.reference.as_deref().filter(|r| !r.is_empty()) {
                let rk = reference_index_key(&rec.profile, r, rec.id);
                if get(trees, REFIDX, &rk)?.is_none() {
                    ops.push(Op::put(REFIDX, rk, []));
                }
            }
        }
        let mut grouped: BTreeMap<Vec<u8>, Vec<(&str, i64)>> = BTreeMap::new();
        for (p, b, k, d) in &change.totals {
            grouped.entry(batch_key(p, b)).or_default().push((k.as_str(), *d));
        }
        for (bk, deltas) in grouped {
            let mut map: BTreeMap<String, i64> = match get(trees, TOTALS, &bk)? {
                Some(v) => decode_totals(&v)?,
                None => BTreeMap::new(),
            };
            for (k, d) in deltas {
                // Checked: a total that wrapped would settle a wrong batch without a word.
                let total = map.entry(k.to_string()).or_insert(0);
                *total = total.checked_add(d).ok_or_else(|| {
                    let (profile, batch) = split_batch_key(&bk);
                    JournalError::Overflow { profile, batch, key: k.to_string(), current: *total, delta: d }
                })?;
            }
            ops.push(Op::put(TOTALS, bk, super::codec::encode_totals(&map)));
        }
        let mut states: BTreeMap<String, ProfileState> = BTreeMap::new();
        for (p, st) in &change.profile_states {
            // The trace counter, the key count and the version are the journal's own: concurrent
            // begins may have advanced them since the caller read the state (and a `max` would
            // move a counter that just wrapped to 000001 back to 999999).
            let cur = read_state(trees, p, &states)?;
            let mut st = st.clone();
            st.last_trace = cur.last_trace;
            st.idem_keys = cur.idem_keys;
            st.seq = cur.seq + 1;
            states.insert(p.clone(), st);
        }
        for (p, st) in states {
            ops.push(Op::put(PROFILES, p.into_bytes(), super::codec::encode_profile(&st)));
        }
        self.write(trees, ops)
    }
}

/// Apply one entry to sled as plain writes, `meta/applied` last.
///
/// Not a sled transaction: in sled 0.34 every transaction (and every `apply_batch`) rolls and seals
/// sled's IO buffer twice (`pin_log`), and each sealed buffer is a `pwrite` plus a
/// `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` on sled's thread pool: two device writes and two
/// thread wake-ups per durable point, on the disk our one `fdatasync` waits for (`strace -c -f` on
/// `posgate bench`: 2.0 `sync_file_range` per durable point before, 0 now). Atomicity comes from the
/// log instead: the entry is in the log before any of these writes, sled keeps its writes in order
/// (after a crash it holds a prefix of them), and `meta/applied` is written last, so a crash half-way
/// leaves `applied` at the previous change and the open replays this entry again (its writes are
/// plain puts and removes: replaying them is harmless).
///
/// Readers that do not take the write lock may see a change half-applied for a few µs, so the order
/// is chosen for them: when the entry adds or updates records, the records first and then the index
/// trees that name them (an index never names a record not yet written); when it removes records
/// (retention), the index trees first and the records last (an index never names a removed record).
fn apply_entry(trees: &[sled::Tree], e: &Entry) -> Result<(), JournalError> {
    let removes_records = e.ops.iter().any(|op| op.tree == RECORDS && op.value.is_none());
    let records = e.ops.iter().filter(|op| op.tree == RECORDS);
    let others = e.ops.iter().filter(|op| op.tree != RECORDS);
    let apply = |op: &Op| -> Result<(), JournalError> {
        let tree = &trees[usize::from(op.tree)];
        match &op.value {
            Some(v) => tree.insert(op.key.as_slice(), v.as_slice()).map(|_| ()),
            None => tree.remove(op.key.as_slice()).map(|_| ()),
        }
        .map_err(store_err)
    };
    if removes_records {
        others.chain(records).try_for_each(apply)?;
    } else {
        records.chain(others).try_for_each(apply)?;
    }
    trees[META].insert(APPLIED_KEY, &e.seq.to_be_bytes()).map(|_| ()).map_err(store_err)
}

/// What replaying the log at open did.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    pub(super) entries: u64,
    /// The log cannot bring sled up to date: it starts after the last change sled holds.
    pub(super) gap: Option<String>,
    pub(super) torn: Option<String>,
}

fn meta_u64(meta: &sled::Tree, key: &[u8]) -> Result<u64, JournalError> {
    match meta.get(key).map_err(store_err)? {
        Some(v) => v
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| JournalError::Corrupt(format!("meta/{}", String::from_utf8_lossy(key)), "not 8 bytes".into())),
        None => Ok(0),
    }
}

/// Open the log beside sled and bring sled up to the log's last valid entry: entries after the last
/// checkpoint whose change sled does not hold yet are applied (plain writes, `meta/applied` last: a crash
/// half-way replays them again, which is harmless). Then a checkpoint, so the next start replays nothing.
pub(super) fn open_and_replay(dir: &Path, db: &sled::Db, trees: &[sled::Tree]) -> Result<(Writer, Replayed), JournalError> {
    let meta = &trees[META];
    let applied = meta_u64(meta, APPLIED_KEY)?;
    let from = meta.get(CHECKPOINT_KEY).map_err(store_err)?.and_then(|v| Pos::from_bytes(&v));
    let mut out = Replayed::default();
    let mut at = applied;
    let mut failed: Option<JournalError> = None;
    let (log, opened) = Log::open(&dir.join("log"), from, |e| {
        if e.seq <= at || failed.is_some() {
            return Ok(());
        }
        if e.seq != at + 1 {
            if out.gap.is_none() {
                out.gap = Some(format!("the journal's store holds changes up to {at}, and its log starts again at {} (changes in between are gone)", e.seq));
            }
            return Ok(());
        }
        for op in &e.ops {
            let tree = &trees[usize::from(op.tree)];
            let r = match &op.value {
                Some(v) => tree.insert(op.key.as_slice(), v.as_slice()).map(|_| ()),
                None => tree.remove(op.key.as_slice()).map(|_| ()),
            };
            if let Err(err) = r {
                failed = Some(store_err(err));
                return Ok(());
            }
        }
        at = e.seq;
        out.entries += 1;
        Ok(())
    })
    .map_err(log_err)?;
    if let Some(e) = failed {
        return Err(e);
    }
    out.torn = opened.torn;
    if at > applied {
        meta.insert(APPLIED_KEY, &at.to_be_bytes()).map_err(store_err)?;
    }
    let last_id = match trees[usize::from(RECORDS)].last().map_err(store_err)? {
        Some((k, _)) => k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
        None => 0,
    };
    // New changes follow both what sled holds and what the log holds.
    let w = Writer { log, seq: at.max(opened.last_seq), last_id, sled_failed: None };
    if out.entries > 0 || from.is_none() {
        checkpoint_at(dir, db, meta, w.log.position())?;
    }
    Ok((w, out))
}

/// fdatasync of sled's own file (sled's `flush` only asks for `sync_file_range`).
pub(super) fn sync_sled(dir: &Path, db: &sled::Db) -> Result<(), JournalError> {
    db.flush().map_err(|e| JournalError::Sync(format!("sled flush: {e}")))?;
    File::open(dir.join("db")).and_then(|f| f.sync_data()).map_err(|e| JournalError::Sync(format!("fdatasync of the journal's store: {e}")))
}

/// Record that sled durably holds every change up to `seq`, whose log ends at `pos`.
fn checkpoint_at(dir: &Path, db: &sled::Db, meta: &sled::Tree, pos: Pos) -> Result<(), JournalError> {
    sync_sled(dir, db)?;
    crate::testhook::point_blocking(crate::testhook::IN_CHECKPOINT);
    meta.insert(CHECKPOINT_KEY, &pos.to_bytes()).map_err(store_err)?;
    sync_sled(dir, db)
}

/// A checkpoint while the journal runs: sled flushed and synced, the log position recorded, the
/// segments wholly before it removed. Holds the write lock only to read the position.
pub(super) fn checkpoint(dir: &Path, db: &sled::Db, meta: &sled::Tree, writer: &Mutex<Writer>) -> Result<u64, JournalError> {
    let (seq, pos) = {
        let w = writer.lock().map_err(|_| JournalError::Store("journal writer poisoned".into()))?;
        (w.seq, w.log.position())
    };
    checkpoint_at(dir, db, meta, pos)?;
    log::remove_before(&dir.join("log"), pos.seg).map_err(log_err)?;
    Ok(seq)
}

/// The last checkpoint at a clean stop: everything in sled and synced, then the log emptied (its
/// current segment zeroed for reuse), so the next start replays nothing at all.
pub(super) fn close(dir: &Path, db: &sled::Db, meta: &sled::Tree, writer: &Arc<Mutex<Writer>>) -> Result<(), JournalError> {
    checkpoint(dir, db, meta, writer)?;
    let mut w = writer.lock().map_err(|_| JournalError::Store("journal writer poisoned".into()))?;
    let start = w.log.rewind().map_err(log_err)?;
    meta.insert(CHECKPOINT_KEY, &start.to_bytes()).map_err(store_err)?;
    sync_sled(dir, db)
}
