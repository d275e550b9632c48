//! Vendor notifications (callbacks and poll results): verify, journal once, apply to the order, publish, then answer.
//!
//! One path for both sources: a callback the listener received and a poll's `Done` become the same
//! `Class::Notification` record under the idempotency key `cb:<key>`, so the vendor's retries and a
//! callback racing a poll are journaled once. The notification record is made durable first
//! (`pending`), then its effect on the order and its own `approved` are one commit; a notification
//! left `pending` by a crash is finished at start-up before anything is served, and a retry of it
//! answers the same. The answer leaves only after that commit is synced.
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::*;
use crate::backend::callback::{CallbackAnswer, CallbackRefusal, CallbackRequest, CallbackSpec, Effect, Notification};

/// The idempotency-key prefix of notification records.
pub const KEY_PREFIX: &str = "cb:";
/// A notification key or reference longer than this is malformed (they index the journal).
const MAX_KEY: usize = 200;
/// At most this many refused callbacks per profile and minute are journaled (the rest are only
/// logged, counted): a flood of forgeries from an allowed address cannot fill the disk.
const REFUSALS_JOURNALED_PER_MINUTE: u32 = 120;

/// Where a notification came from, for the record and the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Callback,
    Poll,
}

impl Source {
    fn word(self) -> &'static str {
        match self {
            Source::Callback => "callback",
            Source::Poll => "poll",
        }
    }
}

/// What the listener may do with a request for one profile.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// No such profile here (404, not journaled: there is no terminal to journal it for).
    NoProfile,
    /// The profile exists but serves nothing at this path (or takes its results by polling only).
    NoPath,
    Serve(CallbackSpec),
}

/// The refusal window of one profile: (minute, count).
pub(super) type RefusalWindow = std::sync::Mutex<BTreeMap<String, (i64, u32)>>;

impl Engine {
    /// The callback spec a path of `profile` is served by.
    pub fn callback_route(&self, profile: &str, path: &str) -> Route {
        let Some(lane) = self.lanes.get(profile) else { return Route::NoProfile };
        if !lane.profile.results.callbacks() {
            return Route::NoPath;
        }
        match lane.backend.callbacks().iter().find(|s| s.path == path) {
            Some(s) => Route::Serve(*s),
            None => Route::NoPath,
        }
    }

    /// Whether `ip` is in `profile`'s callback allowlist.
    pub fn callback_source_allowed(&self, profile: &str, ip: IpAddr) -> bool {
        self.lanes.get(profile).is_some_and(|l| l.profile.callback_allow.iter().any(|n| n.contains(ip)))
    }

    /// Whether any profile accepts callbacks from `ip` (the listener drops other peers at accept).
    pub fn callback_source_known(&self, ip: IpAddr) -> bool {
        self.lanes.values().any(|l| l.profile.callback_allow.iter().any(|n| n.contains(ip)))
    }

    /// Whether any profile serves callbacks at all.
    pub fn serves_callbacks(&self) -> bool {
        self.lanes.values().any(|l| l.profile.results.callbacks() && !l.backend.callbacks().is_empty())
    }

    /// Handle one callback the listener received, bounded and from an allowed source: verify, journal,
    /// apply, publish, and return the document's answer (sent only now, after the journal is durable).
    pub async fn callback(&self, profile: &str, spec: &CallbackSpec, peer: IpAddr, req: &CallbackRequest<'_>) -> Result<CallbackAnswer, EngineError> {
        let lane = self.lane(profile)?.clone();
        let n = match lane.backend.verify_callback(req) {
            Ok(n) => n,
            Err(refusal) => return self.callback_refused(profile, Some(spec), req.path, peer, req.body.len(), refusal).await,
        };
        match self.notify(&lane, spec.name, Source::Callback, n).await? {
            Ok(()) => Ok(lane.backend.callback_answer(spec, Ok(()))),
            Err(refusal) => self.callback_refused(profile, Some(spec), req.path, peer, req.body.len(), refusal).await,
        }
    }

