//! The lottery (instant-ticket prize redemption) backend of lottery-redemption.txt: sessions, redeem, reports, reconciliation.
//!
//! Wire details live in [`wire`] (paths, fields, envelope), [`sign`] (MD5 / SHA-1 signatures), [`codes`]
//! (the three return-code tables), [`risk`] (section 6 rules, checked before sending) and [`stations`]
//! (the pool: the backend is serial per station). This file turns the engine's vendor-neutral calls into
//! those requests and back.
//!
//! Exactly-once redemption: `transacId` = merchant (2) + `YYYYMMDDHHMMSS` of the record's creation time in
//! the profile's timezone + the engine's 6-digit trace. Both ingredients are durable before the first send,
//! so a resend after an unknown outcome carries the same `transacId`; the backend answers 1307 with
//! `transacIdOrg` equal to ours (and `awardStation` one of ours: the record is journaled under it) when it
//! had paid the first one.
//!
//! Stations: the engine leases a station for each redeem before journaling it ([`Backend::lease`]), and
//! keeps the lease while the outcome is unknown; the redeem and every resend go to that station
//! (`TxRequest::slot`). A request whose answer timed out holds its station for `station_hold_ms` (see
//! [`stations`]).
//!
//! Recovery of a redeem is a resend of the same `transacId` (the OpSpec says `Resend`), with a query as
//! its fallback: when the resend is answered `15` (流水号已经存在) or `10030` (交易流水号重复), which say only
//! that the `transacId` reached the host, or when resends keep failing ([`QUERY_AFTER`] in a row), the
//! outcome is learnt from getPrize (8.9) and that day's awardDetail (which `transacId` won). `Recovery::Query`
//! runs the query alone.
pub mod codes;
pub mod risk;
pub mod sign;
pub mod stations;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{FixedOffset, NaiveTime};
use serde_json::{json, Map, Value};

use crate::backend::common::{self, scrub};
use crate::backend::{
    mask_card, Backend, BackendError, DailyJob, Lease, OpSpec, OriginalRef, PrepareContext, PrepareError, Prepared, Recovered, Recovery, Reply, ReportRecord,
    ReportRequest, SettleRequest, Settled, SignOn, Stage, TerminalIdentity, TxRequest, Verdict,
};
use crate::config::{ConfigError, Profile};
use crate::money;
use crate::net::client::{HttpsClient, NetError};
use crate::secret::Secret;

use self::risk::RiskRules;
use self::sign::SignMethod;
use self::stations::{Station, StationGuard, StationPool};
use self::wire::{Answer, BodyFormat, Envelope, Kind, Owner, WireOp};

/// The profile `backend =` value.
pub const KIND: &str = "lottery";

/// Answer fields that are yuan (whole yuan, `balance` a decimal) and become integer fen in [`Reply::fields`].
pub const MONEY_FIELDS: &[&str] = &["price", "prize", "balance", "amountPrize", "AmountPrize", "amount"];

/// Redeem answers after which nothing can be said about whether the ticket was paid: the outcome is
/// unknown and the same `transacId` is sent again (server errors, "try later", database failures).
pub const AMBIGUOUS: &[&str] = &["1", "32", "1001", "1002", "1005", "1023", "1024", "1025", "1026", "1043", "1044"];

/// Answers to a resend that say only that this `transacId` reached the host before (15 流水号已经存在,
/// 10030 交易流水号重复): the outcome is learnt by query.
pub const SEEN_BEFORE: &[&str] = &["15", "10030"];

/// Resends in a row that settle nothing before a recovery attempt also asks the host by query.
pub const QUERY_AFTER: u32 = 3;

/// How awardSummary is asked (profile option `summary_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryScope {
    /// `00000`/`00000` (the table's "all"); where the host refuses that, once per (gameNo, batchNo).
    All,
    /// Once per (gameNo, batchNo) named by the day's awardDetail rows (the v0.8 history line).
    PerBatch,
}

/// Ticket-level answers: a resend that gets one of these has learnt the ticket's fate.
pub fn ticket_level(ret: &str) -> bool {
    let n: u32 = ret.trim().parse().unwrap_or(0);
    matches!(n, 1027..=1029 | 1039..=1042 | 1301..=1316 | 8001..=8007 | 10000 | 10023..=10028)
}

/// The lottery backend of one profile.
pub struct LotteryBackend {
    http: HttpsClient,
    base: String,
    app_key: String,
    app_secret: Secret,
    method: SignMethod,
    body: BodyFormat,
    /// Send `timestamp` as seconds since 1970 instead of `YYYY-MM-DD HH:MM:SS` (profile option `epoch`).
    epoch: bool,
    tz: FixedOffset,
    merchant: String,
    terminal_type: String,
    version: String,
    pool: Arc<StationPool>,
    risk: RiskRules,
    reconcile_at: NaiveTime,
    /// The profile's answer timeout: how long a per-station request waits for a taken station.
    timeout: Duration,
    /// How long a station stays held after a request on it got no answer (`station_hold_ms`).
    hold: Duration,
    summary_scope: SummaryScope,
    /// Resends in a row that settled nothing, per journal id (memory only: a restart starts again).
    resend_failures: Mutex<HashMap<u64, u32>>,
}

impl std::fmt::Debug for LotteryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LotteryBackend").field("base", &self.base).field("stations", &self.pool.len()).field("method", &self.method).finish_non_exhaustive()
    }
}

fn err(stage: Stage, detail: impl Into<String>) -> BackendError {
    BackendError::new(KIND, stage, detail)
}

fn net_error(e: NetError) -> BackendError {
    BackendError::from_net(KIND, e)
}

fn invalid(field: &str, why: impl Into<String>) -> PrepareError {
    PrepareError::invalid(field, why)
}

