//! Sign-on (check-in): single-flight per terminal, owed reversals first, an open batch settled before a new one.
use serde_json::json;

use super::*;

impl Engine {
    /// Sign on: one at a time per terminal, and only when needed (single flight: the need is looked at
    /// again once the lock is taken). Never beside a request or reversal of the terminal in flight (the
    /// gate is held exclusively); owed reversals go out first; a batch holding approved records is
    /// settled (or marked unsettled when the host refuses) before a new one is opened.
    pub(super) async fn sign_on(&self, lane: &Lane, key: Option<&str>, need: SignOnNeed) -> Result<Answer, EngineError> {
        let _one = lane.signon.lock().await;
        let _gate = lane.gate.write().await;
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        let open = st.batch_open && st.batch.is_some();
        let done_already = match &need {
            SignOnNeed::Asked => false,
            SignOnNeed::NoOpenBatch => open,
            SignOnNeed::Stale(b) => !open || st.batch.as_deref() != Some(b.as_str()),
        };
        if done_already {
            return Ok(Answer { http_status: 200, body: json!({"status": "approved", "batch": st.batch}) });
        }
        // Reversal first: whatever the terminal as a whole owes goes out before the batch changes.
        let owed: Vec<u64> = {
            let owed = lane.owed.lock().unwrap_or_else(|p| p.into_inner());
            owed.iter().filter(|(_, o)| !o.parked && o.unit.is_none()).map(|(id, _)| *id).collect()
        };
        for id in owed {
            recovery::attempt_locked(self, lane, id).await?;
        }
        if let Some(b) = lane.blocking_terminal() {
            return Err(self.pending_error(lane, &b));
        }
        // No batch is ever abandoned.
        let st = self.close_before_sign_on(lane, st).await?;
        let mut rec = self.new_record(lane, "checkin", OpClass::SignOn, st.batch.as_deref().unwrap_or(""), key);
        rec = match self.begin_durable(rec, false).await? {
            Ok(r) => r,
            Err(existing) => return Ok(existing),
        };
        let r = lane.backend.sign_on(&lane.profile.identity, rec.id, "").await;
        Self::note_online(lane, &r);
        match r {
            Ok(s) => {
                let mut st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
                let batch = match s.batch {
                    Some(b) => b,
                    None => {
                        st.last_batch = crate::journal::next_trace(st.last_batch);
                        format!("{:06}", st.last_batch)
                    }
                };
                st.batch = Some(batch.clone());
                st.batch_open = true;
                st.session = s.session;
                outcome::apply(&mut rec, None, Outcome::Answer(&s.reply), &self.timing(lane));
                rec.batch = batch;
                rec.updated_at = self.clock.now_rfc3339();
                self.finish_durable(&rec, false, Some(st)).await?;
                tracing::info!(profile = %lane.profile.name, batch = %rec.batch, "signed on");
                Ok(Answer::of(&rec))
            }
            Err(e) => {
                outcome::apply(&mut rec, None, Outcome::Error(&e), &self.timing(lane));
                rec.updated_at = self.clock.now_rfc3339();
                // The host may have opened a new batch whose number we never heard: the old one is
                // not used again (its records were settled above); the next request signs on anew.
                let state = if e.stage == Stage::Unknown {
                    let mut st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
                    st.batch_open = false;
                    Some(st)
                } else {
                    None
                };
                self.finish_durable(&rec, false, state).await?;
                Err(EngineError::SignOnFailed(e.to_string()))
            }
        }
    }

    /// Before a new batch is opened: settle the open one if it holds approved records. A host that
    /// refuses leaves it listed as unsettled (status, `posgate settle PROFILE --batch N`); an unknown
    /// settlement outcome stops the sign-on (its resend is owed first).
    pub(super) async fn close_before_sign_on(&self, lane: &Lane, st: crate::journal::ProfileState) -> Result<crate::journal::ProfileState, EngineError> {
        let Some(batch) = st.batch.clone().filter(|_| st.batch_open && lane.settles()) else { return Ok(st) };
        let totals = self.journal.totals(&lane.profile.name, &batch).map_err(jerr)?;
        if totals.values().all(|v| *v == 0) {
            return Ok(st);
        }
        tracing::info!(profile = %lane.profile.name, batch = %batch, "settling the open batch before signing on again");
        let mut rec = self.settle_locked(lane, &batch, None).await?;
        if rec.status == Status::Unknown {
            // Its answer was lost: resend it once now, before giving up on this sign-on.
            if let Some(done) = recovery::attempt_locked(self, lane, rec.id).await? {
                rec = done;
            }
        }
        // `settle_send` closed the batch (approved) or listed it as unsettled (refused): either way the
        // new batch may open.
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        match rec.status {
            Status::Approved => Ok(st),
            Status::Failed if rec.result.get("stage") == Some(&json!(Stage::Rejected)) => {
                tracing::warn!(profile = %lane.profile.name, batch = %batch, "the host refused to settle the batch; it is listed as unsettled");
                Ok(st)
            }
            _ => Err(EngineError::SignOnFailed(format!(
                "batch {batch} holds approved records and could not be settled before signing on again ({}); it will be tried again",
                rec.error.as_deref().unwrap_or("outcome unknown")
            ))),
        }
    }
}
