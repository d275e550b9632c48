//! Day-scoped work: report operations over one local day's records, the daily job, and the recent-history cache.
//!
//! The daily job (a backend's `daily_job`, e.g. the lottery's 01:00 reconciliation) runs until it has a
//! result: attempt 1 is journaled under the idempotency key `daily-<op>-<date>`, attempt n under
//! `daily-<op>-<date>-<n>`. An attempt that failed (the host refused, a station stayed busy) or was
//! interrupted (left `pending` by a crash, which start-up marks failed) is followed by the next one after a
//! backoff (the profile's `backoff_initial_ms`, doubling, at most an hour), up to [`DAILY_MAX_ATTEMPTS`] a
//! day; at start-up the failed days of the last week are taken up again. [`Engine::daily_status`] is what
//! `GET /v1/status` shows of it.
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate, TimeZone};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::{jerr, Answer, Engine, EngineError, JournalQuery, Lane, ProfileStatus, Record, Status};
use crate::backend::{DailyJob, HistoryItem, OpClass, ReportRecord, ReportRequest};

/// How far back `PrepareContext::recent` reaches.
const RECENT_MS: i64 = 48 * 3600 * 1000;

/// Attempts of one day's daily job at most (the backoff between them reaches an hour).
pub const DAILY_MAX_ATTEMPTS: u32 = 48;

/// Days before yesterday whose failed daily job is taken up again at start-up.
const DAILY_LOOKBACK_DAYS: u64 = 7;

/// The longest wait between two attempts of a daily job.
const DAILY_BACKOFF_CAP_MS: u64 = 3_600_000;

/// The idempotency key of attempt `n` (from 1) of a daily job.
pub fn daily_key(operation: &str, date: NaiveDate, n: u32) -> String {
    if n <= 1 {
        format!("daily-{operation}-{date}")
    } else {
        format!("daily-{operation}-{date}-{n}")
    }
}

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
    pub(super) fn scan_back(&self, profile: &str, mut keep_going: impl FnMut(&Record) -> bool) -> Result<(), EngineError> {
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
            Some(Value::String(s)) => {
                NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| EngineError::BadRequest(format!("field `date`: {s:?} is not YYYY-MM-DD")))?
            }
            Some(other) => return Err(EngineError::BadRequest(format!("field `date`: {other} is not a YYYY-MM-DD string"))),
        };
        // The backend's business day may sit in another time zone than this host, so hand it a day
        // either side of the local day and let it draw the boundary. Records are in creation order:
        // stop at the first one older than the window.
        let (first, last) = (date.pred_opt().unwrap_or(date), date.succ_opt().unwrap_or(date));
        let mut records = Vec::new();
        self.scan_back(&lane.profile.name, |r| {
            let d = local_date(created_ms(r));
            if d >= first && d <= last && r.class != crate::model::Class::Report {
                records.push(report_record(r));
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
        let req = ReportRequest {
            journal_id: rec.id,
            operation,
            identity: &lane.profile.identity,
            trace: &rec.trace,
            created_at: &rec.created_at,
            date,
            records: &records,
            public: &body,
        };
        let r = lane.backend.report(req).await;
        Self::note_online(lane, &r);
        rec.updated_at = self.clock.now_rfc3339();
        let outcome = match &r {
            Ok(reply) => super::outcome::Outcome::Answer(reply),
            Err(e) => super::outcome::Outcome::Error(e),
        };
        super::outcome::apply(&mut rec, None, outcome, &self.timing(lane));
        self.finish_durable(&rec, false, None).await?;
        if rec.result.get("balanced") == Some(&Value::Bool(false)) {
            // An unbalanced day is for a person to look at.
            self.emit(
                "reconcile",
                json!({"profile": rec.profile, "operation": rec.operation, "date": date.to_string(), "balanced": false,
                       "differences": rec.result.get("differences").cloned().unwrap_or(Value::Null), "id": rec.id}),
            );
        }
        Ok(Answer::of(&rec))
    }

    /// The last attempt of a day's daily job: (its number, the record).
    fn last_daily_attempt(&self, profile: &str, operation: &str, date: NaiveDate) -> Result<Option<(u32, Record)>, EngineError> {
        let mut last = None;
        for n in 1..=DAILY_MAX_ATTEMPTS {
            match self.journal.by_idempotency_key(profile, &daily_key(operation, date, n)).map_err(jerr)? {
                Some(r) => last = Some((n, r)),
                None => break,
            }
        }
        Ok(last)
    }

    /// A profile's daily job as `GET /v1/status` shows it: the latest day it ran for, and how it ended.
    /// `None` when the backend has none or it never ran in the last week.
    pub fn daily_status(&self, profile: &str) -> Option<Value> {
        let lane = self.lanes.get(profile)?;
        let job = lane.backend.daily_job()?;
        let today = local_date(self.clock.now_ms());
        for back in 0..=DAILY_LOOKBACK_DAYS + 1 {
            let date = today - chrono::Days::new(back);
            if let Ok(Some((n, r))) = self.last_daily_attempt(profile, job.operation, date) {
                return Some(json!({
                    "operation": job.operation,
                    "date": date.to_string(),
                    "status": r.status.pos_word(),
                    "balanced": r.result.get("balanced").cloned().unwrap_or(Value::Null),
                    "differences": r.result.get("differences").cloned().unwrap_or(Value::Null),
                    "attempts": n,
                    "id": r.id,
                    "error": r.error,
                }));
            }
        }
        None
    }

    /// The profiles of `GET /v1/status`, each with its daily job's last result (`daily`).
    pub(super) fn profiles_with_daily(&self, profiles: Vec<ProfileStatus>) -> Value {
        let mut out = Vec::with_capacity(profiles.len());
        for p in profiles {
            let daily = self.daily_status(&p.name);
            let mut v = serde_json::to_value(&p).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("daily".into(), daily.unwrap_or(Value::Null));
            }
            out.push(v);
        }
        Value::Array(out)
    }
}

