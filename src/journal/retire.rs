//! The journal's side of retention: which settled batches may leave the hot journal, and their removal as one change.
//!
//! A batch may leave once it is settled (an approved settlement of it, not the profile's current batch,
//! not listed unsettled), every record of it is final, nothing is owed or parked, and its settlement is
//! older than the cut-off. The batch holding the journal's newest record stays until something newer
//! exists: the high-water mark and the next id are read from the newest record. The caller writes the
//! day files first and then calls `archive_batches`, which removes exactly what it was shown (a record
//! changed since is left where it is) through the journal's one write path.
use std::collections::{HashMap, HashSet};

use super::log::entry::{BATCHIDX, IDEM, PROFIDX, RECORDS, REFIDX, TOTALS};
use super::log::Op;
use super::sled_store::{batch_key, decode, encode, profile_index_key, reference_index_key, split_batch_key, store_err, Stores};
use super::{JournalError, ProfileState, SledJournal};
use crate::model::{Class, Record, Status};

/// A `batchidx` key and the record id it names.
type IndexEntry = (Vec<u8>, u64);

/// One settled batch ready to leave the hot journal.
#[derive(Debug, Clone)]
pub struct SettledBatch {
    pub profile: String,
    pub batch: String,
    /// When its settlement was journaled (RFC 3339).
    pub settled_at: String,
    /// Its records, as the journal holds them now.
    pub records: Vec<Record>,
    /// Every `batchidx` key under this batch or naming one of its records.
    index_keys: Vec<Vec<u8>>,
}

impl SledJournal {
    /// The batches settled before `cutoff` (RFC 3339) that may leave, at most about `max_records` records.
    pub(super) fn plan_retention_now(&self, cutoff: &str, max_records: usize) -> Result<Vec<SettledBatch>, JournalError> {
        let last_id = self.writer_last_id()?;
        let s = self.s()?;
        let owed: HashSet<Vec<u8>> = s.pending.iter().keys().chain(s.recovery.iter().keys()).filter_map(|k| k.ok()).map(|k| k.to_vec()).collect();
        let mut states: HashMap<String, ProfileState> = HashMap::new();
        // Index keys under one batch that name a record of another (a sign-on that began in this batch and
        // belongs to the next): few, so kept for the whole pass; everything else is held one batch at a time.
        let mut foreign: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        let mut out = Vec::new();
        let mut planned = 0usize;
        // `batchidx` keys sort by (profile, batch, id): one batch's keys are contiguous, so the pass holds
        // one batch in memory, never the whole index (a journal of a million records starts in bounded RSS).
        let mut group: Option<((String, String), Vec<IndexEntry>)> = None;
        let mut iter = s.batchidx.iter().keys();
        loop {
            let next = match iter.next() {
                Some(k) => {
                    let k = k.map_err(store_err)?;
                    if k.len() < 10 {
                        continue;
                    }
                    let mut idb = [0u8; 8];
                    idb.copy_from_slice(&k[k.len() - 8..]);
                    Some((split_batch_key(&k[..k.len() - 9]), k.to_vec(), u64::from_be_bytes(idb)))
                }
                None => None,
            };
            let same = matches!((&group, &next), (Some((g, _)), Some((n, _, _))) if g == n);
            if same {
                if let (Some((_, entries)), Some((_, k, id))) = (group.as_mut(), next) {
                    entries.push((k, id));
                }
                continue;
            }
            if let Some(((profile, batch), entries)) = group.take() {
                if planned < max_records {
                    if let Some(b) = self.plan_one(profile, batch, entries, cutoff, last_id, &owed, &mut states, &mut foreign)? {
                        planned += b.records.len();
                        out.push(b);
                    }
                }
            }
            match next {
                Some(((profile, batch), k, id)) => {
                    // A batch that stays unread is skipped whole: the pass seeks past its keys instead of
                    // walking them (the current batch of a busy terminal may hold a million).
                    if self.stays_unread(&s, &profile, &batch, id, cutoff, &mut states)? {
                        let mut past = batch_key(&profile, &batch);
                        past.push(1);
                        iter = s.batchidx.range(past..).keys();
                        continue;
                    }
                    group = Some(((profile, batch), vec![(k, id)]))
                }
                None => break,
            }
        }
        for b in &mut out {
            for r in &b.records {
                b.index_keys.extend(foreign.get(&r.id).into_iter().flatten().cloned());
            }
            b.index_keys.sort();
            b.index_keys.dedup();
        }
        Ok(out)
    }

