//! The loyalty (member-card POS) backend of loyalty-pos.txt: POS body checks, form building, PIN blocks, answers.
//!
//! Wire details live in [`wire`] (paths and fields), [`codes`] (response codes) and [`crypto`] (keys and
//! PIN blocks); this file turns the engine's vendor-neutral calls into those requests and back.
pub mod codes;
pub mod crypto;
pub mod wire;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::backend::common::{self, text_of};
use crate::backend::{
    mask_card, Backend, BackendError, OpClass, OpSpec, OriginalRef, PrepareError, Prepared, Recovered, Recovery, Reply, SettleRequest, Settled, SignOn, Stage,
    TerminalIdentity, TxRequest, Verdict,
};
use crate::config::{ConfigError, Profile};
use crate::money;
use crate::net::client::{HttpReply, HttpsClient, NetError};
use crate::secret::Secret;

use self::crypto::Key16;
use self::wire::{Kind, Owner, WireOp};

/// The profile `backend =` value.
pub const KIND: &str = "loyalty";

const FORM: &str = "application/x-www-form-urlencoded; charset=UTF-8";

/// The loyalty backend of one profile.
pub struct LoyaltyBackend {
    http: HttpsClient,
    /// `{base_url}/{protocol_prefix}/`
    base: String,
    upload_url: String,
    /// Wire name of the point credit count in settlement (the spec spells it `pointCeditCount`).
    credit_count_field: String,
    /// The terminal master key, 16 raw bytes; only ever used to unwrap working keys.
    tmk: Secret,
    /// The profile's money bounds (`[limits]`), checked on every money field a POS sends.
    limits: crate::config::Limits,
}

impl std::fmt::Debug for LoyaltyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoyaltyBackend").field("base", &self.base).field("upload_url", &self.upload_url).finish_non_exhaustive()
    }
}

fn err(stage: Stage, detail: impl Into<String>) -> BackendError {
    BackendError::new(KIND, stage, detail)
}

/// Shorten text from outside for an error detail (the kit's [`crate::backend::common::scrub`]).
pub use crate::backend::common::scrub;

fn net_error(e: NetError) -> BackendError {
    BackendError::from_net(KIND, e)
}

fn invalid(field: &str, why: impl Into<String>) -> PrepareError {
    PrepareError::invalid(field, why)
}

/// A JSON value that must be an integer (not a float, not text).
fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64(),
        _ => None,
    }
}

/// Validate a `vaucher` / `ticket` list from the POS: objects with an `id`, a positive integer `num`,
/// and an optional `amount` in integer fen. Returns the sum of `amount * num` over items with an amount,
/// which (like each amount) must stay within `limits`.
fn check_list(name: &str, v: &Value, limits: &crate::config::Limits) -> Result<i64, PrepareError> {
    let items = v.as_array().ok_or_else(|| invalid(name, "must be a list of objects"))?;
    if items.is_empty() {
        return Err(invalid(name, "must not be empty"));
    }
    let mut sum: i64 = 0;
    for (i, item) in items.iter().enumerate() {
        let at = |k: &str| format!("{name}[{i}].{k}");
        let o = item.as_object().ok_or_else(|| invalid(&format!("{name}[{i}]"), "must be an object"))?;
        match o.get("id") {
            Some(Value::Number(_)) | Some(Value::String(_)) => {}
            Some(_) => return Err(invalid(&at("id"), "must be a number or text")),
            None => return Err(PrepareError::Missing(at("id"))),
        }
        let num = match o.get("num") {
            Some(n) => as_int(n).filter(|&n| n > 0).ok_or_else(|| invalid(&at("num"), "must be a positive integer"))?,
            None => return Err(PrepareError::Missing(at("num"))),
        };
        if let Some(a) = o.get("amount") {
            let fen = as_int(a).filter(|&a| a >= 0).ok_or_else(|| invalid(&at("amount"), "must be integer fen (not a float or text)"))?;
            limits.check(fen, false).map_err(|why| invalid(&at("amount"), why))?;
            sum = fen.checked_mul(num).and_then(|x| sum.checked_add(x)).ok_or_else(|| invalid(&at("amount"), "too large"))?;
            limits.check(sum, false).map_err(|why| invalid(name, format!("adds up to {sum} fen: {why}")))?;
        }
    }
    Ok(sum)
}

/// A list as sent on the wire: JSON text with nested `amount` fen as yuan text with 2 decimals.
fn list_to_wire(v: &Value) -> String {
    let converted = match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| match item {
                    Value::Object(o) => Value::Object(
                        o.iter()
                            .map(|(k, x)| match (k.as_str(), as_int(x)) {
                                ("amount", Some(fen)) => (k.clone(), Value::String(money::fen_to_yuan(fen))),
                                _ => (k.clone(), x.clone()),
                            })
                            .collect(),
                    ),
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    };
    converted.to_string()
}

