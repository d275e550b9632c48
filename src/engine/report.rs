//! Day-scoped work: report operations over one local day's records, the daily job, and the recent-history cache.
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate, TimeZone};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::{jerr, Answer, Engine, EngineError, JournalQuery, Lane, Record, Status};
use crate::backend::{DailyJob, HistoryItem, OpClass, ReportRequest};

/// How far back `PrepareContext::recent` reaches.
const RECENT_MS: i64 = 48 * 3600 * 1000;

fn created_ms(rec: &Record) -> i64 {
    DateTime::parse_from_rfc3339(&rec.created_at).map(|d| d.timestamp_millis()).unwrap_or(0)
}

fn local_date(ms: i64) -> NaiveDate {
    Local.timestamp_millis_opt(ms).single().map(|d| d.date_naive()).unwrap_or_default()
}

impl Lane {
    pub(super) fn recent_snapshot(&self) -> Vec<HistoryItem> {
        if !self.backend.wants_history() {
            return Vec::new();
        }
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

impl Engine {
    /// Fill a lane's recent-history cache from the journal at start-up (only for backends that want it).
    pub(super) fn load_recent(&self, lane: &Lane) -> Result<(), EngineError> {
        if !lane.backend.wants_history() {
            return Ok(());
        }
        let cutoff = self.clock.now_ms() - RECENT_MS;
        let mut items = Vec::new();
        self.scan_back(&lane.profile.name, |r| {
            if created_ms(r) < cutoff {
                return false;
            }
            items.push(history_item(r));
            true
        })?;
        items.reverse();
        *lane.recent.lock().unwrap_or_else(|p| p.into_inner()) = items.into();
        Ok(())
    }

    /// Keep the recent-history cache current as records are begun and finished.
    pub(super) fn remember(&self, rec: &Record) {
        let Some(lane) = self.lanes.get(&rec.profile) else { return };
        if !lane.backend.wants_history() {
            return;
        }
        let cutoff = self.clock.now_ms() - RECENT_MS;
        let mut recent = lane.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.iter_mut().rev().find(|h| h.id == rec.id) {
            Some(h) => *h = history_item(rec),
            None => recent.push_back(history_item(rec)),
        }
        while recent.front().is_some_and(|h| h.created_at_ms < cutoff) {
            recent.pop_front();
        }
    }

    /// Walk a profile's records newest first while `keep_going` says so.
    fn scan_back(&self, profile: &str, mut keep_going: impl FnMut(&Record) -> bool) -> Result<(), EngineError> {
        let mut before = None;
        loop {
            let q = JournalQuery { profile: Some(profile.to_string()), limit: Some(1000), before, ..Default::default() };
            let page = self.journal.list(&q).map_err(jerr)?;
            let Some(last) = page.last() else { return Ok(()) };
            before = Some(last.id);
            for r in &page {
                if !keep_going(r) {
                    return Ok(());
                }
            }
        }
    }

    /// Run an `OpClass::Report` operation over the records of one local day (`date`, default yesterday).
    pub(super) async fn report(&self, lane: &Lane, operation: &str, mut body: Map<String, Value>, key: Option<&str>) -> Result<Answer, EngineError> {
        let date = match body.remove("date") {
            None => local_date(self.clock.now_ms()).pred_opt().unwrap_or_default(),
            Some(Value::String(s)) => NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| EngineError::BadRequest(format!("field `date`: {s:?} is not YYYY-MM-DD")))?,
            Some(other) => return Err(EngineError::BadRequest(format!("field `date`: {other} is not a YYYY-MM-DD string"))),
        };
        // The backend's business day may sit in another time zone than this host, so hand it a day
        // either side of the local day and let it draw the boundary. Records are in creation order:
        // stop at the first one older than the window.
        let (first, last) = (date.pred_opt().unwrap_or(date), date.succ_opt().unwrap_or(date));
        let mut records = Vec::new();
        self.scan_back(&lane.profile.name, |r| {
            let d = local_date(created_ms(r));
            if d >= first && d <= last && r.class != "report" {
                records.push(r.view());
            }
            d >= first
        })?;
        records.reverse();
        let batch = self.journal.profile_state(&lane.profile.name).map_err(jerr)?.batch.unwrap_or_default();
        let mut rec = self.new_record(lane, operation, OpClass::Report, &batch, key);
        rec.request = body.clone();
        rec.request.insert("date".into(), json!(date.to_string()));
        let mut rec = match self.begin_durable(rec, false).await? {
            Ok(r) => r,
            Err(existing) => return Ok(existing),
        };
        let req = ReportRequest { journal_id: rec.id, operation, identity: &lane.profile.identity, trace: &rec.trace, created_at: &rec.created_at, date, records: &records, public: &body };
        let r = lane.backend.report(req).await;
        Self::note_online(lane, &r);
        rec.updated_at = self.clock.now_rfc3339();
        match r {
            Ok(reply) => Self::apply_reply(&mut rec, &reply),
            Err(e) => {
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
            }
        }
        self.finish_durable(&rec, false, None).await?;
        Ok(Answer::of(&rec))
    }
}

fn history_item(r: &Record) -> HistoryItem {
    HistoryItem {
        id: r.id,
        operation: r.operation.clone(),
        status: r.status.pos_word(),
        code: r.code.clone(),
        amount_fen: r.amount_fen,
        created_at_ms: created_ms(r),
        public: r.request.clone(),
        result: r.result.clone(),
    }
}

/// Milliseconds from `now_ms` until the next local `at`.
fn until_next(now_ms: i64, at: chrono::NaiveTime) -> i64 {
    let today = local_date(now_ms);
    for day in [today, today.succ_opt().unwrap_or(today), today + chrono::Days::new(2)] {
        if let Some(t) = Local.from_local_datetime(&day.and_time(at)).earliest() {
            if t.timestamp_millis() > now_ms {
                return t.timestamp_millis() - now_ms;
            }
        }
    }
    24 * 3600 * 1000
}

/// Run a backend's daily job for the previous local day, once a day. The idempotency key
/// `daily-<op>-<date>` makes a restart after the job time run it at most once for that day.
pub(super) async fn daily(engine: Weak<Engine>, lane: Arc<Lane>, job: DailyJob, mut stop: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        let wait = {
            let Some(e) = engine.upgrade() else { return };
            let now = e.clock.now_ms();
            let today_at = Local.from_local_datetime(&local_date(now).and_time(job.at)).earliest().map(|t| t.timestamp_millis());
            if first && today_at.is_some_and(|t| t <= now) {
                // Started after today's run time: catch up on yesterday (a no-op if it already ran).
                0
            } else {
                until_next(now, job.at)
            }
        };
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)) => {}
            _ = stop.changed() => return,
        }
        let Some(e) = engine.upgrade() else { return };
        let date = local_date(e.clock.now_ms()).pred_opt().unwrap_or_default();
        let key = format!("daily-{}-{date}", job.operation);
        let body = json!({"date": date.to_string()});
        match e.run(&lane.profile.name, job.operation, body, Some(&key)).await {
            Ok(a) => tracing::info!(profile = %lane.profile.name, operation = job.operation, %date, status = a.http_status, "daily job ran"),
            Err(err) => tracing::error!(profile = %lane.profile.name, operation = job.operation, %date, "daily job failed: {err}"),
        }
        // Never spin: at least a minute between runs even if the clock jumps.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
    }
}