/// Parse `+08:00` / `-05:30` / `Z`.
pub fn parse_offset(s: &str) -> Option<FixedOffset> {
    let s = s.trim();
    if s == "Z" || s == "UTC" {
        return FixedOffset::east_opt(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = s[1..].split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// `transacId` = merchant + YYYYMMDDHHMMSS (record creation time in `tz`) + 6-digit trace.
pub fn transac_id(merchant: &str, created_at: &str, trace: &str, tz: FixedOffset) -> Result<String, String> {
    let t = chrono::DateTime::parse_from_rfc3339(created_at).map_err(|e| format!("created_at {created_at:?}: {e}"))?;
    if trace.len() != 6 || !trace.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("trace {trace:?} is not 6 digits"));
    }
    Ok(format!("{merchant}{}{trace}", t.with_timezone(&tz).format("%Y%m%d%H%M%S")))
}

/// Answer content converted for the journal: only the fields the answer table of the interface at
/// `path` defines ([`wire::answer_fields`]), text bounded ([`wire::FIELD_MAX_CHARS`], a report
/// [`wire::REPORT_MAX_CHARS`]), whole-yuan and decimal-yuan amounts to fen, tokens dropped.
pub fn content_fields(content: &Value, path: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Value::Object(m) = content else {
        match content {
            Value::Null => {}
            Value::String(s) => {
                out.insert("content".into(), Value::String(wire::bound(s, wire::FIELD_MAX_CHARS)));
            }
            other => {
                out.insert("content".into(), Value::String(wire::bound(&other.to_string(), wire::FIELD_MAX_CHARS)));
            }
        }
        return out;
    };
    let known = wire::answer_fields(path);
    for (k, v) in m {
        if k == "token" || k == "access_token" || !known.contains(&k.as_str()) {
            continue;
        }
        let max = if k == "report" { wire::REPORT_MAX_CHARS } else { wire::FIELD_MAX_CHARS };
        let v = if MONEY_FIELDS.contains(&k.as_str()) {
            match money::json_yuan_to_fen(v) {
                Ok(f) => Value::from(f),
                Err(_) => Value::Null,
            }
        } else {
            match v {
                Value::String(s) => Value::String(wire::bound(s, max)),
                Value::Number(_) | Value::Bool(_) | Value::Null => v.clone(),
                other => Value::String(wire::bound(&other.to_string(), max)),
            }
        };
        out.insert(k.clone(), v);
    }
    out
}

fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// The reply for a non-redeem answer from the interface at `path`: `success=true` is approved.
fn plain_reply(a: &Answer, path: &str, station: &str) -> Reply {
    let (zh, en, _) = codes::lookup(&a.ret);
    let mut fields = content_fields(&a.content, path);
    if let Some(Value::String(html)) = fields.get("report") {
        let text = wire::bound(&wire::html_to_text(html), wire::REPORT_MAX_CHARS);
        fields.insert("report_text".into(), Value::String(text));
    }
    fields.insert("station".into(), Value::String(station.to_string()));
    Reply {
        verdict: if a.success { Verdict::Approved } else { Verdict::Declined },
        code: a.ret.clone(),
        message: if a.msg.is_empty() { zh.to_string() } else { a.msg.clone() },
        message_en: en.to_string(),
        fields,
        reference: None,
        trans_time: None,
        amount_fen: None,
    }
}

/// The reply for a thirdAward answer sent on `station`. `Err(Unknown)` for every answer that is not one
/// the document gives to a redeem: an ambiguous code, a code no decline table names
/// ([`codes::REDEEM_DECLINES`]), a `success` that contradicts the code, a required `content` field missing
/// or of the wrong type ([`wire::redeem_required`]), or a `transacId` that is not ours (another request's
/// answer). The resend or query settles those.
///
/// 1307 is our own earlier payment only when `transacIdOrg` equals ours AND `awardStation` is one of the
/// profile's stations (`ours`); the reply then names `awardStation` as its `station`: the journal says
/// where the host paid it, not where the resend went. Any other 1307 is "already redeemed".
pub fn redeem_reply(a: &Answer, transac: &str, station: &str, ours: &dyn Fn(&str) -> bool) -> Result<Reply, BackendError> {
    let ret = a.ret.as_str();
    let unknown = |why: String| Err(err(Stage::Unknown, format!("redeem {transac}: {why}: the outcome is unknown")));
    if !codes::defined(ret) {
        return unknown(format!("ret {} is not a code the document defines", scrub(ret)));
    }
    if AMBIGUOUS.contains(&ret) {
        return unknown(format!("ret {ret} ({}) says nothing about the ticket", scrub(&a.msg)));
    }
    let expected = if codes::redeem_success(ret) || ret == "1307" {
        true
    } else if codes::redeem_declined(ret) {
        false
    } else {
        return unknown(format!("ret {ret} is not an answer the document gives to a redeem"));
    };
    if a.success != expected {
        return unknown(format!("success={} contradicts ret {ret}", a.success));
    }
    let required = wire::redeem_required(ret);
    let content = a.content.as_object();
    if content.is_none() && (!required.is_empty() || !a.content.is_null()) {
        return unknown(format!("ret {ret} came with content that is {}, not an object", wire::json_kind(&a.content)));
    }
    let empty = Map::new();
    let content = content.unwrap_or(&empty);
    for (name, ty) in required {
        match content.get(*name) {
            None | Some(Value::Null) => return unknown(format!("ret {ret} without `{name}`, which the document requires")),
            Some(v) if !ty.admits(v) => return unknown(format!("ret {ret} with `{name}` {}, not the document's {ty:?}", wire::json_kind(v))),
            Some(_) => {}
        }
    }
    // The echo: an answer naming another transacId answers another request.
    if let Some(theirs) = content.get("transacId") {
        if theirs.as_str() != Some(transac) {
            tracing::warn!(station, field = "transacId", "lottery host fault: a redeem answer names another request");
            let shown = theirs.as_str().map(scrub).unwrap_or_else(|| wire::json_kind(theirs).to_string());
            return unknown(format!("the answer names transacId {shown}: another request's answer"));
        }
    }
    let mut r = plain_reply(a, wire::REDEEM_PATH, station);
    r.fields.insert("transacId".into(), Value::String(transac.to_string()));
    r.reference = r.fields.get("ticketNo").and_then(Value::as_str).map(str::to_string);
    r.trans_time = r.fields.get("awardTime").and_then(Value::as_str).map(str::to_string);
    if ret == "1307" {
        let org = r.fields.get("transacIdOrg").and_then(wire::text_of).unwrap_or_default();
        let st = r.fields.get("awardStation").and_then(wire::text_of).unwrap_or_default();
        if org == transac && ours(&st) {
            r.verdict = Verdict::Approved;
            r.message_en = format!("redeemed by this very request earlier at station {st} (answer had been lost): paid once");
            r.fields.insert("recovered".into(), Value::Bool(true));
            r.fields.insert("sent_on".into(), Value::String(station.to_string()));
            r.fields.insert("station".into(), Value::String(st));
        } else {
            r.verdict = Verdict::Declined;
            let at = r.fields.get("awardTime").and_then(wire::text_of).unwrap_or_default();
            r.message_en = if org == transac {
                format!("the host names our transacId but station {st}, which is not one of this profile's: treated as redeemed elsewhere at {at}")
            } else {
                format!("already redeemed at station {st} at {at} (transacId {org})")
            };
        }
    } else {
        r.verdict = if codes::redeem_success(ret) { Verdict::Approved } else { Verdict::Declined };
    }
    if r.verdict == Verdict::Approved {
        // The prize is known only now; the journal record's amount is what was paid.
        r.amount_fen = r.fields.get("prize").and_then(Value::as_i64);
    }
    Ok(r)
}

impl LotteryBackend {
    pub fn new(profile: &Profile, http: HttpsClient) -> Result<Self, ConfigError> {
        let bad = |field: &str, why: String| ConfigError::field(&profile.source, None, field, why);
        let app_key = profile.option_str("app_key", "")?;
        if app_key.is_empty() {
            return Err(bad("options.app_key", "required: the AppKey the backend assigned".into()));
        }
        let app_secret = profile.secret("app_secret")?;
        if app_secret.expose_str().map(str::is_empty).unwrap_or(true) {
            return Err(bad("secrets.app_secret", "must be non-empty UTF-8 text".into()));
        }
        let app_secret = Secret::new(app_secret.expose_str().map(str::as_bytes).unwrap_or_default().to_vec());
        let method =
            SignMethod::parse(&profile.option_str("sign_method", "MD5")?).ok_or_else(|| bad("options.sign_method", "must be \"MD5\" or \"SHA-1\"".into()))?;
        let body = match profile.option_str("body", "form")?.as_str() {
            "form" => BodyFormat::Form,
            "json" => BodyFormat::Json,
            _ => return Err(bad("options.body", "must be \"form\" or \"json\"".into())),
        };
        let epoch = match profile.options.get("epoch") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => return Err(bad("options.epoch", "must be true or false".into())),
        };
        let tz =
            parse_offset(&profile.option_str("timezone", "+08:00")?).ok_or_else(|| bad("options.timezone", "must be an offset such as \"+08:00\"".into()))?;
        let merchant = profile.option_str("merchant", "01")?;
        if merchant.len() != 2 || !merchant.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("options.merchant", "must be 2 letters or digits (the transacId prefix)".into()));
        }
        let reconcile_at = NaiveTime::parse_from_str(&profile.option_str("reconcile_at", "01:00")?, "%H:%M")
            .map_err(|_| bad("options.reconcile_at", "must be \"HH:MM\"".into()))?;
        let terminal_type = profile.option_str("terminal_type", "1")?;
        let version = profile.option_str("version", "24")?;
        let risk = RiskRules::from_table(profile.options.get("risk"), tz).map_err(|(f, why)| bad(&f, why))?;
        let hold = match profile.options.get("station_hold_ms") {
            None => profile.timeout.saturating_mul(2),
            Some(toml::Value::Integer(ms)) if (1..=3_600_000).contains(ms) => Duration::from_millis(*ms as u64),
            Some(_) => return Err(bad("options.station_hold_ms", "must be milliseconds, 1 to 3600000 (default: 2 × timeout_ms)".into())),
        };
        let summary_scope = match profile.option_str("summary_scope", "all")?.as_str() {
            "all" => SummaryScope::All,
            "per-batch" => SummaryScope::PerBatch,
            _ => return Err(bad("options.summary_scope", "must be \"all\" or \"per-batch\"".into())),
        };
        let list = profile
            .options
            .get("stations")
            .and_then(toml::Value::as_array)
            .ok_or_else(|| bad("options.stations", "required: a list of { id, clerk, serial, password } tables".into()))?;
        let mut stations = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let at = |k: &str| format!("options.stations[{i}].{k}");
            let t = s.as_table().ok_or_else(|| bad(&format!("options.stations[{i}]"), "must be a table".into()))?;
            let text = |k: &str, default: Option<&str>| -> Result<String, ConfigError> {
                match (t.get(k), default) {
                    (Some(toml::Value::String(v)), _) if !v.is_empty() => Ok(v.clone()),
                    (None, Some(d)) => Ok(d.to_string()),
                    _ => Err(bad(&at(k), "must be a non-empty string".into())),
                }
            };
            let id = text("id", None)?;
            if stations.iter().any(|x: &Station| x.id == id) {
                return Err(bad(&at("id"), format!("station {id} is listed twice")));
            }
            let secret_name = text("password", Some("station_password"))?;
            let pw = profile.secret(&secret_name)?.expose_str().map_err(|_| bad(&format!("secrets.{secret_name}"), "must be UTF-8 text".into()))?.to_string();
            stations.push(Station::new(&id, &text("clerk", Some("0"))?, &text("serial", None)?, Secret::new(pw.into_bytes())));
        }
        if stations.is_empty() {
            return Err(bad("options.stations", "needs at least one station".into()));
        }
        Ok(LotteryBackend {
            http,
            base: profile.base_url.trim_end_matches('/').to_string(),
            app_key,
            app_secret,
            method,
            body,
            epoch,
            tz,
            merchant,
            terminal_type,
            version,
            pool: StationPool::new(stations),
            risk,
            reconcile_at,
            timeout: profile.timeout,
            hold,
            summary_scope,
            resend_failures: Mutex::new(HashMap::new()),
        })
    }

    /// The station pool (tests, `doctor`).
    pub fn pool(&self) -> &Arc<StationPool> {
        &self.pool
    }

    #[cfg(test)]
    pub(crate) async fn call_for_tests(&self, st: &Station, path: &str, params: &[(&str, Value)]) -> Result<Answer, BackendError> {
        self.call(st, path, params, 0).await
    }

    #[cfg(test)]
    pub(crate) fn http_for_tests(&self) -> &HttpsClient {
        &self.http
    }

    #[cfg(test)]
    pub(crate) fn base_for_tests(&self) -> &str {
        &self.base
    }

    /// The wire `timestamp` is the real time of sending: the backend refuses one more than 30 minutes off,
    /// and a resend hours later needs a fresh one. It is not the engine's (injectable) clock on purpose.
    #[allow(clippy::disallowed_methods)]
    fn timestamp(&self) -> String {
        let now = chrono::Utc::now();
        if self.epoch {
            now.timestamp().to_string()
        } else {
            now.with_timezone(&self.tz).format("%Y-%m-%d %H:%M:%S").to_string()
        }
    }

    /// One signed POST. The token and the app secret appear in no error and no log line.
    async fn send(&self, station: &Station, path: &str, params: &[(&str, Value)], token: Option<&Secret>, journal_id: u64) -> Result<Answer, BackendError> {
        let secret = self.app_secret.expose_str().map_err(|_| err(Stage::NotSent, "app secret is not UTF-8"))?;
        let token_text = match token {
            Some(t) => Some(t.expose_str().map_err(|_| err(Stage::NotSent, "session token is not UTF-8"))?),
            None => None,
        };
        let env = Envelope {
            app_key: &self.app_key,
            access_token: token_text,
            timestamp: self.timestamp(),
            sign_method: self.method,
            param_json: wire::param_json(params),
        };
        let (ct, body) = wire::encode_body(&env.signed_pairs(secret), self.body);
        let url = format!("{}/{path}", self.base);
        tracing::debug!(station = %station.id, path, "lottery request");
        let reply = match self.http.post(&url, ct, Bytes::from(body), journal_id).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, NetError::Unknown(_)) {
                    // No answer: the host may still be working on it, and it is serial per station.
                    station.hold(self.hold);
                    tracing::warn!(station = %station.id, path, hold_ms = self.hold.as_millis() as u64, "lottery request unanswered; station held");
                }
                return Err(net_error(e));
            }
        };
        let body = common::answer_body(KIND, path, &reply)?;
        wire::parse_answer(body).map_err(|e| err(Stage::Unknown, format!("{path}: {e}: {}", scrub(&String::from_utf8_lossy(body)))))
    }

    /// Log one station in and keep its token. Any failure means the caller's own request was not sent.
    async fn login(&self, station: &Station, journal_id: u64) -> Result<Answer, BackendError> {
        let pw = station.password();
        let pw = pw.expose_str().map_err(|_| err(Stage::NotSent, "station password is not UTF-8"))?;
        let params = [
            ("stationId", Value::from(station.id.as_str())),
            ("clerkId", Value::from(station.clerk.as_str())),
            ("password", Value::from(pw)),
            ("type", Value::from(self.terminal_type.as_str())),
            ("version", Value::from(self.version.as_str())),
            ("serialNo", Value::from(station.serial.as_str())),
        ];
        station.set_token(None);
        let a = self
            .send(station, wire::LOGIN_PATH, &params, None, journal_id)
            .await
            .map_err(|e| err(Stage::NotSent, format!("station {} login: {}", station.id, e.detail)))?;
        let token = a.content.get("token").and_then(Value::as_str).filter(|t| !t.is_empty());
        match token {
            Some(t) if a.success => {
                station.set_token(Some(Secret::new(t.as_bytes().to_vec())));
                tracing::info!(station = %station.id, "lottery station logged in");
                Ok(a)
            }
            _ => Err(err(Stage::NotSent, format!("station {} login refused: ret {} {}", station.id, a.ret, scrub(&a.msg)))),
        }
    }

    /// Send with the station's session: log in when there is none; after 1021/27/28 log in again and
    /// retry once (the refused request was not processed, so the retry is safe even for a redeem).
    /// The caller has the station (a guard, or the engine's lease); a held station is waited out first.
    async fn call(&self, st: &Station, path: &str, params: &[(&str, Value)], journal_id: u64) -> Result<Answer, BackendError> {
        if let Some(rest) = st.held_for() {
            tracing::info!(station = %st.id, path, wait_ms = rest.as_millis() as u64, "station held: waiting before sending");
            tokio::time::sleep(rest).await;
        }
        if st.token().is_none() {
            self.login(st, journal_id).await?;
        }
        let a = self.send(st, path, params, st.token().as_ref(), journal_id).await?;
        if !codes::session_lost(&a.ret) {
            return Ok(a);
        }
        tracing::info!(station = %st.id, ret = %a.ret, "lottery session lost; logging in again");
        self.login(st, journal_id).await?;
        let again = self.send(st, path, params, st.token().as_ref(), journal_id).await?;
        if codes::session_lost(&again.ret) {
            st.set_token(None);
            return Err(err(Stage::Rejected, format!("station {}: session lost again after a new login (ret {})", st.id, again.ret)));
        }
        Ok(again)
    }

    /// The station a non-redeem request runs on: the one the POS named, else any; waiting for a busy or
    /// held one no longer than the timeout, then refusing (not sent) with the busy station's name.
    async fn guard_for(&self, public: &Map<String, Value>) -> Result<StationGuard, BackendError> {
        let r = match str_of(public, wire::STATION_KEY) {
            Some(id) => {
                let i = self.pool.index_of(id).ok_or_else(|| err(Stage::NotSent, format!("no station {id} in this profile")))?;
                self.pool.acquire_station(i, Some(self.timeout)).await
            }
            None => self.pool.acquire(Some(self.timeout)).await,
        };
        r.map_err(|e| err(Stage::NotSent, e))
    }

    /// One named station for a per-station request, waited for no longer than the timeout.
    async fn station_guard(&self, index: usize) -> Result<StationGuard, BackendError> {
        self.pool.acquire_station(index, Some(self.timeout)).await.map_err(|e| err(Stage::NotSent, e))
    }

    /// The business parameters of one request, in the spec's order, for a given station.
    fn params(&self, w: &WireOp, tx: &TxRequest<'_>, station: &Station, transac: Option<&str>) -> Result<Vec<(&'static str, Value)>, String> {
        let mut out = Vec::new();
        for f in w.fields {
            let v = match (f.owner, f.name) {
                (Owner::Daemon, "transacId") => Value::from(transac.ok_or("no transacId")?),
                (Owner::Daemon, "type") => Value::from(wire::REDEEM_TYPE),
                (Owner::Daemon, other) => return Err(format!("no daemon value for `{other}`")),
                (Owner::Pos, name) => {
                    let given = match f.kind {
                        Kind::BarCode => tx.vault.get(name).or_else(|| tx.transient.get(name)),
                        Kind::Password => tx.transient.get(name),
                        _ => tx.public.get(name),
                    };
                    match (given, f.default) {
                        (Some(v), _) => v.clone(),
                        (None, Some("$clerk")) => Value::from(station.clerk.as_str()),
                        (None, Some(d)) => Value::from(d),
                        (None, None) if name == "old" => {
                            let pw = station.password();
                            Value::from(pw.expose_str().map_err(|_| "station password is not UTF-8")?)
                        }
                        (None, None) if f.required => return Err(format!("`{name}` is missing (a replay without the first-send fields?)")),
                        (None, None) => continue,
                    }
                }
            };
            out.push((f.name, v));
        }
        Ok(out)
    }

    /// Send a redeem on the station the engine leased for it (`tx.slot`, held by the caller: used without
    /// taking it), or, without one, on any free station taken for this call.
    async fn redeem(&self, tx: &TxRequest<'_>) -> Result<Reply, BackendError> {
        let w = wire::op("redeem").ok_or_else(|| err(Stage::NotSent, "no redeem interface"))?;
        let transac = transac_id(&self.merchant, tx.created_at, tx.trace, self.tz).map_err(|e| err(Stage::NotSent, e))?;
        let leased = tx.slot.and_then(|id| self.pool.index_of(id));
        if let (Some(id), None) = (tx.slot, leased) {
            tracing::warn!(slot = id, "redeem journaled on a station this profile no longer lists; using another");
        }
        let guard = match leased {
            Some(_) => None,
            None => Some(self.pool.acquire(Some(self.timeout)).await.map_err(|e| err(Stage::NotSent, e))?),
        };
        let station = match (leased, &guard) {
            (Some(i), _) => &self.pool.stations()[i],
            (None, Some(g)) => g.station(),
            (None, None) => return Err(err(Stage::NotSent, "no station")),
        };
        let params = self.params(w, tx, station, Some(&transac)).map_err(|e| err(Stage::NotSent, e))?;
        tracing::info!(station = %station.id, transac = %transac, "lottery redeem");
        let a = self.call(station, w.path, &params, tx.journal_id).await?;
        let pool = self.pool.clone();
        redeem_reply(&a, &transac, &station.id, &move |id| pool.contains(id))
    }

    /// The station a recovery query runs on: the leased one, or any free one (bounded wait).
    async fn query_station(&self, tx: &TxRequest<'_>) -> Result<(Option<StationGuard>, usize), BackendError> {
        if let Some(i) = tx.slot.and_then(|id| self.pool.index_of(id)) {
            return Ok((None, i));
        }
        let g = self.pool.acquire(Some(self.timeout)).await.map_err(|e| err(Stage::NotSent, e))?;
        let i = g.index();
        Ok((Some(g), i))
    }

    /// Learn a redeem's outcome from the host without resending it: getPrize for the bar code (a prize,
    /// or 3202: no redemption record), then the paying station's awardDetail for that day: the row with
    /// our `transacId` means ours won. `Again` while the host cannot say.
    async fn query_outcome(&self, tx: &TxRequest<'_>, why: &str) -> Result<Recovered, BackendError> {
        let transac = transac_id(&self.merchant, tx.created_at, tx.trace, self.tz).map_err(|e| err(Stage::NotSent, e))?;
        let bar = tx.vault.get("barCode").and_then(Value::as_str).ok_or_else(|| err(Stage::NotSent, "the sealed bar code is missing: cannot query"))?;
        let (guard, own) = self.query_station(tx).await?;
        let own_station = &self.pool.stations()[own];
        let a = self.call(own_station, "proxy/validate/getPrize", &[("barCode", Value::from(bar))], tx.journal_id).await?;
        let base = |verdict: Verdict, code: &str, message_en: String, mut fields: Map<String, Value>| {
            let (zh, _, _) = codes::lookup(code);
            fields.insert("transacId".into(), Value::from(transac.as_str()));
            fields.insert("resolved_by".into(), Value::from("query"));
            fields.insert("query_reason".into(), Value::from(why));
            Reply {
                verdict,
                code: code.into(),
                message: if a.msg.is_empty() { zh.to_string() } else { a.msg.clone() },
                message_en,
                fields,
                reference: None,
                trans_time: None,
                amount_fen: None,
            }
        };
        if a.ret.trim() == "3202" {
            let mut f = Map::new();
            f.insert("station".into(), Value::from(own_station.id.as_str()));
            return Ok(Recovered::Settled(base(
                Verdict::Declined,
                "3202",
                "not redeemed: the host has no redemption record of this ticket (getPrize 3202)".into(),
                f,
            )));
        }
        if !a.success {
            return Ok(Recovered::Again(format!("getPrize answered ret {} ({}): cannot tell yet", a.ret, scrub(&a.msg))));
        }
        let prize = content_fields(&a.content, "proxy/validate/getPrize");
        let paid_at = prize.get("stationId").and_then(wire::text_of).unwrap_or_default();
        let award_time = prize.get("awardTime").and_then(wire::text_of).unwrap_or_default();
        let mut f = Map::new();
        f.insert("awardStation".into(), Value::from(paid_at.as_str()));
        f.insert("awardTime".into(), Value::from(award_time.as_str()));
        for k in ["level", "prize"] {
            if let Some(v) = prize.get(k) {
                f.insert(k.into(), v.clone());
            }
        }
        let Some(pi) = self.pool.index_of(&paid_at) else {
            f.insert("station".into(), Value::from(own_station.id.as_str()));
            f.remove("prize");
            return Ok(Recovered::Settled(base(
                Verdict::Declined,
                "1307",
                format!("already redeemed at station {paid_at} at {award_time}, not one of this profile's stations: another transacId won"),
                f,
            )));
        };
        // awardDetail answers for the asking station only: ask the station that paid it.
        let day = award_time
            .get(..10)
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .ok_or_else(|| err(Stage::Unknown, format!("getPrize awardTime {award_time:?} is not YYYY-MM-DD HH:MM:SS")))?;
        let other;
        let paid_station = if pi == own {
            own_station
        } else {
            drop(guard);
            other = self.station_guard(pi).await?;
            other.station()
        };
        let d = self.call(paid_station, wire::AWARD_DETAIL, &day_params(day, "00000", "00000"), tx.journal_id).await?;
        if !d.success {
            return Ok(Recovered::Again(format!("awardDetail at station {paid_at} answered ret {} ({})", d.ret, scrub(&d.msg))));
        }
        let rows = detail_rows(&d.content);
        f.insert("station".into(), Value::from(paid_at.as_str()));
        if let Some(row) = rows.iter().find(|r| text(r.get("transacId")) == transac) {
            let ticket = ticket_of(row);
            f.insert("ticketNo".into(), Value::from(ticket.as_str()));
            f.insert("gameNo".into(), Value::from(text(row.get("gameNo"))));
            f.insert("batchNo".into(), Value::from(text(row.get("batchNo"))));
            f.insert("recovered".into(), Value::Bool(true));
            let amount = f.get("prize").and_then(Value::as_i64);
            let mut r =
                base(Verdict::Approved, "10000", format!("redeemed by this very request at station {paid_at} at {award_time} (learnt by query): paid once"), f);
            r.reference = Some(ticket);
            r.trans_time = Some(award_time);
            r.amount_fen = amount;
            return Ok(Recovered::Settled(r));
        }
        let winners: Vec<String> =
            rows.iter().filter(|r| text(r.get("time")) == award_time).map(|r| text(r.get("transacId"))).filter(|t| !t.is_empty()).collect();
        f.insert("winning_transacId".into(), json!(winners));
        f.remove("prize");
        Ok(Recovered::Settled(base(
            Verdict::Declined,
            "1307",
            format!(
                "already redeemed at station {paid_at} at {award_time} by another transacId ({}), not {transac}",
                if winners.is_empty() { "not listed".to_string() } else { winners.join(", ") }
            ),
            f,
        )))
    }

    /// Count one more resend that settled nothing; true when it is time to ask by query as well.
    fn resend_failed(&self, journal_id: u64) -> bool {
        let mut m = self.resend_failures.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        let n = m.entry(journal_id).or_insert(0);
        *n += 1;
        *n >= QUERY_AFTER
    }

    fn resend_settled(&self, journal_id: u64) {
        self.resend_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&journal_id);
    }

    /// count / reset-count over one named station or every station.
    async fn per_station(&self, w: &WireOp, tx: &TxRequest<'_>) -> Result<Reply, BackendError> {
        let indices: Vec<usize> = match str_of(tx.public, wire::STATION_KEY) {
            Some(id) => vec![self.pool.index_of(id).ok_or_else(|| err(Stage::NotSent, format!("no station {id} in this profile")))?],
            None => (0..self.pool.len()).collect(),
        };
        let (mut rows, mut tickets, mut amount) = (Vec::new(), 0i64, 0i64);
        let mut last: Option<Reply> = None;
        for i in indices {
            let g = self.station_guard(i).await?;
            let a = self.call(g.station(), w.path, &[], tx.journal_id).await?;
            let r = plain_reply(&a, w.path, &g.station().id);
            if r.verdict != Verdict::Approved {
                return Ok(r);
            }
            let t = r.fields.get("tickets").and_then(wire::text_of).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            let f = r.fields.get("amount").and_then(Value::as_i64).unwrap_or(0);
            tickets += t;
            amount += f;
            rows.push(json!({"station": g.station().id, "tickets": t, "amount": f}));
            last = Some(r);
        }
        let Some(mut r) = last else { return Err(err(Stage::NotSent, "no station")) };
        r.fields = Map::new();
        r.fields.insert("stations".into(), Value::Array(rows));
        if w.spec.name == "count" {
            r.fields.insert("tickets".into(), Value::from(tickets));
            r.fields.insert("amount".into(), Value::from(amount));
        }
        Ok(r)
    }

    /// awardDetail and awardSummary for one day on every station (each answers for itself only), per the
    /// profile's `summary_scope`. A station that stays busy, or a host that refuses, fails the whole
    /// reconciliation (it is tried again later).
    async fn remote_awards(&self, date: chrono::NaiveDate, journal_id: u64) -> Result<Remote, BackendError> {
        let mut out = Remote::default();
        for i in 0..self.pool.len() {
            let g = self.station_guard(i).await?;
            let st = g.station();
            let d = self.call(st, wire::AWARD_DETAIL, &day_params(date, "00000", "00000"), journal_id).await?;
            if !d.success {
                return Err(err(Stage::Rejected, format!("awardDetail at station {}: ret {} {}", st.id, d.ret, scrub(&d.msg))));
            }
            let rows: Vec<Map<String, Value>> = detail_rows(&d.content).into_iter().cloned().collect();
            let mut per_batch = self.summary_scope == SummaryScope::PerBatch;
            if !per_batch {
                let s = self.call(st, wire::AWARD_SUMMARY, &day_params(date, "00000", "00000"), journal_id).await?;
                if s.success {
                    out.summaries.extend(summary_rows(&s.content, &st.id, ("00000", "00000")));
                } else {
                    out.notes.push(format!(
                        "station {}: awardSummary for all games refused (ret {} {}): asked once per game and batch",
                        st.id,
                        s.ret,
                        scrub(&s.msg)
                    ));
                    per_batch = true;
                }
            }
            if per_batch {
                let keys: std::collections::BTreeSet<(String, String)> = rows.iter().map(|r| (text(r.get("gameNo")), text(r.get("batchNo")))).collect();
                for (game, batch) in keys {
                    let s = self.call(st, wire::AWARD_SUMMARY, &day_params(date, &game, &batch), journal_id).await?;
                    if !s.success {
                        return Err(err(Stage::Rejected, format!("awardSummary {game}/{batch} at station {}: ret {} {}", st.id, s.ret, scrub(&s.msg))));
                    }
                    out.summaries.extend(summary_rows(&s.content, &st.id, (&game, &batch)));
                }
            }
            for mut row in rows {
                row.insert("station".into(), Value::from(st.id.as_str()));
                out.rows.push(row);
            }
            out.stations.push(st.id.clone());
        }
        Ok(out)
    }

    async fn reconcile(&self, req: &ReportRequest<'_>) -> Result<Reply, BackendError> {
        let remote = self.remote_awards(req.date, req.journal_id).await?;
        let report = compare(req.date, req.records, &remote, &self.merchant, self.tz);
        let balanced = report.get("balanced").and_then(Value::as_bool).unwrap_or(false);
        let differences = report.get("differences").and_then(Value::as_i64).unwrap_or(0);
        if !balanced {
            tracing::warn!(date = %req.date, differences, "lottery reconciliation: not balanced; a person must look at the report");
        }
        Ok(Reply {
            verdict: Verdict::Approved,
            code: "10000".into(),
            message: if balanced { "对账平".into() } else { format!("对账不平: {differences} 处差异") },
            message_en: if balanced { "reconciled: balanced".into() } else { format!("reconciled: {differences} difference(s)") },
            fields: report,
            reference: None,
            trans_time: None,
            amount_fen: None,
        })
    }
}

