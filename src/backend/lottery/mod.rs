//! The lottery (instant-ticket prize redemption) backend of lottery-redemption.txt: sessions, redeem, reports, reconciliation.
//!
//! Wire details live in [`wire`] (paths, fields, envelope), [`sign`] (MD5 / SHA-1 signatures), [`codes`]
//! (the three return-code tables), [`risk`] (section 6 rules, checked before sending) and [`stations`]
//! (the pool: the backend is serial per station); `answer.rs` makes answers into replies, `query.rs` learns
//! a redeem's fate by query, `reconcile.rs` runs the daily reconciliation. This file turns the engine's
//! vendor-neutral calls into those requests and back.
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
pub(crate) mod answer;
pub mod codes;
mod query;
mod reconcile;
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

use self::answer::plain_reply;
pub use self::answer::{content_fields, redeem_reply, ticket_level, transac_id, AMBIGUOUS, MONEY_FIELDS, SEEN_BEFORE};
pub use self::query::QUERY_AFTER;
use self::reconcile::text;
pub use self::reconcile::{compare, Remote, Summary, SummaryScope};
use self::risk::RiskRules;
use self::sign::SignMethod;
use self::stations::{Station, StationGuard, StationPool};
use self::wire::{Answer, BodyFormat, Envelope, Kind, Owner, WireOp};

/// The profile `backend =` value.
pub const KIND: &str = "lottery";

/// Logins sent in all for one need of a session when their answers are lost (a login holds no money).
const LOGIN_TRIES: u32 = 3;

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

fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
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
    ///
    /// A login whose answer is lost (or unreadable) holds no money: nothing was redeemed, and a second
    /// login only supersedes the token the first may have made. So it is sent again, at most
    /// [`LOGIN_TRIES`] times in all, each after the station's hold (the host may still be working on the
    /// lost one, and the station is serial), rather than failing the POS request it was made for.
    async fn login(&self, station: &Station, journal_id: u64) -> Result<Answer, BackendError> {
        let mut tries = 1;
        loop {
            match self.login_once(station, journal_id).await {
                Err(e) if e.stage == Stage::Unknown && tries < LOGIN_TRIES => {
                    tries += 1;
                    let rest = station.held_for().unwrap_or_default();
                    tracing::info!(station = %station.id, wait_ms = rest.as_millis() as u64, "lottery login unanswered; logging in again after the hold");
                    tokio::time::sleep(rest).await;
                }
                Err(e) => return Err(err(Stage::NotSent, e.detail)),
                Ok(a) => return Ok(a),
            }
        }
    }

    /// One login request; `Stage::Unknown` when its answer never came or could not be read.
    async fn login_once(&self, station: &Station, journal_id: u64) -> Result<Answer, BackendError> {
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
            .map_err(|e| err(e.stage, format!("station {} login: {}", station.id, e.detail)))?;
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
