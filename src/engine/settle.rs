//! Settlement: close the batch before the request leaves, send the engine's totals, keep refused batches listed.
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;

impl Engine {
    /// `settle`, or `settle {"batch": N}` for an earlier batch listed as unsettled.
    pub(super) async fn settle(&self, lane: &Lane, key: Option<&str>, batch: Option<String>) -> Result<Answer, EngineError> {
        self.wait_not_owing(lane, None).await?;
        let _one = lane.signon.lock().await;
        let _gate = lane.gate.write().await;
        if let Some(b) = lane.blocking(None) {
            return Err(self.pending_error(lane, &b));
        }
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        let batch = match (batch, st.batch_open, &st.batch) {
            (Some(b), _, _) if st.unsettled.contains(&b) => b,
            (Some(b), true, Some(cur)) if *cur == b => b,
            (Some(b), _, _) => {
                return Err(EngineError::BadRequest(format!(
                    "batch {b:?} of profile {:?} is neither open nor listed as unsettled (unsettled: {:?})",
                    lane.profile.name, st.unsettled
                )))
            }
            (None, true, Some(b)) => b.clone(),
            (None, _, _) => return Err(EngineError::BadRequest(format!("profile {:?} has no open batch to settle", lane.profile.name))),
        };
        let done = self.settle_locked(lane, &batch, key).await?;
        Ok(Answer::of(&done))
    }

    /// Journal a settlement of `batch` and send it; the caller holds `signon` and the gate exclusively.
    pub(super) async fn settle_locked(&self, lane: &Lane, batch: &str, key: Option<&str>) -> Result<Record, EngineError> {
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        let totals = self.journal.totals(&lane.profile.name, batch).map_err(jerr)?;
        let mut rec = self.new_record(lane, "settle", OpClass::Settle, batch, key);
        rec.request.insert("totals".into(), json!(totals));
        let rec = match self.begin_durable(rec, true).await? {
            Ok(r) => r,
            Err(_) => {
                // The idempotency key was used before: that settlement is the answer.
                let first = key.map(|k| self.journal.by_idempotency_key(&lane.profile.name, k)).transpose().map_err(jerr)?.flatten();
                return first.ok_or_else(|| EngineError::Journal("an idempotency key names a missing record".into()));
            }
        };
        // From the moment a settlement of the batch may leave, nothing new is sent in it: a sale sent
        // into a batch the host has just closed is refused there, and its reversal too (found by the
        // soak: a reversal parked for good). A settlement that was not sent opens it again.
        self.close_batch(lane, batch).await?;
        self.settle_send(lane, rec, &st.session).await
    }

    /// Mark `batch` closed for new work (a settlement of it is about to leave), durably.
    pub(super) async fn close_batch(&self, lane: &Lane, batch: &str) -> Result<(), EngineError> {
        let mut st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        if !(st.batch_open && st.batch.as_deref() == Some(batch)) {
            return Ok(());
        }
        st.batch_open = false;
        let mut change = Change::default();
        change.profile_states.push((lane.profile.name.clone(), st));
        self.journal_commit(change).await?;
        self.journal.sync().await.map_err(jerr)?;
        Ok(())
    }

    /// Send (or resend) a journaled settlement and journal what came of it.
    pub(super) async fn settle_send(&self, lane: &Lane, mut rec: Record, session: &Value) -> Result<Record, EngineError> {
        testhook::point(testhook::IN_SETTLE).await;
        let totals: BTreeMap<String, i64> = rec.request.get("totals").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default();
        let (journal, profile, batch) = (self.journal.clone(), lane.profile.name.clone(), rec.batch.clone());
        let lines = move || -> Result<Vec<Value>, String> {
            Ok(journal
                .batch_records(&profile, &batch)
                .map_err(|e| e.to_string())?
                .iter()
                .filter(|r| r.class == crate::model::Class::Financial)
                .map(Record::view)
                .collect())
        };
        let req = backend::SettleRequest {
            journal_id: rec.id,
            identity: &lane.profile.identity,
            trace: &rec.trace,
            batch: &rec.batch,
            session,
            totals: &totals,
            lines: &lines,
            public: &rec.request,
        };
        let r = lane.backend.settle(req).await;
        testhook::point(testhook::SETTLE_SENT).await;
        Self::note_online(lane, &r);
        rec.updated_at = self.clock.now_rfc3339();
        let outcome = match &r {
            Ok(s) => Outcome::Answer(&s.reply),
            Err(e) => Outcome::Error(e),
        };
        outcome::apply(&mut rec, outcome::policy(Class::Settle, None), outcome, &self.timing(lane));
        let mut state = None;
        match (&r, rec.status) {
            (Ok(s), _) => {
                rec.result.insert("balanced".into(), json!(s.balanced));
                rec.result.insert("uploaded".into(), json!(s.uploaded));
                let mut st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
                if st.batch.as_deref() == Some(rec.batch.as_str()) {
                    st.batch_open = false;
                }
                st.unsettled.retain(|b| *b != rec.batch);
                state = Some(st);
                tracing::info!(profile = %lane.profile.name, batch = %rec.batch, balanced = s.balanced, "batch settled");
            }
            (Err(_), Status::Unknown) => {
                // Owed (first send unknown, or a resend that resolved nothing): the batch stays closed.
                if let Some(owed) = Owed::of(&rec) {
                    lane.set_owed(rec.id, Some(owed));
                }
                lane.wake.notify_one();
            }
            (Err(e), _) => {
                rec.result.insert("stage".into(), json!(e.stage));
                let mut st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
                if e.stage == Stage::NotSent {
                    // Nothing reached the host: the batch is open there still, and here again.
                    if st.batch.as_deref() == Some(rec.batch.as_str()) && !st.unsettled.contains(&rec.batch) {
                        st.batch_open = true;
                    }
                } else if !st.unsettled.contains(&rec.batch) {
                    // Refused: the batch stays closed here and is listed until a person settles it.
                    st.unsettled.push(rec.batch.clone());
                }
                state = Some(st);
            }
        }
        self.finish_durable(&rec, false, state).await?;
        // Only once the closed batch is durable may new money move: clearing the entry earlier let a
        // consume start on the batch this settlement had just closed (found by the crash loop).
        if rec.recovery.is_none() {
            lane.set_owed(rec.id, None);
        }
        Ok(rec)
    }
}
