//! The recovery queue: retries owed reversals/resends with exponential backoff and jitter, parks after the limit.
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{jerr, Engine, EngineError, Lane, Owed, Record, Status};
use crate::backend::{Recovered, TxRequest};

#[cfg(test)]
use super::outcome::backoff_ms;
use super::outcome::{self, Outcome};

/// Releases a record's "attempt in progress" mark when dropped.
pub(super) struct Busy<'a>(&'a std::sync::Mutex<std::collections::HashSet<u64>>, u64);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

/// Mark a record's recovery as in progress; `None` when someone else is at it.
///
/// The guard is built only after the set's lock is released, and only when this caller inserted the
/// mark: a `Busy` built inside the locked expression (`insert(id).then_some(Busy(..))` evaluates its
/// argument eagerly) was dropped with the lock held, and its `Drop` locked it again: a self-deadlock
/// that hung the whole daemon, and it also removed the other claimant's mark.
pub(super) fn claim(lane: &Lane, id: u64) -> Option<Busy<'_>> {
    claim_in(&lane.busy, id)
}

fn claim_in(set: &std::sync::Mutex<std::collections::HashSet<u64>>, id: u64) -> Option<Busy<'_>> {
    let inserted = set.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    if inserted {
        Some(Busy(set, id))
    } else {
        None
    }
}

/// One recovery attempt for journal record `id`. `Some(record)` once it is resolved.
pub(super) async fn attempt(engine: &Engine, lane: &Lane, id: u64) -> Result<Option<Record>, EngineError> {
    let is_settle = matches!(engine.journal.get(id).map_err(jerr)?, Some(r) if r.class == crate::model::Class::Settle);
    if is_settle {
        // A settlement resend holds sign-on and the gate like the first send did, so no operation can
        // read the batch while it is being closed and no check-in opens another meanwhile.
        let _one = lane.signon.lock().await;
        let _gate = lane.gate.write().await;
        attempt_locked(engine, lane, id).await
    } else {
        // A reversal or resend holds the gate shared: no check-in goes out while it is in flight.
        let _gate = lane.gate.read().await;
        attempt_locked(engine, lane, id).await
    }
}

/// One recovery attempt; the caller holds the gate (shared for a reversal, exclusively for a settlement).
pub(super) async fn attempt_locked(engine: &Engine, lane: &Lane, id: u64) -> Result<Option<Record>, EngineError> {
    let Some(_busy) = claim(lane, id) else { return Ok(None) };
    let Some(mut rec) = engine.journal.get(id).map_err(jerr)? else {
        lane.set_owed(id, None);
        return Ok(None);
    };
    if rec.status == Status::Pending {
        // Its sender mirrors the owed entry before it commits the unknown outcome: a recovery woken in
        // that gap (another lane's expedite) read `pending`, cleared the mirror, and a settlement went
        // out beside a sale whose reversal the host then refused for good (found by the soak, seed 77).
        // The record is not ours yet; the mirror stays until the sender's commit.
        return Ok(None);
    }
    let Some(state) = rec.recovery.clone().filter(|_| rec.status == Status::Unknown) else {
        lane.set_owed(id, None);
        return Ok(Some(rec));
    };
    if rec.class == crate::model::Class::Settle {
        let session = engine.journal.profile_state(&lane.profile.name).map_err(jerr)?.session;
        let done = engine.settle_send(lane, rec, &session).await?;
        return Ok(done.status.is_final().then_some(done));
    }
    let session = engine.journal.profile_state(&lane.profile.name).map_err(jerr)?.session;
    let vault = engine.sealer.unseal(rec.sealed.as_deref())?;
    let original = match rec.original {
        Some(oid) => engine.journal.get(oid).map_err(jerr)?.map(|o| engine.original_of(o)).transpose()?,
        None => None,
    };
    let empty = serde_json::Map::new();
    let tx = TxRequest {
        slot: rec.slot.as_deref(),
        journal_id: rec.id,
        operation: &rec.operation,
        identity: &lane.profile.identity,
        trace: &rec.trace,
        batch: &rec.batch,
        created_at: &rec.created_at,
        session: &session,
        public: &rec.request,
        vault: &vault,
        transient: &empty,
        original: original.as_ref(),
    };
    let r = lane.backend.recover(tx, state.how).await;
    Engine::note_online(lane, &r);
    rec.updated_at = engine.clock.now_rfc3339();
    let outcome = match &r {
        Ok(Recovered::Reversed { code, message }) => Outcome::Reversed { code: code.clone(), message: message.clone() },
        Ok(Recovered::Settled(reply)) => Outcome::Answer(reply),
        Ok(Recovered::Again(why)) => Outcome::NotYet(why.clone()),
        Err(e) => Outcome::Error(e),
    };
    let approved = outcome::apply(&mut rec, Some(state.how), outcome, &engine.timing(lane));
    match &rec.recovery {
        None => tracing::info!(profile = %lane.profile.name, id, trace = %rec.trace, status = ?rec.status, "recovered"),
        Some(st) if st.parked => tracing::error!(profile = %lane.profile.name, id, attempts = st.attempts, "recovery parked: needs attention"),
        Some(st) => {
            tracing::warn!(profile = %lane.profile.name, id, attempts = st.attempts, "recovery attempt failed: {}", st.last_error.as_deref().unwrap_or(""))
        }
    }
    let owed = Owed::of(&rec);
    engine.finish_durable(&rec, approved, None).await?;
    lane.set_owed(id, owed);
    if rec.recovery.as_ref().is_some_and(|r| r.parked) {
        engine.emit("recovery", serde_json::json!({"needs_attention": true, "record": rec.view()}));
    }
    Ok(rec.status.is_final().then_some(rec))
}

