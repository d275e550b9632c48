//! The vendor-neutral transaction engine: journal-before-send, trace/batch, recovery queue, totals.
//!
//! Invariants (see ARCHITECTURE.md): a record is durable before its request leaves the host; its
//! outcome is durable before the POS app hears it; an unknown outcome becomes a persisted recovery
//! entry in the same commit; a terminal sends no new financial request while it owes recovery.
pub mod clock;
mod recovery;
mod report;
pub mod seal;
pub mod types;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Mutex, Notify, RwLock};

pub use clock::{Clock, SystemClock};
pub use types::*;

use crate::backend::{self, Backend, BackendError, OpClass, OriginalRef, Prepared, Recovery, Reply, Stage, TxRequest, Verdict};
use crate::config::Profile;
use crate::journal::{Begun, Change, JournalStore, NewRecord, SledJournal};
use crate::net::client::{HttpOptions, HttpsClient};
use crate::testhook;
use seal::Sealer;

/// What the engine needs to open.
pub struct EngineConfig {
    pub data_dir: std::path::PathBuf,
    pub profiles: Vec<Profile>,
}

/// An operation's answer for the POS app: HTTP status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub http_status: u16,
    pub body: Value,
}

impl Answer {
    fn of(rec: &Record) -> Answer {
        let http_status = match rec.status {
            Status::Pending | Status::Unknown => 202,
            Status::Failed => 502,
            _ => 200,
        };
        Answer { http_status, body: rec.view() }
    }
}

/// Recovery owed by one record, mirrored in memory from the journal.
#[derive(Debug, Clone, Copy)]
struct Owed {
    next_at_ms: i64,
    parked: bool,
}

/// One terminal profile and its backend.
struct Lane {
    profile: Profile,
    backend: Arc<dyn Backend>,
    /// Operations hold it shared; settlement holds it exclusively so totals cannot move under it.
    gate: RwLock<()>,
    signon: Mutex<()>,
    online: AtomicBool,
    wake: Notify,
    owed: std::sync::Mutex<BTreeMap<u64, Owed>>,
    busy: std::sync::Mutex<HashSet<u64>>,
    /// The last 48 hours of records, for backends with local risk rules (`wants_history`).
    recent: std::sync::Mutex<std::collections::VecDeque<backend::HistoryItem>>,
}

impl Lane {
    /// (entries owed, parked or not; the oldest id; how many of them are parked).
    fn owed_summary(&self) -> (usize, Option<u64>, usize) {
        let owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        (owed.len(), owed.keys().next().copied(), owed.values().filter(|o| o.parked).count())
    }
    fn set_owed(&self, id: u64, owed: Option<Owed>) {
        let mut m = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        match owed {
            Some(o) => {
                m.insert(id, o);
            }
            None => {
                m.remove(&id);
            }
        }
    }
}

pub struct Engine {
    /// Counter devices, once the daemon attached them (holds swiped cards for `"scan": "<id>"`).
    devices: std::sync::OnceLock<Arc<crate::devices::hub::Hub>>,
    journal: Arc<dyn JournalStore>,
    lanes: BTreeMap<String, Arc<Lane>>,
    events: broadcast::Sender<Event>,
    clock: Arc<dyn Clock>,
    sealer: Sealer,
    stop: watch::Sender<bool>,
    started_ms: i64,
}

fn jerr(e: crate::journal::JournalError) -> EngineError {
    EngineError::Journal(e.to_string())
}

fn class_name(c: OpClass) -> &'static str {
    match c {
        OpClass::SignOn => "sign-on",
        OpClass::Inquiry => "inquiry",
        OpClass::Financial(_) => "financial",
        OpClass::Settle => "settle",
        OpClass::Report => "report",
    }
}

