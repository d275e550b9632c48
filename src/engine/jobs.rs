//! Long jobs (wallet delivery): a journaled plan, steps and chunks sent one at a time with each outcome journaled, progress as `job` events, resumption.
//!
//! A job is one journal record of class `job`, `pending` until it ends. Its `request` holds the plan the
//! backend made (nothing is sent before it is durable); its `result` holds the progress: each step's and
//! each chunk's outcome, journaled before the next request leaves. So a restart (jobs resume by
//! themselves at start-up; `POST /v1/jobs/{id}/resume` resumes a paused one) continues at the first
//! step or chunk without a journaled outcome: a request whose answer was lost is sent again whole,
//! one whose outcome is journaled never. Items the backend refused for a transient reason are sent
//! again, at most [`TRANSIENT_ROUNDS`] times; the rest are listed in `failures`. A request that gets
//! no definite answer is tried [`SEND_ATTEMPTS`] times, then the job pauses (`state: paused`).
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate, TimeZone};
use serde_json::{json, Map, Value};

use super::{jerr, Answer, Engine, EngineError, Lane, Record, Status};
use crate::backend::job::{JobFailure, JobPlan, JobPlanRequest, JobSend};
use crate::backend::OpClass;
use crate::journal::Change;

/// The record class of a job.
pub const CLASS: crate::model::Class = crate::model::Class::Job;
/// Rounds of resending items refused for a transient reason (系统繁忙).
pub const TRANSIENT_ROUNDS: u32 = 3;
/// Tries of one request without a definite answer before the job pauses.
pub const SEND_ATTEMPTS: u32 = 5;

/// Jobs with a runner in this process (one runner per job).
static RUNNING: Mutex<Option<HashSet<(usize, u64)>>> = Mutex::new(None);

struct Running(usize, u64);

impl Running {
    fn claim(engine: &Engine, id: u64) -> Option<Running> {
        let key = (engine as *const Engine as usize, id);
        let mut g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert_with(HashSet::new).insert(key).then_some(Running(key.0, key.1))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            s.remove(&(self.0, self.1));
        }
    }
}

fn local_date(ms: i64) -> NaiveDate {
    Local.timestamp_millis_opt(ms).single().map(|d| d.date_naive()).unwrap_or_default()
}

fn created_date(rec: &Record) -> NaiveDate {
    local_date(DateTime::parse_from_rfc3339(&rec.created_at).map(|d| d.timestamp_millis()).unwrap_or(0))
}

/// What a job's progress looks like to the POS, the CLI and `job` events (no item lists).
pub fn progress(rec: &Record) -> Value {
    let r = &rec.result;
    let failures = r.get("failures").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    json!({
        "id": rec.id, "profile": rec.profile, "operation": rec.operation, "status": rec.status.pos_word(),
        "state": r.get("state"), "phase": r.get("phase"),
        "steps_done": r.get("steps_done"), "steps_total": r.get("steps_total"),
        "chunks_done": r.get("chunks_done"), "chunks_total": r.get("chunks_total"),
        "items_total": r.get("items_total"), "accepted": r.get("accepted"), "failures": failures,
        "unmatched": r.get("report").and_then(|x| x.get("unmatched")).and_then(Value::as_array).map(Vec::len).unwrap_or(0),
        "error": r.get("error"),
    })
}

fn num(r: &Map<String, Value>, k: &str) -> u64 {
    r.get(k).and_then(Value::as_u64).unwrap_or(0)
}

