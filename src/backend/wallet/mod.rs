//! The stored-value account backend (`backend = "wallet"`, stored-value-account.txt): POS checks, signed JSON requests, answers, delivery.
//!
//! [`wire`] holds the interfaces as data, [`crypto`] the signatures and 3DES fields, [`answer`] the
//! reading of answers, [`codes`] what the codes mean, [`delivery`] the delivery job's plan and chunks.
pub mod answer;
pub mod codes;
pub mod crypto;
pub mod delivery;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use bytes::Bytes;
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::backend::common::sign::{RsaHash, RsaSigner};
use crate::backend::job::{JobOutcome, JobPlan, JobPlanRequest, JobSend};
use crate::backend::{
    mask_card, Backend, BackendError, OpClass, OpSpec, OriginalRef, PrepareContext, PrepareError, Prepared, Recovered, Recovery, Reply, SettleRequest, Settled,
    SignOn, Stage, TerminalIdentity, TxRequest, Verdict,
};
use crate::config::{ConfigError, Profile};
use crate::net::client::{HttpsClient, NetError};
use crate::secret::Secret;

use self::crypto::{TsigKey, TsigMode};
use self::wire::{Envelope, Kind, Owner, WireOp};

/// The profile `backend =` value.
pub const KIND: &str = "wallet";

const JSON: &str = "application/json; charset=UTF-8";

/// Body keys that belong to the engine's envelope; ignored here.
const ENVELOPE_KEYS: &[&str] = &["original", "scan"];

static SPECS: LazyLock<Vec<OpSpec>> = LazyLock::new(|| wire::OPS.iter().map(|w| w.spec).chain(wire::LOCAL_OPS.iter().copied()).collect());

pub(crate) fn err(stage: Stage, detail: impl Into<String>) -> BackendError {
    BackendError::new(KIND, stage, detail)
}

fn net_error(e: NetError) -> BackendError {
    BackendError::from_net(KIND, e)
}

/// Text from outside, shortened for an error detail, long digit runs masked.
pub fn scrub(text: &str) -> String {
    crate::backend::loyalty::scrub(text)
}

fn invalid(field: &str, why: impl Into<String>) -> PrepareError {
    PrepareError::invalid(field, why)
}

/// An order object as sent (or as orderMD5 is computed over).
type Order = Map<String, Value>;

/// The wallet backend of one profile.
pub struct WalletBackend {
    http: HttpsClient,
    base: String,
    app_id: String,
    app_key: Secret,
    seller_id: String,
    tsig: TsigKey,
    epoch_ms: bool,
    /// `md5_over = "plain"`: orderMD5 over the 3DES fields' clear text.
    md5_plain: bool,
    merge_errcode: Option<i64>,
    limits: crate::config::Limits,
    nonce_prefix: String,
    nonce_n: AtomicU64,
}

impl std::fmt::Debug for WalletBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletBackend").field("base", &self.base).field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

fn option_bool(p: &Profile, key: &str) -> Result<bool, ConfigError> {
    match p.options.get(key) {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(ConfigError::field(&p.source, None, &format!("options.{key}"), "must be true or false")),
    }
}