    /// True when the batch is not read at all: the current batch never leaves, and an entry in it can only
    /// name a newer record; and ids grow with time, so when the batch's first record is younger than the
    /// cut-off, so is every record it indexes (its settlement included). A start-up thus reads the records
    /// of old batches only, not the whole journal.
    fn stays_unread(
        &self,
        s: &Stores,
        profile: &str,
        batch: &str,
        first: u64,
        cutoff: &str,
        states: &mut HashMap<String, ProfileState>,
    ) -> Result<bool, JournalError> {
        if !states.contains_key(profile) {
            states.insert(profile.to_string(), self.profile_state_of(profile)?);
        }
        if states[profile].batch.as_deref() == Some(batch) {
            return Ok(true);
        }
        let key = first.to_be_bytes();
        match s.records.get(key).map_err(store_err)? {
            Some(v) => Ok(decode(&key, &v)?.created_at.as_str() >= cutoff),
            None => Ok(false),
        }
    }

    /// One batch of the planning pass: `Some` when it may leave. Index entries of this batch that name a
    /// record of another batch are noted in `foreign`, so that record's batch takes them when it leaves.
    #[allow(clippy::too_many_arguments)]
    fn plan_one(
        &self,
        profile: String,
        batch: String,
        entries: Vec<IndexEntry>,
        cutoff: &str,
        last_id: u64,
        owed: &HashSet<Vec<u8>>,
        states: &mut HashMap<String, ProfileState>,
        foreign: &mut HashMap<u64, Vec<Vec<u8>>>,
    ) -> Result<Option<SettledBatch>, JournalError> {
        let s = self.s()?;
        let Some((_, first)) = entries.first() else { return Ok(None) };
        if self.stays_unread(&s, &profile, &batch, *first, cutoff, states)? {
            return Ok(None);
        }
        let st = &states[&profile];
        // An empty or unsettled batch stays, but its entries naming other batches' records are noted.
        let stays = batch.is_empty() || st.unsettled.contains(&batch);
        let mut records = Vec::new();
        let mut eligible = true;
        for (k, id) in &entries {
            let key = id.to_be_bytes();
            let Some(v) = s.records.get(key).map_err(store_err)? else { continue };
            let rec = decode(&key, &v)?;
            if rec.batch != batch {
                foreign.entry(rec.id).or_default().push(k.clone());
                continue;
            }
            if stays || !eligible {
                continue;
            }
            if !rec.status.is_final() || rec.recovery.is_some() || owed.contains(&key[..]) || rec.id >= last_id || super::archive::day_of(&rec).is_none() {
                eligible = false;
                records.clear();
                continue;
            }
            records.push(rec);
        }
        let settled_at = records.iter().filter(|r| r.class == Class::Settle && r.status == Status::Approved).map(|r| r.updated_at.clone()).max();
        let Some(settled_at) = settled_at.filter(|s| !stays && eligible && s.as_str() < cutoff) else { return Ok(None) };
        let index_keys: Vec<Vec<u8>> = entries.into_iter().map(|(k, _)| k).collect();
        Ok(Some(SettledBatch { profile, batch, settled_at, records, index_keys }))
    }