/// A journal record as a report operation sees it (typed, no sealed fields).
fn report_record(r: &Record) -> ReportRecord {
    ReportRecord {
        id: r.id,
        operation: r.operation.clone(),
        status: r.status.pos_word().to_string(),
        amount_fen: r.amount_fen,
        created_at: r.created_at.clone(),
        trace: r.trace.clone(),
        batch: r.batch.clone(),
        code: r.code.clone(),
        reference: r.reference.clone(),
        public: r.request.clone(),
        result: r.result.clone(),
    }
}

/// Backoff before daily attempt `n + 1`: the profile's initial backoff doubled per attempt, at most an hour.
fn daily_backoff(initial_ms: u64, attempts: u32) -> Duration {
    Duration::from_millis(initial_ms.max(1).saturating_mul(1u64 << attempts.min(30)).min(DAILY_BACKOFF_CAP_MS))
}

/// Run one day's daily job until an attempt has a result (or the day's attempts run out). False when
/// the engine stops first.
async fn daily_until_result(engine: &Weak<Engine>, lane: &Lane, job: DailyJob, date: NaiveDate, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        let Some(e) = engine.upgrade() else { return false };
        let last = match e.last_daily_attempt(&lane.profile.name, job.operation, date) {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(profile = %lane.profile.name, operation = job.operation, %date, "daily job: {err}");
                None
            }
        };
        let n = match &last {
            Some((_, r)) if r.status.is_final() && r.status != Status::Failed => return true,
            Some((n, _)) if *n >= DAILY_MAX_ATTEMPTS => {
                tracing::error!(profile = %lane.profile.name, operation = job.operation, %date, attempts = n, "daily job: every attempt of the day failed; run it by hand");
                return true;
            }
            Some((n, _)) => *n,
            None => 0,
        };
        let key = daily_key(job.operation, date, n + 1);
        let body = json!({"date": date.to_string()});
        match e.run(&lane.profile.name, job.operation, body, Some(&key)).await {
            Ok(a) if a.body.get("status").and_then(Value::as_str) == Some("approved") => {
                tracing::info!(profile = %lane.profile.name, operation = job.operation, %date, attempt = n + 1, "daily job ran");
                return true;
            }
            Ok(a) => {
                let why = a.body.get("error").and_then(Value::as_str).unwrap_or("").to_string();
                tracing::warn!(profile = %lane.profile.name, operation = job.operation, %date, attempt = n + 1, "daily job failed: {why}; trying again later");
            }
            Err(err) => {
                tracing::warn!(profile = %lane.profile.name, operation = job.operation, %date, attempt = n + 1, "daily job failed: {err}; trying again later")
            }
        }
        drop(e);
        tokio::select! {
            _ = tokio::time::sleep(daily_backoff(lane.profile.recovery.backoff_initial_ms, n)) => {}
            _ = stop.changed() => return false,
        }
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