impl WalletBackend {
    pub fn new(profile: &Profile, http: HttpsClient) -> Result<Self, ConfigError> {
        let field = |k: &str, why: String| ConfigError::field(&profile.source, None, k, why);
        let app_id = profile.option_str("app_id", "")?;
        if app_id.is_empty() {
            return Err(field("options.app_id", "required: the appId the platform assigned".into()));
        }
        let seller_id = profile.option_str("seller_id", "")?;
        if seller_id.is_empty() {
            return Err(field("options.seller_id", "required: the sellerId (商户编码)".into()));
        }
        let app_key = profile.secret("app_key")?.clone();
        if app_key.expose_str().map(str::is_empty).unwrap_or(true) {
            return Err(field("secrets.app_key", "must be non-empty UTF-8 text".into()));
        }
        let mode_text = profile.option_str("tsig", "rsa-sha1")?;
        let mode = TsigMode::parse(&mode_text).ok_or_else(|| field("options.tsig", format!("{mode_text:?}: must be rsa-sha1, rsa-sha256 or md5-key")))?;
        let tsig = match mode {
            TsigMode::Md5Key => TsigKey::Md5(app_key.clone()),
            m => {
                let pem = profile.secret("tsig_private_key")?;
                let k = RsaSigner::from_pem(pem).map_err(|e| field("secrets.tsig_private_key", e.to_string()))?;
                TsigKey::Rsa(Box::new(k), if m == TsigMode::RsaSha1 { RsaHash::Sha1 } else { RsaHash::Sha256 })
            }
        };
        let md5_plain = match profile.option_str("md5_over", "sent")?.as_str() {
            "sent" => false,
            "plain" => true,
            other => return Err(field("options.md5_over", format!("{other:?}: must be sent or plain"))),
        };
        let merge_errcode = match profile.options.get("merge_errcode") {
            None => None,
            Some(toml::Value::Integer(i)) => Some(*i),
            Some(_) => return Err(field("options.merge_errcode", "must be an integer".into())),
        };
        let mut rng = rand::thread_rng();
        Ok(WalletBackend {
            http,
            base: profile.base_url.trim_end_matches('/').to_string(),
            app_id,
            app_key,
            seller_id,
            tsig,
            epoch_ms: option_bool(profile, "epoch_ms")?,
            md5_plain,
            merge_errcode,
            limits: profile.limits,
            nonce_prefix: format!("{:016x}", rng.gen::<u64>()),
            nonce_n: AtomicU64::new(0),
        })
    }

    /// A nonce never used before: 64 random bits per process and a counter.
    fn nonce(&self) -> String {
        format!("{}{:08x}", self.nonce_prefix, self.nonce_n.fetch_add(1, Ordering::Relaxed))
    }