/// Read a yuan amount from its exact JSON text (number or string), never through a float.
fn raw_amount_to_fen(raw: &RawValue) -> Result<i64, money::MoneyError> {
    let text = raw.get().trim();
    if text.starts_with('"') {
        let v: Value = serde_json::from_str(text).map_err(|_| money::MoneyError::BadYuan(scrub(text)))?;
        money::json_yuan_to_fen(&v)
    } else {
        money::yuan_to_fen(text)
    }
}

/// JSON scalar as text: strings as they are, numbers in their exact written form.
fn raw_text(raw: &RawValue) -> Option<String> {
    let text = raw.get().trim();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()
    } else if text == "null" {
        None
    } else {
        Some(text.to_string())
    }
}

/// Longest amount text read (`-12345678901234.56` is far beyond any limit already).
const MAX_AMOUNT_CHARS: usize = 32;

/// Free text cut to [`wire::MAX_TEXT_CHARS`] characters, with [`wire::TRUNCATED`] when cut.
fn truncate_text(s: &str) -> String {
    crate::backend::common::cut(s, wire::MAX_TEXT_CHARS)
}

/// A scalar (text or number, as written) of at most `max` characters; anything else is dropped.
fn bounded_scalar(key: &str, raw: &RawValue, max: usize) -> Option<Value> {
    let text = raw.get().trim();
    // The JSON text bounds the decoded text from above (at most 12 bytes per character, a surrogate
    // pair escaped), so a huge value is
    // refused before it is decoded; a short one is measured exactly below.
    if text.len() > 12 * max + 2 {
        tracing::warn!(field = key, len = text.len(), "loyalty answer: field longer than its bound; dropped");
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    let len = match &v {
        Value::String(s) => s.chars().count(),
        Value::Number(n) => n.to_string().len(),
        Value::Null => return None,
        _ => {
            tracing::warn!(field = key, "loyalty answer: field is not text or a number; dropped");
            return None;
        }
    };
    if len > max {
        tracing::warn!(field = key, len, "loyalty answer: field longer than its bound; dropped");
        return None;
    }
    Some(v)
}

/// A card holder's personal request fields (card activation): ID number, mobile number and the SMS
/// verify code. Every local reader of the journal would see them, so the journal keeps them masked
/// ([`mask_personal`]) and the clear value only sealed in the vault.
pub const PERSONAL: &[&str] = &["idNo", "mobileNo", "verifyCode"];

/// A personal field as the journal shows it: a mobile number 3+4 (`138****0000`), an ID number like a
/// card (6+4), a verify code not at all.
pub fn mask_personal(name: &str, value: &str) -> String {
    match name {
        "mobileNo" if value.chars().count() > 7 => {
            let n = value.chars().count();
            let head: String = value.chars().take(3).collect();
            let tail: String = value.chars().skip(n - 4).collect();
            format!("{head}{}{tail}", "*".repeat(n - 7))
        }
        "idNo" => mask_card(value),
        _ => "*".repeat(value.chars().count().min(8)),
    }
}

/// One answer field as the answer table types it, converted and bounded for the journal: amounts to
/// fen, lists cut to [`wire::MAX_LIST_ITEMS`] items of their own fields, free text cut, personal ids
/// masked. `None`: not journaled (key material, the wrong shape, over its bound).
fn convert_field(f: &wire::AnswerField, raw: &RawValue) -> Option<Value> {
    use wire::AnswerKind as K;
    let key = f.name;
    match f.kind {
        K::Secret => None,
        K::Amount => {
            if raw.get().trim().len() > MAX_AMOUNT_CHARS {
                tracing::warn!(field = key, "loyalty answer: amount field too long; kept as null");
                return Some(Value::Null);
            }
            Some(match raw_amount_to_fen(raw) {
                Ok(fen) => Value::from(fen),
                Err(_) => {
                    tracing::warn!(field = key, "loyalty answer: amount field is not a yuan amount; kept as null");
                    Value::Null
                }
            })
        }
        K::Code | K::Time => {
            let v = bounded_scalar(key, raw, wire::MAX_CODE_CHARS)?;
            if matches!(key, "cardNo" | "idNo") {
                return text_of(&v).map(|s| Value::String(mask_card(&s)));
            }
            if PERSONAL.contains(&key) {
                return text_of(&v).map(|s| Value::String(mask_personal(key, &s)));
            }
            Some(v)
        }
        K::Name => bounded_scalar(key, raw, wire::MAX_NAME_CHARS),
        K::Text => match serde_json::from_str::<Value>(raw.get()).ok()? {
            Value::String(s) => Some(Value::String(truncate_text(&s))),
            Value::Number(n) => Some(Value::String(truncate_text(&n.to_string()))),
            _ => None,
        },
        // Items are read with raw values so nested amounts keep their exact text.
        K::List(item_fields) => {
            let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()) else {
                tracing::warn!(field = key, "loyalty answer: list field is not a list; dropped");
                return None;
            };
            if items.len() > wire::MAX_LIST_ITEMS {
                tracing::warn!(field = key, items = items.len(), "loyalty answer: list longer than its bound; cut");
            }
            let kept = items.iter().take(wire::MAX_LIST_ITEMS).filter_map(|item| {
                let o = serde_json::from_str::<std::collections::BTreeMap<String, Box<RawValue>>>(item.get()).ok()?;
                let fields = item_fields.iter().filter_map(|itf| {
                    let v = o.get(itf.name)?;
                    Some((itf.name.to_string(), convert_field(itf, v).unwrap_or(Value::Null)))
                });
                Some(Value::Object(fields.collect()))
            });
            Some(Value::Array(kept.collect()))
        }
    }
}

