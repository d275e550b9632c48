//! What the local API shows and a technician does: status, journal views, recovery retry and hand resolution, events.
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::*;

impl Engine {
    /// The `GET /v1/status` body: version, profiles, devices.
    pub fn status(&self) -> Value {
        let profiles: Vec<ProfileStatus> = self
            .lanes
            .values()
            .map(|lane| {
                let st = self.journal.profile_state(&lane.profile.name).unwrap_or_default();
                let owed = lane.owed.lock().unwrap_or_else(|p| p.into_inner());
                let totals = st.batch.as_ref().and_then(|b| self.journal.totals(&lane.profile.name, b).ok()).unwrap_or_default();
                ProfileStatus {
                    name: lane.profile.name.clone(),
                    backend: lane.profile.backend.clone(),
                    batch: st.batch.clone(),
                    batch_open: st.batch_open,
                    trace: format!("{:06}", st.last_trace),
                    online: lane.online.load(Ordering::Relaxed),
                    pending_recovery: owed.values().filter(|o| !o.parked).count(),
                    needs_attention: owed.values().filter(|o| o.parked).count(),
                    owed_ids: owed.keys().copied().collect(),
                    unsettled_batches: st.unsettled.clone(),
                    totals,
                    plain_http: lane.profile.plain_http,
                    warnings: crate::backend::registry::warnings(&lane.profile),
                }
            })
            .collect();
        // Whether the journal can take new records now (disk space, the last write error).
        let health = self.journal.health();
        let journal = json!({ "syncs": self.journal.syncs(), "state": health.state, "error": health.error, "free_bytes": health.free_bytes });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": self.clock.now_ms() - self.started_ms,
            "journal": journal,
            "profiles": self.profiles_with_daily(profiles),
            "devices": self.devices.get().map(|h| h.devices()).unwrap_or_default(),
        })
    }

    pub fn journal(&self, q: &JournalQuery) -> Result<Vec<Value>, EngineError> {
        // With a date, that day's archived records too (`retention.rs`).
        Ok(self.list_anywhere(q)?.iter().map(Record::view).collect())
    }

    pub fn journal_record(&self, id: u64) -> Result<Value, EngineError> {
        self.record_anywhere(id)?.map(|r| r.view()).ok_or(EngineError::NoRecord(id))
    }

    /// Every record with recovery owed or parked.
    pub fn recoveries(&self) -> Result<Vec<Value>, EngineError> {
        Ok(self.journal.recovering().map_err(jerr)?.iter().map(Record::view).collect())
    }

    /// Put a parked ("needs attention") entry back into the queue.
    pub async fn retry_recovery(&self, id: u64) -> Result<Value, EngineError> {
        let mut rec = self.journal.get(id).map_err(jerr)?.ok_or(EngineError::NoRecord(id))?;
        let lane = self.lane(&rec.profile)?.clone();
        let Some(r) = rec.recovery.as_mut() else {
            return Err(EngineError::BadRequest(format!("journal record {id} owes no recovery")));
        };
        r.parked = false;
        r.attempts = 0;
        r.next_at_ms = self.clock.now_ms();
        let next_at_ms = r.next_at_ms;
        lane.set_owed(id, Some(Owed { next_at_ms, parked: false, unit: rec.unit.clone() }));
        self.finish_durable(&rec, false, None).await?;
        lane.wake.notify_one();
        Ok(rec.view())
    }

    /// Close a recovery entry by hand with the outcome the vendor confirmed (after checking with them):
    /// `approved` (it happened: totals count it) or `reversed` (it did not, or was undone).
    pub async fn resolve_recovery(&self, id: u64, outcome: &str, note: Option<&str>) -> Result<Value, EngineError> {
        let mut rec = self.journal.get(id).map_err(jerr)?.ok_or(EngineError::NoRecord(id))?;
        let lane = self.lane(&rec.profile)?.clone();
        if rec.status != Status::Unknown || rec.recovery.is_none() {
            return Err(EngineError::BadRequest(format!("journal record {id} owes no recovery")));
        }
        let _busy =
            recovery::claim(&lane, id).ok_or_else(|| EngineError::BadRequest(format!("journal record {id} is being recovered right now; try again")))?;
        let approved = match outcome {
            "approved" => true,
            "reversed" => false,
            other => return Err(EngineError::BadRequest(format!("`outcome` must be \"approved\" or \"reversed\", not {other:?}"))),
        };
        let said = format!("resolved by hand as {outcome}{}", note.map(|n| format!(": {n}")).unwrap_or_default());
        let apply_totals = outcome::apply(&mut rec, None, Outcome::ByHand { approved, note: said }, &self.timing(&lane));
        rec.updated_at = self.clock.now_rfc3339();
        self.finish_durable(&rec, apply_totals, None).await?;
        lane.set_owed(id, None);
        tracing::warn!(profile = %rec.profile, id, outcome, "recovery resolved by hand");
        Ok(rec.view())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The sender side of the event feed, for the counter devices.
    pub fn event_sender(&self) -> broadcast::Sender<Event> {
        self.events.clone()
    }

    /// The engine's clock, shared with the counter devices.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Attach the counter devices (once).
    pub fn attach_devices(&self, hub: Arc<crate::devices::hub::Hub>) {
        let _ = self.devices.set(hub);
    }

    /// `POST /v1/scans`: decode an injected scan and publish it like one from a port.
    pub fn inject_scan(&self, device: Option<&str>, text: &str) -> Result<Value, EngineError> {
        let hub = self.devices.get().ok_or_else(|| EngineError::BadRequest("no counter devices are attached".into()))?;
        hub.inject(device, text).map_err(|e| EngineError::BadRequest(e.to_string()))
    }

    /// Stop the recovery workers and make the journal durable.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        for lane in self.lanes.values() {
            lane.wake.notify_waiters();
        }
        let _ = self.journal.sync().await;
    }
}