    /// Remove the records of `batches` (already in their day files), their indexes and batch totals, as
    /// one change; a batch any record of which changed since it was planned stays. Not yet durable:
    /// call `sync`. Returns how many records left.
    pub(super) fn archive_batches_now(&self, batches: &[SettledBatch]) -> Result<usize, JournalError> {
        let mut w = self.writer.lock().map_err(|_| JournalError::Store("journal writer poisoned".into()))?;
        let s = self.s()?;
        let mut ops = Vec::new();
        let mut moved = 0usize;
        'batches: for b in batches {
            for r in &b.records {
                let key = r.id.to_be_bytes();
                let now = s.records.get(key).map_err(store_err)?;
                if r.id >= w.last_id || now.as_deref() != Some(encode(r)?.as_slice()) {
                    tracing::info!(profile = %b.profile, batch = %b.batch, id = r.id, "retention: a record changed while its batch was being archived; the batch stays for the next run");
                    continue 'batches;
                }
            }
            for r in &b.records {
                let key = r.id.to_be_bytes();
                ops.push(Op::del(RECORDS, key));
                ops.push(Op::del(PROFIDX, profile_index_key(&r.profile, r.id)));
                if let Some(reference) = r.reference.as_deref().filter(|x| !x.is_empty()) {
                    ops.push(Op::del(REFIDX, reference_index_key(&r.profile, reference, r.id)));
                }
                if let Some(k) = &r.idempotency_key {
                    let ik = batch_key(&r.profile, k);
                    if s.idem.get(&ik).map_err(store_err)?.as_deref() == Some(&key[..]) {
                        ops.push(Op::del(IDEM, ik));
                    }
                }
            }
            ops.extend(b.index_keys.iter().map(|k| Op::del(BATCHIDX, k.clone())));
            ops.push(Op::del(TOTALS, batch_key(&b.profile, &b.batch)));
            moved += b.records.len();
        }
        let r = w.write(&s.trees, ops);
        self.after_write(&w, r)?;
        Ok(moved)
    }

    fn profile_state_of(&self, profile: &str) -> Result<ProfileState, JournalError> {
        match self.s()?.profiles.get(profile.as_bytes()).map_err(store_err)? {
            Some(v) => super::sled_store::decode_profile(profile.as_bytes(), &v),
            None => Ok(ProfileState::default()),
        }
    }

    fn writer_last_id(&self) -> Result<u64, JournalError> {
        self.writer.lock().map(|w| w.last_id).map_err(|_| JournalError::Store("journal writer poisoned".into()))
    }

    /// Records with an id above `after` created from day `from` to day `to` (inclusive), oldest
    /// first, at most `limit`.
    pub(super) fn records_after_now(&self, after: u64, from: &str, to: &str, limit: usize) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        let start = after.saturating_add(1);
        for kv in self.s()?.records.range(start.to_be_bytes()..) {
            let (k, v) = kv.map_err(store_err)?;
            let rec = decode(&k, &v)?;
            let day = rec.created_at.get(..10).unwrap_or_default();
            if day >= from && day <= to {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Begun, Change, JournalStore, NewRecord};
    use super::*;
    use crate::model::RecoveryState;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-retire-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("journal")
    }

    /// Journal one final record of `class` in `batch`, updated at `at`, with an idempotency key.
    async fn put(j: &SledJournal, batch: &str, class: Class, status: Status, at: &str, key: &str) -> Record {
        let mut r = Record::new("p", if class == Class::Settle { "settle" } else { "consume" }, class, batch, at);
        r.idempotency_key = Some(key.into());
        r.reference = Some(format!("ref-{key}"));
        let Begun::Created(mut r) = j.begin(NewRecord { record: r, allocate_trace: true }).unwrap() else { panic!("key reused") };
        r.status = status;
        r.updated_at = at.into();
        if status == Status::Unknown {
            r.recovery = Some(RecoveryState { how: crate::model::Recovery::Reverse, attempts: 0, next_at_ms: 0, parked: true, last_error: None });
        }
        let totals = vec![("p".to_string(), batch.to_string(), "pointDebitAmount".to_string(), 100)];
        j.commit(Change { records: vec![r.clone()], totals, ..Default::default() }).unwrap();
        j.sync().await.unwrap();
        r
    }

    /// Old settled batches are planned and leave with their indexes and totals; the current batch, an
    /// owed record's batch and a recently settled batch stay; a record changed after planning stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_old_settled_batches_with_nothing_owed_leave() {
        let d = dir("plan");
        let j = SledJournal::open(&d).unwrap();
        let old = "2024-01-01T10:00:00.000Z";
        let a1 = put(&j, "000001", Class::Financial, Status::Approved, old, "a1").await;
        let a2 = put(&j, "000001", Class::Financial, Status::Declined, old, "a2").await;
        let a3 = put(&j, "000001", Class::Settle, Status::Approved, old, "a3").await;
        // Settled long ago, but a record in it still owes its recovery (parked).
        put(&j, "000002", Class::Financial, Status::Unknown, old, "b1").await;
        put(&j, "000002", Class::Settle, Status::Approved, old, "b2").await;
        // Settled after the cut-off.
        put(&j, "000003", Class::Financial, Status::Approved, "2026-06-01T10:00:00.000Z", "c1").await;
        put(&j, "000003", Class::Settle, Status::Approved, "2026-06-01T10:00:00.000Z", "c2").await;
        // The current batch, whatever it holds.
        put(&j, "000004", Class::Settle, Status::Approved, old, "d0").await;
        let mut st = j.profile_state("p").unwrap();
        st.batch = Some("000004".into());
        j.commit(Change { profile_states: vec![("p".into(), st)], ..Default::default() }).unwrap();
        put(&j, "000005", Class::Financial, Status::Approved, old, "e1").await; // the newest record's batch

        let plan = j.plan_retention("2025-01-01T00:00:00.000Z", 1000).unwrap();
        assert_eq!(plan.iter().map(|b| b.batch.as_str()).collect::<Vec<_>>(), vec!["000001"]);
        assert_eq!(plan[0].records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a1.id, a2.id, a3.id]);
        assert_eq!(plan[0].settled_at, old);

        assert_eq!(j.archive_batches(&plan).unwrap(), 3);
        j.sync().await.unwrap();
        for r in [&a1, &a2, &a3] {
            assert!(j.get(r.id).unwrap().is_none());
            assert!(j.by_idempotency_key("p", r.idempotency_key.as_deref().unwrap()).unwrap().is_none());
        }
        assert!(j.batch_records("p", "000001").unwrap().is_empty());
        assert!(j.by_reference("p", "ref-a1").unwrap().is_empty());
        assert!(j.totals("p", "000001").unwrap().is_empty(), "the batch's totals leave with it");
        assert_eq!(j.batch_records("p", "000002").unwrap().len(), 2, "owed: stays");
        assert_eq!(j.batch_records("p", "000003").unwrap().len(), 2, "recent: stays");
        assert!(j.plan_retention("2025-01-01T00:00:00.000Z", 1000).unwrap().is_empty(), "nothing left to move");
        // The high-water mark still holds: the journal reopens.
        drop(j);
        let j = SledJournal::open(&d).unwrap();
        assert_eq!(j.profile_state("p").unwrap().idem_keys, 9, "the key count is the mark's and stays");

        // A record that changes between the plan and the removal keeps its batch in the journal.
        let plan = j.plan_retention("2026-12-01T00:00:00.000Z", 1000).unwrap();
        assert_eq!(plan.iter().map(|b| b.batch.as_str()).collect::<Vec<_>>(), vec!["000003"]);
        let mut c1 = j.batch_records("p", "000003").unwrap().remove(0);
        c1.message = Some("a late notification".into());
        j.commit(Change { records: vec![c1], ..Default::default() }).unwrap();
        assert_eq!(j.archive_batches(&plan).unwrap(), 0);
        assert_eq!(j.batch_records("p", "000003").unwrap().len(), 2);
        drop(j);
        let _ = std::fs::remove_dir_all(d.parent().unwrap());
    }
}