/// Turn an HTTP answer into a [`Reply`], or the stage of failure: 5xx and garbage are Unknown, 4xx
/// Rejected. Only the fields of `answer` (the operation's answer table) are kept, each bounded.
pub fn parse_reply(reply: &HttpReply, answer: &[wire::AnswerField]) -> Result<Reply, BackendError> {
    parse_reply_to(reply, answer, &[])
}

/// The identifiers an answer may echo; each one it does echo must equal what was sent.
const ECHOED: &[&str] = &["storeNo", "terminalNo", "traceNo", "batchNo"];

/// [`parse_reply`] for a request whose form was `sent`: an answer naming another trace, batch,
/// terminal or store is another request's answer (a stale one on a kept-alive connection, a host
/// fault) and says nothing about this one: unknown, never approved or declined.
///
/// Of the answer, only what `answer` (the operation's 响应 table, or [`wire::REVERSAL_ANSWER`]) defines
/// is kept, each field within its bound: whatever else a host sends (a megabyte of an undefined field)
/// never reaches the journal.
pub fn parse_reply_to(reply: &HttpReply, answer: &[wire::AnswerField], sent: &[(&str, &str)]) -> Result<Reply, BackendError> {
    let body = String::from_utf8_lossy(common::answer_body(KIND, "", reply)?);
    let raw: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(&body).map_err(|e| err(Stage::Unknown, format!("answer is not JSON ({e}): {}", scrub(&body))))?;
    for name in ECHOED {
        let (Some(theirs), Some((_, ours))) = (raw.get(*name), sent.iter().find(|(k, _)| k == name)) else { continue };
        let theirs = raw_text(theirs).unwrap_or_default();
        if theirs != *ours {
            tracing::warn!(field = name, "loyalty host fault: the answer names another request");
            return Err(err(Stage::Unknown, format!("the answer names {name} {} but the request was {ours}: another request's answer", scrub(&theirs))));
        }
    }
    // The document's type is a two-character code string: anything else (0, true, a list, an object)
    // says nothing a decline could be booked on.
    let code = match raw.get("status") {
        Some(v) if v.get().trim().starts_with('"') => raw_text(v),
        Some(v) => return Err(err(Stage::Unknown, format!("the answer's `status` is {} , not a code string", scrub(v.get().trim())))),
        None => None,
    };
    let code = code.filter(|c| !c.is_empty()).ok_or_else(|| err(Stage::Unknown, format!("answer has no `status`: {}", scrub(&body))))?;
    if !codes::defined(&code) {
        return Err(err(Stage::Unknown, format!("the answer's `status` {} is not a code the document defines", scrub(&code))));
    }
    let dropped = raw.keys().filter(|k| !answer.iter().any(|f| f.name == k.as_str())).count();
    if dropped > 0 {
        tracing::debug!(dropped, "loyalty answer: fields the document does not define were dropped");
    }
    let mut fields = Map::new();
    let mut message = None;
    for f in answer {
        let Some(v) = raw.get(f.name) else { continue };
        match f.name {
            "status" => {}
            "message" => message = convert_field(f, v).as_ref().and_then(text_of),
            _ => {
                if let Some(v) = convert_field(f, v) {
                    fields.insert(f.name.to_string(), v);
                }
            }
        }
    }
    let reference = fields.get("serialNo").and_then(text_of);
    let trans_time = fields.get("transTime").and_then(text_of);
    let (zh, en) = codes::lookup(&code);
    let verdict = if code == "00" { Verdict::Approved } else { Verdict::Declined };
    if verdict == Verdict::Approved {
        // An approval without a field the document marks required (`!`) is not the document's answer:
        // nothing may be booked on it (a decline carries none of them).
        if let Some(f) = answer.iter().find(|f| f.required && raw.get(f.name).is_none_or(|v| v.get().trim() == "null")) {
            return Err(err(Stage::Unknown, format!("the approval lacks `{}`, which the document marks required", f.name)));
        }
    }
    let message = message.filter(|s| !s.is_empty()).unwrap_or_else(|| zh.to_string());
    Ok(Reply { verdict, code, message, message_en: en.to_string(), fields, reference, trans_time, amount_fen: None })
}

