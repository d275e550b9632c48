//! The poller: orders awaiting a vendor's result are asked about on a backoff schedule until final.
//!
//! An order is awaiting when its backend said so at approval (`Backend::awaits_result`); its record's
//! `result.awaiting` names what it waits for (`result`, `check-in`), so `posgate journal` shows it. The
//! set lives in memory, rebuilt at start-up from the last [`SCAN_DAYS`] days of each polling profile's
//! records (at most [`SCAN_MAX_RECORDS`] records each). A poll's `Done` goes through the very journaling a
//! callback does (`engine::callbacks`), so the two are deduplicated. A document without a query
//! (`Ok(None)`) leaves the order awaiting, marked `"polling": "not offered"`, and it is not asked again.
use std::time::Duration;

use serde_json::{json, Value};

use super::callbacks::Source;
use super::*;
use crate::backend::callback::Polled;

/// How far back the start-up scan looks for orders still awaiting a result.
pub const SCAN_DAYS: i64 = 7;
/// The most records the start-up scan reads per profile.
pub const SCAN_MAX_RECORDS: usize = 50_000;
/// How many polls run per pass at most (the rest wait for the next pass).
const POLLS_PER_PASS: usize = 32;

/// One order awaiting its result.
#[derive(Debug, Clone)]
pub(super) struct Awaiting {
    pub(super) profile: String,
    pub(super) next_at_ms: i64,
    pub(super) interval_ms: u64,
    /// What it waits for (`result`, `check-in`): the notification's record is named after it.
    pub(super) name: String,
}

/// What an order awaits, for its record: the name of the backend's first callback, else `result`.
pub(super) fn awaiting_word(lane: &Lane) -> &'static str {
    lane.backend.callbacks().first().map_or("result", |s| s.name)
}

impl Engine {
    /// Start polling an approved order that awaits its result (its record already says `awaiting`).
    pub(super) fn await_result(&self, lane: &Lane, rec: &Record) {
        if !lane.profile.results.polling() {
            return;
        }
        let Some(name) = rec.result.get("awaiting").and_then(Value::as_str) else { return };
        let first = lane.profile.poll.initial_ms;
        let a = Awaiting { profile: rec.profile.clone(), next_at_ms: self.clock.now_ms() + first as i64, interval_ms: first, name: name.to_string() };
        self.awaiting.lock().unwrap_or_else(|p| p.into_inner()).insert(rec.id, a);
        self.poll_wake.notify_one();
    }

