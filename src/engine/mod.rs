//! The vendor-neutral transaction engine: journal-before-send, trace/batch, recovery queue, totals.
//!
//! Invariants (see ARCHITECTURE.md): a record is durable before its request leaves the host; its
//! outcome is durable before the POS app hears it; an unknown outcome becomes a persisted recovery
//! entry in the same commit; a terminal sends no new financial request while it owes recovery.
/// The clock moved to `crate::model::clock`; kept here so `engine::clock::…` paths still read naturally.
pub use crate::model::clock;
mod admin;
mod callbacks;
mod jobs;
mod lane;
mod outcome;
mod poll;
mod recovery;
mod report;
mod retention;
pub use retention::EXPORT_PAGE_MAX;
mod settle;
mod signon;
pub use crate::journal::seal;
pub mod types;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

pub use callbacks::{Route, Source as NotificationSource};
pub use clock::{Clock, SystemClock};
pub use types::*;

use crate::backend::{self, Backend, BackendError, Lease, OpClass, OriginalRef, Prepared, Stage, TxRequest};
use crate::config::Profile;
use crate::journal::{Begun, Change, JournalStore, NewRecord, SledJournal};
use crate::net::client::{HttpOptions, HttpsClient};
use crate::testhook;
use lane::{Blocking, Lane, Owed, SignOnNeed, UnitClaim, UnitWait};
use outcome::Outcome;
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
    /// Itself, for the long jobs it runs in the background (`jobs.rs`).
    me: std::sync::OnceLock<std::sync::Weak<Engine>>,
    /// One vendor notification at a time (`callbacks.rs`): deduplication and the order's update never interleave.
    notify_lock: tokio::sync::Mutex<()>,
    /// Refused callbacks journaled per profile in the current minute (`callbacks.rs`).
    refusals: callbacks::RefusalWindow,
    /// Orders awaiting a vendor's result, by record id (`poll.rs`).
    awaiting: std::sync::Mutex<BTreeMap<u64, poll::Awaiting>>,
    /// Wakes the poll worker when an order starts awaiting.
    poll_wake: Arc<tokio::sync::Notify>,
    /// The day files settled batches moved to (`retention.rs`).
    archive: crate::journal::archive::Archive,
}

tokio::task_local! {
    /// The fingerprint of the request `run` is serving with an idempotency key, for `new_record`.
    static REQUEST_FINGERPRINT: String;
}

/// A first record found under the request's idempotency key must have been the very same request.
/// Records journaled before fingerprints existed carry none and are not compared.
fn check_same_request(first: &Record, fingerprint: Option<&str>) -> Result<(), EngineError> {
    match (first.request_fingerprint.as_deref(), fingerprint) {
        (Some(a), Some(b)) if a != b => Err(EngineError::IdempotencyKeyReused { key: first.idempotency_key.clone().unwrap_or_default(), first_id: first.id }),
        _ => Ok(()),
    }
}

/// What a POS request brings to `transact` besides the prepared body.
struct Ask<'k> {
    /// The original record, for operations that name one.
    original: Option<OriginalRef>,
    key: Option<&'k str>,
    /// A record refused until sign-on whose resend this request makes.
    resume: Option<Record>,
}

fn jerr(e: crate::journal::JournalError) -> EngineError {
    EngineError::Journal(e.to_string())
}

impl Engine {
    /// Open the journal, build every profile's backend, turn records left pending by a crash into
    /// recovery entries, and start the recovery workers.
    pub async fn open(cfg: EngineConfig, clock: Arc<dyn Clock>) -> Result<Arc<Engine>, EngineError> {
        Self::open_with(cfg, clock, &backend::build).await
    }