/// YYYYMMDD of an RFC 3339 time, as written (the original's local date).
fn yyyymmdd(rfc3339: &str) -> Option<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(rfc3339) {
        return Some(t.format("%Y%m%d").to_string());
    }
    let head: String = rfc3339.chars().take(10).filter(|c| *c != '-').collect();
    (head.len() == 8 && head.bytes().all(|b| b.is_ascii_digit())).then_some(head)
}

fn original_register_trace(o: &OriginalRef) -> Option<String> {
    match o.public.get("registerTraceNo") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The value of a daemon-owned field for this request, or why it is missing.
fn daemon_value(name: &str, required: bool, tx: &TxRequest<'_>) -> Result<Option<String>, String> {
    let orig = || tx.original.ok_or_else(|| format!("`{name}` needs the original record"));
    let v = match name {
        "storeNo" => Some(tx.identity.store.clone()),
        "terminalNo" => Some(tx.identity.terminal.clone()),
        "operatorNo" => Some(tx.identity.operator.clone()),
        "traceNo" => Some(tx.trace.to_string()),
        "batchNo" => Some(tx.batch.to_string()),
        "oriBatchNo" => Some(orig()?.batch.clone()),
        "oriTraceNo" => Some(orig()?.trace.clone()),
        "oriTransTime" => orig()?.trans_time.clone(),
        "oriSerialNo" => orig()?.reference.clone(),
        "oriTransDate" => yyyymmdd(&orig()?.created_at),
        // Required by refund / refund-cancel even when the original sale had none: send it empty.
        "oriRegisterTraceNo" => original_register_trace(orig()?).or_else(|| required.then(String::new)),
        // Settlement names no card (see `settle`).
        "cardNo" => Some(String::new()),
        other => return Err(format!("no daemon value for `{other}`")),
    };
    match v {
        None if required => Err(format!("the original record has no value for `{name}`")),
        v => Ok(v),
    }
}

impl LoyaltyBackend {
    pub fn new(profile: &Profile, http: HttpsClient) -> Result<Self, ConfigError> {
        let bad_key = |why: String| ConfigError::field(&profile.source, None, "secrets.master_key", why);
        let tmk_text =
            profile.secret("master_key")?.expose_str().map_err(|_| bad_key("must be 32 hex characters (a double-length 3DES key), not binary".into()))?;
        let tmk = crypto::parse_key_hex(tmk_text).map_err(|e| bad_key(format!("terminal master key: {e}")))?;
        let prefix = profile.option_str("protocol_prefix", "v1")?.trim_matches('/').to_string();
        if prefix.is_empty() || prefix.contains(['?', '#']) {
            return Err(ConfigError::field(&profile.source, None, "options.protocol_prefix", "must be a path segment such as \"v1\""));
        }
        let upload = profile.option_str("upload_path", &format!("{prefix}/{}", wire::UPLOAD_PATH))?;
        let credit_count_field = profile.option_str("credit_count_field", "pointCeditCount")?;
        let base_url = profile.base_url.trim_end_matches('/');
        Ok(LoyaltyBackend {
            http,
            base: format!("{base_url}/{prefix}/"),
            upload_url: format!("{base_url}/{}", upload.trim_start_matches('/')),
            credit_count_field,
            tmk: Secret::new(tmk.to_vec()),
            limits: profile.limits,
        })
    }

    fn tmk(&self) -> Key16 {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.tmk.expose()[..16]);
        k
    }

    /// The clear PIN key, unwrapped from the session's `workingKey` at the moment of use.
    fn pin_key(&self, session: &Value) -> Result<Key16, String> {
        let wk = session.get("workingKey").and_then(Value::as_str).ok_or("no working key in the session: check in first")?;
        crypto::unwrap_working_key(&self.tmk(), wk).map(|k| k.pin).map_err(|e| format!("session working key: {e}"))
    }

    /// The form fields of one request, in the spec's order. Transient fields (track data, PIN) only when
    /// `with_transient`; errors name fields, never values.
    pub fn build_form(&self, w: &WireOp, tx: &TxRequest<'_>, with_transient: bool) -> Result<Vec<(&'static str, String)>, String> {
        let mut out = Vec::with_capacity(w.fields.len());
        let card = || tx.vault.get("cardNo").and_then(Value::as_str).map(str::to_string).ok_or("`cardNo` is missing from the vault".to_string());
        for f in w.fields {
            let value = match (f.owner, f.kind) {
                (Owner::Daemon, _) => daemon_value(f.name, f.required, tx)?,
                (Owner::Pos, Kind::Card) => Some(card()?),
                (Owner::Pos, Kind::Track) => {
                    if with_transient {
                        tx.transient.get(f.name).and_then(text_of)
                    } else {
                        None
                    }
                }
                (Owner::Pos, Kind::Pin) => match tx.transient.get(f.name).and_then(Value::as_str) {
                    Some(pin) if with_transient => {
                        let key = self.pin_key(tx.session)?;
                        Some(crypto::encrypt_pin_block(&key, pin, &card()?).map_err(|e| format!("`password`: {e}"))?)
                    }
                    _ => None,
                },
                (Owner::Pos, Kind::Money) => match tx.public.get(f.name) {
                    Some(v) => Some(money::fen_to_yuan(as_int(v).ok_or_else(|| format!("`{}` is not integer fen", f.name))?)),
                    None => None,
                },
                (Owner::Pos, Kind::List) => tx.public.get(f.name).map(list_to_wire),
                (Owner::Pos, Kind::Text) if PERSONAL.contains(&f.name) => tx.vault.get(f.name).and_then(text_of),
                (Owner::Pos, Kind::Text) | (Owner::Pos, Kind::Total) => tx.public.get(f.name).and_then(text_of),
                (Owner::Pos, other) => return Err(format!("`{}`: the loyalty backend has no {other:?} fields", f.name)),
            };
            match value {
                Some(v) => out.push((f.name, v)),
                None if f.required => return Err(format!("`{}` is required and was not prepared", f.name)),
                None => {}
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    pub(crate) fn http_for_tests(&self) -> &HttpsClient {
        &self.http
    }

    #[cfg(test)]
    pub(crate) fn base_for_tests(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_form(&self, url: &str, pairs: &[(&'static str, String)], answer: &[wire::AnswerField], journal_id: u64) -> Result<Reply, BackendError> {
        let body = wire::encode_form(pairs);
        let reply = self.http.post(url, FORM, Bytes::from(body), journal_id).await.map_err(net_error)?;
        let sent: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        parse_reply_to(&reply, answer, &sent)
    }
}

#[async_trait::async_trait]
impl Backend for LoyaltyBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn operations(&self) -> &'static [OpSpec] {
        wire::OP_SPECS
    }

    fn prepare(
        &self,
        operation: &str,
        body: &Map<String, Value>,
        original: Option<&OriginalRef>,
        ctx: &crate::backend::PrepareContext<'_>,
    ) -> Result<Prepared, PrepareError> {
        // A card swiped on a counter reader: its number and tracks come from the daemon, not the POS.
        let with_card;
        let body = match ctx.card {
            Some(card) => {
                if body.contains_key("cardNo") || body.contains_key("track2") || body.contains_key("track3") {
                    return Err(invalid("scan", "send either `scan` or card fields, not both"));
                }
                let mut b = body.clone();
                b.insert("cardNo".into(), Value::String(card.pan.clone()));
                for (k, v) in [("track2", &card.track2), ("track3", &card.track3)] {
                    if let Some(t) = v {
                        b.insert(k.into(), Value::String(t.clone()));
                    }
                }
                with_card = b;
                &with_card
            }
            None => body,
        };
        let w = wire::op(operation).ok_or_else(|| invalid("operation", format!("unknown loyalty operation {operation:?}")))?;
        // registerTraceNo is accepted on every operation that names a card: it is the POS's own reference,
        // searched by and inherited by refunds; it is sent only where the spec lists it.
        let extra_ok = |k: &str| k == "registerTraceNo" && w.fields.iter().any(|f| f.name == "cardNo" && f.owner == Owner::Pos);
        common::check_body_keys(operation, body, w.fields, wire::DAEMON_OWNED, &extra_ok)?;
        let original = match w.original_op {
            Some(expected) => {
                let o = original.ok_or_else(|| PrepareError::Missing("original".into()))?;
                if o.operation != expected {
                    return Err(invalid("original", format!("a `{operation}` needs a `{expected}` original, not a `{}`", o.operation)));
                }
                Some(o)
            }
            None => None,
        };
        let mut p = Prepared::default();
        let mut card: Option<String> = None;
        for f in w.fields.iter().filter(|f| f.owner == Owner::Pos) {
            let v = match body.get(f.name) {
                Some(Value::Null) | None => None,
                Some(v) => Some(v),
            };
            match (f.kind, v) {
                (Kind::Card, v) => {
                    let given = match v {
                        Some(Value::String(s)) => Some(s.trim().to_string()),
                        Some(_) => return Err(invalid(f.name, "must be text")),
                        None => None,
                    };
                    let from_original = original.and_then(|o| o.vault.get("cardNo")).and_then(Value::as_str).map(str::to_string);
                    let c = match (given, from_original) {
                        (Some(g), Some(o)) if g != o => return Err(invalid(f.name, "does not match the original's card")),
                        (Some(g), _) => g,
                        (None, Some(o)) => o,
                        (None, None) => return Err(PrepareError::Missing(f.name.into())),
                    };
                    if !(8..=19).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(invalid(f.name, "must be 8 to 19 digits"));
                    }
                    let masked = mask_card(&c);
                    p.public.insert(f.name.into(), Value::String(masked.clone()));
                    p.vault.insert(f.name.into(), Value::String(c.clone()));
                    p.card_masked = Some(masked);
                    card = Some(c);
                }
                (_, None) if f.required => return Err(PrepareError::Missing(f.name.into())),
                (_, None) => {}
                (Kind::Money, Some(v)) => {
                    let fen = as_int(v).ok_or_else(|| invalid(f.name, "must be integer fen (not a float or text)"))?;
                    // The amount a consume charges must be a real one; the other money fields only bounded.
                    let charged = operation == "consume" && f.name == "pointAmount";
                    self.limits.check(fen, charged).map_err(|why| invalid(f.name, why))?;
                    p.public.insert(f.name.into(), Value::from(fen));
                }
                (Kind::List, Some(v)) => {
                    check_list(f.name, v, &self.limits)?;
                    p.public.insert(f.name.into(), v.clone());
                }
                (Kind::Track, Some(v)) => {
                    let s = v.as_str().ok_or_else(|| invalid(f.name, "must be text"))?;
                    p.transient.insert(f.name.into(), Value::String(s.to_string()));
                }
                (Kind::Pin, Some(v)) => {
                    let s = v.as_str().ok_or_else(|| invalid(f.name, "must be the PIN digits as text"))?;
                    p.transient.insert(f.name.into(), Value::String(s.to_string()));
                }
                (Kind::Text, Some(v)) | (Kind::Total, Some(v)) => {
                    let s = v.as_str().ok_or_else(|| invalid(f.name, "must be text"))?;
                    if f.required && s.trim().is_empty() {
                        return Err(PrepareError::Missing(f.name.into()));
                    }
                    if PERSONAL.contains(&f.name) {
                        // Masked in the journal, clear only sealed (a resend after a lost answer needs it).
                        p.public.insert(f.name.into(), Value::String(mask_personal(f.name, s)));
                        p.vault.insert(f.name.into(), Value::String(s.to_string()));
                    } else {
                        p.public.insert(f.name.into(), Value::String(s.to_string()));
                    }
                }
                (other, Some(_)) => return Err(invalid(f.name, format!("the loyalty backend has no {other:?} fields"))),
            }
        }
        // The PIN block needs both the PIN and a card long enough for the format-0 PAN field.
        if let Some(Value::String(pin)) = p.transient.get("password") {
            let c = card.as_deref().unwrap_or_default();
            crypto::pin_block_format0(pin, c).map_err(|e| invalid("password", e.to_string()))?;
        }
        match body.get("registerTraceNo") {
            Some(Value::String(s)) if extra_ok("registerTraceNo") => {
                p.public.insert("registerTraceNo".into(), Value::String(s.clone()));
            }
            Some(Value::Null) | None => {}
            Some(_) => return Err(invalid("registerTraceNo", "must be text")),
        }
        // A refund inherits the sale's register reference, so its own cancel can quote it.
        if let (None, Some(o)) = (p.public.get("registerTraceNo"), original) {
            if let Some(r) = original_register_trace(o) {
                p.public.insert("registerTraceNo".into(), Value::String(r));
            }
        }
        p.pos_reference = p.public.get("registerTraceNo").and_then(Value::as_str).map(str::to_string);
        let orig_amount = original.map(|o| o.amount_fen).unwrap_or(0);
        let t = |k: &str, v: i64| (k.to_string(), v);
        match operation {
            "consume" => {
                let amt = p.public.get("pointAmount").and_then(as_int).unwrap_or(0);
                p.amount_fen = amt;
                p.totals = vec![t("pointDebitCount", 1), t("pointDebitAmount", amt), t("totalTransCount", 1)];
            }
            "refund-cancel" => {
                p.amount_fen = orig_amount;
                p.totals = vec![t("pointDebitCount", 1), t("pointDebitAmount", orig_amount), t("totalTransCount", 1)];
            }
            "ticket-consume" => {
                let amt = match p.public.get("ticket") {
                    Some(v) => check_list("ticket", v, &self.limits)?,
                    None => 0,
                };
                p.amount_fen = amt;
                p.totals = vec![t("ticketDebitCount", 1), t("ticketDebitAmount", amt), t("totalTransCount", 1)];
            }
            "cancel" => {
                p.amount_fen = orig_amount;
                p.totals = vec![t("pointCreditCount", 1), t("pointCreditAmount", orig_amount), t("cancelCount", 1), t("totalTransCount", 1)];
            }
            "refund" => {
                p.amount_fen = orig_amount;
                p.totals = vec![t("pointCreditCount", 1), t("pointCreditAmount", orig_amount), t("refundCount", 1), t("totalTransCount", 1)];
            }
            "card-activate" => {
                p.totals = vec![t("cardActiveCount", 1), t("totalTransCount", 1)];
            }
            _ => {}
        }
        Ok(p)
    }

    async fn sign_on(&self, identity: &TerminalIdentity, journal_id: u64, trace: &str) -> Result<SignOn, BackendError> {
        let Some(w) = wire::op("checkin") else { return Err(err(Stage::NotSent, "no checkin interface")) };
        let empty = Map::new();
        let tx = TxRequest {
            slot: None,
            journal_id,
            operation: "checkin",
            identity,
            trace,
            batch: "",
            session: &Value::Null,
            public: &empty,
            vault: &empty,
            transient: &empty,
            original: None,
            created_at: "",
        };
        let form = self.build_form(w, &tx, false).map_err(|d| err(Stage::NotSent, d))?;
        let url = self.url(w.path);
        let http = self.http.post(&url, FORM, Bytes::from(wire::encode_form(&form)), journal_id).await.map_err(net_error)?;
        let reply = parse_reply(&http, w.answer)?;
        if reply.verdict != Verdict::Approved {
            return Err(err(Stage::Rejected, format!("checkin declined: {} {}", reply.code, reply.message)));
        }
        // The working key is read from the raw answer: `parse_reply` keeps key material out of `fields`.
        let raw: Map<String, Value> = serde_json::from_slice(&http.body).map_err(|e| err(Stage::Unknown, format!("answer is not JSON: {e}")))?;
        let wk = raw.get("workingKey").and_then(Value::as_str).ok_or_else(|| err(Stage::Rejected, "checkin answer has no `workingKey`"))?;
        crypto::unwrap_working_key(&self.tmk(), wk).map_err(|e| err(Stage::Rejected, format!("checkin answer has a malformed `workingKey`: {e}")))?;
        let batch = match raw.get("batchNo") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.as_u64().map(|b| format!("{b:06}")).unwrap_or_default(),
            _ => String::new(),
        };
        if batch.len() != 6 || !batch.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(Stage::Rejected, format!("checkin answer has a malformed `batchNo`: {}", scrub(&batch))));
        }
        // Bounded like every journaled field (the session is journaled with the lane).
        let store_name = reply.fields.get("storeName").cloned().unwrap_or(Value::Null);
        tracing::info!(terminal = %identity.terminal, batch = %batch, "loyalty check-in done");
        Ok(SignOn { batch: Some(batch), session: json!({ "workingKey": wk, "storeName": store_name }), reply })
    }

    async fn execute(&self, tx: TxRequest<'_>) -> Result<Reply, BackendError> {
        let w = wire::op(tx.operation).ok_or_else(|| err(Stage::NotSent, format!("unknown loyalty operation {:?}", tx.operation)))?;
        if matches!(w.spec.class, OpClass::SignOn | OpClass::Settle) {
            return Err(err(Stage::NotSent, format!("`{}` is run through sign_on / settle", tx.operation)));
        }
        let form = self.build_form(w, &tx, true).map_err(|d| err(Stage::NotSent, d))?;
        tracing::debug!(op = tx.operation, trace = tx.trace, batch = tx.batch, "loyalty request");
        let reply = self.post_form(&self.url(w.path), &form, w.answer, tx.journal_id).await?;
        // 77 / 99 / A0: the host refused it unapplied because the terminal must check in again (a lost
        // check-in answer left us on an old batch or old keys). Not a decline for the POS: the engine
        // signs on and resends it in the new batch.
        if codes::sign_on_again(&reply.code) {
            tracing::info!(op = tx.operation, trace = tx.trace, batch = tx.batch, code = %reply.code, "loyalty host asks to sign on again");
            return Err(err(Stage::SignOnFirst, format!("{} {}: refused unapplied, sign on and resend", reply.code, scrub(&reply.message))));
        }
        Ok(reply)
    }

    async fn recover(&self, tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError> {
        if how != Recovery::Reverse {
            return Ok(Recovered::Again("not supported".into()));
        }
        let w = wire::op(tx.operation).ok_or_else(|| err(Stage::NotSent, format!("unknown loyalty operation {:?}", tx.operation)))?;
        let Some(path) = w.reversal else {
            return Ok(Recovered::Again(format!("`{}` has no reversal interface", tx.operation)));
        };
        // The reversal repeats the original request, rebuilt from the journal: no track data, no PIN.
        let form = self.build_form(w, &tx, false).map_err(|d| err(Stage::NotSent, d))?;
        tracing::info!(op = tx.operation, trace = tx.trace, batch = tx.batch, "loyalty reversal");
        let reply = self.post_form(&self.url(path), &form, wire::REVERSAL_ANSWER, tx.journal_id).await?;
        // A reversal answered 77 (or 99/A0) is NOT done: the host did not look. Try again later, after
        // whatever sign-on the engine does; never a SignOnFirst, which would mean "resend as new".
        if codes::reversal_done(&reply.code) {
            Ok(Recovered::Reversed { code: reply.code, message: reply.message })
        } else {
            Ok(Recovered::Again(format!("{} {}", reply.code, reply.message)))
        }
    }

    /// Settlement. The spec lists `cardNo` as required, but a settlement concerns no card: it is sent as an
    /// empty field (present, so a strict server finds it; empty, so no card number is invented).
    async fn settle(&self, req: SettleRequest<'_>) -> Result<Settled, BackendError> {
        let Some(w) = wire::op("settle") else { return Err(err(Stage::NotSent, "no settle interface")) };
        let mut form: Vec<(String, String)> = vec![
            ("storeNo".into(), req.identity.store.clone()),
            ("terminalNo".into(), req.identity.terminal.clone()),
            ("cardNo".into(), String::new()),
            ("traceNo".into(), req.trace.to_string()),
            ("batchNo".into(), req.batch.to_string()),
        ];
        for &(wire_name, key, is_amount) in wire::TOTALS {
            let v = req.totals.get(key).copied().unwrap_or(0);
            let name = if key == "pointCreditCount" { self.credit_count_field.clone() } else { wire_name.to_string() };
            form.push((name, if is_amount { money::fen_to_yuan(v) } else { v.to_string() }));
        }
        let pairs: Vec<(&str, String)> = form.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let body = wire::encode_form(&pairs);
        let http = self.http.post(&self.url(w.path), FORM, Bytes::from(body), req.journal_id).await.map_err(net_error)?;
        let reply = parse_reply_to(&http, w.answer, &pairs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())?;
        if reply.verdict != Verdict::Approved {
            return Err(err(Stage::Rejected, format!("settle declined: {} {}", reply.code, reply.message)));
        }
        let flag = reply.fields.get("settleFlag").and_then(Value::as_str).unwrap_or_default();
        if flag == "ss" {
            return Ok(Settled { balanced: true, uploaded: false, reply });
        }
        let lines = (req.lines)().map_err(|e| err(Stage::NotSent, format!("reading the batch's lines: {e}")))?;
        tracing::warn!(batch = req.batch, flag, lines = lines.len(), "loyalty settlement unbalanced; uploading the batch's lines");
        let lines = serde_json::to_vec(&lines).map_err(|e| err(Stage::NotSent, format!("lines: {e}")))?;
        let up = self.http.post(&self.upload_url, "application/json", Bytes::from(lines), req.journal_id).await.map_err(net_error)?;
        common::answer_body(KIND, "upload", &up)?;
        Ok(Settled { balanced: false, uploaded: true, reply })
    }
}

#[cfg(test)]
pub(crate) mod tests;