impl Engine {
    /// Open the journal, build every profile's backend, turn records left pending by a crash into
    /// recovery entries, and start the recovery workers.
    pub async fn open(cfg: EngineConfig, clock: Arc<dyn Clock>) -> Result<Arc<Engine>, EngineError> {
        let journal: Arc<dyn JournalStore> = SledJournal::open(&cfg.data_dir.join("journal")).map_err(jerr)?;
        let sealer = Sealer::open(&cfg.data_dir.join("journal.key"))?;
        let mut lanes = BTreeMap::new();
        for p in cfg.profiles {
            let http = HttpsClient::new(&HttpOptions { ca_file: p.ca_file.clone(), connect_timeout: p.connect_timeout, timeout: p.timeout })
                .map_err(|e| EngineError::Config(format!("profile {} ({}): {e}", p.name, p.source.display())))?;
            let backend = backend::build(&p, http).map_err(|e| EngineError::Config(e.to_string()))?;
            lanes.insert(
                p.name.clone(),
                Arc::new(Lane {
                    profile: p,
                    backend,
                    gate: RwLock::new(()),
                    signon: Mutex::new(()),
                    online: AtomicBool::new(false),
                    wake: Notify::new(),
                    owed: Default::default(),
                    busy: Default::default(),
                    recent: Default::default(),
                }),
            );
        }
        let engine = Arc::new(Engine {
            devices: std::sync::OnceLock::new(),
            journal,
            lanes,
            events: broadcast::channel(1024).0,
            started_ms: clock.now_ms(),
            clock,
            sealer,
            stop: watch::channel(false).0,
        });
        engine.adopt_pending().await?;
        for rec in engine.journal.recovering().map_err(jerr)? {
            if let (Some(lane), Some(r)) = (engine.lanes.get(&rec.profile), &rec.recovery) {
                lane.set_owed(rec.id, Some(Owed { next_at_ms: r.next_at_ms.min(engine.clock.now_ms()), parked: r.parked }));
            }
        }
        for lane in engine.lanes.values() {
            engine.load_recent(lane)?;
            tokio::spawn(recovery::worker(Arc::downgrade(&engine), lane.clone(), engine.stop.subscribe()));
            if let Some(job) = lane.backend.daily_job() {
                tokio::spawn(report::daily(Arc::downgrade(&engine), lane.clone(), job, engine.stop.subscribe()));
            }
        }
        Ok(engine)
    }

    /// Records the last run left `pending` may or may not have reached the backend: recovery is owed.
    async fn adopt_pending(&self) -> Result<(), EngineError> {
        let now = self.clock.now_rfc3339();
        let mut change = Change::default();
        for mut rec in self.journal.pending().map_err(jerr)? {
            let how = match (rec.class.as_str(), self.lanes.get(&rec.profile).and_then(|l| l.backend.spec(&rec.operation))) {
                ("settle", _) => Some(Recovery::Resend),
                ("financial", Some(s)) => match s.class {
                    OpClass::Financial(h) => Some(h),
                    _ => None,
                },
                ("financial", None) => Some(Recovery::Manual),
                _ => None,
            };
            rec.updated_at = now.clone();
            match how {
                Some(how) => {
                    rec.status = Status::Unknown;
                    rec.recovery = Some(RecoveryState {
                        how,
                        attempts: 0,
                        next_at_ms: self.clock.now_ms(),
                        parked: how == Recovery::Manual,
                        last_error: Some("the daemon stopped before the outcome was journaled".into()),
                    });
                }
                None => {
                    rec.status = Status::Failed;
                    rec.error = Some("the daemon stopped before the answer; nothing is owed".into());
                }
            }
            change.records.push(rec);
        }
        if !change.records.is_empty() {
            tracing::warn!(count = change.records.len(), "records left pending by the last run; recovery queued");
            self.journal.commit(change).map_err(jerr)?;
            self.journal.sync().await.map_err(jerr)?;
        }
        Ok(())
    }

    fn lane(&self, profile: &str) -> Result<&Arc<Lane>, EngineError> {
        self.lanes.get(profile).ok_or_else(|| EngineError::UnknownProfile(profile.to_string()))
    }

    fn emit(&self, kind: &'static str, data: Value) {
        let _ = self.events.send(Event { kind, data });
    }