impl Engine {
    /// Plan a job, journal it, start it in the background and answer 202 with its progress.
    pub(super) async fn start_job(&self, lane: &Arc<Lane>, operation: &str, mut body: Map<String, Value>, key: Option<&str>) -> Result<Answer, EngineError> {
        let date = match body.get("date") {
            None | Some(Value::Null) => local_date(self.clock.now_ms()),
            Some(Value::String(s)) => {
                NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| EngineError::BadRequest(format!("field `date`: {s:?} is not YYYY-MM-DD")))?
            }
            Some(other) => return Err(EngineError::BadRequest(format!("field `date`: {other} is not a YYYY-MM-DD string"))),
        };
        body.remove("date");
        let mut records = Vec::new();
        self.scan_back(&lane.profile.name, |r| {
            let d = created_date(r);
            if d == date && r.class != CLASS {
                records.push(r.view());
            }
            d >= date
        })?;
        records.reverse();
        let catalog = self.catalog_of(lane)?.map(|(_, v)| v);
        let batch = self.journal.profile_state(&lane.profile.name).map_err(jerr)?.batch.unwrap_or_default();
        let mut rec = self.new_record(lane, operation, OpClass::Report, &batch, key);
        rec.class = CLASS;
        let mut rec = match self.begin_durable(rec, true).await? {
            Ok(r) => r,
            Err(existing) => return Ok(existing),
        };
        let req = JobPlanRequest {
            journal_id: rec.id,
            operation,
            identity: &lane.profile.identity,
            trace: &rec.trace,
            batch: &rec.batch,
            public: &body,
            records: &records,
            catalog: catalog.as_ref(),
        };
        let plan = match lane.backend.job_plan(req) {
            Ok(p) => p,
            Err(e) => {
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
                rec.updated_at = self.clock.now_rfc3339();
                self.finish_durable(&rec, false, None).await?;
                return Err(EngineError::BadRequest(e.detail));
            }
        };
        let size = plan.chunk_size.max(1);
        rec.request.insert("date".into(), json!(date.to_string()));
        rec.request.insert("plan".into(), serde_json::to_value(&plan).map_err(|e| EngineError::Journal(e.to_string()))?);
        let r = &mut rec.result;
        r.insert("state".into(), json!("running"));
        r.insert("phase".into(), json!(if plan.steps.is_empty() { "chunks" } else { "steps" }));
        r.insert("steps_total".into(), json!(plan.steps.len()));
        r.insert("steps_done".into(), json!(0));
        r.insert("steps".into(), json!([]));
        r.insert("items_total".into(), json!(plan.items.len()));
        r.insert("chunks_total".into(), json!(plan.items.len().div_ceil(size)));
        r.insert("chunks_done".into(), json!(0));
        r.insert("chunks".into(), json!([]));
        r.insert("accepted".into(), json!(0));
        r.insert("failures".into(), json!([]));
        r.insert("report".into(), Value::Object(plan.report.clone()));
        rec.updated_at = self.clock.now_rfc3339();
        self.save_job(&rec).await?;
        tracing::info!(profile = %lane.profile.name, id = rec.id, steps = plan.steps.len(), items = plan.items.len(), "job planned");
        self.spawn_job(rec.id);
        Ok(Answer { http_status: 202, body: progress(&rec) })
    }

    /// Resume a paused or interrupted job (`POST /v1/jobs/{id}/resume`).
    pub fn resume_job(&self, id: u64) -> Result<Value, EngineError> {
        let rec = self.journal.get(id).map_err(jerr)?.ok_or(EngineError::NoRecord(id))?;
        if rec.class != CLASS {
            return Err(EngineError::BadRequest(format!("journal record {id} is not a job")));
        }
        if rec.status == Status::Pending {
            self.spawn_job(id);
        }
        Ok(progress(&rec))
    }

    /// At start-up: every job left pending goes on where its journal says.
    pub(super) fn resume_jobs_at_start(&self) -> Result<(), EngineError> {
        for rec in self.journal.pending().map_err(jerr)? {
            if rec.class == CLASS {
                tracing::info!(profile = %rec.profile, id = rec.id, "resuming an interrupted job");
                self.spawn_job(rec.id);
            }
        }
        Ok(())
    }

    fn spawn_job(&self, id: u64) {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else { return };
        tokio::spawn(async move {
            if let Err(e) = me.run_job(id).await {
                tracing::error!(id, "job: {e}");
            }
        });
    }

    async fn save_job(&self, rec: &Record) -> Result<(), EngineError> {
        self.journal_commit(Change { records: vec![rec.clone()], ..Default::default() }).await?;
        self.journal.sync().await.map_err(jerr)?;
        self.emit("job", progress(rec));
        Ok(())
    }

    /// Send one step or chunk, trying again while no definite answer comes; `Err(why)` pauses the job.
    async fn job_request(
        &self,
        lane: &Lane,
        rec: &Record,
        step: Option<&Value>,
        items: &[Value],
    ) -> Result<Result<crate::backend::job::JobOutcome, String>, EngineError> {
        let vault = match step.and_then(|s| s.get("vault_from")).and_then(Value::as_u64) {
            Some(from) => {
                let src = self.journal.get(from).map_err(jerr)?.ok_or(EngineError::NoRecord(from))?;
                self.sealer.unseal(src.sealed.as_deref())?
            }
            None => Map::new(),
        };
        let mut last = String::new();
        for attempt in 0..SEND_ATTEMPTS {
            if *self.stop.borrow() {
                return Ok(Err("the daemon is stopping".into()));
            }
            if attempt > 0 {
                let ms = (lane.profile.recovery.backoff_initial_ms << attempt.min(8)).min(lane.profile.recovery.backoff_max_ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let send = JobSend {
                journal_id: rec.id,
                operation: &rec.operation,
                identity: &lane.profile.identity,
                trace: &rec.trace,
                batch: &rec.batch,
                step,
                items,
                vault: &vault,
            };
            let r = lane.backend.job_send(send).await;
            Self::note_online(lane, &r);
            match r {
                Ok(o) => return Ok(Ok(o)),
                Err(e) => {
                    tracing::warn!(id = rec.id, attempt, "job request: {e}");
                    last = e.to_string();
                }
            }
        }
        Ok(Err(last))
    }

    async fn pause_job(&self, mut rec: Record, why: String) -> Result<(), EngineError> {
        rec.result.insert("state".into(), json!("paused"));
        rec.result.insert("error".into(), json!(why));
        rec.updated_at = self.clock.now_rfc3339();
        tracing::error!(id = rec.id, "job paused; resume with `posgate jobs resume {}` or restart", rec.id);
        self.save_job(&rec).await
    }

    /// Run a job from its journaled state to its end (or a pause).
    async fn run_job(&self, id: u64) -> Result<(), EngineError> {
        let Some(_running) = Running::claim(self, id) else { return Ok(()) };
        let mut rec = self.journal.get(id).map_err(jerr)?.ok_or(EngineError::NoRecord(id))?;
        if rec.status != Status::Pending {
            return Ok(());
        }
        let lane = self.lane(&rec.profile)?.clone();
        let Some(plan) = rec.request.get("plan").cloned().and_then(|p| serde_json::from_value::<JobPlan>(p).ok()) else {
            // Stopped between its record and its plan: nothing was sent.
            rec.status = Status::Failed;
            rec.error = Some("the daemon stopped before the job's plan was journaled; nothing was sent".into());
            rec.updated_at = self.clock.now_rfc3339();
            return self.save_job(&rec).await;
        };
        rec.result.insert("state".into(), json!("running"));
        rec.result.remove("error");
        // Steps (merges): each outcome journaled before the next.
        loop {
            let done = num(&rec.result, "steps_done") as usize;
            let Some(step) = plan.steps.get(done) else { break };
            let outcome = match self.job_request(&lane, &rec, Some(step), &[]).await? {
                Ok(o) => o,
                Err(why) => return self.pause_job(rec, why).await,
            };
            let r = &mut rec.result;
            if let Some(Value::Array(steps)) = r.get_mut("steps") {
                steps.push(json!({"index": done, "added": outcome.added, "note": outcome.note, "failed": outcome.failed}));
            }
            if let Some(Value::Array(f)) = r.get_mut("failures") {
                f.extend(outcome.failed.iter().map(|x| json!({"item": x.item, "reason": x.reason})));
            }
            r.insert("steps_done".into(), json!(done + 1));
            rec.updated_at = self.clock.now_rfc3339();
            self.save_job(&rec).await?;
        }
        // The items: the plan's, then what the steps added, in chunks.
        let mut items = plan.items.clone();
        if let Some(Value::Array(steps)) = rec.result.get("steps") {
            for s in steps {
                items.extend(s["added"].as_array().cloned().unwrap_or_default());
            }
        }
        let size = plan.chunk_size.max(1);
        let chunks: Vec<&[Value]> = items.chunks(size).collect();
        rec.result.insert("phase".into(), json!("chunks"));
        rec.result.insert("items_total".into(), json!(items.len()));
        rec.result.insert("chunks_total".into(), json!(chunks.len()));
        loop {
            let done = num(&rec.result, "chunks_done") as usize;
            let Some(chunk) = chunks.get(done) else { break };
            // A chunk whose first request has a journaled outcome may still owe transient resends.
            let entry = rec.result.get("chunks").and_then(Value::as_array).and_then(|c| c.get(done)).cloned();
            let (to_send, rounds): (Vec<Value>, u32) = match &entry {
                None => (chunk.to_vec(), 0),
                Some(e) => (e["retry"].as_array().cloned().unwrap_or_default(), e["rounds"].as_u64().unwrap_or(0) as u32),
            };
            let mut finished_chunk = to_send.is_empty();
            if !finished_chunk && rounds > TRANSIENT_ROUNDS {
                finished_chunk = true;
            }
            if !finished_chunk {
                let outcome = match self.job_request(&lane, &rec, None, &to_send).await? {
                    Ok(o) => o,
                    Err(why) => return self.pause_job(rec, why).await,
                };
                let (retry, hard): (Vec<JobFailure>, Vec<JobFailure>) = outcome.failed.into_iter().partition(|f| f.transient);
                let rounds = rounds + 1;
                let accepted = to_send.len() - retry.len() - hard.len();
                let mut failures: Vec<Value> = hard.iter().map(|x| json!({"item": x.item, "reason": x.reason})).collect();
                let retry_items: Vec<Value> = if rounds > TRANSIENT_ROUNDS {
                    failures.extend(retry.iter().map(|x| json!({"item": x.item, "reason": format!("{} (still after {TRANSIENT_ROUNDS} resends)", x.reason)})));
                    Vec::new()
                } else {
                    retry.iter().map(|x| x.item.clone()).collect()
                };
                let r = &mut rec.result;
                r.insert("accepted".into(), json!(num(r, "accepted") + accepted as u64));
                if let Some(Value::Array(f)) = r.get_mut("failures") {
                    f.extend(failures);
                }
                let e = json!({"index": done, "orders": chunk.len(), "rounds": rounds, "retry": retry_items});
                if let Some(Value::Array(c)) = r.get_mut("chunks") {
                    if c.len() > done {
                        c[done] = e;
                    } else {
                        c.push(e);
                    }
                }
                finished_chunk = retry_items.is_empty();
            }
            if finished_chunk {
                rec.result.insert("chunks_done".into(), json!(done + 1));
            }
            rec.updated_at = self.clock.now_rfc3339();
            self.save_job(&rec).await?;
            crate::testhook::point("job_chunk").await;
        }
        rec.status = Status::Approved;
        rec.result.insert("state".into(), json!("done"));
        rec.updated_at = self.clock.now_rfc3339();
        tracing::info!(id, accepted = num(&rec.result, "accepted"), "job done");
        self.save_job(&rec).await
    }

    /// The profile's catalog: the last approved download of its catalog operation, with its version.
    fn catalog_of(&self, lane: &Lane) -> Result<Option<(Record, Value)>, EngineError> {
        let Some((op, field)) = lane.backend.operations().iter().find_map(|s| lane.backend.catalog_field(s.name).map(|f| (s.name, f))) else {
            return Ok(None);
        };
        let mut found = None;
        self.scan_back(&lane.profile.name, |r| {
            if r.operation == op && r.status == Status::Approved {
                if let Some(v) = r.result.get(field) {
                    found = Some((r.clone(), v.clone()));
                    return false;
                }
            }
            true
        })?;
        Ok(found)
    }

    /// `GET /v1/profiles/{p}/products`: the cached catalog with its version (content hash, download time).
    pub fn products(&self, profile: &str) -> Result<Value, EngineError> {
        let lane = self.lane(profile)?;
        Ok(match self.catalog_of(lane)? {
            Some((rec, v)) => {
                let hash = crate::backend::common::sign::sha256_hex(v.to_string().as_bytes());
                json!({"profile": profile, "version": {"hash": hash, "downloaded_at": rec.updated_at, "record": rec.id}, "products": v})
            }
            None => json!({"profile": profile, "version": null, "products": []}),
        })
    }

    /// After an approved catalog download: tell subscribers the catalog changed.
    pub(super) fn note_catalog(&self, lane: &Lane, operation: &str, answer: &Answer) {
        if lane.backend.catalog_field(operation).is_some() && answer.body["status"] == "approved" {
            self.emit("catalog", json!({"profile": lane.profile.name, "record": answer.body["id"]}));
        }
    }
}
