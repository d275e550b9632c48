//! The scenic-ticket backend (`backend = "scenic"`, scenic-tickets.txt): create and cancel orders in a signed JSON envelope, and the gate check-in callback.
//!
//! [`wire`] holds the envelope, the params text, the codes and the local checks; [`notify`] the check-in
//! notification. An unknown create is resolved by resending the very same `channel_order_num` (made
//! here, journaled with the record, so every resend names the same order): the platform answers the
//! first order again, never a second one (see ARCHITECTURE.md, the scenic note).
pub mod notify;
pub mod wire;

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::backend::callback::{CallbackAnswer, CallbackBody, CallbackRefusal, CallbackRequest, CallbackSpec, Notification, Polled};
use crate::backend::common::{answer_body, cut, lookup_code, scrub};
use crate::backend::{
    Backend, BackendError, OpClass, OpSpec, OriginalRef, PrepareContext, PrepareError, Prepared, Recovered, Recovery, Reply, SettleRequest, Settled, Stage,
    TxRequest, Verdict,
};
use crate::config::{ConfigError, Profile};
use crate::net::client::{HttpReply, HttpsClient};
use crate::secret::Secret;

/// The profile `backend =` value.
pub const KIND: &str = "scenic";

const JSON: &str = "application/json;charset=UTF-8";

static OPS: &[OpSpec] = &[
    OpSpec { name: "create-order", class: OpClass::Financial(Recovery::Resend), needs_original: false },
    OpSpec { name: "cancel-order", class: OpClass::Financial(Recovery::Resend), needs_original: true },
];

static CALLBACKS: &[CallbackSpec] = &[CallbackSpec { path: notify::PATH, name: "check-in", body: CallbackBody::Json }];

/// Fields the daemon sets; a POS body naming one is refused.
const DAEMON_OWNED: &[&str] = &["channel_order_num", "order_num", "app_key", "sign", "time_stamp", "params"];
const CREATE_FIELDS: &[&str] = &["product_code", "take_phone", "tourist_info", "date", "price", "amount", "count"];

fn err(stage: Stage, detail: impl Into<String>) -> BackendError {
    BackendError::new(KIND, stage, detail)
}

fn invalid(field: &str, why: impl Into<String>) -> PrepareError {
    PrepareError::invalid(field, why)
}

/// The scenic backend of one profile.
pub struct ScenicBackend {
    http: HttpsClient,
    base: String,
    app_key: String,
    app_secret: Secret,
    terminal: String,
    limits: crate::config::Limits,
    /// Makes `channel_order_num`s made in the same millisecond differ.
    seq: AtomicU32,
    salt: u32,
}

impl std::fmt::Debug for ScenicBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScenicBackend").field("base", &self.base).field("app_key", &self.app_key).finish_non_exhaustive()
    }
}

/// What an answer said.
pub(crate) struct Answer {
    code: String,
    message: String,
    data: Value,
}

impl ScenicBackend {
    pub fn new(profile: &Profile, http: HttpsClient) -> Result<Self, ConfigError> {
        let field = |k: &str, why: &str| ConfigError::field(&profile.source, None, k, why);
        let app_key = profile.option_str("app_key", "")?;
        if app_key.is_empty() || app_key.len() > 64 {
            return Err(field("options.app_key", "required: the app_key the platform assigned (at most 64 characters)"));
        }
        let app_secret = profile.secret("app_secret")?.clone();
        if app_secret.is_empty() {
            return Err(field("secrets.app_secret", "must not be empty"));
        }
        let terminal: String = profile.identity.terminal.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        Ok(ScenicBackend {
            http,
            base: profile.base_url.trim_end_matches('/').to_string(),
            app_key,
            app_secret,
            terminal,
            limits: profile.limits,
            seq: AtomicU32::new(0),
            salt: rand::random::<u32>(),
        })
    }

    /// The real time of sending (the platform's signature window), not the engine's clock, on purpose.
    #[allow(clippy::disallowed_methods)]
    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// A new `channel_order_num`: terminal, the engine's now, and a per-process salt and counter.
    fn channel_order_num(&self, now_ms: i64) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}{now_ms:013}{:08x}", self.terminal, self.salt.wrapping_add(n))
    }

    /// POST `params` (signed, in the envelope) to `path`; the answer read strictly.
    async fn call(&self, path: &str, params: &str, journal_id: u64) -> Result<Answer, BackendError> {
        let body = wire::envelope(&self.app_key, &self.app_secret, params, Self::now_ms());
        let url = format!("{}/{path}", self.base);
        let http = self.http.post(&url, JSON, Bytes::from(body), journal_id).await.map_err(|e| BackendError::from_net(KIND, e))?;
        read_answer(path, &http)
    }
}