    /// The real time of sending: the platform refuses stale timestamps; not the engine's clock on purpose.
    #[allow(clippy::disallowed_methods)]
    fn timestamp(&self) -> String {
        let now = chrono::Utc::now();
        if self.epoch_ms {
            now.timestamp_millis().to_string()
        } else {
            now.timestamp().to_string()
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }

    fn app(&self) -> Value {
        let (ts, nonce) = (self.timestamp(), self.nonce());
        let sig = crypto::app_signature(&self.app_id, &self.app_key, &nonce, &ts);
        json!({"appId": self.app_id, "timeStamp": ts, "nonce": nonce, "signature": sig})
    }

    /// The tsig over `md5` (orderMD5).
    fn tsig(&self, md5: &str) -> Result<Value, BackendError> {
        let (ts, nonce) = (self.timestamp(), self.nonce());
        let sig = self.tsig.sign(&crypto::tsig_input(md5, &self.app_id, &ts, &nonce)).map_err(|e| err(Stage::NotSent, format!("tsig: {e}")))?;
        Ok(json!({"orderMD5": md5, "signature": sig, "timeStamp": ts, "nonce": nonce}))
    }

    /// The order object of `w` for `tx`, in the document's field order, and the one orderMD5 is computed over.
    fn order(&self, w: &WireOp, tx: &TxRequest<'_>) -> Result<(Order, Order), BackendError> {
        let mut order = Map::new();
        let mut for_md5 = Map::new();
        for f in w.fields {
            let v: Option<Value> = match f.owner {
                Owner::Daemon => Some(Value::String(match f.name {
                    "sellerId" => self.seller_id.clone(),
                    "storeId" => tx.identity.store.clone(),
                    "terminalId" => tx.identity.terminal.clone(),
                    "operatorId" => tx.identity.operator.clone(),
                    "batchNo" => tx.batch.to_string(),
                    "terminalOrderId" => tx.trace.to_string(),
                    "orderId" => tx.original.and_then(|o| o.reference.clone()).ok_or_else(|| err(Stage::NotSent, "the original has no platform orderId"))?,
                    other => return Err(err(Stage::NotSent, format!("no daemon value for {other}"))),
                })),
                Owner::Pos => {
                    let key = f.pos_name;
                    let clear = || tx.transient.get(key).or_else(|| tx.vault.get(key)).cloned();
                    match f.kind {
                        Kind::Text | Kind::Money => tx.public.get(key).cloned(),
                        Kind::Consumer | Kind::Account | Kind::Secret => clear(),
                        Kind::Des3 | Kind::PayCode => match clear() {
                            Some(Value::String(plain)) => {
                                for_md5.insert(f.name.into(), Value::String(plain.clone()));
                                let c = crypto::des3_field(&self.app_key, &plain).map_err(|e| err(Stage::NotSent, format!("{}: {e}", f.name)))?;
                                order.insert(f.name.into(), Value::String(c));
                                continue;
                            }
                            _ => None,
                        },
                    }
                }
            };
            match v {
                Some(v) if !v.is_null() => {
                    for_md5.insert(f.name.into(), v.clone());
                    order.insert(f.name.into(), v);
                }
                _ if f.required => return Err(err(Stage::NotSent, format!("`{}` is needed again and was not kept (a first-send-only field)", f.pos_name))),
                _ => {}
            }
        }
        let md5_map = if self.md5_plain { for_md5 } else { order.clone() };
        Ok((order, md5_map))
    }

    /// Build, sign and POST one request; returns the answer and the order as sent.
    async fn call(&self, w: &WireOp, tx: &TxRequest<'_>) -> Result<(answer::Answer, Map<String, Value>), BackendError> {
        let (order, md5_map) = self.order(w, tx)?;
        let mut body = Map::new();
        body.insert("app".into(), self.app());
        match w.envelope {
            Envelope::Bare => body.extend(order.clone()),
            e => {
                body.insert(e.key().into(), Value::Object(order.clone()));
            }
        }
        if w.envelope.signed() {
            body.insert("tsig".into(), self.tsig(&crypto::order_md5(&md5_map, w.md5))?);
        }
        let body = Value::Object(body);
        let bytes = serde_json::to_vec(&body).map_err(|e| err(Stage::NotSent, e.to_string()))?;
        tracing::debug!(op = w.spec.name, trace = tx.trace, batch = tx.batch, "wallet request");
        let http = self.http.post(&self.url(w.path), JSON, Bytes::from(bytes), tx.journal_id).await.map_err(net_error)?;
        Ok((answer::read(&http, &body, Some(&order))?, order))
    }

    /// An answer as a [`Reply`]: errcode 0 (or, where the document's example has none, an answer with
    /// every required field) is approved; another integer a decline; the merge answer of open_card is
    /// approved and marked `merge` (kept for delivery).
    fn reply(&self, w: &WireOp, a: answer::Answer, public: &Map<String, Value>) -> Result<Reply, BackendError> {
        let success = match a.errcode {
            Some(c) => c == codes::OK,
            None => matches!(w.spec.name, "products" | "open-online-result" | "open-online"),
        };
        if !success {
            let code = a.errcode.ok_or_else(|| err(Stage::Unknown, "the answer has no `errcode`"))?;
            if w.spec.name == "open-card" && codes::is_merge(code, &a.errmsg, self.merge_errcode) {
                let mut fields = Map::new();
                fields.insert("merge".into(), Value::Bool(true));
                for k in ["appOrderId", "productId", "paySum"] {
                    if let Some(v) = public.get(k) {
                        fields.insert(k.into(), v.clone());
                    }
                }
                return Ok(Reply {
                    verdict: Verdict::Approved,
                    code: code.to_string(),
                    message: a.errmsg,
                    message_en: "accepted; kept to be merged at delivery".into(),
                    fields,
                    reference: None,
                    trans_time: None,
                    amount_fen: None,
                });
            }
            return Ok(Reply {
                verdict: Verdict::Declined,
                code: code.to_string(),
                message_en: codes::message_en(code).into(),
                message: a.errmsg,
                fields: Map::new(),
                reference: None,
                trans_time: None,
                amount_fen: None,
            });
        }
        let fields = answer::fields(&a.raw, w.answer, true)?;
        let reference = fields.get("orderId").and_then(Value::as_str).map(str::to_string);
        let trans_time = fields.get("payTime").and_then(Value::as_str).map(str::to_string);
        Ok(Reply {
            verdict: Verdict::Approved,
            code: "0".into(),
            message: if a.errmsg.is_empty() { "成功".into() } else { a.errmsg },
            message_en: "approved".into(),
            fields,
            reference,
            trans_time,
            amount_fen: None,
        })
    }

    /// Validate one POS text field: text, bounded, required ones non-empty.
    fn text(f: &wire::Field, v: &Value) -> Result<String, PrepareError> {
        let s = v.as_str().ok_or_else(|| invalid(f.pos_name, "must be text"))?;
        let max = if f.name == "appOrderId" { wire::MAX_APP_ORDER_ID } else { wire::MAX_FIELD_CHARS };
        if s.chars().count() > max {
            return Err(invalid(f.pos_name, format!("at most {max} characters")));
        }
        if f.required && s.trim().is_empty() {
            return Err(PrepareError::Missing(f.pos_name.into()));
        }
        Ok(s.to_string())
    }
}

#[async_trait::async_trait]
impl Backend for WalletBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn operations(&self) -> &'static [OpSpec] {
        SPECS.as_slice()
    }

    fn prepare(&self, operation: &str, body: &Map<String, Value>, original: Option<&OriginalRef>, _ctx: &PrepareContext<'_>) -> Result<Prepared, PrepareError> {
        let w = wire::op(operation).ok_or_else(|| invalid("operation", format!("`{operation}` has no request fields")))?;
        for k in body.keys() {
            if wire::DAEMON_OWNED.contains(&k.as_str()) {
                return Err(PrepareError::DaemonOwned(k.clone()));
            }
            if !ENVELOPE_KEYS.contains(&k.as_str()) && !w.fields.iter().any(|f| f.owner == Owner::Pos && f.pos_name == k) {
                return Err(invalid(k, format!("is not a field of `{operation}`")));
            }
        }
        if operation == "pay-cancel" {
            let o = original.ok_or_else(|| PrepareError::Missing("original".into()))?;
            if o.operation != "pay" {
                return Err(invalid("original", format!("a pay-cancel needs a `pay` original, not a `{}`", o.operation)));
            }
            if o.reference.is_none() {
                return Err(invalid("original", "the pay has no platform orderId"));
            }
        }
        let mut p = Prepared::default();
        for f in w.fields.iter().filter(|f| f.owner == Owner::Pos) {
            let v = match body.get(f.pos_name) {
                None | Some(Value::Null) => {
                    if f.required {
                        return Err(PrepareError::Missing(f.pos_name.into()));
                    }
                    continue;
                }
                Some(v) => v,
            };
            let key = f.pos_name.to_string();
            match f.kind {
                Kind::Money => {
                    let fen = v.as_i64().filter(|_| v.is_i64()).ok_or_else(|| invalid(f.pos_name, "must be integer fen (not a float or text)"))?;
                    self.limits.check(fen, f.name == "sum").map_err(|why| invalid(f.pos_name, why))?;
                    p.public.insert(key, Value::from(fen));
                }
                Kind::Text => {
                    p.public.insert(key, Value::String(Self::text(f, v)?));
                }
                Kind::Consumer => {
                    let s = Self::text(f, v)?;
                    crypto::valid_consumer_id(&s).map_err(|why| invalid(f.pos_name, why))?;
                    p.public.insert(key.clone(), Value::String(mask_card(&s)));
                    p.card_masked = Some(mask_card(&s));
                    p.transient.insert(key, Value::String(s));
                }
                Kind::Account => {
                    let s = Self::text(f, v)?;
                    if !(8..=32).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(invalid(f.pos_name, "must be 8 to 32 digits"));
                    }
                    p.public.insert(key.clone(), Value::String(mask_card(&s)));
                    p.card_masked = Some(mask_card(&s));
                    p.vault.insert(key, Value::String(s));
                }
                Kind::Des3 => {
                    let s = Self::text(f, v)?;
                    p.vault.insert(key, Value::String(s));
                }
                Kind::PayCode | Kind::Secret => {
                    let s = Self::text(f, v)?;
                    p.transient.insert(key, Value::String(s));
                }
            }
        }
        let amount = |k: &str| p.public.get(k).and_then(Value::as_i64).unwrap_or(0);
        let t = |k: &str, v: i64| (k.to_string(), v);
        match operation {
            "pay" => {
                p.amount_fen = amount("sum");
                p.totals = vec![t("payCount", 1), t("paySum", p.amount_fen)];
            }
            "pay-cancel" => {
                let o = original.map(|o| o.amount_fen).unwrap_or(0);
                p.amount_fen = o;
                p.totals = vec![t("cancelCount", 1), t("cancelSum", o)];
            }
            "open-card" => {
                p.amount_fen = amount("paySum");
                p.totals = vec![t("openCardCount", 1), t("openCardSum", p.amount_fen)];
            }
            "open-online" => {
                let id = p.public.get("appOrderId").and_then(Value::as_str).unwrap_or_default();
                p.unit = Some(format!("open-online:{id}"));
                p.totals = vec![t("openOnlineCount", 1)];
            }
            "transfer" => {
                p.amount_fen = amount("sum");
                let acct = p.vault.get("accountId").and_then(Value::as_str).unwrap_or_default();
                // Manual recovery: only that account waits for a person, the terminal goes on.
                p.unit = Some(format!("account:{acct}"));
                p.totals = vec![t("transferCount", 1), t("transferSum", p.amount_fen)];
            }
            _ => {}
        }
        p.pos_reference = p.public.get("appOrderId").and_then(Value::as_str).map(str::to_string);
        Ok(p)
    }

    /// The document has no sign-on: a local one, nothing sent; the engine numbers the new batch.
    async fn sign_on(&self, _identity: &TerminalIdentity, _journal_id: u64, _trace: &str) -> Result<SignOn, BackendError> {
        Ok(self.local_sign_on())
    }

    async fn execute(&self, tx: TxRequest<'_>) -> Result<Reply, BackendError> {
        let w = wire::op(tx.operation).ok_or_else(|| err(Stage::NotSent, format!("unknown wallet operation {:?}", tx.operation)))?;
        if matches!(w.spec.class, OpClass::SignOn | OpClass::Settle | OpClass::Report) {
            return Err(err(Stage::NotSent, format!("`{}` is not sent this way", tx.operation)));
        }
        let (a, _) = self.call(w, &tx).await?;
        self.reply(w, a, tx.public)
    }

    async fn recover(&self, tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError> {
        match (tx.operation, how) {
            // A pay is never resent: pay_undo with the same terminalId + batchNo + terminalOrderId.
            ("pay", Recovery::Reverse) => {
                let (a, _) = self.call(&wire::PAY_UNDO, &tx).await?;
                match a.errcode {
                    Some(codes::OK) => {
                        answer::fields(&a.raw, wire::UNDO_ANSWER, false)?;
                        Ok(Recovered::Reversed { code: "0".into(), message: if a.errmsg.is_empty() { "冲正成功".into() } else { a.errmsg } })
                    }
                    Some(c) if codes::never_arrived(&a.errmsg) => {
                        Ok(Recovered::Reversed { code: c.to_string(), message: format!("not applied: the platform never had it ({})", a.errmsg) })
                    }
                    Some(c) => Ok(Recovered::Again(format!("pay_undo refused: {c} {}", a.errmsg))),
                    None => Err(err(Stage::Unknown, "the undo's answer has no `errcode`")),
                }
            }
            // An identical void, or an identical open_card (the platform knows it by terminalId +
            // batchNo + terminalOrderId), is safe to send again.
            ("pay-cancel" | "open-card", Recovery::Resend) => {
                let w = wire::op(tx.operation).ok_or_else(|| err(Stage::NotSent, "unknown operation"))?;
                let (a, _) = self.call(w, &tx).await?;
                Ok(Recovered::Settled(self.reply(w, a, tx.public)?))
            }
            // What became of an online opening: oilcard/get by appOrderId.
            ("open-online", Recovery::Query) => {
                let w = wire::op("open-online-result").ok_or_else(|| err(Stage::NotSent, "no query interface"))?;
                let (a, _) = self.call(w, &tx).await?;
                match a.errcode {
                    None | Some(codes::OK) => Ok(Recovered::Settled(self.reply(w, a, tx.public)?)),
                    Some(c) => Ok(Recovered::Reversed { code: c.to_string(), message: format!("not applied: no such order on the platform ({})", a.errmsg) }),
                }
            }
            (op, how) => Ok(Recovered::Again(format!("`{op}` has no automatic recovery ({how:?}): a person must confirm it"))),
        }
    }

    /// The document has no settlement: closed locally with the engine's totals, nothing sent.
    async fn settle(&self, req: SettleRequest<'_>) -> Result<Settled, BackendError> {
        Ok(self.local_settle(&req))
    }

    fn is_job(&self, operation: &str) -> bool {
        operation == "delivery"
    }

    fn job_plan(&self, req: JobPlanRequest<'_>) -> Result<JobPlan, BackendError> {
        delivery::plan(&req)
    }

    async fn job_send(&self, req: JobSend<'_>) -> Result<JobOutcome, BackendError> {
        match req.step {
            Some(step) => self.send_merge(&req, step).await,
            None => self.send_delivery(&req).await,
        }
    }

    fn catalog_field(&self, operation: &str) -> Option<&'static str> {
        (operation == "products").then_some("product")
    }
}