/// Per-profile loop: attempt every due entry, oldest first, then sleep until the next is due.
pub(super) async fn worker(engine: Weak<Engine>, lane: Arc<Lane>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(e) = engine.upgrade() else { return };
        let now = e.clock.now_ms();
        let due: Vec<u64> = {
            let owed = lane.owed.lock().unwrap_or_else(|p| p.into_inner());
            owed.iter().filter(|(_, o)| !o.parked && o.next_at_ms <= now).map(|(id, _)| *id).collect()
        };
        for id in due {
            if *stop.borrow() {
                return;
            }
            if let Err(err) = attempt(&e, &lane, id).await {
                tracing::error!(profile = %lane.profile.name, id, "recovery: {err}");
            }
        }
        let next = {
            let owed = lane.owed.lock().unwrap_or_else(|p| p.into_inner());
            owed.values().filter(|o| !o.parked).map(|o| o.next_at_ms).min()
        };
        let wait = next.map(|n| (n - e.clock.now_ms()).clamp(5, 60_000)).unwrap_or(60_000);
        drop(e);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            _ = lane.wake.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{backoff_ms, claim_in};

    /// Regression: a second claim on a claimed record deadlocked the thread (its throw-away guard was
    /// dropped while the set was locked) and removed the first claimant's mark.
    #[test]
    fn second_claim_on_a_claimed_record_returns_at_once_and_leaves_the_first_mark() {
        let set = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = set.clone();
        // A thread, not a scope: if the claim deadlocks, the test fails instead of hanging on the join.
        std::thread::spawn(move || {
            let first = claim_in(&s2, 7).expect("first claim");
            let second = claim_in(&s2, 7);
            let still_marked = s2.lock().map(|m| m.contains(&7)).unwrap_or(false);
            let refused = second.is_none();
            drop(second);
            drop(first);
            let _ = tx.send((refused, still_marked));
        });
        let (refused, still_marked) = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the second claim hung (self-deadlock)");
        assert!(refused, "a second claim must be refused");
        assert!(still_marked, "the refused claim removed the first claimant's mark");
        assert!(set.lock().map(|m| m.is_empty()).unwrap_or(false), "the first guard releases its mark");
        assert!(claim_in(&set, 7).is_some());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        for attempts in 0..40 {
            let base = (200u64 << attempts.min(30)).min(60_000) as i64;
            for _ in 0..50 {
                let d = backoff_ms(200, 60_000, attempts);
                assert!(d >= base / 2 && d <= base, "attempt {attempts}: {d} not in [{}, {base}]", base / 2);
            }
        }
        // Jitter: not every retry of a fleet lands on the same millisecond.
        let spread: std::collections::HashSet<i64> = (0..100).map(|_| backoff_ms(200, 60_000, 5)).collect();
        assert!(spread.len() > 10, "{spread:?}");
    }
}
