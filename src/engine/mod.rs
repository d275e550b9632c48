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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Mutex, Notify, RwLock};

pub use clock::{Clock, SystemClock};
pub use types::*;

use crate::backend::{self, Backend, BackendError, Lease, OpClass, OriginalRef, Prepared, Recovery, Reply, Stage, TxRequest, Verdict};
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
#[derive(Debug, Clone)]
struct Owed {
    next_at_ms: i64,
    parked: bool,
    /// What it holds back (`Record::unit`): `None` is the whole terminal.
    unit: Option<String>,
}

impl Owed {
    fn of(rec: &Record) -> Option<Owed> {
        rec.recovery.as_ref().map(|r| Owed { next_at_ms: r.next_at_ms, parked: r.parked, unit: rec.unit.clone() })
    }
    /// Whether this entry holds back a new request for `unit` (`None`: the request needs the terminal).
    fn blocks(&self, unit: Option<&str>) -> bool {
        match (&self.unit, unit) {
            (None, _) | (_, None) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
        }
    }
}

/// What holds a new request back: how many entries, the oldest id, how many are parked, when the next
/// attempt is due.
struct Blocking {
    count: usize,
    oldest: u64,
    parked: usize,
    next_at_ms: i64,
}

/// One terminal profile and its backend.
///
/// Lock order, never reversed: `signon` → `gate` → the std mutexes (`owed`, `busy`, `units`, `leases`,
/// `recent`). A std mutex is held only for a few statements, never across an await, and no value whose
/// `Drop` takes one of them is built or dropped while one is held.
struct Lane {
    profile: Profile,
    backend: Arc<dyn Backend>,
    /// Money-moving requests and reversals hold it shared; settlement and sign-on hold it exclusively,
    /// so no batch changes under a request in flight and no totals move under a settlement.
    gate: RwLock<()>,
    /// One sign-on (or settlement) at a time per terminal.
    signon: Mutex<()>,
    online: AtomicBool,
    /// Wakes the recovery worker.
    wake: Notify,
    /// Notified (all waiters) whenever an owed entry resolves or a unit is freed.
    changed: Notify,
    owed: std::sync::Mutex<BTreeMap<u64, Owed>>,
    busy: std::sync::Mutex<HashSet<u64>>,
    /// Units (lottery tickets) with a request in flight or an outcome being recovered: unit → record
    /// id (0 while the request is not yet journaled).
    units: std::sync::Mutex<HashMap<String, u64>>,
    /// Slots (lottery stations) held by records whose outcome is unknown.
    leases: std::sync::Mutex<HashMap<u64, Lease>>,
    /// The last 48 hours of records, for backends with local risk rules (`wants_history`).
    recent: std::sync::Mutex<std::collections::VecDeque<backend::HistoryItem>>,
}

impl Lane {
    fn new(profile: Profile, backend: Arc<dyn Backend>) -> Lane {
        Lane {
            profile,
            backend,
            gate: RwLock::new(()),
            signon: Mutex::new(()),
            online: AtomicBool::new(false),
            wake: Notify::new(),
            changed: Notify::new(),
            owed: Default::default(),
            busy: Default::default(),
            units: Default::default(),
            leases: Default::default(),
            recent: Default::default(),
        }
    }

    /// The entries that hold back a new request for `unit`, if any.
    fn blocking(&self, unit: Option<&str>) -> Option<Blocking> {
        self.blocking_where(|o| o.blocks(unit))
    }

    /// The entries that hold the whole terminal back (no unit): they go out before any sign-on.
    fn blocking_terminal(&self) -> Option<Blocking> {
        self.blocking_where(|o| o.unit.is_none())
    }

    fn blocking_where(&self, holds: impl Fn(&Owed) -> bool) -> Option<Blocking> {
        let owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        let mut b: Option<Blocking> = None;
        for (id, o) in owed.iter().filter(|(_, o)| holds(o)) {
            let e = b.get_or_insert(Blocking { count: 0, oldest: *id, parked: 0, next_at_ms: i64::MAX });
            e.count += 1;
            e.parked += usize::from(o.parked);
            if !o.parked {
                e.next_at_ms = e.next_at_ms.min(o.next_at_ms);
            }
        }
        b
    }