/// Run a backend's daily job for the previous local day, once a day, until it has a result (see the
/// module doc). The idempotency keys make a restart after the job time run it at most once per day
/// once it has a result, and again when its last attempt failed or was interrupted.
pub(super) async fn daily(engine: Weak<Engine>, lane: Arc<Lane>, job: DailyJob, mut stop: watch::Receiver<bool>) {
    // Start-up: days of the last week whose last attempt failed or was cut short by a crash.
    let today = match engine.upgrade() {
        Some(e) => local_date(e.clock.now_ms()),
        None => return,
    };
    for back in (2..=DAILY_LOOKBACK_DAYS + 1).rev() {
        let date = today - chrono::Days::new(back);
        let failed = engine
            .upgrade()
            .and_then(|e| e.last_daily_attempt(&lane.profile.name, job.operation, date).ok().flatten())
            .is_some_and(|(_, r)| r.status == Status::Failed);
        if failed && !daily_until_result(&engine, &lane, job, date, &mut stop).await {
            return;
        }
    }
    let mut first = true;
    loop {
        let wait = {
            let Some(e) = engine.upgrade() else { return };
            let now = e.clock.now_ms();
            let today_at = Local.from_local_datetime(&local_date(now).and_time(job.at)).earliest().map(|t| t.timestamp_millis());
            if first && today_at.is_some_and(|t| t <= now) {
                // Started after today's run time: catch up on yesterday (a no-op if it already has a result).
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
        drop(e);
        if !daily_until_result(&engine, &lane, job, date, &mut stop).await {
            return;
        }
        // Never spin: at least a minute between runs even if the clock jumps.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{report_record, Record, Status};
    use crate::backend::ReportRecord;

    /// The typed record a report gets is the record view the API shows (tests and tools write views).
    #[test]
    fn a_report_record_is_the_records_api_view_typed() {
        let mut r = Record::new("lottery", "redeem", crate::model::Class::Financial, "000001", "2026-03-10T02:00:00.000Z");
        r.id = 42;
        r.trace = "000007".into();
        r.status = Status::Approved;
        r.amount_fen = 500;
        r.code = Some("10000".into());
        r.reference = Some("00101-00001-T1".into());
        r.request.insert("barCode".into(), json!("GW0000****0001"));
        r.result.insert("transacId".into(), json!("0120260310100000000007"));
        r.sealed = Some("sealed-bar-code".into());
        let typed = report_record(&r);
        let from_view: ReportRecord = serde_json::from_value(r.view()).expect("view");
        assert_eq!(typed, from_view);
        assert_eq!((typed.status.as_str(), typed.public["barCode"].clone(), typed.amount_fen), ("approved", json!("GW0000****0001"), 500));
        assert!(!format!("{typed:?}").contains("sealed-bar-code"));
    }
}