/// The answer of the interface at `path` read strictly (pure, so it can be fuzzed): a JSON object whose
/// `code` is one of the document's; anything else says nothing, so the outcome is unknown.
pub(crate) fn read_answer(path: &str, http: &HttpReply) -> Result<Answer, BackendError> {
    let bytes = answer_body(KIND, path, http)?;
    let unknown = |why: &str| err(Stage::Unknown, format!("{path}: {why}: {}", scrub(&String::from_utf8_lossy(bytes))));
    let v: Value = serde_json::from_slice(bytes).map_err(|_| unknown("the answer is not JSON"))?;
    let o = v.as_object().ok_or_else(|| unknown("the answer is not a JSON object"))?;
    let code = match o.get("code") {
        Some(Value::String(c)) => c.trim().to_string(),
        _ => return Err(unknown("the answer's `code` is missing or not a string")),
    };
    if lookup_code(wire::CODES, &code).is_none() {
        return Err(unknown("the answer's `code` is not in the document's table"));
    }
    let message = match o.get("message") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(m)) => crate::backend::common::bound(m, 200),
        Some(_) => return Err(unknown("the answer's `message` is not a string")),
    };
    Ok(Answer { code, message, data: o.get("data").cloned().unwrap_or(Value::Null) })
}

impl ScenicBackend {
    pub(crate) fn reply(op: &str, a: Answer) -> Result<Reply, BackendError> {
        let (zh, en) = lookup_code(wire::CODES, &a.code).unwrap_or(("", ""));
        let message = if a.message.is_empty() { zh.to_string() } else { a.message };
        let mut reply = Reply {
            verdict: Verdict::Declined,
            code: a.code.clone(),
            message,
            message_en: en.to_string(),
            fields: Map::new(),
            reference: None,
            trans_time: None,
            amount_fen: None,
        };
        if a.code != wire::OK {
            return Ok(reply);
        }
        reply.verdict = Verdict::Approved;
        if op == "create-order" {
            let num = a.data.get("order_num").and_then(Value::as_str).map(str::trim).unwrap_or_default();
            if num.is_empty() || num.len() > wire::MAX_ORDER_NUM || !num.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(err(Stage::Unknown, "an approved create without a well-formed `data.order_num`"));
            }
            reply.fields.insert("order_num".into(), Value::from(num));
            reply.fields.insert("check_state".into(), Value::from("awaiting-check-in"));
            reply.reference = Some(num.to_string());
        }
        Ok(reply)
    }

    /// The params text of a journaled record: the same text on every send.
    fn params(&self, tx: &TxRequest<'_>) -> Result<String, BackendError> {
        let s = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        let i = |k: &str| tx.public.get(k).and_then(Value::as_i64);
        match tx.operation {
            "create-order" => {
                let need = |k: &str| err(Stage::NotSent, format!("`{k}` is missing from the record"));
                let tourists = match tx.vault.get("tourist_info") {
                    None => Vec::new(),
                    Some(v) => serde_json::from_value::<Vec<wire::Tourist>>(v.clone()).map_err(|_| need("tourist_info"))?,
                };
                Ok(wire::create_params(
                    &s(tx.public, "channel_order_num").ok_or_else(|| need("channel_order_num"))?,
                    &s(tx.public, "product_code").ok_or_else(|| need("product_code"))?,
                    &s(tx.vault, "take_phone").ok_or_else(|| need("take_phone"))?,
                    &tourists,
                    &s(tx.public, "date").ok_or_else(|| need("date"))?,
                    i("price").ok_or_else(|| need("price"))?,
                    i("amount").ok_or_else(|| need("amount"))?,
                    i("count").ok_or_else(|| need("count"))?,
                ))
            }
            "cancel-order" => {
                let num = s(tx.public, "order_num").or_else(|| tx.original.and_then(|o| o.reference.clone()));
                Ok(wire::cancel_params(&num.ok_or_else(|| err(Stage::NotSent, "the original has no platform order_num"))?))
            }
            other => Err(err(Stage::NotSent, format!("unknown scenic operation {other:?}"))),
        }
    }

    fn path(op: &str) -> &'static str {
        if op == "create-order" {
            wire::CREATE_PATH
        } else {
            wire::CANCEL_PATH
        }
    }

    fn prepare_create(&self, body: &Map<String, Value>, ctx: &PrepareContext<'_>) -> Result<Prepared, PrepareError> {
        let text = |k: &str, max: usize| -> Result<String, PrepareError> {
            let v = body.get(k).filter(|v| !v.is_null()).ok_or_else(|| PrepareError::Missing(k.into()))?;
            let s = v.as_str().ok_or_else(|| invalid(k, "must be text"))?.trim();
            if s.is_empty() {
                return Err(PrepareError::Missing(k.into()));
            }
            if s.chars().count() > max || s.chars().any(char::is_control) {
                return Err(invalid(k, format!("at most {max} characters, no control characters")));
            }
            Ok(s.to_string())
        };
        let int = |k: &str| -> Result<i64, PrepareError> {
            let v = body.get(k).filter(|v| !v.is_null()).ok_or_else(|| PrepareError::Missing(k.into()))?;
            v.as_i64().filter(|_| v.is_i64() || v.is_u64()).ok_or_else(|| invalid(k, "must be an integer (fen for money, never a float or text)"))
        };
        let product = text("product_code", wire::MAX_PRODUCT_CODE)?;
        let phone = text("take_phone", 11)?;
        if phone.len() != 11 || !phone.starts_with('1') || !phone.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("take_phone", "must be an 11-digit mobile number starting with 1"));
        }
        let date = text("date", 10)?;
        if date.len() != 10 || chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_err() {
            return Err(invalid("date", "must be a date YYYY-MM-DD"));
        }
        let (price, amount, count) = (int("price")?, int("amount")?, int("count")?);
        self.limits.check(price, false).map_err(|why| invalid("price", why))?;
        self.limits.check(amount, true).map_err(|why| invalid("amount", why))?;
        if !(1..=wire::MAX_COUNT).contains(&count) {
            return Err(invalid("count", format!("must be 1 to {}", wire::MAX_COUNT)));
        }
        if price.checked_mul(count) != Some(amount) {
            return Err(invalid("amount", format!("must be price × count = {} fen", price.saturating_mul(count))));
        }
        let tourists = match body.get("tourist_info") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => wire::tourists(v).map_err(|why| invalid("tourist_info", why))?,
        };
        if tourists.len() as i64 > count {
            return Err(invalid("tourist_info", format!("{} tourists for {count} tickets", tourists.len())));
        }
        let num = self.channel_order_num(ctx.now_ms);
        let mut p = Prepared::default();
        p.public.insert("channel_order_num".into(), Value::from(num.clone()));
        p.public.insert("product_code".into(), Value::from(product));
        p.public.insert("take_phone".into(), Value::from(wire::mask_phone(&phone)));
        p.public.insert("date".into(), Value::from(date));
        p.public.insert("price".into(), Value::from(price));
        p.public.insert("amount".into(), Value::from(amount));
        p.public.insert("count".into(), Value::from(count));
        if !tourists.is_empty() {
            let masked: Vec<Value> = tourists.iter().map(|(id, _)| Value::from(crate::backend::mask_card(id))).collect();
            p.public.insert("tourist_ids".into(), Value::Array(masked));
            p.vault.insert("tourist_info".into(), serde_json::to_value(&tourists).map_err(|e| invalid("tourist_info", e.to_string()))?);
        }
        // The phone and the names are personal data: sealed, kept because a resend needs the same text.
        p.vault.insert("take_phone".into(), Value::from(phone));
        p.amount_fen = amount;
        p.totals = vec![("orderCount".into(), 1), ("orderSum".into(), amount)];
        p.pos_reference = Some(num.clone());
        p.unit = Some(format!("order:{num}"));
        Ok(p)
    }
}