    /// A cashier is waiting: make the entries that hold `unit` back due now.
    fn expedite(&self, unit: Option<&str>, now_ms: i64) {
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        for o in owed.values_mut().filter(|o| !o.parked && o.blocks(unit)) {
            o.next_at_ms = o.next_at_ms.min(now_ms);
        }
    }

    fn set_owed(&self, id: u64, owed: Option<Owed>) {
        let resolved = {
            let mut m = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            match owed {
                Some(o) => {
                    m.insert(id, o);
                    None
                }
                None => m.remove(&id),
            }
        };
        if let Some(resolved) = resolved {
            // The outcome is known: the slot and the unit it held are free again. The lease is taken
            // out of the map first and dropped after the lock is released.
            let lease = self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            drop(lease);
            if let Some(unit) = resolved.unit {
                let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
                if units.get(&unit) == Some(&id) {
                    units.remove(&unit);
                }
            }
            self.changed.notify_waiters();
        }
    }

    fn hold_lease(&self, id: u64, lease: Lease) {
        let old = self.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(id, lease);
        drop(old);
    }

    /// Whether this backend settles batches at all (it offers a settle operation).
    fn settles(&self) -> bool {
        self.backend.operations().iter().any(|s| s.class == OpClass::Settle)
    }
}

/// A unit (lottery ticket) claimed by one request; freed on drop unless its outcome stays unknown.
struct UnitClaim {
    lane: Arc<Lane>,
    unit: String,
    id: u64,
    keep: bool,
}

impl UnitClaim {
    fn set_id(&mut self, id: u64) {
        let mut units = self.lane.units.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = units.get_mut(&self.unit) {
            if *v == self.id {
                *v = id;
            }
        }
        drop(units);
        self.id = id;
    }
}

impl Drop for UnitClaim {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        {
            let mut units = self.lane.units.lock().unwrap_or_else(|p| p.into_inner());
            if units.get(&self.unit) == Some(&self.id) {
                units.remove(&self.unit);
            }
        }
        self.lane.changed.notify_waiters();
    }
}

/// Why a sign-on is asked for; looked at again once the sign-on lock is held (single flight).
#[derive(Debug, Clone)]
enum SignOnNeed {
    /// The POS asked for it (`checkin`): always.
    Asked,
    /// A request found no open batch: only if there still is none.
    NoOpenBatch,
    /// The host refused a request in this batch until the terminal signs on: only if it is still the
    /// current batch (somebody else may have signed on meanwhile).
    Stale(String),
}