    /// Journal a refused callback (what was wrong, where from, how big: never its body) and give the
    /// document's error answer. No order changes.
    pub async fn callback_refused(
        &self,
        profile: &str,
        spec: Option<&CallbackSpec>,
        path: &str,
        peer: IpAddr,
        body_bytes: usize,
        refusal: CallbackRefusal,
    ) -> Result<CallbackAnswer, EngineError> {
        let lane = self.lane(profile)?.clone();
        let path = crate::backend::common::text::scrub(path);
        tracing::warn!(profile, path = %path, source = %peer, bytes = body_bytes, "callback refused: {refusal}");
        if self.admit_refusal(profile) {
            let mut rec = Record::new(profile, spec.map_or("callback", |s| s.name), Class::Notification, "", &self.clock.now_rfc3339());
            rec.status = Status::Failed;
            rec.error = Some(refusal.to_string());
            rec.request =
                Map::from_iter([("path".to_string(), json!(path)), ("source".to_string(), json!(peer.to_string())), ("bytes".to_string(), json!(body_bytes))]);
            rec.result.insert("refused".into(), json!(true));
            if let Begun::Created(rec) = self.journal_begin(NewRecord { record: rec, allocate_trace: false }).await? {
                self.journal.sync().await.map_err(jerr)?;
                self.emit("notification", json!({"profile": profile, "record": rec.id, "refused": refusal.to_string(), "source": "callback"}));
            }
        }
        Ok(match spec {
            Some(s) => lane.backend.callback_answer(s, Err(&refusal)),
            None => CallbackAnswer { status: 404, content_type: "text/plain; charset=utf-8", body: refusal.to_string().into_bytes() },
        })
    }

    fn admit_refusal(&self, profile: &str) -> bool {
        let minute = self.clock.now_ms() / 60_000;
        let mut w = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let e = w.entry(profile.to_string()).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        e.1 += 1;
        e.1 <= REFUSALS_JOURNALED_PER_MINUTE
    }

    /// Journal a verified notification once and apply it to its order (shared by callbacks and polls).
    /// `Ok(Err(_))`: refused (unknown order, malformed key); nothing changed.
    pub(super) async fn notify(&self, lane: &Lane, name: &str, source: Source, n: Notification) -> Result<Result<(), CallbackRefusal>, EngineError> {
        if n.key.is_empty() || n.key.len() > MAX_KEY || n.reference.is_empty() || n.reference.len() > MAX_KEY {
            return Ok(Err(CallbackRefusal::Malformed("notification key or reference empty or too long".into())));
        }
        let profile = lane.profile.name.as_str();
        // One notification at a time: a callback and a poll of the same result, or two deliveries,
        // never interleave between the journal's idempotency check and the order's update.
        let _one = self.notify_lock.lock().await;
        let Some(order) = self.order_by_reference(profile, &n.reference)? else {
            return Ok(Err(CallbackRefusal::UnknownOrder(crate::backend::common::text::scrub(&n.reference))));
        };
        let mut rec = Record::new(profile, name, Class::Notification, &order.batch, &self.clock.now_rfc3339());
        rec.idempotency_key = Some(format!("{KEY_PREFIX}{}", n.key));
        rec.reference = Some(n.reference.clone());
        rec.original = Some(order.id);
        rec.request = n.fields.clone();
        rec.result =
            Map::from_iter([("effect".to_string(), serde_json::to_value(&n.effect).unwrap_or(Value::Null)), ("source".to_string(), json!(source.word()))]);
        let rec = match self.journal_begin(NewRecord { record: rec, allocate_trace: false }).await? {
            Begun::Existing(first) if first.class != Class::Notification => {
                tracing::error!(profile, id = first.id, "a notification key collides with a POS request's Idempotency-Key; refused");
                return Ok(Err(CallbackRefusal::Malformed("notification key already used by another record".into())));
            }
            Begun::Existing(first) if first.status == Status::Pending => first, // left by a crash: finish it
            Begun::Existing(first) => {
                tracing::info!(profile, id = first.id, source = source.word(), "notification delivered again; journaled once, answered the same");
                return Ok(Ok(()));
            }
            Begun::Created(rec) => {
                self.journal.sync().await.map_err(jerr)?;
                rec
            }
        };
        testhook::point(testhook::IN_CALLBACK).await;
        self.finish_notification(lane, rec, Some(n.effect)).await?;
        Ok(Ok(()))
    }

