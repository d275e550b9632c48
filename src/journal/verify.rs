//! `posgate journal verify`: an offline check of a journal against its mark, its indexes, its batch totals and its data key.
//!
//! It never writes to the data directory: it reads the mark first, then opens a private copy of
//! the journal folder (sled may write while recovering a log it opens), so it can also look at the
//! journal of a running daemon without disturbing it.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::guard::behind;
use super::sled_store::{split_batch_key, SledJournal, Stores};
use super::{mark, ProfileState};
use crate::journal::seal::Sealer;
use crate::model::{Record, Status};

/// Problems listed one by one before the rest are only counted.
const LIST_AT_MOST: usize = 20;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked and how much of it there is.
    pub facts: Vec<String>,
    /// Worth knowing, not wrong.
    pub warnings: Vec<String>,
    pub problems: Vec<String>,
    unlisted: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < LIST_AT_MOST {
            self.problems.push(p);
        } else {
            self.unlisted += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.facts {
            out.push_str(&format!("  ok    {f}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("  warn  {w}\n"));
        }
        for p in &self.problems {
            out.push_str(&format!("  FAIL  {p}\n"));
        }
        if self.unlisted > 0 {
            out.push_str(&format!("  FAIL  … and {} more problems\n", self.unlisted));
        }
        out.push_str(if self.ok() { "journal verified: no problems\n" } else { "journal verification FAILED\n" });
        out
    }
}

/// A scratch copy of the journal folder, removed when dropped.
struct Copy(PathBuf);

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else if t.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn id_of(k: &[u8]) -> Option<u64> {
    k.get(k.len().checked_sub(8)?..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// What the index checks need to know of one record.
struct Seen {
    profile: String,
    batch: String,
    status: Status,
    has_recovery: bool,
    idem: Option<String>,
}

/// Check the journal of `data_dir` (`journal/`, `journal.hwm`, `journal.key`). `scratch` is where
/// the private copy goes (the system temp folder when `None`).
pub fn verify(data_dir: &Path, scratch: Option<&Path>) -> Report {
    let mut r = Report::default();
    let dir = data_dir.join("journal");
    let mark_at = mark::mark_path(&dir);
    // The mark first: everything it says was durable before the copy below is taken.
    let found = match mark::read(&mark_at) {
        Ok(f) => f,
        Err(e) => {
            r.problem(e.to_string());
            None
        }
    };
    match &found {
        Some(f) => {
            r.facts.push(format!("high-water mark {} readable: last record id {}, {} profile(s)", mark_at.display(), f.mark.last_id, f.mark.profiles.len()));
            if let Some(w) = &f.warning {
                r.warnings.push(w.clone());
            }
        }
        None if mark_at.exists() => {}
        None => r.warnings.push(format!(
            "no high-water mark at {} (a journal from before posgate kept one, or it was removed): loss of records cannot be detected against it",
            mark_at.display()
        )),
    }
    if !dir.join("db").exists() {
        r.problem(format!("no journal at {} (no {})", dir.display(), dir.join("db").display()));
        return r;
    }
    let base = scratch.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let copy = Copy(base.join(format!("posgate-verify-{}-{}", std::process::id(), rand::random::<u32>())));
    if let Err(e) = copy_dir(&dir, &copy.0) {
        r.problem(format!("copying {} to {} to open it: {e}", dir.display(), copy.0.display()));
        return r;
    }
    let j = match SledJournal::open_db(&copy.0) {
        Ok(j) => j,
        Err(e) => {
            r.problem(format!("the journal does not open: {e}"));
            return r;
        }
    };
    if let Some(gap) = &j.replayed.gap {
        r.problem(format!("the log cannot bring the store up to date: {gap}"));
    }
    match j.mark_now() {
        Ok(now) => {
            if let Some(f) = &found {
                let short = behind(&f.mark, &now);
                if short.is_empty() {
                    r.facts.push(format!("journal is at or past its mark (last record id {} >= {})", now.last_id, f.mark.last_id));
                }
                for s in short {
                    r.problem(format!("behind the high-water mark: {s}"));
                }
            }
        }
        Err(e) => r.problem(format!("reading the journal's counters: {e}")),
    }
    match j.s() {
        Ok(s) => check_contents(&s, data_dir, &mut r),
        Err(e) => r.problem(format!("reading the journal: {e}")),
    }
    drop(j);
    r
}

fn check_contents(j: &Stores, data_dir: &Path, r: &mut Report) {
    let key_path = data_dir.join("journal.key");
    let sealer = if key_path.exists() {
        match Sealer::open(&key_path, false) {
            Ok(s) => Some(s),
            Err(e) => {
                r.problem(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    let mut sums: BTreeMap<(String, String), BTreeMap<String, i128>> = BTreeMap::new();
    let mut traces: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut last_traces: HashSet<(String, String)> = HashSet::new();
    let (mut undecodable, mut sealed, mut unopened) = (0usize, 0usize, 0usize);
    for kv in j.records.iter() {
        let (k, v) = match kv {
            Ok(kv) => kv,
            Err(e) => {
                r.problem(format!("reading records: {e}"));
                break;
            }
        };
        let rec: Record = match super::codec::decode_any(&v) {
            Ok(rec) => rec,
            Err(e) => {
                undecodable += 1;
                r.problem(format!("record {} does not decode: {e}", hex::encode(&k)));
                continue;
            }
        };
        if id_of(&k) != Some(rec.id) || k.len() != 8 {
            r.problem(format!("record under key {} says it is id {}", hex::encode(&k), rec.id));
        }
        if let Some(s) = rec.sealed.as_deref() {
            sealed += 1;
            match &sealer {
                Some(sl) if sl.unseal(Some(s)).is_ok() => {}
                Some(_) => unopened += 1,
                None => {}
            }
        }
        if rec.status == Status::Approved && rec.class == crate::model::Class::Financial {
            let m = sums.entry((rec.profile.clone(), rec.batch.clone())).or_default();
            for (key, d) in &rec.totals {
                *m.entry(key.clone()).or_insert(0) += i128::from(*d);
            }
        }
        if !rec.trace.is_empty() {
            last_traces.insert((rec.profile.clone(), rec.trace.clone()));
            if !traces.entry((rec.profile.clone(), rec.batch.clone())).or_default().insert(rec.trace.clone()) {
                r.problem(format!("record {}: trace {} used twice in profile {} batch {}", rec.id, rec.trace, rec.profile, rec.batch));
            }
        }
        seen.insert(
            rec.id,
            Seen { profile: rec.profile, batch: rec.batch, status: rec.status, has_recovery: rec.recovery.is_some(), idem: rec.idempotency_key },
        );
    }
    let decoded = seen.len();
    if undecodable == 0 {
        let span = match (seen.keys().next(), seen.keys().next_back()) {
            (Some(a), Some(b)) => format!(" (ids {a}..{b})"),
            _ => String::new(),
        };
        r.facts.push(format!("{decoded} records, every one decodes{span}"));
    }
    check_indexes(j, &seen, r);
    check_totals(j, &sums, r);
    let archived = check_archive(data_dir, r);
    last_traces.extend(archived.iter().filter(|a| !a.trace.is_empty()).map(|a| (a.profile.clone(), a.trace.clone())));
    check_profiles(j, &seen, &archived, &last_traces, r);
    if sealed > 0 {
        match &sealer {
            None if !key_path.exists() => r.problem(format!("{sealed} records hold sealed fields but the data key {} is missing: recovery cannot replay them. Restore journal.key from the backup made with this journal", key_path.display())),
            None => {}
            Some(_) if unopened > 0 => r.problem(format!("{unopened} of {sealed} sealed fields do not open with {} (a different key than the one that sealed them)", key_path.display())),
            Some(_) => r.facts.push(format!("{sealed} sealed fields, all open with {}", key_path.display())),
        }
    } else if !key_path.exists() && decoded > 0 {
        r.warnings.push(format!("no data key at {} (no record needs one)", key_path.display()));
    }
}

fn check_indexes(j: &Stores, seen: &BTreeMap<u64, Seen>, r: &mut Report) {
    let bad = |r: &mut Report, tree: &str, k: &[u8], why: &str| r.problem(format!("{tree} entry {}: {why}", hex::encode(k)));
    // pending and recovery: id → (), the record in that state.
    let mut in_pending = HashSet::new();
    for (k, _) in j.pending.iter().flatten() {
        match id_of(&k).and_then(|id| seen.get(&id).map(|s| (id, s))) {
            Some((id, s)) if s.status == Status::Pending => {
                in_pending.insert(id);
            }
            Some((_, s)) => bad(r, "pending", &k, &format!("the record is {:?}, not pending", s.status)),
            None => bad(r, "pending", &k, "names no record"),
        }
    }
    let mut in_recovery = HashSet::new();
    for (k, _) in j.recovery.iter().flatten() {
        match id_of(&k).and_then(|id| seen.get(&id).map(|s| (id, s))) {
            Some((id, s)) if s.status == Status::Unknown && s.has_recovery => {
                in_recovery.insert(id);
            }
            Some(_) => bad(r, "recovery", &k, "the record owes no recovery"),
            None => bad(r, "recovery", &k, "names no record"),
        }
    }
    // batchidx: profile \0 batch \0 id. A sign-on's record is indexed under the batch it began in too.
    let mut in_batch = HashSet::new();
    for (k, _) in j.batchidx.iter().flatten() {
        let (profile, rest) = split_batch_key(&k[..k.len().saturating_sub(9)]);
        match id_of(&k).and_then(|id| seen.get(&id).map(|s| (id, s))) {
            Some((id, s)) if s.profile == profile => {
                if s.batch == rest {
                    in_batch.insert(id);
                }
            }
            Some(_) => bad(r, "batchidx", &k, "the record belongs to another profile"),
            None => bad(r, "batchidx", &k, "names no record"),
        }
    }
    let mut in_prof = HashSet::new();
    for (k, _) in j.profidx.iter().flatten() {
        let profile = String::from_utf8_lossy(&k[..k.len().saturating_sub(9)]).into_owned();
        match id_of(&k).and_then(|id| seen.get(&id).map(|s| (id, s))) {
            Some((id, s)) if s.profile == profile => {
                in_prof.insert(id);
            }
            Some(_) => bad(r, "profidx", &k, "the record belongs to another profile"),
            None => bad(r, "profidx", &k, "names no record"),
        }
    }
    let mut idem_of: HashSet<u64> = HashSet::new();
    let mut idem_count = 0usize;
    for (k, v) in j.idem.iter().flatten() {
        idem_count += 1;
        let (profile, key) = split_batch_key(&k);
        let id = <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes);
        match id.and_then(|id| seen.get(&id).map(|s| (id, s))) {
            Some((id, s)) if s.profile == profile && s.idem.as_deref() == Some(key.as_str()) => {
                idem_of.insert(id);
            }
            Some(_) => bad(r, "idem", &k, "the record has another profile or key"),
            None => bad(r, "idem", &k, "names no record"),
        }
    }
    let before = r.problems.len() + r.unlisted;
    for (id, s) in seen {
        let mut missing = Vec::new();
        if s.status == Status::Pending && !in_pending.contains(id) {
            missing.push("pending");
        }
        if s.status == Status::Unknown && s.has_recovery && !in_recovery.contains(id) {
            missing.push("recovery");
        }
        if !in_batch.contains(id) {
            missing.push("batchidx");
        }
        if !in_prof.contains(id) {
            missing.push("profidx");
        }
        if s.idem.is_some() && !idem_of.contains(id) {
            missing.push("idem");
        }
        if !missing.is_empty() {
            r.problem(format!("record {id} is missing from {}", missing.join(", ")));
        }
    }
    if before == r.problems.len() + r.unlisted {
        r.facts.push(format!(
            "indexes agree with the records ({} pending, {} owing recovery, {idem_count} idempotency keys)",
            in_pending.len(),
            in_recovery.len()
        ));
    }
}

fn check_totals(j: &Stores, sums: &BTreeMap<(String, String), BTreeMap<String, i128>>, r: &mut Report) {
    let before = r.problems.len() + r.unlisted;
    let mut stored: BTreeMap<(String, String), BTreeMap<String, i64>> = BTreeMap::new();
    for (k, v) in j.totals.iter().flatten() {
        match super::codec::decode_totals(&v) {
            Ok(m) => {
                stored.insert(split_batch_key(&k), m);
            }
            Err(e) => r.problem(format!("totals of {:?} do not decode: {e}", split_batch_key(&k))),
        }
    }
    let batches: std::collections::BTreeSet<&(String, String)> = stored.keys().chain(sums.keys()).collect();
    for b in &batches {
        let empty_s = BTreeMap::new();
        let empty_c = BTreeMap::new();
        let s = stored.get(*b).unwrap_or(&empty_s);
        let c = sums.get(*b).unwrap_or(&empty_c);
        let keys: std::collections::BTreeSet<&String> = s.keys().chain(c.keys()).collect();
        for k in keys {
            let (have, want) = (s.get(k).copied().map(i128::from).unwrap_or(0), c.get(k).copied().unwrap_or(0));
            if have != want {
                r.problem(format!("profile {} batch {}: total {k} is {have}, its approved records add up to {want}", b.0, b.1));
            }
        }
    }
    if before == r.problems.len() + r.unlisted {
        r.facts.push(format!("{} batch totals equal the sums of their approved records", batches.len()));
    }
}

/// Every day file under `archive/` read in full: a damaged one is a problem naming it. Returns the
/// archived records (their idempotency keys and traces still count for the profiles).
fn check_archive(data_dir: &Path, r: &mut Report) -> Vec<Record> {
    let (mut files, mut out) = (0usize, Vec::new());
    for (_, got) in super::archive::Archive::of(data_dir).check_all() {
        match got {
            Ok(recs) => {
                files += 1;
                out.extend(recs);
            }
            Err(e) => r.problem(e.to_string()),
        }
    }
    if files > 0 {
        r.facts.push(format!("{files} archive day files, {} archived records, every checksum holds", out.len()));
    }
    out
}

fn check_profiles(j: &Stores, seen: &BTreeMap<u64, Seen>, archived: &[Record], traces: &HashSet<(String, String)>, r: &mut Report) {
    let mut keys: HashMap<&str, u64> = HashMap::new();
    for s in seen.values() {
        if s.idem.is_some() {
            *keys.entry(s.profile.as_str()).or_insert(0) += 1;
        }
    }
    // An archived record still in the journal (a move cut short) counts once.
    for a in archived.iter().filter(|a| a.idempotency_key.is_some() && !seen.contains_key(&a.id)) {
        *keys.entry(a.profile.as_str()).or_insert(0) += 1;
    }
    for (k, v) in j.profiles.iter().flatten() {
        let name = String::from_utf8_lossy(&k).into_owned();
        let st: ProfileState = match super::codec::decode_profile(&v) {
            Ok(st) => st,
            Err(e) => {
                r.problem(format!("profile {name}: state does not decode: {e}"));
                continue;
            }
        };
        let mut bad = Vec::new();
        let n = keys.get(name.as_str()).copied().unwrap_or(0);
        if st.idem_keys != n {
            bad.push(format!("counts {} idempotency keys, its records hold {n}", st.idem_keys));
        }
        if st.last_trace > 0 && !traces.contains(&(name.clone(), format!("{:06}", st.last_trace))) {
            bad.push(format!("no record holds its last trace {:06}", st.last_trace));
        }
        if bad.is_empty() {
            r.facts.push(format!(
                "profile {name}: trace {:06}, batch {} ({}), {} idempotency keys",
                st.last_trace,
                st.batch.as_deref().unwrap_or("-"),
                if st.batch_open { "open" } else { "settled" },
                st.idem_keys
            ));
        } else {
            r.problem(format!("profile {name}: {}", bad.join(", ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Begun, Change, JournalStore, NewRecord};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-verify-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A data dir with `n` approved consumes (each with a key and a sealed card) and a key.
    async fn data_dir(name: &str, n: usize) -> PathBuf {
        let d = scratch(name);
        let sealer = Sealer::open(&d.join("journal.key"), true).unwrap();
        let j = SledJournal::open(&d.join("journal")).unwrap();
        for i in 0..n {
            let mut r = Record::new("p", "consume", crate::model::Class::Financial, "000001", "2026-11-23T00:00:00.000Z");
            r.totals = vec![("pointDebitAmount".into(), 100 + i as i64)];
            r.idempotency_key = Some(format!("k{i}"));
            let vault = serde_json::json!({"cardNo": "6222020000000000008"}).as_object().cloned().unwrap();
            r.sealed = sealer.seal(&vault).unwrap();
            let Begun::Created(mut r) = j.begin(NewRecord { record: r, allocate_trace: true }).unwrap() else { panic!("key reused") };
            r.status = Status::Approved;
            let totals = r.totals.iter().map(|(k, d)| ("p".to_string(), "000001".to_string(), k.clone(), *d)).collect();
            j.commit(Change { records: vec![r], totals, ..Default::default() }).unwrap();
            j.sync().await.unwrap();
        }
        d
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_passes_a_sound_journal_and_writes_nothing() {
        let d = data_dir("sound", 4).await;
        let before = std::fs::read(d.join("journal.hwm")).unwrap();
        let db_before = std::fs::read(d.join("journal/db")).unwrap();
        let r = verify(&d, Some(&d));
        let text = r.render();
        assert!(r.ok(), "{text}");
        assert!(text.contains("4 records, every one decodes"), "{text}");
        assert!(text.contains("1 batch totals equal"), "{text}");
        assert!(text.contains("4 sealed fields, all open"), "{text}");
        assert!(text.contains("profile p: trace 000004"), "{text}");
        assert_eq!(std::fs::read(d.join("journal.hwm")).unwrap(), before);
        assert_eq!(std::fs::read(d.join("journal/db")).unwrap(), db_before);
        // The scratch copy is gone.
        assert!(!std::fs::read_dir(&d).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("posgate-verify")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_names_broken_indexes_totals_key_and_mark() {
        let d = data_dir("broken", 3).await;
        {
            // Damage it behind the journal's back: a lost idempotency entry, a wrong total, a
            // pending entry for a record that does not exist.
            let jj = SledJournal::open_db(&d.join("journal")).unwrap();
            let j = jj.s().unwrap();
            let first = j.idem.iter().next().unwrap().unwrap().0;
            j.idem.remove(first).unwrap();
            let (k, _) = j.totals.iter().next().unwrap().unwrap();
            j.totals.insert(k, serde_json::to_vec(&serde_json::json!({"pointDebitAmount": 1})).unwrap()).unwrap();
            j.pending.insert(999u64.to_be_bytes(), &[]).unwrap();
            j.db.flush().unwrap();
        }
        let text = verify(&d, Some(&d)).render();
        assert!(text.contains("verification FAILED"), "{text}");
        assert!(text.contains("is missing from idem"), "{text}");
        assert!(text.contains("total pointDebitAmount is 1, its approved records add up to 303"), "{text}");
        assert!(text.contains("pending entry 00000000000003e7: names no record"), "{text}");

        // A different key does not open the sealed fields; no key at all is named too.
        std::fs::remove_file(d.join("journal.key")).unwrap();
        let text = verify(&d, Some(&d)).render();
        assert!(text.contains("3 records hold sealed fields but the data key"), "{text}");
        Sealer::open(&d.join("journal.key"), true).unwrap();
        let text = verify(&d, Some(&d)).render();
        assert!(text.contains("3 of 3 sealed fields do not open"), "{text}");

        // A corrupt mark.
        let mut m = std::fs::read(d.join("journal.hwm")).unwrap();
        for b in m.iter_mut().filter(|b| **b == b'"') {
            *b = b'\'';
        }
        std::fs::write(d.join("journal.hwm"), &m).unwrap();
        let text = verify(&d, Some(&d)).render();
        assert!(text.contains("high-water mark") && text.contains("corrupt"), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
