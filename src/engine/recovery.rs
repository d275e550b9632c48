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
    let r = crate::metrics::timed(&lane.profile.backend, &lane.profile.name, &rec.operation, lane.backend.recover(tx, state.how)).await;
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
    crate::metrics::recovery_attempt(&lane.profile.name, rec.recovery.as_ref().map_or("resolved", |s| if s.parked { "parked" } else { "again" }));
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

    /// A backend whose every request goes unanswered and whose outcome is learnt by asking the vendor
    /// (`Recovery::Query`), each query answered from a script; sign-on and settlement are the defaults.
    mod query {
        use std::collections::VecDeque;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use serde_json::{json, Map, Value};

        use crate::backend::{
            Backend, BackendError, OpClass, OpSpec, OriginalRef, PrepareContext, PrepareError, Prepared, Recovered, Recovery, Reply, Stage, TxRequest, Verdict,
        };
        use crate::engine::{Engine, EngineConfig, SystemClock};

        const OPS: &[OpSpec] = &[
            OpSpec { name: "checkin", class: OpClass::SignOn, needs_original: false },
            OpSpec { name: "pay", class: OpClass::Financial(Recovery::Query), needs_original: false },
            OpSpec { name: "settle", class: OpClass::Settle, needs_original: false },
        ];

        #[derive(Default)]
        struct QueryBackend {
            script: Mutex<VecDeque<Recovered>>,
            asked: Mutex<Vec<Recovery>>,
        }

        #[async_trait::async_trait]
        impl Backend for QueryBackend {
            fn kind(&self) -> &'static str {
                "query-test"
            }
            fn operations(&self) -> &'static [OpSpec] {
                OPS
            }
            fn prepare(&self, _op: &str, body: &Map<String, Value>, _o: Option<&OriginalRef>, _c: &PrepareContext<'_>) -> Result<Prepared, PrepareError> {
                let fen = body.get("amount").and_then(Value::as_i64).ok_or_else(|| PrepareError::Missing("amount".into()))?;
                let mut p = Prepared { amount_fen: fen, totals: vec![("payCount".into(), 1), ("payAmount".into(), fen)], ..Prepared::default() };
                p.public.insert("amount".into(), json!(fen));
                Ok(p)
            }
            async fn execute(&self, _tx: TxRequest<'_>) -> Result<Reply, BackendError> {
                Err(BackendError::new("query-test", Stage::Unknown, "no answer within the timeout"))
            }
            async fn recover(&self, _tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError> {
                self.asked.lock().unwrap().push(how);
                Ok(self.script.lock().unwrap().pop_front().unwrap_or(Recovered::Again("the vendor cannot say yet".into())))
            }
        }

        fn reply(verdict: Verdict, code: &str) -> Reply {
            Reply {
                verdict,
                code: code.into(),
                message: code.into(),
                message_en: code.into(),
                fields: Map::new(),
                reference: None,
                trans_time: None,
                amount_fen: None,
            }
        }

        async fn settled(e: &Engine, id: u64) -> Value {
            for _ in 0..500 {
                let v = e.journal_record(id).unwrap();
                if v["state"] != "unknown" && v["state"] != "pending" {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("record {id} was never resolved: {}", e.journal_record(id).unwrap());
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_query_recovery_settles_approved_declined_or_never_happened() {
            let dir = tempfile::tempdir().unwrap();
            let pki = crate::net::tls::TestPki::ensure(dir.path()).unwrap();
            let text = format!(
                "name = \"q\"\nbackend = \"query-test\"\nbase_url = \"https://127.0.0.1:9\"\nca_file = \"{}\"\nstore = \"1\"\nterminal = \"2\"\n[recovery]\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\n",
                pki.ca_file.display()
            );
            let profile = crate::config::Profile::parse(&dir.path().join("q.toml"), &text).unwrap();
            let backend = Arc::new(QueryBackend::default());
            let b = backend.clone();
            let build = move |_: &crate::config::Profile, _| -> Result<Arc<dyn Backend>, crate::config::ConfigError> { Ok(b.clone()) };
            let cfg = EngineConfig { data_dir: dir.path().join("data"), profiles: vec![profile] };
            let e = Engine::open_with(cfg, Arc::new(SystemClock), &build).await.unwrap();

            // The vendor cannot say at first, then says it was approved: booked, in the totals.
            backend.script.lock().unwrap().extend([Recovered::Again("cannot say".into()), Recovered::Settled(reply(Verdict::Approved, "00"))]);
            let a = e.run("q", "pay", json!({"amount": 500}), None).await.unwrap();
            assert_eq!((a.http_status, a.body["state"].clone()), (202, json!("unknown")), "{}", a.body);
            let id = a.body["id"].as_u64().unwrap();
            let v = settled(&e, id).await;
            assert_eq!((v["status"].clone(), v["code"].clone()), (json!("approved"), json!("00")), "{v}");
            assert!(backend.asked.lock().unwrap().iter().all(|h| *h == Recovery::Query));
            assert_eq!(backend.asked.lock().unwrap().len(), 2);

            // Declined by the vendor: nothing booked.
            backend.script.lock().unwrap().push_back(Recovered::Settled(reply(Verdict::Declined, "51")));
            let id = e.run("q", "pay", json!({"amount": 700}), None).await.unwrap().body["id"].as_u64().unwrap();
            assert_eq!(settled(&e, id).await["status"], "declined");

            // Never happened at the vendor.
            backend.script.lock().unwrap().push_back(Recovered::Reversed { code: "none".into(), message: "no such order".into() });
            let id = e.run("q", "pay", json!({"amount": 900}), None).await.unwrap().body["id"].as_u64().unwrap();
            assert_eq!(settled(&e, id).await["status"], "reversed");

            let st = e.status();
            assert_eq!(st["profiles"][0]["totals"], json!({"payAmount": 500, "payCount": 1}), "{st}");
            // The default settlement closes the batch here, balanced, nothing sent.
            let s = e.run("q", "settle", json!({}), None).await.unwrap();
            assert_eq!(
                (s.body["status"].clone(), s.body["code"].clone(), s.body["result"]["balanced"].clone()),
                (json!("approved"), json!("local"), json!(true)),
                "{}",
                s.body
            );
            e.shutdown().await;
        }
    }
}