#[async_trait::async_trait]
impl Backend for ScenicBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn operations(&self) -> &'static [OpSpec] {
        OPS
    }

    fn prepare(&self, operation: &str, body: &Map<String, Value>, original: Option<&OriginalRef>, ctx: &PrepareContext<'_>) -> Result<Prepared, PrepareError> {
        let allowed: &[&str] = if operation == "create-order" { CREATE_FIELDS } else { &[] };
        for k in body.keys() {
            if DAEMON_OWNED.contains(&k.as_str()) {
                return Err(PrepareError::DaemonOwned(k.clone()));
            }
            if !crate::backend::common::ENVELOPE_KEYS.contains(&k.as_str()) && !allowed.contains(&k.as_str()) {
                return Err(invalid(k, format!("is not a field of `{operation}`")));
            }
        }
        match operation {
            "create-order" => self.prepare_create(body, ctx),
            "cancel-order" => {
                let o = original.ok_or_else(|| PrepareError::Missing("original".into()))?;
                if o.operation != "create-order" {
                    return Err(invalid("original", format!("a cancel-order needs a `create-order` original, not a `{}`", o.operation)));
                }
                let num = o.reference.clone().ok_or_else(|| invalid("original", "the order has no platform order_num (was it approved?)"))?;
                let mut p = Prepared::default();
                p.public.insert("order_num".into(), Value::from(num.clone()));
                p.amount_fen = o.amount_fen;
                p.totals = vec![("cancelCount".into(), 1), ("cancelSum".into(), o.amount_fen)];
                p.pos_reference = Some(num.clone());
                p.unit = o.public.get("channel_order_num").and_then(Value::as_str).map(|c| format!("order:{c}"));
                Ok(p)
            }
            other => Err(invalid("operation", format!("`{other}` is not a scenic operation"))),
        }
    }

    async fn execute(&self, tx: TxRequest<'_>) -> Result<Reply, BackendError> {
        let params = self.params(&tx)?;
        tracing::debug!(op = tx.operation, trace = tx.trace, "scenic request");
        let a = self.call(Self::path(tx.operation), &params, tx.journal_id).await?;
        Self::reply(tx.operation, a)
    }

    /// Both operations are recovered by sending the identical params again. A create resent answers the
    /// first order (the same `channel_order_num`); a refusal of a resend settles it only when it depends
    /// on the text alone ([`wire::CREATE_REFUSALS_OF_THE_TEXT`]). A cancel resent answered 4002 (already
    /// cancelled) is our own earlier cancel.
    async fn recover(&self, tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError> {
        if how != Recovery::Resend {
            return Ok(Recovered::Again(format!("`{}` is recovered by resending, not {how:?}", tx.operation)));
        }
        let params = self.params(&tx)?;
        let a = self.call(Self::path(tx.operation), &params, tx.journal_id).await?;
        let code = a.code.clone();
        match (tx.operation, code.as_str()) {
            (_, wire::OK) => Ok(Recovered::Settled(Self::reply(tx.operation, a)?)),
            ("create-order", c) if wire::CREATE_REFUSALS_OF_THE_TEXT.contains(&c) => Ok(Recovered::Settled(Self::reply(tx.operation, a)?)),
            ("cancel-order", "4002") => {
                let mut r = Self::reply(tx.operation, a)?;
                r.verdict = Verdict::Approved;
                r.message_en = "cancelled (by the earlier send whose answer was lost)".into();
                Ok(Recovered::Settled(r))
            }
            ("cancel-order", "4001" | "4003") => Ok(Recovered::Settled(Self::reply(tx.operation, a)?)),
            (_, c) => Ok(Recovered::Again(format!("the resend was answered {c} {}: that does not say what became of the first", cut(&a.message, 80)))),
        }
    }

    /// The document has no settlement: closed locally with the engine's totals.
    async fn settle(&self, req: SettleRequest<'_>) -> Result<Settled, BackendError> {
        let mut reply = Reply::local("batch closed locally: the scenic platform has no settlement");
        reply.fields = req.totals.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
        Ok(Settled { balanced: true, uploaded: false, reply })
    }

    fn callbacks(&self) -> &'static [CallbackSpec] {
        CALLBACKS
    }

    fn verify_callback(&self, req: &CallbackRequest<'_>) -> Result<Notification, CallbackRefusal> {
        notify::verify(req)
    }

    fn callback_answer(&self, _spec: &CallbackSpec, outcome: Result<(), &CallbackRefusal>) -> CallbackAnswer {
        notify::answer(outcome)
    }

    /// An approved order waits for the gate's check-ins.
    fn awaits_result(&self, operation: &str, reply: &Reply) -> bool {
        operation == "create-order" && reply.verdict == Verdict::Approved
    }

    /// The document offers no order query: the order stays "awaiting check-in" until a notification.
    async fn poll(&self, _order: TxRequest<'_>) -> Result<Option<Polled>, BackendError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
