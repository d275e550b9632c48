//! The high-water mark's side of the journal: the mark's values read from the trees, the check that a
//! journal is not behind them, and the thread that writes the mark after group commits.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::mark::{self, Mark, ProfileMark};
use super::sled_store::store_err;
use super::{JournalError, ProfileState};

/// The group commit's view of the high-water mark: the trees it reads and the file it writes.
pub(super) struct Guard {
    /// The open sled (its `records` and `profiles`), reached anew each time: a checkpoint may reopen it.
    pub(super) stores: Arc<super::sled_store::StoreSlot>,
    pub(super) mark: mark::MarkFile,
}

/// The latest durable mark values, handed from the group's leader to the mark thread.
#[derive(Default)]
pub(super) struct MarkSlot {
    pub(super) state: std::sync::Mutex<MarkSlotState>,
    pub(super) wake: std::sync::Condvar,
}

#[derive(Default)]
pub(super) struct MarkSlotState {
    pub(super) latest: Option<Mark>,
    pub(super) stop: bool,
    /// A mark update that failed: the next group commit reports it (the disk is failing).
    pub(super) error: Option<String>,
}

/// The least time between two mark writes. The mark is written by a thread of its own, so its
/// fdatasync never delays a group commit (on this kind of disk a small write + fdatasync costs as
/// much as 4 ms, which serialised with the log's sync cut durable throughput to a third); at most one
/// write per interval, with the newest values. The mark so lags the journal by at most this much, and
/// never runs ahead of it.
pub(super) const MARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

pub(super) fn mark_loop(mut file: mark::MarkFile, slot: Arc<MarkSlot>) {
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

/// The high-water mark's values as the trees hold them now.
pub(super) fn snapshot(records: &sled::Tree, profiles: &sled::Tree) -> Result<Mark, JournalError> {
    let last_id = match records.last().map_err(store_err)? {
        Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().map_err(|_| JournalError::Corrupt(hex::encode(&k), "record key is not 8 bytes".into()))?),
        None => 0,
    };
    let mut out = Mark { last_id, profiles: BTreeMap::new() };
    for kv in profiles.iter() {
        let (k, v) = kv.map_err(store_err)?;
        let name = String::from_utf8_lossy(&k).into_owned();
        let st: ProfileState = super::codec::decode_profile(&v).map_err(|e| JournalError::Corrupt(format!("profile {name}"), e))?;
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
pub(super) fn counter_behind(now: u32, mark: u32) -> bool {
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

pub(super) fn describe_profiles(m: &Mark) -> String {
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
pub(super) fn data_dir_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
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