    fn new_record(&self, lane: &Lane, operation: &str, class: OpClass, batch: &str, key: Option<&str>) -> Record {
        let mut rec = Record::new(&lane.profile.name, operation, class_name(class), batch, &self.clock.now_rfc3339());
        rec.idempotency_key = key.map(str::to_string);
        rec
    }

    /// Journal a new record and make it durable. `Err(Answer)` when the idempotency key was used before.
    async fn begin_durable(&self, rec: Record, allocate_trace: bool) -> Result<Result<Record, Answer>, EngineError> {
        match self.journal.begin(NewRecord { record: rec, allocate_trace }).map_err(jerr)? {
            Begun::Existing(first) => Ok(Err(Answer::of(&first))),
            Begun::Created(rec) => {
                self.journal.sync().await.map_err(jerr)?;
                testhook::order("synced", rec.id);
                self.remember(&rec);
                Ok(Ok(rec))
            }
        }
    }

    /// Store a record's new state (and totals, and profile state) and make it durable.
    async fn finish_durable(&self, rec: &Record, apply_totals: bool, state: Option<crate::journal::ProfileState>) -> Result<(), EngineError> {
        let mut change = Change { records: vec![rec.clone()], ..Default::default() };
        if apply_totals {
            for (k, d) in &rec.totals {
                change.totals.push((rec.profile.clone(), rec.batch.clone(), k.clone(), *d));
            }
        }
        if let Some(st) = state {
            change.profile_states.push((rec.profile.clone(), st));
        }
        self.journal.commit(change).map_err(jerr)?;
        self.journal.sync().await.map_err(jerr)?;
        self.remember(rec);
        self.emit("transaction", rec.view());
        Ok(())
    }

    fn apply_reply(rec: &mut Record, reply: &Reply) {
        rec.status = match reply.verdict {
            Verdict::Approved => Status::Approved,
            Verdict::Declined => Status::Declined,
        };
        rec.code = Some(reply.code.clone());
        rec.message = Some(reply.message.clone());
        rec.message_en = Some(reply.message_en.clone());
        rec.result = reply.fields.clone();
        rec.reference = reply.reference.clone();
        rec.trans_time = reply.trans_time.clone();
        if let Some(a) = reply.amount_fen {
            rec.amount_fen = a;
        }
        rec.recovery = None;
    }

    fn note_online(lane: &Lane, r: &Result<impl Sized, BackendError>) {
        let online = match r {
            Ok(_) => true,
            Err(e) => e.stage == Stage::Rejected,
        };
        lane.online.store(online, Ordering::Relaxed);
    }

    /// Run `operation` on `profile` with the POS body.
    pub async fn run(&self, profile: &str, operation: &str, body: Value, idempotency_key: Option<&str>) -> Result<Answer, EngineError> {
        if *self.stop.borrow() {
            return Err(EngineError::ShuttingDown);
        }
        let lane = self.lane(profile)?.clone();
        let spec = lane.backend.spec(operation).ok_or_else(|| EngineError::UnknownOperation {
            profile: profile.to_string(),
            backend: lane.profile.backend.clone(),
            operation: operation.to_string(),
        })?;
        let Value::Object(mut body) = body else {
            return Err(EngineError::BadRequest("the body must be a JSON object".into()));
        };
        if let Some(key) = idempotency_key {
            if key.is_empty() || key.len() > 200 {
                return Err(EngineError::BadRequest("Idempotency-Key must be 1 to 200 characters".into()));
            }
            if let Some(first) = self.journal.by_idempotency_key(profile, key).map_err(jerr)? {
                if first.operation != operation {
                    return Err(EngineError::IdempotencyConflict { key: key.into(), first_profile: first.profile, first_operation: first.operation });
                }
                return Ok(Answer::of(&first));
            }
        }
        match spec.class {
            OpClass::SignOn => self.sign_on(&lane, idempotency_key).await,
            OpClass::Settle => self.settle(&lane, idempotency_key).await,
            OpClass::Report => self.report(&lane, operation, body, idempotency_key).await,
            class => {
                let original = if spec.needs_original {
                    Some(self.original_ref(&lane, body.remove("original"))?)
                } else {
                    if body.contains_key("original") {
                        return Err(EngineError::BadRequest(format!("{operation} takes no `original`")));
                    }
                    None
                };
                let card = match body.remove("scan") {
                    None => None,
                    Some(Value::String(id)) => {
                        let hub = self.devices.get().ok_or_else(|| EngineError::BadRequest("`scan`: no counter devices are attached".into()))?;
                        Some(hub.card(&id).map_err(|e| EngineError::BadRequest(format!("`scan`: {e}")))?)
                    }
                    Some(_) => return Err(EngineError::BadRequest("`scan` must be a scan id string".into())),
                };
                let recent = lane.recent_snapshot();
                let ctx = backend::PrepareContext { now_ms: self.clock.now_ms(), recent: &recent, card: card.as_ref() };
                let prepared = lane.backend.prepare(operation, &body, original.as_ref(), &ctx).map_err(|e| EngineError::BadRequest(e.to_string()))?;
                self.transact(&lane, operation, class, prepared, original, idempotency_key).await
            }
        }
    }