    pub(super) fn forget_awaiting(&self, id: u64) {
        self.awaiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The orders awaiting a result (ids), for status and tests.
    pub fn awaiting_results(&self) -> Vec<u64> {
        self.awaiting.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// Rebuild the awaiting set from the journal: each polling profile's approved records of the last
    /// [`SCAN_DAYS`] days whose result still says `awaiting` (and is not marked not pollable).
    pub(super) fn load_awaiting(&self) -> Result<(), EngineError> {
        let cutoff = chrono::DateTime::from_timestamp_millis(self.clock.now_ms() - SCAN_DAYS * 86_400_000)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        for lane in self.lanes.values().filter(|l| l.profile.results.polling()) {
            let mut before = None;
            let mut read = 0usize;
            'pages: loop {
                let q = JournalQuery { profile: Some(lane.profile.name.clone()), before, limit: Some(1000), ..Default::default() };
                let page = self.journal.list(&q).map_err(jerr)?;
                let Some(last) = page.last() else { break };
                before = Some(last.id);
                for rec in &page {
                    read += 1;
                    if rec.created_at.as_str() < cutoff.as_str() || read > SCAN_MAX_RECORDS {
                        break 'pages;
                    }
                    if rec.status == Status::Approved && rec.class != Class::Notification && rec.result.get("polling").is_none() {
                        self.await_result(lane, rec);
                    }
                }
            }
        }
        Ok(())
    }

    /// Ask the vendor about one awaiting order.
    async fn poll_one(&self, id: u64, a: Awaiting) -> Result<(), EngineError> {
        let Some(lane) = self.lanes.get(&a.profile).cloned() else {
            self.forget_awaiting(id);
            return Ok(());
        };
        let Some(rec) = self.journal.get(id).map_err(jerr)?.filter(|r| r.status == Status::Approved && r.result.contains_key("awaiting")) else {
            self.forget_awaiting(id);
            return Ok(());
        };
        let session = self.journal.profile_state(&lane.profile.name).map_err(jerr)?.session;
        let vault = self.sealer.unseal(rec.sealed.as_deref())?;
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
            original: None,
        };
        let polled = lane.backend.poll(tx).await;
        let again = |engine: &Engine, why: &str| {
            let interval = (a.interval_ms.saturating_mul(2)).min(lane.profile.poll.max_ms);
            tracing::debug!(profile = %a.profile, id, next_ms = a.interval_ms, "{why}");
            let mut m = engine.awaiting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = m.get_mut(&id) {
                e.next_at_ms = engine.clock.now_ms() + a.interval_ms as i64;
                e.interval_ms = interval;
            }
        };
        match polled {
            Ok(Some(Polled::Pending)) => again(self, "still pending at the vendor"),
            Err(e) => again(self, &format!("poll failed: {e}")),
            Ok(Some(Polled::Done(n))) => match self.notify(&lane, &a.name, Source::Poll, n).await? {
                Ok(()) => {
                    // A `Progress` leaves the order awaiting: ask again later.
                    if self.journal.get(id).map_err(jerr)?.is_some_and(|r| r.result.contains_key("awaiting")) {
                        again(self, "progress polled; the order still awaits its final result");
                    } else {
                        self.forget_awaiting(id);
                    }
                }
                Err(refusal) => {
                    tracing::warn!(profile = %a.profile, id, "a poll's answer was refused: {refusal}");
                    again(self, "poll answer refused");
                }
            },
            Ok(None) => {
                // The document offers no query: the order stays awaiting (a callback may still come) and says so.
                self.forget_awaiting(id);
                let mut rec = rec;
                rec.result.insert("polling".into(), json!("not offered by the vendor's document; awaiting the callback"));
                rec.updated_at = self.clock.now_rfc3339();
                self.journal_commit(Change { records: vec![rec], ..Default::default() }).await?;
                self.journal.sync().await.map_err(jerr)?;
            }
        }
        Ok(())
    }
}

/// The engine's poll worker: poll what is due, sleep until the next is due (or a new order arrives).
pub(super) async fn worker(engine: std::sync::Weak<Engine>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        if *stop.borrow() {
            return;
        }
        let now = e.clock.now_ms();
        let (due, next): (Vec<(u64, Awaiting)>, Option<i64>) = {
            let m = e.awaiting.lock().unwrap_or_else(|p| p.into_inner());
            let due = m.iter().filter(|(_, a)| a.next_at_ms <= now).take(POLLS_PER_PASS).map(|(id, a)| (*id, a.clone())).collect();
            (due, m.values().map(|a| a.next_at_ms).min())
        };
        for (id, a) in &due {
            if let Err(err) = e.poll_one(*id, a.clone()).await {
                tracing::error!(profile = %a.profile, id, "polling an order failed: {err}");
                let mut m = e.awaiting.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(x) = m.get_mut(id) {
                    x.next_at_ms = e.clock.now_ms() + x.interval_ms as i64;
                }
            }
        }
        let wait_ms = match (due.is_empty(), next) {
            (false, _) => 0,
            (true, Some(at)) => (at - e.clock.now_ms()).clamp(10, 1_000),
            (true, None) => 1_000,
        };
        let wake = e.poll_wake.clone();
        drop(e);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            _ = wake.notified() => {}
            _ = stop.changed() => {}
        }
    }
}
