//! The card consignment backend (`backend = "consign"`, card-consignment.txt): submit a card, query it, and its async result.
//!
//! [`crypto`] holds the fixed-order sign and the AES card secret, [`wire`] the paths, answers and the
//! order fields a query row or a notification carries. Decisions where the document is silent:
//!
//! - **orderId is the daemon's**: `C` + terminal + the record's creation time (YYYYMMDDHHMMSS) + its
//!   trace, rebuilt from the journal record, so the recovery query asks for exactly the order that was
//!   sent and no two records share one. A POS may not send `orderId`; an in-memory guard refuses to send
//!   one orderId with two different cards (it cannot happen by construction; the guard proves it).
//! - **`submit` is Financial with `Recovery::Query`**: an unknown outcome is settled by searchOrders by
//!   our orderId (the query table says the field is the sysOrderId, which an unknown submit never
//!   learned; the simulator accepts either): found → approved as accepted; code 2 订单不存在 → not
//!   applied, and the POS may submit the card again (a new record, so a new orderId). It is never resent.
//! - **The card secret is never stored**, not even sealed: the only recovery is a query, which does not
//!   need it, so it is `transient` (first send only). cardNumber is journaled masked 6+4, clear only for
//!   the first send too. `seCode` (CVV) likewise.
//! - **Money**: the POS sends `faceMoney` in fen, a whole number of yuan (the document's field is an int
//!   of yuan); answers' faceMoney/realMoney/amount come back as `*Fen`.
//! - **Reference** = our orderId (the notification carries it as well as sysOrderId); a notification's
//!   key is sysOrderId + status. The answers' optional `sign` has no defined input and is not checked.
//! - A submit answer code other than 1 or -1 is not in the table: the outcome is unknown (queried).
pub mod crypto;
pub mod wire;

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use rand::Rng;
use serde_json::{Map, Value};

use crate::backend::callback::{CallbackAnswer, CallbackBody, CallbackRefusal, CallbackRequest, CallbackSpec, Notification, Polled};
use crate::backend::common::{answer_body, bound, scrub};
use crate::backend::{
    mask_card, Backend, BackendError, OpClass, OpSpec, OriginalRef, PrepareContext, PrepareError, Prepared, Recovered, Recovery, Reply, Stage, TxRequest,
    Verdict,
};
use crate::config::{ConfigError, Profile};
use crate::net::client::HttpsClient;
use crate::secret::Secret;

use self::wire::{Answer, Status};

/// The profile `backend =` value.
pub const KIND: &str = "consign";

const FORM: &str = "application/x-www-form-urlencoded; charset=UTF-8";

static OPS: &[OpSpec] = &[
    OpSpec { name: "submit", class: OpClass::Financial(Recovery::Query), needs_original: false },
    OpSpec { name: "query", class: OpClass::Inquiry, needs_original: false },
];

static CALLBACKS: &[CallbackSpec] = &[CallbackSpec { path: "result", name: "result", body: CallbackBody::Form }];

/// POS fields of `submit`; everything else is the daemon's.
/// The `batchno` sent when the POS names none: the terminal's batch and which block of 2,000 trace
/// numbers the submit's trace falls in. The platform takes at most 2,000 cards per `batchno` (the
/// document's table); a terminal's trace numbers are unique within its batch, so each block holds at
/// most 2,000 submits, and the number is rebuilt from the record alone (a query after a crash names the
/// same batch). Found by the consign soak: the 2,001st card of a batch was refused "批次超过2000张卡".
pub(crate) fn batch_no(batch: &str, trace: &str) -> String {
    let block = trace.parse::<u32>().unwrap_or(0) / 2000;
    format!("{batch}{block:03}")
}

const SUBMIT_FIELDS: &[&str] = &["productCode", "cardNumber", "cardPassword", "seCode", "faceMoney", "customizeRate", "batchno", "custom", "productType"];
/// Fields the daemon sets; a POS body naming one is refused.
const DAEMON_OWNED: &[&str] = &["customerId", "timestamp", "orderId", "notifyUrl", "sign", "sysOrderId"];

pub(crate) fn err(stage: Stage, detail: impl Into<String>) -> BackendError {
    BackendError::new(KIND, stage, detail)
}

fn invalid(field: &str, why: impl Into<String>) -> PrepareError {
    PrepareError::invalid(field, why)
}

/// The consignment backend of one profile.
pub struct ConsignBackend {
    http: HttpsClient,
    base: String,
    customer_id: String,
    sign_key: Secret,
    aes_key: Secret,
    notify_url: String,
    /// orderId → a per-process keyed digest of the card it was sent with (never the card itself).
    sent: Mutex<HashMap<String, [u8; 32]>>,
    guard_key: [u8; 32],
}

