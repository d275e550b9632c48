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
//! `transacIdOrg` equal to ours when it had paid the first one.
pub mod codes;
pub mod risk;
pub mod sign;
pub mod stations;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{FixedOffset, NaiveTime};
use serde_json::{json, Map, Value};

use crate::backend::{
    mask_card, Backend, BackendError, DailyJob, OpSpec, OriginalRef, PrepareContext, PrepareError, Prepared, Recovered, Recovery, Reply, ReportRequest,
    SettleRequest, Settled, SignOn, Stage, TerminalIdentity, TxRequest, Verdict,
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

/// Body keys that belong to the engine's envelope rather than the vendor request; ignored if present.
const ENVELOPE_KEYS: &[&str] = &["original", "scan", "scanId", "scan_id"];

/// Answer fields that are yuan (whole yuan, `balance` a decimal) and become integer fen in [`Reply::fields`].
pub const MONEY_FIELDS: &[&str] = &["price", "prize", "balance", "amountPrize", "AmountPrize", "amount"];

/// Redeem answers after which nothing can be said about whether the ticket was paid: the outcome is
/// unknown and the same `transacId` is sent again (server errors, "try later", database failures).
pub const AMBIGUOUS: &[&str] = &["1", "32", "1001", "1002", "1005", "1023", "1024", "1025", "1026", "1043", "1044"];

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

/// Shorten text from outside for an error detail (no more than ~200 characters).
fn scrub(text: &str) -> String {
    crate::backend::loyalty::scrub(text)
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

/// Answer content converted for the journal: whole-yuan and decimal-yuan amounts to fen, tokens dropped.
pub fn content_fields(content: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let Value::Object(m) = content else {
        if !content.is_null() {
            out.insert("content".into(), content.clone());
        }
        return out;
    };
    for (k, v) in m {
        if k == "token" || k == "access_token" {
            continue;
        }
        let v = if MONEY_FIELDS.contains(&k.as_str()) {
            match money::json_yuan_to_fen(v) {
                Ok(f) => Value::from(f),
                Err(_) => Value::Null,
            }
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    out
}

fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// The reply for a non-redeem answer: `success=true` is approved.
fn plain_reply(a: &Answer, station: &str) -> Reply {
    let (zh, en, _) = codes::lookup(&a.ret);
    let mut fields = content_fields(&a.content);
    if let Some(Value::String(html)) = fields.get("report") {
        let text = wire::html_to_text(html);
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

/// The reply for a thirdAward answer (see the module doc for 1307). `Err(Unknown)` for ambiguous codes.
pub fn redeem_reply(a: &Answer, transac: &str, station: &str) -> Result<Reply, BackendError> {
    if AMBIGUOUS.contains(&a.ret.trim()) {
        return Err(err(Stage::Unknown, format!("redeem {transac}: ret {} ({}) says nothing about the ticket", a.ret, scrub(&a.msg))));
    }
    let mut r = plain_reply(a, station);
    r.fields.insert("transacId".into(), Value::String(transac.to_string()));
    r.reference = r.fields.get("ticketNo").and_then(Value::as_str).map(str::to_string);
    r.trans_time = r.fields.get("awardTime").and_then(Value::as_str).map(str::to_string);
    let ret = a.ret.trim();
    if ret == "1307" {
        let org = r.fields.get("transacIdOrg").and_then(Value::as_str).unwrap_or_default().to_string();
        if org == transac {
            r.verdict = Verdict::Approved;
            r.message_en = "redeemed by this very request earlier (answer had been lost): paid once".into();
            r.fields.insert("recovered".into(), Value::Bool(true));
        } else {
            r.verdict = Verdict::Declined;
            let st = r.fields.get("awardStation").and_then(wire::text_of).unwrap_or_default();
            let at = r.fields.get("awardTime").and_then(wire::text_of).unwrap_or_default();
            r.message_en = format!("already redeemed at station {st} at {at}");
        }
    } else {
        r.verdict = if a.success && codes::redeem_success(ret) { Verdict::Approved } else { Verdict::Declined };
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
        let method = SignMethod::parse(&profile.option_str("sign_method", "MD5")?).ok_or_else(|| bad("options.sign_method", "must be \"MD5\" or \"SHA-1\"".into()))?;
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
        let tz = parse_offset(&profile.option_str("timezone", "+08:00")?).ok_or_else(|| bad("options.timezone", "must be an offset such as \"+08:00\"".into()))?;
        let merchant = profile.option_str("merchant", "01")?;
        if merchant.len() != 2 || !merchant.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("options.merchant", "must be 2 letters or digits (the transacId prefix)".into()));
        }
        let reconcile_at = NaiveTime::parse_from_str(&profile.option_str("reconcile_at", "01:00")?, "%H:%M").map_err(|_| bad("options.reconcile_at", "must be \"HH:MM\"".into()))?;
        let terminal_type = profile.option_str("terminal_type", "1")?;
        let version = profile.option_str("version", "24")?;
        let risk = RiskRules::from_table(profile.options.get("risk"), tz).map_err(|(f, why)| bad(&f, why))?;
        let list = profile.options.get("stations").and_then(toml::Value::as_array).ok_or_else(|| bad("options.stations", "required: a list of { id, clerk, serial, password } tables".into()))?;
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
        })
    }

    /// The station pool (tests, `doctor`).
    pub fn pool(&self) -> &Arc<StationPool> {
        &self.pool
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
        let env = Envelope { app_key: &self.app_key, access_token: token_text, timestamp: self.timestamp(), sign_method: self.method, param_json: wire::param_json(params) };
        let (ct, body) = wire::encode_body(&env.signed_pairs(secret), self.body);
        let url = format!("{}/{path}", self.base);
        tracing::debug!(station = %station.id, path, "lottery request");
        let reply = self.http.post(&url, ct, Bytes::from(body), journal_id).await.map_err(net_error)?;
        let text = String::from_utf8_lossy(&reply.body);
        match reply.status {
            200..=299 => wire::parse_answer(&reply.body).map_err(|e| err(Stage::Unknown, format!("{path}: {e}: {}", scrub(&text)))),
            400..=499 => Err(err(Stage::Rejected, format!("{path}: HTTP {}: {}", reply.status, scrub(&text)))),
            s => Err(err(Stage::Unknown, format!("{path}: HTTP {s}: {}", scrub(&text)))),
        }
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
        let a = self.send(station, wire::LOGIN_PATH, &params, None, journal_id).await.map_err(|e| err(Stage::NotSent, format!("station {} login: {}", station.id, e.detail)))?;
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
    async fn call(&self, g: &StationGuard, path: &str, params: &[(&str, Value)], journal_id: u64) -> Result<Answer, BackendError> {
        let st = g.station();
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

    async fn guard_for(&self, public: &Map<String, Value>) -> Result<StationGuard, BackendError> {
        let r = match str_of(public, wire::STATION_KEY) {
            Some(id) => {
                let i = self.pool.index_of(id).ok_or_else(|| err(Stage::NotSent, format!("no station {id} in this profile")))?;
                self.pool.acquire_station(i).await
            }
            None => self.pool.acquire().await,
        };
        r.map_err(|e| err(Stage::NotSent, e))
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

    async fn redeem(&self, tx: &TxRequest<'_>) -> Result<Reply, BackendError> {
        let w = wire::op("redeem").ok_or_else(|| err(Stage::NotSent, "no redeem interface"))?;
        let transac = transac_id(&self.merchant, tx.created_at, tx.trace, self.tz).map_err(|e| err(Stage::NotSent, e))?;
        let g = self.pool.acquire().await.map_err(|e| err(Stage::NotSent, e))?;
        let params = self.params(w, tx, g.station(), Some(&transac)).map_err(|e| err(Stage::NotSent, e))?;
        tracing::info!(station = %g.station().id, transac = %transac, "lottery redeem");
        let a = self.call(&g, w.path, &params, tx.journal_id).await?;
        redeem_reply(&a, &transac, &g.station().id)
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
            let g = self.pool.acquire_station(i).await.map_err(|e| err(Stage::NotSent, e))?;
            let a = self.call(&g, w.path, &[], tx.journal_id).await?;
            let r = plain_reply(&a, &g.station().id);
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

    /// Call awardSummary and awardDetail for one day on every station (each answers for itself only).
    async fn remote_awards(&self, date: chrono::NaiveDate, journal_id: u64) -> Result<Remote, BackendError> {
        let params = [
            ("gameNo", Value::from("00000")),
            ("batchNo", Value::from("00000")),
            ("beginTime", Value::from(format!("{date} 00:00:00"))),
            ("endTime", Value::from(format!("{date} 23:59:59"))),
        ];
        let (mut rows, mut count, mut amount, mut ids) = (Vec::new(), 0i64, 0i64, Vec::new());
        for i in 0..self.pool.len() {
            let g = self.pool.acquire_station(i).await.map_err(|e| err(Stage::NotSent, e))?;
            let id = g.station().id.clone();
            let s = self.call(&g, wire::AWARD_SUMMARY, &params, journal_id).await?;
            if !s.success {
                return Err(err(Stage::Rejected, format!("awardSummary at station {id}: ret {} {}", s.ret, scrub(&s.msg))));
            }
            let summaries: Vec<&Value> = match &s.content {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            for x in summaries {
                count += x.get("tickets").and_then(wire::text_of).and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0);
                amount += x.get("amount").and_then(|v| money::json_yuan_to_fen(v).ok()).unwrap_or(0);
            }
            let d = self.call(&g, wire::AWARD_DETAIL, &params, journal_id).await?;
            if !d.success {
                return Err(err(Stage::Rejected, format!("awardDetail at station {id}: ret {} {}", d.ret, scrub(&d.msg))));
            }
            for row in detail_rows(&d.content) {
                let mut row = row.clone();
                row.entry("station").or_insert_with(|| Value::from(id.as_str()));
                rows.push(row);
            }
            ids.push(id);
        }
        Ok(Remote { rows, summary_count: count, summary_amount_fen: amount, stations: ids })
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

/// awardDetail `content`: a list of rows, a single row object, or an object holding the list.
fn detail_rows(content: &Value) -> Vec<&Map<String, Value>> {
    match content {
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        Value::Object(m) if m.contains_key("transacId") || m.contains_key("ticketNo") => vec![m],
        Value::Object(m) => m.values().find_map(Value::as_array).map(|a| a.iter().filter_map(Value::as_object).collect()).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn text(v: Option<&Value>) -> String {
    v.and_then(wire::text_of).unwrap_or_default()
}

/// The backend's side of one day, over every station.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// awardDetail rows (each with `station` added when the backend did not name it).
    pub rows: Vec<Map<String, Value>>,
    /// awardSummary totals.
    pub summary_count: i64,
    pub summary_amount_fen: i64,
    pub stations: Vec<String>,
}

/// Compare one day's journal records (engine views) with the backend's award rows, by `transacId`.
/// A record's `transacId` is read from its result, or rebuilt from its trace and creation time (records
/// whose answer never came).
pub fn compare(date: chrono::NaiveDate, records: &[Value], remote: &Remote, merchant: &str, tz: FixedOffset) -> Map<String, Value> {
    let (rows, summary_count, summary_amount, stations) = (&remote.rows, remote.summary_count, remote.summary_amount_fen, &remote.stations);
    use std::collections::BTreeMap;
    struct Local {
        id: Value,
        status: String,
        ticket: String,
        prize: i64,
        bar: String,
    }
    let mut local: BTreeMap<String, Local> = BTreeMap::new();
    // The engine sends a day either side; keep the redeems of this business day in the backend's zone.
    let on_date = |r: &&Value| {
        r.get("created_at").and_then(Value::as_str).and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()).is_some_and(|t| t.with_timezone(&tz).date_naive() == date)
    };
    for r in records.iter().filter(|r| r.get("operation").and_then(Value::as_str) == Some("redeem")).filter(on_date) {
        let result = r.get("result");
        let transac = result.and_then(|x| x.get("transacId")).and_then(Value::as_str).map(str::to_string).or_else(|| {
            let created = r.get("created_at").and_then(Value::as_str)?;
            let trace = r.get("trace").and_then(Value::as_str)?;
            transac_id(merchant, created, trace, tz).ok()
        });
        let Some(transac) = transac else { continue };
        local.insert(
            transac,
            Local {
                id: r.get("id").cloned().unwrap_or(Value::Null),
                status: text(r.get("status")),
                ticket: text(result.and_then(|x| x.get("ticketNo"))),
                prize: result.and_then(|x| x.get("prize")).and_then(Value::as_i64).unwrap_or(0),
                bar: text(r.get("request").and_then(|x| x.get("barCode"))),
            },
        );
    }
    let mut remote: BTreeMap<String, &Map<String, Value>> = BTreeMap::new();
    for row in rows {
        remote.insert(text(row.get("transacId")), row);
    }
    let remote_prize = |row: &Map<String, Value>| row.get("prize").and_then(|v| money::json_yuan_to_fen(v).ok()).unwrap_or(0);
    let ticket_of = |row: &Map<String, Value>| {
        let parts: Vec<String> = ["gameNo", "packNo", "ticketNo"].iter().map(|k| text(row.get(*k))).filter(|s| !s.is_empty()).collect();
        parts.join("-")
    };
    let (mut missing_locally, mut missing_remotely, mut mismatch, mut unresolved) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut local_count, mut local_amount, mut remote_count, mut remote_amount) = (0i64, 0i64, 0i64, 0i64);
    for (t, l) in &local {
        if l.status == "approved" {
            local_count += 1;
            local_amount += l.prize;
        } else if l.status == "pending" {
            unresolved.push(json!({"transacId": t, "journal_id": l.id, "barCode": l.bar}));
        }
    }
    for (t, row) in &remote {
        remote_count += 1;
        let p = remote_prize(row);
        remote_amount += p;
        match local.get(t) {
            Some(l) if l.status == "approved" => {
                if l.prize != p {
                    mismatch.push(json!({"transacId": t, "ticketNo": l.ticket, "remote_ticket": ticket_of(row), "journal_id": l.id, "local_prize_fen": l.prize, "remote_prize_fen": p}));
                }
            }
            other => missing_locally.push(json!({
                "transacId": t,
                "ticketNo": ticket_of(row),
                "remote_prize_fen": p,
                "awardTime": text(row.get("time")),
                "station": text(row.get("station")),
                "local_status": other.map(|l| Value::from(l.status.as_str())).unwrap_or(Value::Null),
                "journal_id": other.map(|l| l.id.clone()).unwrap_or(Value::Null),
            })),
        }
    }
    for (t, l) in local.iter().filter(|(t, l)| l.status == "approved" && !remote.contains_key(*t)) {
        missing_remotely.push(json!({"transacId": t, "ticketNo": l.ticket, "barCode": l.bar, "journal_id": l.id, "local_prize_fen": l.prize}));
    }
    let differences = missing_locally.len() + missing_remotely.len() + mismatch.len();
    let balanced = differences == 0 && local_count == summary_count && local_amount == summary_amount && remote_count == summary_count && remote_amount == summary_amount;
    let mut text_lines = vec![
        format!("Lottery reconciliation {date} (stations {})", stations.join(", ")),
        format!("journal: {local_count} tickets, {} yuan", money::fen_to_yuan(local_amount)),
        format!("backend detail: {remote_count} tickets, {} yuan; summary: {summary_count} tickets, {} yuan", money::fen_to_yuan(remote_amount), money::fen_to_yuan(summary_amount)),
    ];
    for (title, list) in [("missing locally", &missing_locally), ("missing remotely", &missing_remotely), ("prize differs", &mismatch)] {
        for x in list.iter() {
            text_lines.push(format!("{title}: {} {} local {} remote {}", text(x.get("transacId")), text(x.get("ticketNo")), text(x.get("local_prize_fen")), text(x.get("remote_prize_fen"))));
        }
    }
    text_lines.push(if balanced { "balanced".into() } else { format!("NOT balanced: {differences} difference(s)") });
    let mut m = Map::new();
    m.insert("date".into(), Value::from(date.to_string()));
    m.insert("stations".into(), json!(stations));
    m.insert("missing_locally".into(), Value::Array(missing_locally));
    m.insert("missing_remotely".into(), Value::Array(missing_remotely));
    m.insert("prize_mismatch".into(), Value::Array(mismatch));
    m.insert("unresolved_locally".into(), Value::Array(unresolved));
    m.insert(
        "totals".into(),
        json!({
            "local_count": local_count, "local_amount_fen": local_amount,
            "remote_count": remote_count, "remote_amount_fen": remote_amount,
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
        let station_ok = matches!(operation, "password" | "count" | "reset-count" | "prize" | "report-sales" | "report-balance" | "report-trace" | "report-award");
        for k in body.keys() {
            if wire::DAEMON_OWNED.contains(&k.as_str()) {
                return Err(PrepareError::DaemonOwned(k.clone()));
            }
            if ENVELOPE_KEYS.contains(&k.as_str()) || (k == wire::STATION_KEY && station_ok) {
                continue;
            }
            if !w.fields.iter().any(|f| f.owner == Owner::Pos && f.name == k) {
                return Err(invalid(k, format!("is not a field of `{operation}`")));
            }
        }
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
                    if f.name == "userId" && (v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')) {
                        return Err(invalid(f.name, "must be at most 32 letters or digits"));
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
            }
        }
        if operation == "password" {
            if let (Some(Value::String(old)), Some(id)) = (p.transient.get("old"), str_of(&p.public, wire::STATION_KEY).map(str::to_string).or_else(|| self.pool.stations().first().map(|s| s.id.clone()))) {
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
        }
        Ok(p)
    }

    /// Logs in every station of the pool. The tokens stay in memory: the session given to the engine (and
    /// journaled) names the stations only.
    async fn sign_on(&self, _identity: &TerminalIdentity, journal_id: u64, _trace: &str) -> Result<SignOn, BackendError> {
        let (mut ok, mut failed, mut last) = (Vec::new(), Vec::new(), None);
        for i in 0..self.pool.len() {
            let g = self.pool.acquire_station(i).await.map_err(|e| err(Stage::NotSent, e))?;
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
        let Some(a) = last else {
            let why = failed.iter().map(|f| text(f.get("error"))).collect::<Vec<_>>().join("; ");
            return Err(err(Stage::Rejected, format!("no station could log in: {why}")));
        };
        let mut reply = plain_reply(&a, ok.last().map(String::as_str).unwrap_or_default());
        reply.fields.remove("station");
        reply.fields.insert("stations".into(), json!(ok));
        reply.fields.insert("failed".into(), Value::Array(failed.clone()));
        Ok(SignOn { batch: None, session: json!({ "stations": ok, "failed": failed.len() }), reply })
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
                let a = self.call(&g, w.path, &params, tx.journal_id).await?;
                let mut r = plain_reply(&a, &g.station().id);
                if w.spec.name == "password" && a.success {
                    if let Some(Value::String(new)) = tx.transient.get("new") {
                        g.station().set_password(Secret::new(new.as_bytes().to_vec()));
                        r.fields.insert("note".into(), Value::from("password changed in memory: write the new password into this station's secret file before the next restart"));
                    }
                }
                Ok(r)
            }
        }
    }

    /// Resend the same `transacId`. Only an answer about the ticket settles it; anything else (errors,
    /// protocol refusals of the resend itself) says nothing about the first send, so it is tried again.
    async fn recover(&self, tx: TxRequest<'_>, how: Recovery) -> Result<Recovered, BackendError> {
        if how != Recovery::Resend || tx.operation != "redeem" {
            return Ok(Recovered::Again(format!("{how:?} is not supported for `{}`", tx.operation)));
        }
        match self.redeem(&tx).await {
            Ok(r) if ticket_level(&r.code) => Ok(Recovered::Settled(r)),
            Ok(r) => Ok(Recovered::Again(format!("resend answered ret {} ({}), which says nothing about the ticket", r.code, r.message_en))),
            Err(e) => Ok(Recovered::Again(e.detail)),
        }
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