    /// [`Engine::open`] with the backends made by `build` instead of the registry's (tests with a
    /// backend of their own).
    pub async fn open_with(cfg: EngineConfig, clock: Arc<dyn Clock>, build: &backend::registry::BuildWith) -> Result<Arc<Engine>, EngineError> {
        // Refuses a journal behind its high-water mark (lost records would reuse trace numbers and keys).
        let journal = SledJournal::open(&cfg.data_dir.join("journal")).map_err(jerr)?;
        let key_path = cfg.data_dir.join("journal.key");
        // A key is made only for a journal with nothing sealed under an earlier one.
        let may_create_key = !key_path.exists() && !journal.has_sealed_records().map_err(jerr)?;
        if may_create_key && journal.mark_now().map_err(jerr)?.last_id > 0 {
            tracing::warn!(key = %key_path.display(), "no journal data key; the journal holds no sealed fields, so a new key is made");
        }
        let sealer = Sealer::open(&key_path, may_create_key)?;
        let journal: Arc<dyn JournalStore> = journal;
        let archive = crate::journal::archive::Archive::of(&cfg.data_dir);
        let mut lanes = BTreeMap::new();
        for p in cfg.profiles {
            let http = HttpsClient::new(&HttpOptions::for_profile(&p))
                .map_err(|e| EngineError::Config(format!("profile {} ({}): {e}", p.name, p.source.display())))?;
            let backend = build(&p, http).map_err(|e| EngineError::Config(e.to_string()))?;
            lanes.insert(p.name.clone(), Arc::new(Lane::new(p, backend)));
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
            me: std::sync::OnceLock::new(),
            notify_lock: tokio::sync::Mutex::new(()),
            refusals: Default::default(),
            awaiting: Default::default(),
            poll_wake: Arc::new(tokio::sync::Notify::new()),
            archive,
        });
        let _ = engine.me.set(Arc::downgrade(&engine));
        let notes: Vec<Record> = engine.journal.pending().map_err(jerr)?.into_iter().filter(|r| r.class == Class::Notification).collect();
        engine.adopt_pending().await?;
        engine.finish_pending_notifications(notes).await?;
        for rec in engine.journal.recovering().map_err(jerr)? {
            let Some(lane) = engine.lanes.get(&rec.profile) else { continue };
            let Some(mut owed) = Owed::of(&rec) else { continue };
            owed.next_at_ms = owed.next_at_ms.min(engine.clock.now_ms());
            // Whatever the unresolved record holds stays held until its outcome is known, across the
            // restart: its slot (the host may still be working on it there) and its unit.
            if let Some(slot) = &rec.slot {
                match lane.backend.lease_slot(slot).await {
                    Ok(Some(lease)) => lane.hold_lease(rec.id, lease),
                    Ok(None) => {}
                    Err(e) => tracing::error!(profile = %rec.profile, id = rec.id, slot = %slot, "cannot hold the slot of an unresolved record: {e}"),
                }
            }
            if let Some(unit) = &rec.unit {
                lane.units.lock().unwrap_or_else(|p| p.into_inner()).insert(unit.clone(), rec.id);
            }
            lane.set_owed(rec.id, Some(owed));
        }
        for lane in engine.lanes.values() {
            engine.load_recent(lane)?;
            tokio::spawn(recovery::worker(Arc::downgrade(&engine), lane.clone(), engine.stop.subscribe()));
            if let Some(job) = lane.backend.daily_job() {
                tokio::spawn(report::daily(Arc::downgrade(&engine), lane.clone(), job, engine.stop.subscribe()));
            }
        }
        engine.resume_jobs_at_start()?;
        engine.load_awaiting()?;
        if engine.lanes.values().any(|l| l.profile.results.polling()) {
            tokio::spawn(poll::worker(Arc::downgrade(&engine), engine.stop.subscribe()));
        }
        Ok(engine)
    }

    /// Records the last run left `pending` may or may not have reached the backend: recovery is owed.
    async fn adopt_pending(&self) -> Result<(), EngineError> {
        let now = self.clock.now_rfc3339();
        let mut change = Change::default();
        for mut rec in self.journal.pending().map_err(jerr)? {
            if matches!(rec.class, Class::Job | Class::Notification) {
                continue; // a long job resumes where its journal says (jobs.rs); a notification is finished (callbacks.rs)
            }
            let lane = self.lanes.get(&rec.profile);
            let how = outcome::policy(rec.class, lane.and_then(|l| l.backend.spec(&rec.operation)));
            rec.updated_at = now.clone();
            if rec.class == Class::Settle {
                if let Ok(mut st) = self.journal.profile_state(&rec.profile) {
                    if st.batch_open && st.batch.as_deref() == Some(rec.batch.as_str()) {
                        st.batch_open = false;
                        change.profile_states.push((rec.profile.clone(), st));
                    }
                }
            }
            let timing = lane.map(|l| self.timing(l)).unwrap_or(outcome::Timing {
                now_ms: self.clock.now_ms(),
                backoff_initial_ms: 0,
                backoff_max_ms: 0,
                max_attempts: 1,
            });
            outcome::apply(&mut rec, how, Outcome::Interrupted, &timing);
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
        let mut rec = Record::new(&lane.profile.name, operation, class.into(), batch, &self.clock.now_rfc3339());
        rec.idempotency_key = key.map(str::to_string);
        if key.is_some() {
            rec.request_fingerprint = REQUEST_FINGERPRINT.try_with(Clone::clone).ok();
        }
        rec
    }

    /// Journal a new record and make it durable. `Err(Answer)` when the idempotency key was used
    /// before (by a request that raced this one past the check in `run`): the first result, or 422
    /// when the first was another body.
    /// `JournalStore::begin` on the blocking pool: a sled transaction (encoding, tree updates) never
    /// runs on the async runtime's threads, so `GET /v1/status` and the other requests keep answering
    /// however large or slow one commit is.
    async fn journal_begin(&self, new: NewRecord) -> Result<Begun, EngineError> {
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || j.begin(new)).await.map_err(|e| EngineError::Journal(format!("journal task: {e}")))?.map_err(jerr)
    }

    /// `JournalStore::commit` on the blocking pool (see [`Engine::journal_begin`]).
    async fn journal_commit(&self, change: Change) -> Result<(), EngineError> {
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || j.commit(change)).await.map_err(|e| EngineError::Journal(format!("journal task: {e}")))?.map_err(jerr)
    }

    /// `begin`, then (for a new record) the group commit, in ONE trip to the blocking pool: the thread
    /// that wrote the entry syncs it (or waits for the group that does), so a durable point costs one
    /// hand-off there and back instead of three (runtime → blocking pool → runtime → sync thread →
    /// runtime, before).
    async fn journal_begin_durable(&self, new: NewRecord) -> Result<Begun, EngineError> {
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            let begun = j.begin(new)?;
            if let Begun::Created(_) = &begun {
                j.sync_blocking()?;
            }
            Ok(begun)
        })
        .await
        .map_err(|e| EngineError::Journal(format!("journal task: {e}")))?
        .map_err(jerr)
    }

    /// `commit` and its sync in one trip to the blocking pool (see [`Engine::journal_begin_durable`]).
    async fn journal_commit_durable(&self, change: Change) -> Result<(), EngineError> {
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            j.commit(change)?;
            j.sync_blocking()
        })
        .await
        .map_err(|e| EngineError::Journal(format!("journal task: {e}")))?
        .map_err(jerr)
    }

    async fn begin_durable(&self, rec: Record, allocate_trace: bool) -> Result<Result<Record, Answer>, EngineError> {
        let fingerprint = rec.request_fingerprint.clone();
        match self.journal_begin_durable(NewRecord { record: rec, allocate_trace }).await? {
            Begun::Existing(first) => {
                check_same_request(&first, fingerprint.as_deref())?;
                Ok(Err(Answer::of(&first)))
            }
            Begun::Created(rec) => {
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
        self.journal_commit_durable(change).await?;
        self.remember(rec);
        self.emit("transaction", rec.view());
        Ok(())
    }

    /// The profile's recovery settings and the clock's now, for the outcome rule.
    fn timing(&self, lane: &Lane) -> outcome::Timing {
        let r = &lane.profile.recovery;
        outcome::Timing {
            now_ms: self.clock.now_ms(),
            backoff_initial_ms: r.backoff_initial_ms,
            backoff_max_ms: r.backoff_max_ms,
            max_attempts: r.max_attempts,
        }
    }

    fn note_online(lane: &Lane, r: &Result<impl Sized, BackendError>) {
        let online = match r {
            Ok(_) => true,
            Err(e) => matches!(e.stage, Stage::Rejected | Stage::SignOnFirst),
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
        let Value::Object(body) = body else {
            return Err(EngineError::BadRequest("the body must be a JSON object".into()));
        };
        let mut fingerprint = None;
        if let Some(key) = idempotency_key {
            if !crate::model::idempotency::valid_idempotency_key(key) {
                return Err(EngineError::BadRequest(format!("Idempotency-Key {}", crate::model::idempotency::IDEMPOTENCY_KEY_RULE)));
            }
            let fp = self.sealer.fingerprint(operation, &body);
            if let Some(first) = self.journal.by_idempotency_key(profile, key).map_err(jerr)? {
                if first.operation != operation {
                    return Err(EngineError::IdempotencyConflict { key: key.into(), first_profile: first.profile, first_operation: first.operation });
                }
                check_same_request(&first, Some(&fp))?;
                let latest = self.latest_of(first)?;
                if !Self::refused_until_sign_on_unresent(&latest) {
                    return Ok(Answer::of(&latest));
                }
                // Refused unapplied until the terminal signs on, and its resend never journaled (the
                // daemon stopped in between, or the healing check-in failed): the POS asking again is
                // the moment to heal it, once (the claim keeps a second retry from sending it twice).
                let held = lane.clone();
                let Some(_claim) = recovery::claim(&held, latest.id) else {
                    return Err(EngineError::Busy {
                        profile: profile.to_string(),
                        detail: format!("journal record {} is being resent", latest.id),
                        retry_after_s: 1,
                    });
                };
                // Looked at again under the claim: another retry may have resent it meanwhile.
                let latest = self.latest_of(self.journal.get(latest.id).map_err(jerr)?.unwrap_or(latest))?;
                if !Self::refused_until_sign_on_unresent(&latest) {
                    return Ok(Answer::of(&latest));
                }
                return REQUEST_FINGERPRINT.scope(fp, self.run_checked(lane, operation, spec, body, None, Some(latest))).await;
            }
            fingerprint = Some(fp);
        }
        // The fingerprint reaches `new_record` through the task, not through every signature below.
        let Some(fp) = fingerprint else { return self.run_checked(lane, operation, spec, body, idempotency_key, None).await };
        REQUEST_FINGERPRINT.scope(fp, self.run_checked(lane, operation, spec, body, idempotency_key, None)).await
    }

    async fn run_checked(
        &self,
        lane: Arc<Lane>,
        operation: &str,
        spec: backend::OpSpec,
        mut body: serde_json::Map<String, Value>,
        idempotency_key: Option<&str>,
        resume: Option<Record>,
    ) -> Result<Answer, EngineError> {
        match spec.class {
            OpClass::SignOn => self.sign_on(&lane, idempotency_key, SignOnNeed::Asked).await,
            OpClass::Settle => {
                let batch = match body.remove("batch") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(b)) if !b.is_empty() && b.len() <= 12 && b.bytes().all(|c| c.is_ascii_digit()) => Some(b),
                    Some(_) => return Err(EngineError::BadRequest("`batch` must be a batch number (digits, as `GET /v1/status` lists it)".into())),
                };
                if let Some(k) = body.keys().next() {
                    return Err(EngineError::BadRequest(format!("settle takes only `batch`, not `{k}`")));
                }
                self.settle(&lane, idempotency_key, batch).await
            }
            OpClass::Report if lane.backend.is_job(operation) => self.start_job(&lane, operation, body, idempotency_key).await,
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
                let answer = self.transact(&lane, operation, class, prepared, Ask { original, key: idempotency_key, resume }).await?;
                self.note_catalog(&lane, operation, &answer);
                Ok(answer)
            }
        }
    }

    /// A record the host refused unapplied until the terminal signed on again, whose resend was never
    /// journaled: a retry with its Idempotency-Key resends it.
    fn refused_until_sign_on_unresent(rec: &Record) -> bool {
        rec.status == Status::Failed && rec.superseded_by.is_none() && rec.result.get("stage") == Some(&serde_json::json!(Stage::SignOnFirst))
    }

    /// A record, or the resend it was superseded by (a refusal until sign-on), followed to the end.
    fn latest_of(&self, mut rec: Record) -> Result<Record, EngineError> {
        for _ in 0..8 {
            match rec.superseded_by {
                Some(next) => match self.journal.get(next).map_err(jerr)? {
                    Some(r) => rec = r,
                    None => break,
                },
                None => break,
            }
        }
        Ok(rec)
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

    /// The 409 for a request held back by unresolved entries.
    fn pending_error(&self, lane: &Lane, b: &Blocking) -> EngineError {
        let wait_ms = if b.next_at_ms == i64::MAX { 60_000 } else { (b.next_at_ms - self.clock.now_ms()).max(0) };
        EngineError::RecoveryPending {
            profile: lane.profile.name.clone(),
            count: b.count,
            parked: b.parked,
            oldest: b.oldest,
            retry_after_s: (wait_ms as u64).div_ceil(1000).clamp(1, 60),
        }
    }

    /// How long a POS request may wait for what holds it back (an owed reversal, a busy ticket or
    /// station): its own budget, the time one backend exchange may take.
    fn wait_budget(lane: &Lane) -> std::time::Duration {
        lane.profile.connect_timeout + lane.profile.timeout
    }

    /// Reversal first, without bouncing the cashier: while entries that hold this request back are
    /// owed, make them due now, let the recovery worker send them, and wait (bounded by the request's
    /// budget). Parked entries need a person: 409 at once. Only if the recovery cannot be completed in
    /// time does the POS get 409, with `Retry-After` and the owed record's id.
    async fn wait_not_owing(&self, lane: &Lane, unit: Option<&str>) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + Self::wait_budget(lane);
        loop {
            let changed = lane.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let Some(b) = lane.blocking(unit) else { return Ok(()) };
            if b.parked > 0 {
                return Err(self.pending_error(lane, &b));
            }
            lane.expedite(unit, self.clock.now_ms());
            lane.wake.notify_one();
            // Wake now and then as well: an entry may resolve between the check and the wait.
            let step = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(250));
            if tokio::time::timeout_at(step, changed).await.is_err() && tokio::time::Instant::now() >= deadline {
                let b = lane.blocking(unit);
                return match b {
                    Some(b) => Err(self.pending_error(lane, &b)),
                    None => Ok(()),
                };
            }
        }
    }

    /// One request per unit (lottery ticket) at a time. A second request for a unit that is in flight
    /// or being recovered waits for the first's outcome and answers from it.
    async fn claim_unit(&self, lane: &Arc<Lane>, unit: Option<&str>) -> Result<UnitWait, EngineError> {
        let Some(unit) = unit else { return Ok(UnitWait::Claimed(None)) };
        let deadline = tokio::time::Instant::now() + Self::wait_budget(lane) + Self::wait_budget(lane);
        let mut first: Option<u64> = None;
        loop {
            let changed = lane.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let holder = {
                let mut units = lane.units.lock().unwrap_or_else(|p| p.into_inner());
                match units.get(unit) {
                    Some(id) => Some(*id),
                    None => {
                        units.insert(unit.to_string(), 0);
                        None
                    }
                }
            };
            match holder {
                None => {
                    let claim = UnitClaim { lane: lane.clone(), unit: unit.to_string(), id: 0, keep: false };
                    // The unit was freed by the request we waited for: answer from its outcome.
                    if let Some(id) = first {
                        if let Some(rec) = self.journal.get(id).map_err(jerr)? {
                            if rec.status.is_final() {
                                drop(claim);
                                return Ok(UnitWait::Answered(Answer::of(&rec)));
                            }
                        }
                    }
                    return Ok(UnitWait::Claimed(Some(claim)));
                }
                Some(id) => {
                    if id != 0 {
                        first = Some(id);
                        lane.expedite(Some(unit), self.clock.now_ms());
                        lane.wake.notify_one();
                    }
                    let step = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(250));
                    if tokio::time::timeout_at(step, changed).await.is_err() && tokio::time::Instant::now() >= deadline {
                        return Err(EngineError::Busy {
                            profile: lane.profile.name.clone(),
                            detail: format!("{unit} is being processed by journal record {id}; its outcome is not known yet"),
                            retry_after_s: 2,
                        });
                    }
                }
            }
        }
    }

    /// The open batch and session, with the gate held shared. Signs on first (once, for everybody
    /// waiting) when the terminal has no open batch.
    async fn open_batch<'a>(&self, lane: &'a Lane) -> Result<(tokio::sync::RwLockReadGuard<'a, ()>, String, Value), EngineError> {
        for _ in 0..3 {
            let gate = lane.gate.read().await;
            let st = self.journal.profile_state(&lane.profile.name).map_err(jerr)?;
            if let (true, Some(b)) = (st.batch_open, st.batch.clone()) {
                return Ok((gate, b, st.session));
            }
            drop(gate);
            self.sign_on(lane, None, SignOnNeed::NoOpenBatch).await?;
        }
        Err(EngineError::SignOnFailed("the terminal still has no open batch after signing on".into()))
    }

    async fn transact(&self, lane: &Arc<Lane>, operation: &str, class: OpClass, p: Prepared, ask: Ask<'_>) -> Result<Answer, EngineError> {
        let Ask { original, key, resume } = ask;
        let financial = matches!(class, OpClass::Financial(_));
        let unit = if financial { p.unit.clone() } else { None };
        let mut claim = match self.claim_unit(lane, unit.as_deref()).await? {
            UnitWait::Answered(a) => return Ok(a),
            UnitWait::Claimed(c) => c,
        };
        if financial {
            self.wait_not_owing(lane, unit.as_deref()).await?;
        }
        // The slot (lottery station) is taken before the record is journaled, so the record names it.
        let lease = if financial {
            lane.backend.lease(operation, &p.public, Self::wait_budget(lane)).await.map_err(|e| EngineError::Busy {
                profile: lane.profile.name.clone(),
                detail: e.detail,
                retry_after_s: 1,
            })?
        } else {
            None
        };
        // A record refused until sign-on whose resend this request makes (see `run`).
        let mut superseded: Option<Record> = resume;
        let mut healed = false;
        loop {
            // Hold the gate before reading the batch, so a settlement cannot close it under this request.
            let (gate, batch, session) = self.open_batch(lane).await?;
            let mut rec = self.new_record(lane, operation, class, &batch, if superseded.is_some() { None } else { key });
            rec.amount_fen = p.amount_fen;
            rec.card = p.card_masked.clone();
            rec.request = p.public.clone();
            rec.sealed = self.sealer.seal(&p.vault)?;
            rec.totals = p.totals.clone();
            rec.original = original.as_ref().map(|o| o.id);
            rec.pos_reference = p.pos_reference.clone();
            rec.unit = unit.clone();
            rec.slot = lease.as_ref().map(|l| l.slot.clone());
            // Journal before send: durable before a single byte leaves for the backend.
            let mut rec = match self.begin_durable(rec, true).await? {
                Ok(r) => r,
                Err(existing) => return Ok(existing),
            };
            if let Some(c) = claim.as_mut() {
                c.set_id(rec.id);
            }
            if let Some(mut first) = superseded.take() {
                // The refused first record now points at this one, so a retry with its key finds it.
                first.superseded_by = Some(rec.id);
                self.finish_durable(&first, false, None).await?;
            }
            testhook::point(testhook::BEFORE_SEND).await;
            let tx = TxRequest {
                slot: rec.slot.as_deref(),
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
            let r = crate::metrics::timed(&lane.profile.backend, &lane.profile.name, operation, lane.backend.execute(tx)).await;
            testhook::point(testhook::AFTER_SEND).await;
            Self::note_online(lane, &r);
            rec.updated_at = self.clock.now_rfc3339();
            if let Err(e) = &r {
                if e.stage == Stage::SignOnFirst {
                    // Refused unapplied until the terminal signs on again (the host moved to another
                    // batch, for instance after a check-in whose answer was lost): journal the refusal,
                    // sign on once, and resend with a fresh trace in the new batch.
                    rec.status = Status::Failed;
                    rec.error = Some(format!("refused until the terminal signs on again: {}", e.detail));
                    rec.result.insert("stage".into(), serde_json::json!(Stage::SignOnFirst));
                    self.finish_durable(&rec, false, None).await?;
                    drop(gate);
                    if healed {
                        // Refused again right after a fresh sign-on: never loop.
                        return Ok(Answer::of(&rec));
                    }
                    healed = true;
                    tracing::warn!(profile = %lane.profile.name, id = rec.id, batch = %rec.batch, "the host asks for a new sign-on; signing on and resending");
                    if let Err(e) = self.sign_on(lane, None, SignOnNeed::Stale(rec.batch.clone())).await {
                        // A check-in whose answer was lost leaves no open batch: the loop's `open_batch`
                        // signs on once more before the resend, rather than ending this sale failed for
                        // a check-in that may well have worked (found by the generic loyalty soak).
                        tracing::warn!(profile = %lane.profile.name, id = rec.id, "sign-on while healing failed ({e}); signing on again before the resend");
                    }
                    superseded = Some(rec);
                    continue;
                }
            }
            let outcome = match &r {
                Ok(reply) => Outcome::Answer(reply),
                Err(e) => Outcome::Error(e),
            };
            let how = match class {
                OpClass::Financial(how) => Some(how),
                _ => None,
            };
            let approved = outcome::apply(&mut rec, how, outcome, &self.timing(lane));
            let awaits = matches!(&r, Ok(reply) if rec.status == Status::Approved && lane.backend.awaits_result(operation, reply));
            if awaits {
                // Its result comes later (callback or poll); the record says so until it does.
                rec.result.insert("awaiting".into(), Value::String(poll::awaiting_word(lane).into()));
            }
            if let Some(owed) = Owed::of(&rec) {
                // Mirror first so no new financial request slips out between the commit and the mirror;
                // the slot and the unit stay held until the outcome is known.
                lane.set_owed(rec.id, Some(owed));
                if let Some(l) = lease {
                    lane.hold_lease(rec.id, l);
                }
                if let Some(c) = claim.as_mut() {
                    c.keep = true;
                }
            } else {
                drop(lease);
            }
            self.finish_durable(&rec, approved, None).await?;
            if awaits {
                self.await_result(lane, &rec);
            }
            testhook::point(testhook::AFTER_OUTCOME).await;
            drop(claim);
            if rec.status == Status::Unknown {
                tracing::warn!(profile = %lane.profile.name, id = rec.id, trace = %rec.trace, "outcome unknown; recovery queued");
                if rec.recovery.as_ref().is_some_and(|r| !r.parked) {
                    // One immediate attempt, so the cashier usually sees "reversed" at once.
                    drop(gate);
                    if let Some(done) = recovery::attempt(self, lane, rec.id).await? {
                        return Ok(Answer::of(&done));
                    }
                }
                lane.wake.notify_one();
            }
            return Ok(Answer::of(&rec));
        }
    }
}