/// awardSummary / awardDetail parameters for one Beijing-time day.
fn day_params(date: chrono::NaiveDate, game: &str, batch: &str) -> [(&'static str, Value); 4] {
    [
        ("gameNo", Value::from(game)),
        ("batchNo", Value::from(batch)),
        ("beginTime", Value::from(format!("{date} 00:00:00"))),
        ("endTime", Value::from(format!("{date} 23:59:59"))),
    ]
}

/// awardDetail `content`: a list of rows, a single row object, or an object holding the list.
fn detail_rows(content: &Value) -> Vec<&Map<String, Value>> {
    match content {
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        Value::Object(m) if m.contains_key("transacId") || m.contains_key("ticketNo") => vec![m],
        Value::Object(m) => m.values().find_map(Value::as_array).map(|a| a.iter().filter_map(Value::as_object).collect()).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// awardSummary `content` (one object or a list), with the asked game and batch where a row names none.
fn summary_rows(content: &Value, station: &str, asked: (&str, &str)) -> Vec<Summary> {
    let list: Vec<&Map<String, Value>> = match content {
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        Value::Object(m) if m.contains_key("tickets") || m.contains_key("amount") => vec![m],
        Value::Object(m) => m.values().find_map(Value::as_array).map(|a| a.iter().filter_map(Value::as_object).collect()).unwrap_or_default(),
        _ => Vec::new(),
    };
    list.into_iter()
        .map(|x| {
            let or = |k: &str, d: &str| Some(text(x.get(k))).filter(|s| !s.is_empty()).unwrap_or_else(|| d.to_string());
            Summary {
                station: station.to_string(),
                game_no: or("gameNo", asked.0),
                batch_no: or("batchNo", asked.1),
                tickets: x.get("tickets").and_then(wire::text_of).and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0),
                amount_fen: x.get("amount").and_then(|v| money::json_yuan_to_fen(v).ok()).unwrap_or(0),
            }
        })
        .collect()
}

fn text(v: Option<&Value>) -> String {
    v.and_then(wire::text_of).unwrap_or_default()
}

/// An awardDetail row's ticket as thirdAward shows `ticketNo`: `gameNo-packNo-ticketNo`.
fn ticket_of(row: &Map<String, Value>) -> String {
    let parts: Vec<String> = ["gameNo", "packNo", "ticketNo"].iter().map(|k| text(row.get(*k))).filter(|s| !s.is_empty()).collect();
    parts.join("-")
}

/// One awardSummary row of one station.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub station: String,
    /// `00000` with `batch_no` `00000`: every game and batch of the station.
    pub game_no: String,
    pub batch_no: String,
    pub tickets: i64,
    pub amount_fen: i64,
}

/// The backend's side of one day, over every station.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// awardDetail rows as the host sent them (no prize), each with `station` set to the station asked.
    pub rows: Vec<Map<String, Value>>,
    pub summaries: Vec<Summary>,
    pub stations: Vec<String>,
    /// How the host was asked, where that differed from the profile (a refused `00000` summary).
    pub notes: Vec<String>,
}