impl std::fmt::Debug for ConsignBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsignBackend").field("base", &self.base).field("customer_id", &self.customer_id).finish_non_exhaustive()
    }
}

impl ConsignBackend {
    pub fn new(profile: &Profile, http: HttpsClient) -> Result<Self, ConfigError> {
        let field = |k: &str, why: String| ConfigError::field(&profile.source, None, k, why);
        let customer_id = profile.option_str("customer_id", "")?;
        if customer_id.is_empty() || customer_id.len() > wire::MAX_ID || !customer_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(field("options.customer_id", "required: the merchant number (商户号), digits".into()));
        }
        let sign_key = profile.secret("sign_key")?.clone();
        if sign_key.expose_str().map(str::is_empty).unwrap_or(true) {
            return Err(field("secrets.sign_key", "must be non-empty UTF-8 text (签名秘钥)".into()));
        }
        let aes_key = profile.secret("aes_key")?.clone();
        if aes_key.len() != 16 {
            return Err(field("secrets.aes_key", format!("must be the 16-byte merchant key (加密秘钥), got {} bytes", aes_key.len())));
        }
        let notify_url = profile.option_str("notify_url", "")?;
        if !(notify_url.is_empty() || notify_url.starts_with("http://") || notify_url.starts_with("https://")) {
            return Err(field("options.notify_url", "must be empty (no callbacks: polling) or a full http:// URL".into()));
        }
        Ok(ConsignBackend {
            http,
            base: profile.base_url.trim_end_matches('/').to_string(),
            customer_id,
            sign_key,
            aes_key,
            notify_url,
            sent: Mutex::new(HashMap::new()),
            guard_key: rand::thread_rng().gen(),
        })
    }

    /// The orderId of a record: `C` + terminal + creation time + trace, at most 50 characters.
    pub fn order_id(tx: &TxRequest<'_>) -> String {
        let time: String = tx.created_at.chars().filter(char::is_ascii_digit).take(14).collect();
        let term: String =
            tx.identity.terminal.chars().filter(char::is_ascii_alphanumeric).take(wire::MAX_ORDER_ID - 1 - 14 - tx.trace.len().min(10)).collect();
        format!("C{term}{time}{}", tx.trace.chars().filter(char::is_ascii_digit).take(10).collect::<String>())
    }

    /// The real time of sending: the platform checks it; not the engine's clock on purpose.
    #[allow(clippy::disallowed_methods)]
    fn timestamp() -> String {
        chrono::Utc::now().timestamp().to_string()
    }

    /// Sign and POST a form; returns the answer.
    async fn call(&self, path: &str, mut form: Vec<(&'static str, String)>, order: &[&str], journal_id: u64) -> Result<Answer, BackendError> {
        let get = |k: &str| form.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let sign = crypto::sign(order, &get, &self.sign_key).map_err(|e| err(Stage::NotSent, e.to_string()))?;
        form.push(("sign", sign));
        let body = {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &form {
                s.append_pair(k, v);
            }
            s.finish()
        };
        tracing::debug!(path, journal_id, "consign request");
        let http = self.http.post(&format!("{}/{path}", self.base), FORM, Bytes::from(body), journal_id).await.map_err(|e| BackendError::from_net(KIND, e))?;
        wire::read_answer(answer_body(KIND, path, &http)?)
    }

    /// searchOrders for our orderId.
    async fn search(&self, order_id: &str, journal_id: u64) -> Result<Answer, BackendError> {
        let form = vec![("customerId", self.customer_id.clone()), ("timestamp", Self::timestamp()), ("orderId", order_id.to_string())];
        self.call(wire::QUERY_PATH, form, crypto::QUERY_SIGN, journal_id).await
    }

    /// A found query row as fields, refusing a row that is not this merchant's or not well formed.
    fn row(&self, a: &Answer, order_id: &str) -> Result<(Map<String, Value>, Status, String), BackendError> {
        let row = wire::query_row(a, order_id).ok_or_else(|| err(Stage::Unknown, "the query answer names another order or none"))?;
        wire::order_fields(row, &self.customer_id).map_err(|e| err(Stage::Unknown, format!("query answer: {}", e.0)))
    }

    fn accepted(order_id: &str, msg: String, fields: Map<String, Value>) -> Reply {
        Reply {
            verdict: Verdict::Approved,
            code: wire::ACCEPTED.to_string(),
            message: if msg.is_empty() { "寄售成功，单据已被接收".into() } else { msg },
            message_en: "accepted: the card is handed over, its result comes later".into(),
            fields,
            reference: Some(order_id.to_string()),
            trans_time: None,
            amount_fen: None,
        }
    }

    /// The card guard: one orderId is never sent with two different cards.
    fn guard(&self, order_id: &str, card: &str, secret: &str) -> Result<(), BackendError> {
        use hmac::Mac;
        let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.guard_key).map_err(|_| err(Stage::NotSent, "guard key"))?;
        m.update(card.as_bytes());
        m.update(&[0]);
        m.update(secret.as_bytes());
        let d: [u8; 32] = m.finalize().into_bytes().into();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        match sent.get(order_id) {
            Some(prev) if *prev != d => Err(err(Stage::NotSent, format!("orderId {order_id} was already sent with another card; refused"))),
            _ => {
                if sent.len() > 100_000 {
                    sent.clear();
                }
                sent.insert(order_id.to_string(), d);
                Ok(())
            }
        }
    }

    async fn submit(&self, tx: &TxRequest<'_>) -> Result<Reply, BackendError> {
        let order_id = Self::order_id(tx);
        let clear = |k: &str| tx.transient.get(k).and_then(Value::as_str).map(str::to_string);
        let secret =
            clear("cardPassword").ok_or_else(|| err(Stage::NotSent, "the card secret is first-send-only and is gone: the order is queried, never resent"))?;
        let card = clear("cardNumber").unwrap_or_default();
        self.guard(&order_id, &card, &secret)?;
        let sealed = crypto::seal_card_secret(&self.aes_key, &secret).map_err(|e| err(Stage::NotSent, format!("cardPassword: {e}")))?;
        let public = |k: &str| tx.public.get(k).and_then(crate::backend::common::scalar_text);
        let face_yuan = tx.public.get("faceMoney").and_then(Value::as_i64).unwrap_or(0) / 100;
        let mut form = vec![
            ("customerId", self.customer_id.clone()),
            ("timestamp", Self::timestamp()),
            ("orderId", order_id.clone()),
            ("productType", public("productType").unwrap_or_else(|| "0".into())),
            ("batchno", public("batchno").unwrap_or_else(|| batch_no(tx.batch, tx.trace))),
            ("productCode", public("productCode").unwrap_or_default()),
        ];
        if let Some(r) = public("customizeRate") {
            form.push(("customizeRate", r));
        }
        if !card.is_empty() {
            form.push(("cardNumber", card));
        }
        form.push(("cardPassword", sealed));
        if let Some(cvv) = clear("seCode") {
            form.push(("seCode", cvv));
        }
        form.push(("faceMoney", face_yuan.to_string()));
        if !self.notify_url.is_empty() {
            form.push(("notifyUrl", self.notify_url.clone()));
        }
        if let Some(c) = public("custom") {
            form.push(("custom", c));
        }
        let a = self.call(wire::SUBMIT_PATH, form, crypto::SUBMIT_SIGN, tx.journal_id).await?;
        match a.code {
            wire::ACCEPTED => {
                let sys = a.raw.get("sysOrderId").or_else(|| a.raw.get("data").and_then(|d| d.get("sysOrderId"))).and_then(crate::backend::common::scalar_text);
                let sys = sys.filter(|s| !s.is_empty() && s.len() <= wire::MAX_ID && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)));
                let sys = sys.ok_or_else(|| err(Stage::Unknown, "an accepted answer without a well-formed `sysOrderId`"))?;
                let mut f = Map::new();
                f.insert("orderId".into(), Value::String(order_id.clone()));
                f.insert("sysOrderId".into(), Value::String(sys));
                f.insert("status".into(), Value::String(Status::Processing.word().into()));
                Ok(Self::accepted(&order_id, a.msg, f))
            }
            wire::REFUSED => Ok(Reply {
                verdict: Verdict::Declined,
                code: a.code.to_string(),
                message: scrub(&a.msg),
                message_en: "not accepted: the card was not taken".into(),
                fields: Map::from_iter([("orderId".to_string(), Value::String(order_id.clone()))]),
                reference: Some(order_id),
                trans_time: None,
                amount_fen: None,
            }),
            c => Err(err(Stage::Unknown, format!("submit answer code {c} is not in the document's table: {}", scrub(&a.msg)))),
        }
    }

    async fn query(&self, tx: &TxRequest<'_>) -> Result<Reply, BackendError> {
        let order_id = tx.public.get("orderId").and_then(Value::as_str).unwrap_or_default().to_string();
        let a = self.search(&order_id, tx.journal_id).await?;
        match a.code {
            1 => {
                let (fields, _, _) = self.row(&a, &order_id)?;
                Ok(Reply {
                    verdict: Verdict::Approved,
                    code: "1".into(),
                    message: if a.msg.is_empty() { "查询成功".into() } else { a.msg },
                    message_en: "found".into(),
                    fields,
                    reference: Some(order_id),
                    trans_time: None,
                    amount_fen: None,
                })
            }
            c => Ok(Reply {
                verdict: Verdict::Declined,
                code: c.to_string(),
                message: scrub(&a.msg),
                message_en: if c == wire::NOT_FOUND { "no such order".into() } else { "query failed".into() },
                fields: Map::new(),
                reference: None,
                trans_time: None,
                amount_fen: None,
            }),
        }
    }

    fn text(body: &Map<String, Value>, k: &str, max: usize) -> Result<Option<String>, PrepareError> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().count() > max => Err(invalid(k, format!("at most {max} characters"))),
            Some(Value::String(s)) if s.trim().is_empty() => Err(invalid(k, "must not be empty")),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(k, "must be text")),
        }
    }
}