    fn original_ref(&self, lane: &Lane, v: Option<Value>) -> Result<OriginalRef, EngineError> {
        let id = v
            .as_ref()
            .and_then(Value::as_u64)
            .ok_or_else(|| EngineError::BadRequest("field `original` (the original's journal id, an integer) is required".into()))?;
        let rec = self.journal.get(id).map_err(jerr)?.ok_or(EngineError::NoRecord(id))?;
        if rec.profile != lane.profile.name {
            return Err(EngineError::BadRequest(format!("journal record {id} belongs to profile {:?}", rec.profile)));
        }
        if rec.status != Status::Approved {
            return Err(EngineError::BadRequest(format!("journal record {id} is {}, not approved", rec.status.pos_word())));
        }
        self.original_of(rec)
    }

    /// What a follow-up operation (or its recovery) needs of its original record.
    fn original_of(&self, rec: Record) -> Result<OriginalRef, EngineError> {
        Ok(OriginalRef {
            id: rec.id,
            operation: rec.operation,
            trace: rec.trace,
            batch: rec.batch,
            amount_fen: rec.amount_fen,
            reference: rec.reference,
            trans_time: rec.trans_time,
            created_at: rec.created_at,
            vault: self.sealer.unseal(rec.sealed.as_deref())?,
            public: rec.request,
        })
    }

    /// Refuse new financial work while this terminal owes recovery, parked entries included: a
    /// parked entry is still an unresolved charge, so a person resolves it (retry, or record what the
    /// vendor says happened) before the terminal takes money again.
    fn check_not_owing(&self, lane: &Lane) -> Result<(), EngineError> {
        match lane.owed_summary() {
            (0, _, _) => Ok(()),
            (count, oldest, parked) => Err(EngineError::RecoveryPending { profile: lane.profile.name.clone(), count, parked, oldest: oldest.unwrap_or(0) }),
        }
    }

    /// Sign on when the terminal has no open batch. Returns the batch and session to use.
    async fn ensure_signed_on(&self, lane: &Lane) -> Result<(String, Value), EngineError> {
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        if let (true, Some(b)) = (st.batch_open, st.batch.clone()) {
            return Ok((b, st.session));
        }
        self.sign_on(lane, None).await?;
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        match (st.batch_open, st.batch) {
            (true, Some(b)) => Ok((b, st.session)),
            _ => Err(EngineError::SignOnFailed("the backend gave no batch".into())),
        }
    }