/// Compare one day's journal records (engine views) with the backend's award rows.
///
/// Rows match records by `transacId` (the document's "important marker" of which request won); a row
/// and a record for the same ticket under different `transacId`s are one difference ("another
/// transacId won"). Amounts exist only on our side (thirdAward's `prize`) and in awardSummary: they
/// are compared per station and (gameNo, batchNo), a record taking its game and batch from its row.
/// A record's `transacId` is read from its result, or rebuilt from its trace and creation time
/// (records whose answer never came).
pub fn compare(date: chrono::NaiveDate, records: &[ReportRecord], remote: &Remote, merchant: &str, tz: FixedOffset) -> Map<String, Value> {
    use std::collections::BTreeMap;
    struct Local {
        id: Value,
        status: String,
        ticket: String,
        prize: i64,
        bar: String,
        station: String,
    }
    let mut local: BTreeMap<String, Local> = BTreeMap::new();
    // The engine sends a day either side; keep the redeems of this business day in the backend's zone.
    let on_date = |r: &&ReportRecord| chrono::DateTime::parse_from_rfc3339(&r.created_at).is_ok_and(|t| t.with_timezone(&tz).date_naive() == date);
    for r in records.iter().filter(|r| r.operation == "redeem").filter(on_date) {
        let transac = r.result.get("transacId").and_then(Value::as_str).map(str::to_string).or_else(|| transac_id(merchant, &r.created_at, &r.trace, tz).ok());
        let Some(transac) = transac else { continue };
        let prize = r.result.get("prize").and_then(Value::as_i64).unwrap_or(r.amount_fen);
        local.insert(
            transac,
            Local {
                id: Value::from(r.id),
                status: r.status.clone(),
                ticket: text(r.result.get("ticketNo")),
                prize,
                bar: text(r.public.get("barCode")),
                station: text(r.result.get("station")),
            },
        );
    }
    let approved = |l: &Local| l.status == "approved";
    let mut by_transac: BTreeMap<String, &Map<String, Value>> = BTreeMap::new();
    for row in &remote.rows {
        by_transac.insert(text(row.get("transacId")), row);
    }
    let (mut only_remote, mut only_local, mut station_mismatch, mut unresolved) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // (station, gameNo, batchNo) -> (tickets, fen) of our approved records, keyed by their rows.
    let mut ours: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    let mut ours_by_station: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let (mut local_count, mut local_amount) = (0i64, 0i64);
    for (t, l) in &local {
        if approved(l) {
            local_count += 1;
            local_amount += l.prize;
        } else if l.status == "pending" {
            unresolved.push(json!({"transacId": t, "journal_id": l.id, "barCode": l.bar}));
        }
    }
    for (t, row) in &by_transac {
        let st = text(row.get("station"));
        match local.get(t) {
            Some(l) if approved(l) => {
                if !l.station.is_empty() && l.station != st {
                    station_mismatch.push(json!({"transacId": t, "ticketNo": l.ticket, "journal_id": l.id, "local_station": l.station, "remote_station": st}));
                }
                let e = ours.entry((st.clone(), text(row.get("gameNo")), text(row.get("batchNo")))).or_default();
                e.0 += 1;
                e.1 += l.prize;
            }
            other => only_remote.push((t.clone(), *row, other)),
        }
    }
    for (t, l) in local.iter().filter(|(t, l)| approved(l) && !by_transac.contains_key(*t)) {
        only_local.push((t.clone(), l));
    }
    for l in local.values().filter(|l| approved(l)) {
        let e = ours_by_station.entry(l.station.clone()).or_default();
        e.0 += 1;
        e.1 += l.prize;
    }
    // The same ticket on both sides under different transacIds: another request won it.
    let mut different_winner = Vec::new();
    only_local.retain(|(t, l)| {
        let Some(k) = only_remote.iter().position(|(_, row, _)| !l.ticket.is_empty() && ticket_of(row) == l.ticket) else { return true };
        let (winner, row, _) = only_remote.remove(k);
        different_winner.push(json!({
            "transacId": t, "ticketNo": l.ticket, "journal_id": l.id, "local_prize_fen": l.prize,
            "winning_transacId": winner, "remote_station": text(row.get("station")), "awardTime": text(row.get("time")),
        }));
        false
    });
    let missing_locally: Vec<Value> = only_remote
        .iter()
        .map(|(t, row, l)| {
            json!({
                "transacId": t, "ticketNo": ticket_of(row), "gameNo": text(row.get("gameNo")), "batchNo": text(row.get("batchNo")),
                "awardTime": text(row.get("time")), "station": text(row.get("station")),
                "local_status": l.map(|l| Value::from(l.status.as_str())).unwrap_or(Value::Null),
                "journal_id": l.map(|l| l.id.clone()).unwrap_or(Value::Null),
            })
        })
        .collect();
    let missing_remotely: Vec<Value> = only_local
        .iter()
        .map(|(t, l)| json!({"transacId": t, "ticketNo": l.ticket, "barCode": l.bar, "journal_id": l.id, "local_prize_fen": l.prize, "station": l.station}))
        .collect();
    // Amounts: each summary row against our approved records of that station (and game and batch).
    let mut amount_mismatch = Vec::new();
    let (mut summary_count, mut summary_amount) = (0i64, 0i64);
    let mut covered: std::collections::BTreeSet<(String, String, String)> = Default::default();
    let mut all_scope: std::collections::BTreeSet<String> = Default::default();
    for s in &remote.summaries {
        summary_count += s.tickets;
        summary_amount += s.amount_fen;
        let all = s.game_no == "00000" && s.batch_no == "00000";
        let mine = if all {
            all_scope.insert(s.station.clone());
            ours_by_station.get(&s.station).copied().unwrap_or_default()
        } else {
            covered.insert((s.station.clone(), s.game_no.clone(), s.batch_no.clone()));
            ours.get(&(s.station.clone(), s.game_no.clone(), s.batch_no.clone())).copied().unwrap_or_default()
        };
        if mine != (s.tickets, s.amount_fen) {
            amount_mismatch.push(json!({
                "station": s.station, "gameNo": s.game_no, "batchNo": s.batch_no,
                "local_tickets": mine.0, "local_amount_fen": mine.1, "summary_tickets": s.tickets, "summary_amount_fen": s.amount_fen,
            }));
        }
    }
    // Batches we paid on a station whose summary came per batch but did not name them.
    for ((st, g, b), mine) in &ours {
        if !all_scope.contains(st) && !covered.contains(&(st.clone(), g.clone(), b.clone())) {
            amount_mismatch.push(json!({"station": st, "gameNo": g, "batchNo": b, "local_tickets": mine.0, "local_amount_fen": mine.1, "summary_tickets": 0, "summary_amount_fen": 0}));
        }
    }
    let differences = missing_locally.len() + missing_remotely.len() + different_winner.len() + station_mismatch.len() + amount_mismatch.len();
    let balanced = differences == 0;
    let mut text_lines = vec![
        format!("Lottery reconciliation {date} (stations {})", remote.stations.join(", ")),
        format!("journal: {local_count} tickets, {} yuan", money::fen_to_yuan(local_amount)),
        format!("backend: {} detail rows; summary {summary_count} tickets, {} yuan", remote.rows.len(), money::fen_to_yuan(summary_amount)),
    ];
    text_lines.extend(remote.notes.iter().cloned());
    for x in &missing_locally {
        text_lines.push(format!(
            "paid by the host, not approved here: ticket {} transacId {} station {} at {}",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("station")),
            text(x.get("awardTime"))
        ));
    }
    for x in &missing_remotely {
        text_lines.push(format!(
            "approved here, unknown to the host: ticket {} transacId {} journal {} ({} yuan)",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("journal_id")),
            money::fen_to_yuan(x.get("local_prize_fen").and_then(Value::as_i64).unwrap_or(0))
        ));
    }
    for x in &different_winner {
        text_lines.push(format!(
            "ticket {}: ours was transacId {}, the host paid transacId {}",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("winning_transacId"))
        ));
    }
    for x in &station_mismatch {
        text_lines.push(format!(
            "ticket {} transacId {}: journaled at station {}, paid at station {}",
            text(x.get("ticketNo")),
            text(x.get("transacId")),
            text(x.get("local_station")),
            text(x.get("remote_station"))
        ));
    }
    for x in &amount_mismatch {
        text_lines.push(format!(
            "station {} game {} batch {}: journal {} tickets {} yuan, summary {} tickets {} yuan",
            text(x.get("station")),
            text(x.get("gameNo")),
            text(x.get("batchNo")),
            text(x.get("local_tickets")),
            money::fen_to_yuan(x.get("local_amount_fen").and_then(Value::as_i64).unwrap_or(0)),
            text(x.get("summary_tickets")),
            money::fen_to_yuan(x.get("summary_amount_fen").and_then(Value::as_i64).unwrap_or(0))
        ));
    }
    text_lines.push(if balanced { "balanced".into() } else { format!("NOT balanced: {differences} difference(s)") });
    let mut m = Map::new();
    m.insert("date".into(), Value::from(date.to_string()));
    m.insert("stations".into(), json!(remote.stations));
    m.insert("missing_locally".into(), Value::Array(missing_locally));
    m.insert("missing_remotely".into(), Value::Array(missing_remotely));
    m.insert("different_winner".into(), Value::Array(different_winner));
    m.insert("station_mismatch".into(), Value::Array(station_mismatch));
    m.insert("amount_mismatch".into(), Value::Array(amount_mismatch));
    m.insert("unresolved_locally".into(), Value::Array(unresolved));
    m.insert(
        "totals".into(),
        json!({
            "local_count": local_count, "local_amount_fen": local_amount,
            "remote_count": remote.rows.len(),
            "summary_count": summary_count, "summary_amount_fen": summary_amount,
        }),
    );
    m.insert("differences".into(), Value::from(differences as i64));
    m.insert("balanced".into(), Value::Bool(balanced));
    m.insert("report_text".into(), Value::String(text_lines.join("\n")));
    m
}