#[async_trait::async_trait]
impl Backend for ConsignBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn operations(&self) -> &'static [OpSpec] {
        OPS
    }

    fn prepare(
        &self,
        operation: &str,
        body: &Map<String, Value>,
        _original: Option<&OriginalRef>,
        _ctx: &PrepareContext<'_>,
    ) -> Result<Prepared, PrepareError> {
        let allowed: &[&str] = match operation {
            "submit" => SUBMIT_FIELDS,
            "query" => &["orderId"],
            _ => return Err(invalid("operation", format!("`{operation}` is not a consign operation"))),
        };
        for k in body.keys() {
            if operation == "submit" && DAEMON_OWNED.contains(&k.as_str()) {
                return Err(PrepareError::DaemonOwned(k.clone()));
            }
            if !allowed.contains(&k.as_str()) && !crate::backend::common::ENVELOPE_KEYS.contains(&k.as_str()) {
                return Err(invalid(k, format!("is not a field of `{operation}`")));
            }
        }
        let mut p = Prepared::default();
        if operation == "query" {
            let id = Self::text(body, "orderId", wire::MAX_ORDER_ID)?.ok_or_else(|| PrepareError::Missing("orderId".into()))?;
            if !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
                return Err(invalid("orderId", "letters, digits, - and _ only"));
            }
            p.public.insert("orderId".into(), Value::String(id.clone()));
            p.pos_reference = Some(id);
            return Ok(p);
        }
        let code = Self::text(body, "productCode", 32)?.ok_or_else(|| PrepareError::Missing("productCode".into()))?;
        p.public.insert("productCode".into(), Value::String(code));
        let secret = Self::text(body, "cardPassword", 256)?.ok_or_else(|| PrepareError::Missing("cardPassword".into()))?;
        p.transient.insert("cardPassword".into(), Value::String(secret));
        if let Some(card) = Self::text(body, "cardNumber", 64)? {
            if !card.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid("cardNumber", "letters and digits only"));
            }
            p.public.insert("cardNumber".into(), Value::String(mask_card(&card)));
            p.card_masked = Some(mask_card(&card));
            p.transient.insert("cardNumber".into(), Value::String(card));
        }
        if let Some(cvv) = Self::text(body, "seCode", 8)? {
            p.transient.insert("seCode".into(), Value::String(cvv));
        }
        let face = body.get("faceMoney").ok_or_else(|| PrepareError::Missing("faceMoney".into()))?;
        let fen = face.as_i64().filter(|_| face.is_i64()).ok_or_else(|| invalid("faceMoney", "must be integer fen (not a float or text)"))?;
        if fen <= 0 || fen % 100 != 0 || fen > 100_000_000 {
            return Err(invalid("faceMoney", "must be a whole number of yuan in fen (a multiple of 100), 1 to 1,000,000 yuan"));
        }
        p.public.insert("faceMoney".into(), Value::from(fen));
        if let Some(r) = Self::text(body, "customizeRate", 5)? {
            let ok = match r.split_once('.') {
                Some((i, d)) => !i.is_empty() && i.len() <= 3 && d.len() == 1 && (i.to_string() + d).bytes().all(|b| b.is_ascii_digit()),
                None => !r.is_empty() && r.len() <= 3 && r.bytes().all(|b| b.is_ascii_digit()),
            };
            if !ok {
                return Err(invalid("customizeRate", "a discount like 98.6: at most one decimal"));
            }
            p.public.insert("customizeRate".into(), Value::String(r));
        }
        if let Some(b) = Self::text(body, "batchno", 32)? {
            p.public.insert("batchno".into(), Value::String(b));
        }
        if let Some(c) = Self::text(body, "custom", wire::MAX_TEXT)? {
            p.public.insert("custom".into(), Value::String(bound(&c, wire::MAX_TEXT)));
            p.pos_reference = Some(bound(&c, 64));
        }
        if let Some(t) = body.get("productType") {
            let t = t.as_i64().filter(|t| (0..=2).contains(t)).ok_or_else(|| invalid("productType", "0 (card number and secret), 1 (picture) or 2 (link)"))?;
            p.public.insert("productType".into(), Value::from(t));
        }
        p.amount_fen = fen;
        p.totals = vec![("submitCount".into(), 1), ("submitFaceSum".into(), fen)];
        // Each submit is its own card: an unknown outcome holds back only itself.
        p.unit = Some(format!("submit:{:016x}", rand::thread_rng().gen::<u64>()));
        Ok(p)
    }

    async fn execute(&self, tx: TxRequest<'_>) -> Result<Reply, BackendError> {
        match tx.operation {
            "submit" => self.submit(&tx).await,
            "query" => self.query(&tx).await,
            op => Err(err(Stage::NotSent, format!("`{}` is not a consign operation", bound(op, 40)))),
        }
    }

    /// Before anything is sent again, ask: the order found is the submit's answer (accepted); 订单不存在
    /// means it never arrived (not applied). A submit is never resent.
    async fn recover(&self, tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError> {
        if tx.operation != "submit" || how != Recovery::Query {
            return Ok(Recovered::Again(format!("`{}` has no automatic recovery ({how:?})", tx.operation)));
        }
        let order_id = Self::order_id(&tx);
        let a = self.search(&order_id, tx.journal_id).await?;
        match a.code {
            1 => {
                let (fields, _, _) = self.row(&a, &order_id)?;
                Ok(Recovered::Settled(Self::accepted(&order_id, a.msg, fields)))
            }
            wire::NOT_FOUND => {
                Ok(Recovered::Reversed { code: "2".into(), message: format!("not applied: the platform never had order {order_id} (订单不存在)") })
            }
            c => Ok(Recovered::Again(format!("query answered {c}: {}", scrub(&a.msg)))),
        }
    }

    fn callbacks(&self) -> &'static [CallbackSpec] {
        CALLBACKS
    }

    fn verify_callback(&self, req: &CallbackRequest<'_>) -> Result<Notification, CallbackRefusal> {
        if req.path != "result" {
            return Err(CallbackRefusal::NoSuchPath(bound(req.path, 60)));
        }
        let form = wire::parse_form(req.body, 32)?;
        let get = |k: &str| form.get(k).and_then(Value::as_str).map(str::to_string);
        let sign = get("sign").ok_or_else(|| CallbackRefusal::Malformed("`sign` is missing".into()))?;
        if !crypto::verify(crypto::NOTIFY_SIGN, &get, &self.sign_key, &sign) {
            return Err(CallbackRefusal::BadSign);
        }
        let (fields, status, sys) = wire::order_fields(&form, &self.customer_id).map_err(|e| CallbackRefusal::Malformed(e.0))?;
        Ok(wire::notification(fields, status, &sys))
    }

    /// `success` in plain text once journaled (the platform stops retrying); anything else makes it retry.
    fn callback_answer(&self, _spec: &CallbackSpec, outcome: Result<(), &CallbackRefusal>) -> CallbackAnswer {
        let (status, body) = match outcome {
            Ok(()) => (200, b"success".to_vec()),
            Err(e) => (400, format!("fail: {e}").into_bytes()),
        };
        CallbackAnswer { status, content_type: "text/plain; charset=utf-8", body }
    }

    fn awaits_result(&self, operation: &str, reply: &Reply) -> bool {
        operation == "submit" && reply.verdict == Verdict::Approved
    }

    async fn poll(&self, order: TxRequest<'_>) -> Result<Option<Polled>, BackendError> {
        if order.operation != "submit" {
            return Ok(None);
        }
        let order_id = Self::order_id(&order);
        let a = self.search(&order_id, order.journal_id).await?;
        match a.code {
            1 => {
                let (fields, status, sys) = self.row(&a, &order_id)?;
                Ok(Some(match status {
                    Status::Processing => Polled::Pending,
                    s => Polled::Done(wire::notification(fields, s, &sys)),
                }))
            }
            c => Err(err(Stage::Unknown, format!("the query of accepted order {order_id} answered {c}: {}", scrub(&a.msg)))),
        }
    }
}

#[cfg(test)]
mod tests;