    async fn sign_on(&self, lane: &Lane, key: Option<&str>) -> Result<Answer, EngineError> {
        let _one = lane.signon.lock().await;
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
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
                Self::apply_reply(&mut rec, &s.reply);
                rec.batch = batch;
                rec.updated_at = self.clock.now_rfc3339();
                self.finish_durable(&rec, false, Some(st)).await?;
                tracing::info!(profile = %lane.profile.name, batch = %rec.batch, "signed on");
                Ok(Answer::of(&rec))
            }
            Err(e) => {
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
                rec.updated_at = self.clock.now_rfc3339();
                self.finish_durable(&rec, false, None).await?;
                Err(EngineError::SignOnFailed(e.to_string()))
            }
        }
    }

    async fn transact(&self, lane: &Lane, operation: &str, class: OpClass, p: Prepared, original: Option<OriginalRef>, key: Option<&str>) -> Result<Answer, EngineError> {
        let financial = matches!(class, OpClass::Financial(_));
        if financial {
            self.check_not_owing(lane)?;
        }
        // Hold the gate before reading the batch, so a settlement cannot close it under this request.
        let _gate = lane.gate.read().await;
        let (batch, session) = self.ensure_signed_on(lane).await?;
        let mut rec = self.new_record(lane, operation, class, &batch, key);
        rec.amount_fen = p.amount_fen;
        rec.card = p.card_masked.clone();
        rec.request = p.public.clone();
        rec.sealed = self.sealer.seal(&p.vault)?;
        rec.totals = p.totals.clone();
        rec.original = original.as_ref().map(|o| o.id);
        rec.pos_reference = p.pos_reference.clone();
        // Journal before send: durable before a single byte leaves for the backend.
        let mut rec = match self.begin_durable(rec, true).await? {
            Ok(r) => r,
            Err(existing) => return Ok(existing),
        };
        testhook::point(testhook::BEFORE_SEND).await;
        let tx = TxRequest {
            slot: None,
            journal_id: rec.id,
            operation,
            identity: &lane.profile.identity,
            trace: &rec.trace,
            batch: &rec.batch,
            created_at: &rec.created_at,
            session: &session,
            public: &p.public,
            vault: &p.vault,
            transient: &p.transient,
            original: original.as_ref(),
        };
        let r = lane.backend.execute(tx).await;
        drop(p);
        testhook::point(testhook::AFTER_SEND).await;
        Self::note_online(lane, &r);
        rec.updated_at = self.clock.now_rfc3339();
        let mut approved = false;
        match r {
            Ok(reply) => {
                Self::apply_reply(&mut rec, &reply);
                approved = reply.verdict == Verdict::Approved && financial;
            }
            Err(e) if e.stage == Stage::Unknown => match class {
                OpClass::Financial(how) => {
                    rec.status = Status::Unknown;
                    rec.error = Some(e.to_string());
                    rec.recovery = Some(RecoveryState {
                        how,
                        attempts: 0,
                        next_at_ms: self.clock.now_ms() + lane.profile.recovery.backoff_initial_ms as i64,
                        parked: how == Recovery::Manual,
                        last_error: Some(e.to_string()),
                    });
                }
                _ => {
                    rec.status = Status::Failed;
                    rec.error = Some(e.to_string());
                }
            },
            Err(e) => {
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
            }
        }
        if let Some(r) = &rec.recovery {
            // Mirror first so no new financial request slips out between the commit and the mirror.
            lane.set_owed(rec.id, Some(Owed { next_at_ms: r.next_at_ms, parked: r.parked }));
        }
        self.finish_durable(&rec, approved, None).await?;
        testhook::point(testhook::AFTER_OUTCOME).await;
        if rec.status == Status::Unknown {
            tracing::warn!(profile = %lane.profile.name, id = rec.id, trace = %rec.trace, "outcome unknown; recovery queued");
            if rec.recovery.as_ref().is_some_and(|r| !r.parked) {
                // One immediate attempt, so the cashier usually sees "reversed" at once.
                drop(_gate);
                if let Some(done) = recovery::attempt(self, lane, rec.id).await? {
                    return Ok(Answer::of(&done));
                }
            }
            lane.wake.notify_one();
        }
        Ok(Answer::of(&rec))
    }

    async fn settle(&self, lane: &Lane, key: Option<&str>) -> Result<Answer, EngineError> {
        self.check_not_owing(lane)?;
        let _gate = lane.gate.write().await;
        self.check_not_owing(lane)?;
        let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
        let batch = match (st.batch_open, &st.batch) {
            (true, Some(b)) => b.clone(),
            _ => return Err(EngineError::BadRequest(format!("profile {:?} has no open batch to settle", lane.profile.name))),
        };
        let totals = self.journal.totals(&lane.profile.name, &batch).map_err(jerr)?;
        let mut rec = self.new_record(lane, "settle", OpClass::Settle, &batch, key);
        rec.request.insert("totals".into(), json!(totals));
        let rec = match self.begin_durable(rec, true).await? {
            Ok(r) => r,
            Err(existing) => return Ok(existing),
        };
        let done = self.settle_send(lane, rec, &st.session).await?;
        Ok(Answer::of(&done))
    }

    /// Send (or resend) a journaled settlement and journal what came of it.
    async fn settle_send(&self, lane: &Lane, mut rec: Record, session: &Value) -> Result<Record, EngineError> {
        testhook::point(testhook::IN_SETTLE).await;
        let totals: BTreeMap<String, i64> = rec.request.get("totals").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default();
        let (journal, profile, batch) = (self.journal.clone(), lane.profile.name.clone(), rec.batch.clone());
        let lines = move || -> Result<Vec<Value>, String> {
            Ok(journal.batch_records(&profile, &batch).map_err(|e| e.to_string())?.iter().filter(|r| r.class == "financial").map(Record::view).collect())
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
        let mut state = None;
        match r {
            Ok(s) => {
                Self::apply_reply(&mut rec, &s.reply);
                rec.status = Status::Approved;
                rec.result.insert("balanced".into(), json!(s.balanced));
                rec.result.insert("uploaded".into(), json!(s.uploaded));
                let mut st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
                if st.batch.as_deref() == Some(rec.batch.as_str()) {
                    st.batch_open = false;
                }
                state = Some(st);
                tracing::info!(profile = %lane.profile.name, batch = %rec.batch, balanced = s.balanced, "batch settled");
            }
            Err(e) if e.stage == Stage::Unknown => {
                let attempts = rec.recovery.as_ref().map(|r| r.attempts).unwrap_or(0);
                let r = RecoveryState { how: Recovery::Resend, attempts, next_at_ms: self.clock.now_ms() + lane.profile.recovery.backoff_initial_ms as i64, parked: false, last_error: Some(e.to_string()) };
                lane.set_owed(rec.id, Some(Owed { next_at_ms: r.next_at_ms, parked: false }));
                rec.status = Status::Unknown;
                rec.recovery = Some(r);
                rec.error = Some(e.to_string());
                lane.wake.notify_one();
            }
            Err(e) => {
                rec.status = Status::Failed;
                rec.recovery = None;
                rec.error = Some(e.to_string());
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
                    totals,
                }
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": self.clock.now_ms() - self.started_ms,
            "journal": { "syncs": self.journal.syncs() },
            "profiles": self.profiles_with_daily(profiles),
            "devices": self.devices.get().map(|h| h.devices()).unwrap_or_default(),
        })
    }

    pub fn journal(&self, q: &JournalQuery) -> Result<Vec<Value>, EngineError> {
        Ok(self.journal.list(q).map_err(jerr)?.iter().map(Record::view).collect())
    }

    pub fn journal_record(&self, id: u64) -> Result<Value, EngineError> {
        self.journal.get(id).map_err(jerr)?.map(|r| r.view()).ok_or(EngineError::NoRecord(id))
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
        lane.set_owed(id, Some(Owed { next_at_ms: r.next_at_ms, parked: false }));
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
        let _busy = recovery::claim(&lane, id).ok_or_else(|| EngineError::BadRequest(format!("journal record {id} is being recovered right now; try again")))?;
        let approved = match outcome {
            "approved" => true,
            "reversed" => false,
            other => return Err(EngineError::BadRequest(format!("`outcome` must be \"approved\" or \"reversed\", not {other:?}"))),
        };
        rec.status = if approved { Status::Approved } else { Status::Reversed };
        rec.recovery = None;
        rec.updated_at = self.clock.now_rfc3339();
        rec.message = Some(format!("resolved by hand as {outcome}{}", note.map(|n| format!(": {n}")).unwrap_or_default()));
        let settle = rec.class == "settle";
        self.finish_durable(&rec, approved && !settle, None).await?;
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