/// What is weak in a wallet profile (`registry::warnings`, shown by `doctor` and status): an appKey
/// shorter than the 24 bytes of the 3DES key is zero-padded to them, so the key that protects the
/// payment code and personal fields has fewer secret bytes. Names the length only, never the key.
pub fn profile_warnings(p: &Profile) -> Vec<String> {
    let Ok(key) = p.secret("app_key") else { return Vec::new() };
    let len = key.expose_str().map(str::len).unwrap_or_default();
    if len == 0 || crypto::des_key_padding(key) == 0 {
        return Vec::new();
    }
    vec![format!(
        "profile {}: secrets.app_key is {len} bytes, shorter than the {} bytes of the 3DES key: the key is zero-padded and weak (ask the platform for an appKey of at least {} bytes)",
        p.name,
        crypto::DES_KEY_BYTES,
        crypto::DES_KEY_BYTES
    )]
}

impl WalletBackend {
    /// The local sign-on: a new batch (numbered by the engine), nothing sent.
    pub fn local_sign_on(&self) -> SignOn {
        SignOn { batch: None, session: Value::Null, reply: local_reply("local sign-on: the wallet platform has none; a new batch is opened") }
    }

    /// The local settlement: the batch closed with the engine's totals, nothing sent.
    pub fn local_settle(&self, req: &SettleRequest<'_>) -> Settled {
        let mut reply = local_reply("local settlement: the wallet platform has none; the batch is closed with the engine's totals");
        reply.fields = req.totals.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
        Settled { balanced: true, uploaded: false, reply }
    }
}

fn local_reply(message: &str) -> Reply {
    Reply {
        verdict: Verdict::Approved,
        code: "0".into(),
        message: message.into(),
        message_en: message.into(),
        fields: Map::new(),
        reference: None,
        trans_time: None,
        amount_fen: None,
    }
}

#[cfg(test)]
mod tests;