    /// The order a vendor reference names: the newest record carrying it that is not a notification.
    fn order_by_reference(&self, profile: &str, reference: &str) -> Result<Option<Record>, EngineError> {
        let found = self.journal.by_reference(profile, reference).map_err(jerr)?;
        Ok(found.into_iter().rev().find(|r| r.class != Class::Notification && r.status == Status::Approved))
    }

    /// Apply a journaled (pending) notification to its order and mark it applied, in one commit; then
    /// publish it. Idempotent: an order already holding a newer notification keeps it.
    pub(super) async fn finish_notification(&self, lane: &Lane, mut rec: Record, effect: Option<Effect>) -> Result<(), EngineError> {
        let effect = match effect {
            Some(e) => e,
            None => serde_json::from_value(rec.result.get("effect").cloned().unwrap_or(Value::Null))
                .map_err(|e| EngineError::Journal(format!("notification record {} has no readable effect: {e}", rec.id)))?,
        };
        let now = self.clock.now_rfc3339();
        let mut change = Change::default();
        let mut order = match rec.original {
            Some(id) => self.journal.get(id).map_err(jerr)?,
            None => None,
        };
        let mut is_final = false;
        if let Some(o) = order.as_mut() {
            let applied = o.result.get("notification").and_then(Value::as_u64).unwrap_or(0);
            if applied < rec.id {
                let fields = match &effect {
                    Effect::Progress(f) => f,
                    Effect::Final { fields, .. } => fields,
                };
                for (k, v) in fields {
                    o.result.insert(k.clone(), v.clone());
                }
                if let Effect::Final { success, .. } = &effect {
                    o.result.insert("final".into(), json!(true));
                    o.result.insert("success".into(), json!(success));
                    o.result.remove("awaiting");
                    is_final = true;
                }
                o.result.insert("notification".into(), json!(rec.id));
                o.updated_at = now.clone();
                change.records.push(o.clone());
            }
        }
        rec.status = Status::Approved;
        rec.updated_at = now;
        change.records.push(rec.clone());
        self.journal_commit(change).await?;
        self.journal.sync().await.map_err(jerr)?;
        if is_final {
            if let Some(o) = &order {
                self.forget_awaiting(o.id);
            }
        }
        self.emit(
            "notification",
            json!({
                "profile": lane.profile.name,
                "record": rec.id,
                "name": rec.operation,
                "source": rec.result.get("source").cloned().unwrap_or(Value::Null),
                "reference": rec.reference,
                "key": rec.idempotency_key.as_deref().and_then(|k| k.strip_prefix(KEY_PREFIX)),
                "fields": rec.request,
                "final": is_final,
                "order": order.as_ref().map(Record::view),
            }),
        );
        if let Some(o) = &order {
            self.emit("transaction", o.view());
        }
        Ok(())
    }

    /// Notifications a crash left journaled but not applied: finish them before serving anything.
    pub(super) async fn finish_pending_notifications(&self, pending: Vec<Record>) -> Result<(), EngineError> {
        for rec in pending {
            let Some(lane) = self.lanes.get(&rec.profile).cloned() else { continue };
            tracing::warn!(profile = %rec.profile, id = rec.id, "a notification journaled before a crash is applied now");
            self.finish_notification(&lane, rec, None).await?;
        }
        Ok(())
    }
}