fn is_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y/%m/%d").is_ok()
}

#[async_trait::async_trait]
impl Backend for LotteryBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn operations(&self) -> &'static [OpSpec] {
        wire::OP_SPECS
    }

    fn wants_history(&self) -> bool {
        true
    }

    fn daily_job(&self) -> Option<DailyJob> {
        Some(DailyJob { at: self.reconcile_at, operation: "reconcile" })
    }

    fn prepare(&self, operation: &str, body: &Map<String, Value>, _original: Option<&OriginalRef>, ctx: &PrepareContext<'_>) -> Result<Prepared, PrepareError> {
        let w = wire::op(operation).ok_or_else(|| invalid("operation", format!("unknown lottery operation {operation:?}")))?;
        let station_ok =
            matches!(operation, "password" | "count" | "reset-count" | "prize" | "report-sales" | "report-balance" | "report-trace" | "report-award");
        common::check_body_keys(operation, body, w.fields, wire::DAEMON_OWNED, &|k| k == wire::STATION_KEY && station_ok)?;
        let mut p = Prepared::default();
        if station_ok {
            match body.get(wire::STATION_KEY) {
                Some(Value::String(id)) if self.pool.index_of(id).is_some() => {
                    p.public.insert(wire::STATION_KEY.into(), Value::String(id.clone()));
                }
                Some(Value::Null) | None if operation == "password" && self.pool.len() > 1 => {
                    return Err(PrepareError::Missing(wire::STATION_KEY.into()));
                }
                Some(Value::Null) | None => {}
                Some(_) => return Err(invalid(wire::STATION_KEY, "is not a station of this profile")),
            }
        }
        for f in w.fields.iter().filter(|f| f.owner == Owner::Pos) {
            let v = match body.get(f.name) {
                Some(Value::Null) | None => None,
                Some(Value::String(s)) => Some(s.trim().to_string()),
                Some(Value::Number(n)) if f.kind == Kind::Text => Some(n.to_string()),
                Some(_) => return Err(invalid(f.name, "must be text")),
            };
            let Some(v) = v.filter(|s| !s.is_empty()) else {
                if f.required && f.default.is_none() {
                    return Err(PrepareError::Missing(f.name.into()));
                }
                continue;
            };
            match f.kind {
                Kind::Text => {
                    // 8.4: "包含字母和数字的字符串,最大32个字节长度": letters and digits only, nothing sent otherwise.
                    if f.name == "userId" && (v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric())) {
                        return Err(invalid(f.name, "must be letters and digits only (A-Z, a-z, 0-9), at most 32"));
                    }
                    p.public.insert(f.name.into(), Value::String(v));
                }
                Kind::Date => {
                    if !is_date(&v) {
                        return Err(invalid(f.name, "must be a date YYYY/MM/DD"));
                    }
                    p.public.insert(f.name.into(), Value::String(v));
                }
                Kind::BarCode => {
                    if v.len() > 64 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(invalid(f.name, "must be the scanned bar code (printable ASCII, at most 64)"));
                    }
                    p.public.insert(f.name.into(), Value::String(mask_card(&v)));
                    p.vault.insert(f.name.into(), Value::String(v));
                }
                Kind::Password => {
                    p.transient.insert(f.name.into(), Value::String(v));
                }
                other => return Err(invalid(f.name, format!("the lottery backend has no {other:?} fields"))),
            }
        }
        if operation == "password" {
            if let (Some(Value::String(old)), Some(id)) = (
                p.transient.get("old"),
                str_of(&p.public, wire::STATION_KEY).map(str::to_string).or_else(|| self.pool.stations().first().map(|s| s.id.clone())),
            ) {
                let st = self.pool.index_of(&id).and_then(|i| self.pool.stations().get(i));
                let same = st.is_some_and(|s| {
                    use subtle::ConstantTimeEq;
                    bool::from(s.password().expose().ct_eq(old.as_bytes()))
                });
                if !same {
                    return Err(invalid("old", "does not match the station's configured password"));
                }
            }
        }
        if operation == "redeem" {
            let user = str_of(&p.public, "userId").unwrap_or_default().to_string();
            self.risk.check(&user, ctx.now_ms, ctx.recent)?;
            p.pos_reference = str_of(&p.public, "barCode").map(str::to_string);
            // An unknown outcome holds back this ticket only: other tickets go on meanwhile.
            if let Some(Value::String(bar)) = p.vault.get("barCode") {
                p.unit = Some(format!("ticket:{bar}"));
            }
        }
        Ok(p)
    }

    /// Logs in every station of the pool that is free right now. A station held by a request whose
    /// outcome is unknown (or whose answer never came) is skipped and named in `held`: a login is a request
    /// too, and it would end the session the pending request was sent under; it logs in lazily later.
    /// The tokens stay in memory: the session given to the engine (and journaled) names the stations only.
    async fn sign_on(&self, _identity: &TerminalIdentity, journal_id: u64, _trace: &str) -> Result<SignOn, BackendError> {
        let (mut ok, mut failed, mut held, mut last) = (Vec::new(), Vec::new(), Vec::new(), None);
        for i in 0..self.pool.len() {
            let Some(g) = self.pool.try_station(i) else {
                held.push(self.pool.stations()[i].id.clone());
                continue;
            };
            match self.login(g.station(), journal_id).await {
                Ok(a) => {
                    ok.push(g.station().id.clone());
                    last = Some(a);
                }
                Err(e) => {
                    tracing::warn!(station = %g.station().id, "lottery login failed: {}", e.detail);
                    failed.push(json!({"station": g.station().id, "error": e.detail}));
                }
            }
        }
        if !held.is_empty() {
            tracing::info!(stations = ?held, "lottery sign-on skipped held stations; they log in when next used");
        }
        let reply = match last {
            Some(a) => {
                let mut r = plain_reply(&a, wire::LOGIN_PATH, ok.last().map(String::as_str).unwrap_or_default());
                r.fields.remove("station");
                r
            }
            None if failed.is_empty() => Reply {
                verdict: Verdict::Approved,
                code: "10000".into(),
                message: "所有站点忙".into(),
                message_en: "every station is held by a pending request; each logs in when next used".into(),
                fields: Map::new(),
                reference: None,
                trans_time: None,
                amount_fen: None,
            },
            None => {
                let why = failed.iter().map(|f| text(f.get("error"))).collect::<Vec<_>>().join("; ");
                return Err(err(Stage::Rejected, format!("no station could log in: {why}")));
            }
        };
        let mut reply = reply;
        reply.fields.insert("stations".into(), json!(ok));
        reply.fields.insert("held".into(), json!(held));
        reply.fields.insert("failed".into(), Value::Array(failed.clone()));
        Ok(SignOn { batch: None, session: json!({ "stations": ok, "held": held, "failed": failed.len() }), reply })
    }

    /// A station for a redeem, taken before it is journaled: any free one that is not held, waiting at
    /// most `wait`. Other operations take their station per call.
    async fn lease(&self, operation: &str, _public: &Map<String, Value>, wait: Duration) -> Result<Option<Lease>, BackendError> {
        if operation != "redeem" {
            return Ok(None);
        }
        let g = self.pool.acquire(Some(wait)).await.map_err(|e| err(Stage::NotSent, e))?;
        Ok(Some(Lease { slot: g.station().id.clone(), guard: Box::new(g) }))
    }

    /// The station a record was journaled on, at start-up. The last run may have died with a request
    /// on it unanswered, which the host may still be working on: the station is held for the hold
    /// period, so the first resend waits that out.
    async fn lease_slot(&self, slot: &str) -> Result<Option<Lease>, BackendError> {
        let Some(i) = self.pool.index_of(slot) else { return Ok(None) };
        let g = self.pool.acquire_station(i, Some(self.hold + self.timeout)).await.map_err(|e| err(Stage::NotSent, e))?;
        g.station().hold(self.hold);
        Ok(Some(Lease { slot: g.station().id.clone(), guard: Box::new(g) }))
    }

    async fn execute(&self, tx: TxRequest<'_>) -> Result<Reply, BackendError> {
        let w = wire::op(tx.operation).ok_or_else(|| err(Stage::NotSent, format!("unknown lottery operation {:?}", tx.operation)))?;
        match w.spec.name {
            "login" | "reconcile" => Err(err(Stage::NotSent, format!("`{}` is run through sign_on / report", tx.operation))),
            "redeem" => self.redeem(&tx).await,
            "count" | "reset-count" => self.per_station(w, &tx).await,
            _ => {
                let g = self.guard_for(tx.public).await?;
                let params = self.params(w, &tx, g.station(), None).map_err(|e| err(Stage::NotSent, e))?;
                let a = self.call(g.station(), w.path, &params, tx.journal_id).await?;
                let mut r = plain_reply(&a, w.path, &g.station().id);
                if w.spec.name == "password" && a.success {
                    if let Some(Value::String(new)) = tx.transient.get("new") {
                        g.station().set_password(Secret::new(new.as_bytes().to_vec()));
                        r.fields.insert(
                            "note".into(),
                            Value::from("password changed in memory: write the new password into this station's secret file before the next restart"),
                        );
                    }
                }
                Ok(r)
            }
        }
    }

    /// Resend the same `transacId` on the record's station. Only an answer about the ticket settles it;
    /// 15 / 10030 (the `transacId` reached the host before) and [`QUERY_AFTER`] resends in a row that
    /// settle nothing are followed by a query (getPrize + awardDetail). `Recovery::Query`: the query only.
    async fn recover(&self, tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError> {
        if tx.operation != "redeem" || !matches!(how, Recovery::Resend | Recovery::Query) {
            return Ok(Recovered::Again(format!("{how:?} is not supported for `{}`", tx.operation)));
        }
        let query = |why: String| async move {
            match self.query_outcome(&tx, &why).await {
                Ok(Recovered::Settled(r)) => {
                    self.resend_settled(tx.journal_id);
                    Ok(Recovered::Settled(r))
                }
                Ok(other) => Ok(other),
                Err(e) => Ok(Recovered::Again(format!("{why}; the query failed too: {}", e.detail))),
            }
        };
        if how == Recovery::Query {
            return query("query".into()).await;
        }
        let why = match self.redeem(&tx).await {
            Ok(r) if SEEN_BEFORE.contains(&r.code.trim()) => {
                return query(format!("resend answered ret {} ({}): the transacId reached the host before", r.code, r.message_en)).await;
            }
            Ok(r) if ticket_level(&r.code) => {
                self.resend_settled(tx.journal_id);
                return Ok(Recovered::Settled(r));
            }
            Ok(r) => format!("resend answered ret {} ({}), which says nothing about the ticket", r.code, r.message_en),
            Err(e) => e.detail,
        };
        if self.resend_failed(tx.journal_id) {
            return query(why).await;
        }
        Ok(Recovered::Again(why))
    }

    async fn settle(&self, _req: SettleRequest<'_>) -> Result<Settled, BackendError> {
        Err(err(Stage::NotSent, "the lottery backend has no settlement: use `reconcile`"))
    }

    async fn report(&self, req: ReportRequest<'_>) -> Result<Reply, BackendError> {
        match req.operation {
            "reconcile" => self.reconcile(&req).await,
            other => Err(err(Stage::NotSent, format!("{other} is not a lottery report"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