/// Whether a unit was claimed, or the request was answered from an earlier one for the same unit.
enum UnitWait {
    Claimed(Option<UnitClaim>),
    Answered(Answer),
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
        });
        engine.adopt_pending().await?;
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
            if rec.class == "settle" {
                if let Ok(mut st) = self.journal.profile_state(&rec.profile) {
                    if st.batch_open && st.batch.as_deref() == Some(rec.batch.as_str()) {
                        st.batch_open = false;
                        change.profile_states.push((rec.profile.clone(), st));
                    }
                }
            }
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

    async fn begin_durable(&self, rec: Record, allocate_trace: bool) -> Result<Result<Record, Answer>, EngineError> {
        let fingerprint = rec.request_fingerprint.clone();
        match self.journal_begin(NewRecord { record: rec, allocate_trace }).await? {
            Begun::Existing(first) => {
                check_same_request(&first, fingerprint.as_deref())?;
                Ok(Err(Answer::of(&first)))
            }
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
        self.journal_commit(change).await?;
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
            if !crate::api::valid_idempotency_key(key) {
                return Err(EngineError::BadRequest(format!("Idempotency-Key {}", crate::api::idempotency::IDEMPOTENCY_KEY_RULE)));
            }
            let fp = self.sealer.fingerprint(operation, &body);
            if let Some(first) = self.journal.by_idempotency_key(profile, key).map_err(jerr)? {
                if first.operation != operation {
                    return Err(EngineError::IdempotencyConflict { key: key.into(), first_profile: first.profile, first_operation: first.operation });
                }
                check_same_request(&first, Some(&fp))?;
                return Ok(Answer::of(&self.latest_of(first)?));
            }
            fingerprint = Some(fp);
        }
        // The fingerprint reaches `new_record` through the task, not through every signature below.
        let Some(fp) = fingerprint else { return self.run_checked(lane, operation, spec, body, idempotency_key).await };
        REQUEST_FINGERPRINT.scope(fp, self.run_checked(lane, operation, spec, body, idempotency_key)).await
    }

    async fn run_checked(
        &self,
        lane: Arc<Lane>,
        operation: &str,
        spec: backend::OpSpec,
        mut body: serde_json::Map<String, Value>,
        idempotency_key: Option<&str>,
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

    /// Sign on: one at a time per terminal, and only when needed (single flight: the need is looked at
    /// again once the lock is taken). Never beside a request or reversal of the terminal in flight (the
    /// gate is held exclusively); owed reversals go out first; a batch holding approved records is
    /// settled (or marked unsettled when the host refuses) before a new one is opened.
    async fn sign_on(&self, lane: &Lane, key: Option<&str>, need: SignOnNeed) -> Result<Answer, EngineError> {
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
    async fn close_before_sign_on(&self, lane: &Lane, st: crate::journal::ProfileState) -> Result<crate::journal::ProfileState, EngineError> {
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

    async fn transact(
        &self,
        lane: &Arc<Lane>,
        operation: &str,
        class: OpClass,
        p: Prepared,
        original: Option<OriginalRef>,
        key: Option<&str>,
    ) -> Result<Answer, EngineError> {
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
        let mut superseded: Option<Record> = None;
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
            let r = lane.backend.execute(tx).await;
            testhook::point(testhook::AFTER_SEND).await;
            Self::note_online(lane, &r);
            rec.updated_at = self.clock.now_rfc3339();
            let mut approved = false;
            match r {
                Ok(reply) => {
                    Self::apply_reply(&mut rec, &reply);
                    approved = reply.verdict == Verdict::Approved && financial;
                }
                Err(e) if e.stage == Stage::SignOnFirst => {
                    // Refused unapplied until the terminal signs on again (the host moved to another
                    // batch, for instance after a check-in whose answer was lost): journal the refusal,
                    // sign on once, and resend with a fresh trace in the new batch.
                    rec.status = Status::Failed;
                    rec.error = Some(format!("refused until the terminal signs on again: {}", e.detail));
                    self.finish_durable(&rec, false, None).await?;
                    drop(gate);
                    if healed {
                        // Refused again right after a fresh sign-on: never loop.
                        return Ok(Answer::of(&rec));
                    }
                    healed = true;
                    tracing::warn!(profile = %lane.profile.name, id = rec.id, batch = %rec.batch, "the host asks for a new sign-on; signing on and resending");
                    self.sign_on(lane, None, SignOnNeed::Stale(rec.batch.clone())).await?;
                    superseded = Some(rec);
                    continue;
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

    /// `settle`, or `settle {"batch": N}` for an earlier batch listed as unsettled.
    async fn settle(&self, lane: &Lane, key: Option<&str>, batch: Option<String>) -> Result<Answer, EngineError> {
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
    async fn settle_locked(&self, lane: &Lane, batch: &str, key: Option<&str>) -> Result<Record, EngineError> {
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
    async fn close_batch(&self, lane: &Lane, batch: &str) -> Result<(), EngineError> {
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
                st.unsettled.retain(|b| *b != rec.batch);
                state = Some(st);
                tracing::info!(profile = %lane.profile.name, batch = %rec.batch, balanced = s.balanced, "batch settled");
            }
            Err(e) if e.stage == Stage::Unknown => {
                let attempts = rec.recovery.as_ref().map(|r| r.attempts).unwrap_or(0);
                let r = RecoveryState {
                    how: Recovery::Resend,
                    attempts,
                    next_at_ms: self.clock.now_ms() + lane.profile.recovery.backoff_initial_ms as i64,
                    parked: false,
                    last_error: Some(e.to_string()),
                };
                rec.status = Status::Unknown;
                rec.recovery = Some(r);
                rec.error = Some(e.to_string());
                if let Some(owed) = Owed::of(&rec) {
                    lane.set_owed(rec.id, Some(owed));
                }
                lane.wake.notify_one();
            }
            Err(e) => {
                rec.status = Status::Failed;
                rec.recovery = None;
                rec.error = Some(e.to_string());
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
