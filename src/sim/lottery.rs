//! The lottery backend simulator: lottery-redemption.txt served over HTTPS with sessions, tickets, serial stations and faults.
//!
//! What it checks, and the `ret` it answers when a check fails (codes from section 5):
//! - envelope: `app_key` missing **18** / wrong **19**; `v` missing **4** / not 1.0 **5**; `timestamp`
//!   missing **7** / more than 30 minutes off Beijing time **8**; `sign` missing **11**; `sign_method` not
//!   MD5/SHA-1 or a wrong signature **12**; `param_json` not a JSON object **13**
//! - session: `access_token` missing **16**; expired **27**; unknown **28**; superseded by a later login of
//!   the same station **1021**
//! - login: unknown station **1030**; wrong clerk **1006**; wrong password **1007**; a serial number other than
//!   the one bound at the first login **1011**
//! - one request at a time per station (section 7), a login included: a second concurrent request on a busy
//!   station answers **1005**, counts in `overlaps` and is recorded in `violations`. A request keeps its
//!   station busy until the simulator is done with it, even when the client gave up waiting (the work
//!   runs in its own task, like a real host that does not notice a closed connection)
//! - thirdAward: missing fields **1003**; type other than 1701 **1004**; unknown ticket **1303**; losing
//!   ticket **1305** and over the redemption limit **1304** (both `success=false` with ticket data);
//!   already paid **1307** with `transacIdOrg`, `awardStation`, `awardTime` (our own earlier payment when the
//!   `transacId` is the same: that is how a resend learns it was paid); a `transacId` reused for another
//!   ticket **10030** (and a violation); otherwise the ticket is paid once: **1301**. With
//!   [`LotterySim::answer_resends_with`], any `transacId` that reached the host before answers **15** or
//!   **10030** instead (the strict reading: the resend learns nothing)
//! - getPrize of a ticket never redeemed: **3202**; password with the wrong old one: **10008**
//! - report/award (8.7.4) with `00000` for gameNo or batchNo: **13** (since v1.0 it cannot query all)
//!
//! awardSummary / awardDetail answer from the simulator's own payments of the asking station on the asked
//! Beijing-time range. awardDetail rows are exactly the document's: gameNo, batchNo, packNo, ticketNo,
//! transacId, time (no prize). awardSummary takes `00000`/`00000` (unless
//! [`LotterySim::refuse_summary_for_all`], then **13**) or one game and batch. Tests plant differences with
//! [`LotterySim::plant_remote_award`], [`LotterySim::hide_from_reports`] and [`LotterySim::report_prize`].
//!
//! Faults ([`Fault`]), on `proxy/validate/thirdAward` by [`LotterySim::push_fault`] or on any path by
//! [`LotterySim::push_fault_on`]: `Http500` and `Reset` do not apply the request; `DropAfterCommit` and
//! `Garbage` do; `Delay` holds the station busy for its duration and then applies the request.
//! [`LotterySim::set_slow_redeems`] delays a random share of redeems (seeded).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::{FixedOffset, NaiveDateTime, TimeZone};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use crate::backend::lottery::codes;
use crate::backend::lottery::sign::{self, SignMethod};
use crate::backend::lottery::wire;
use crate::money;

use super::faults::{Fault, FaultPlan};
use super::server::{serve_tls, DropConnection};

/// A station the simulated backend knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimStation {
    pub id: String,
    pub clerk: String,
    pub password: String,
    /// Bound at the first login when empty; else the only accepted `serialNo`.
    pub serial: String,
}

/// What a ticket is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketKind {
    Winning,
    Losing,
    /// A winner above the station's limit: must be redeemed elsewhere (1304).
    OverLimit,
    /// Already paid at another station before the simulation started (1307, someone else's transacId).
    RedeemedElsewhere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTicket {
    /// The scanned security bar code (what `barCode` carries).
    pub bar_code: String,
    pub game_no: String,
    pub game_name: String,
    pub pack_no: String,
    pub ticket_no: String,
    pub price_yuan: i64,
    pub level: i64,
    pub prize_yuan: i64,
    pub kind: TicketKind,
}

impl SimTicket {
    /// `game-pack-ticket`, as `ticketNo` is shown in thirdAward answers.
    pub fn display_no(&self) -> String {
        format!("{}-{}-{}", self.game_no, self.pack_no, self.ticket_no)
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub app_key: String,
    pub app_secret: String,
    pub stations: Vec<SimStation>,
    pub tickets: Vec<SimTicket>,
    /// The station shown for [`TicketKind::RedeemedElsewhere`] tickets.
    pub other_station: String,
}

/// The demo app key (the document's example) and secret; the demo profile's secret file holds the secret.
pub const DEMO_APP_KEY: &str = "aa75c0f6a4bf462ea006b2920034cf5b";
pub const DEMO_APP_SECRET: &str = "posgate-demo-lottery-app-secret";
/// Every demo station's clerk `0` password (the document's initial password).
pub const DEMO_PASSWORD: &str = "123456";
/// Demo stations `21010001` ..= `21010004`, serials `X1P4H1110200020<n>`.
pub const DEMO_STATIONS: u32 = 4;

impl SimConfig {
    /// The demo backend: [`DEMO_APP_KEY`] / [`DEMO_APP_SECRET`], [`DEMO_STATIONS`] stations, and tickets
    /// (game 00101 刮刮乐 "好运十倍", 10 yuan each):
    ///
    /// | bar codes | kind | prize |
    /// |---|---|---|
    /// | `GW00000001` ..= `GW00002000` | winning | 5, 10, 20, 50, 100, 500, 1000 yuan by number mod 7 |
    /// | `GL00000001` ..= `GL00000200` | losing | — |
    /// | `GO00000001` ..= `GO00000020` | over the limit | 20,000 yuan |
    /// | `GE00000001` ..= `GE00000020` | already redeemed at station 21019999 | 50 yuan |
    pub fn demo() -> Self {
        let stations = (1..=DEMO_STATIONS)
            .map(|n| SimStation { id: format!("2101{n:04}"), clerk: "0".into(), password: DEMO_PASSWORD.into(), serial: format!("X1P4H1110200020{n}") })
            .collect();
        let mut tickets = Vec::new();
        let mut add = |prefix: &str, n: u32, kind: TicketKind, prize: i64| {
            tickets.push(SimTicket {
                bar_code: format!("{prefix}{n:08}"),
                game_no: "00101".into(),
                game_name: "好运十倍".into(),
                pack_no: format!("{:05}", n / 100 + if prefix == "GW" { 0 } else { 500 }),
                ticket_no: format!("{prefix}{:03}", n % 100),
                price_yuan: 10,
                level: if prize == 0 { 0 } else { 1 + (n % 7) as i64 },
                prize_yuan: prize,
                kind,
            })
        };
        const PRIZES: [i64; 7] = [5, 10, 20, 50, 100, 500, 1000];
        for n in 1..=2000 {
            add("GW", n, TicketKind::Winning, PRIZES[(n % 7) as usize]);
        }
        for n in 1..=200 {
            add("GL", n, TicketKind::Losing, 0);
        }
        for n in 1..=20 {
            add("GO", n, TicketKind::OverLimit, 20_000);
        }
        for n in 1..=20 {
            add("GE", n, TicketKind::RedeemedElsewhere, 50);
        }
        SimConfig { app_key: DEMO_APP_KEY.into(), app_secret: DEMO_APP_SECRET.into(), stations, tickets, other_station: "21019999".into() }
    }
}

/// One payment (a ticket paid by a station), as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPayment {
    pub transac_id: String,
    pub station: String,
    pub bar_code: String,
    pub ticket_no: String,
    pub game_no: String,
    pub pack_no: String,
    pub level: i64,
    pub prize_fen: i64,
    /// Beijing time `YYYY-MM-DD HH:MM:SS`.
    pub time: String,
    pub user_id: String,
    /// Planted by a test (a payment only the backend knows of).
    pub planted: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SimSnapshot {
    /// Every payment, in order (planted ones flagged).
    pub payments: Vec<SimPayment>,
    pub violations: Vec<String>,
    /// Requests that arrived on a station while it was still working on another (must stay 0).
    pub overlaps: u64,
    /// Requests being handled at once, at most (all stations).
    pub max_in_flight: usize,
    pub requests: u64,
    /// Requests per path that passed the envelope checks (signature, session).
    pub paths: BTreeMap<String, u64>,
    pub logins: u64,
    /// thirdAward requests that reached processing.
    pub redeem_attempts: u64,
    /// station -> (tickets, amount in fen) since its last resetCount.
    pub counts: BTreeMap<String, (i64, i64)>,
    /// station -> current password.
    pub passwords: BTreeMap<String, String>,
}

impl SimSnapshot {
    /// How many times a bar code was paid (0 or 1 when all is well).
    pub fn times_paid(&self, bar_code: &str) -> usize {
        self.payments.iter().filter(|p| p.bar_code == bar_code && !p.planted).count()
    }

    /// station -> (tickets, prize fen) of every payment (not planted), never reset.
    pub fn paid_by_station(&self) -> BTreeMap<String, (i64, i64)> {
        let mut m: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for p in self.payments.iter().filter(|p| !p.planted) {
            let e = m.entry(p.station.clone()).or_default();
            e.0 += 1;
            e.1 += p.prize_fen;
        }
        m
    }
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, String>,
    current: HashMap<String, String>,
    expired: HashSet<String>,
    superseded: HashSet<String>,
    serials: HashMap<String, String>,
    passwords: HashMap<String, String>,
    busy: HashSet<String>,
    in_flight: usize,
    max_in_flight: usize,
    payments: Vec<SimPayment>,
    by_bar: HashMap<String, usize>,
    by_transac: HashMap<String, usize>,
    counts: HashMap<String, (i64, i64)>,
    balances: HashMap<String, i64>,
    violations: Vec<String>,
    overlaps: u64,
    /// Every transacId a thirdAward carried that reached processing.
    seen_transac: HashSet<String>,
    /// `Some("15")` / `Some("10030")`: the answer to a thirdAward whose transacId was seen before.
    resend_answer: Option<String>,
    refuse_summary_all: bool,
    paths: BTreeMap<String, u64>,
    requests: u64,
    logins: u64,
    redeem_attempts: u64,
    hidden: HashSet<String>,
    reported_prize: HashMap<String, i64>,
}

/// The simulated lottery backend. Share it as `Arc<LotterySim>`.
pub struct LotterySim {
    cfg: SimConfig,
    tickets: HashMap<String, SimTicket>,
    state: Mutex<State>,
    faults: FaultPlan,
    /// (per mille of redeems, delay, rng): answers slower than a client's timeout, at random.
    slow: Mutex<Option<(u32, std::time::Duration, rand::rngs::StdRng)>>,
    /// Faults for the redeems of one bar code, in order.
    ticket_faults: Mutex<Vec<(String, Fault)>>,
}

/// The production batch (生产批次) of every simulated ticket.
pub const SIM_BATCH: &str = "00001";

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| chrono::Offset::fix(&chrono::Utc))
}

/// The simulated backend's own wall clock (it is the far side, not the engine).
#[allow(clippy::disallowed_methods)]
fn now_text() -> String {
    chrono::Utc::now().with_timezone(&beijing()).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// One answer: success, ret, optional detail for msg, content.
struct Ans {
    success: bool,
    ret: String,
    detail: Option<String>,
    content: Value,
}

impl Ans {
    fn ok(ret: &str, content: Value) -> Self {
        Ans { success: true, ret: ret.into(), detail: None, content }
    }
    fn fail(ret: &str, detail: impl Into<String>) -> Self {
        Ans { success: false, ret: ret.into(), detail: Some(detail.into()), content: json!({}) }
    }
    fn to_json(&self) -> String {
        let (zh, _, _) = codes::lookup(&self.ret);
        let msg = match &self.detail {
            Some(d) => format!("{zh} ({d})"),
            None => zh.to_string(),
        };
        json!({"success": self.success, "ret": self.ret, "msg": msg, "content": self.content}).to_string()
    }
}

fn text(m: &Map<String, Value>, k: &str) -> String {
    m.get(k).and_then(wire::text_of).unwrap_or_default()
}

/// Marks a station busy for the life of one request.
struct Busy<'a> {
    sim: &'a LotterySim,
    station: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut st = self.sim.lock();
        st.busy.remove(&self.station);
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

impl LotterySim {
    pub fn new(cfg: SimConfig) -> Self {
        let tickets = cfg.tickets.iter().map(|t| (t.bar_code.clone(), t.clone())).collect();
        let mut st = State::default();
        for s in &cfg.stations {
            st.passwords.insert(s.id.clone(), s.password.clone());
            if !s.serial.is_empty() {
                st.serials.insert(s.id.clone(), s.serial.clone());
            }
            st.balances.insert(s.id.clone(), 1_000_000);
        }
        LotterySim { cfg, tickets, state: Mutex::new(st), faults: FaultPlan::default(), slow: Mutex::new(None), ticket_faults: Mutex::new(Vec::new()) }
    }

    pub fn demo() -> Self {
        Self::new(SimConfig::demo())
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a fault for the next redeem (thirdAward).
    pub fn push_fault(&self, fault: Fault) {
        self.faults.push(fault);
    }
    /// Queue a fault for the next request to one path (`proxy/station/login`, `migt/account/awardDetail`, ...).
    pub fn push_fault_on(&self, path: &str, fault: Fault) {
        self.faults.push_on(path, fault);
    }
    /// Fault `rate_per_mille` of redeems at random, reproducibly from `seed`; 0 turns it off.
    pub fn set_random_faults(&self, rate_per_mille: u32, seed: u64) {
        self.faults.set_random(rate_per_mille, seed);
    }
    pub fn clear_faults(&self) {
        self.faults.clear();
        self.set_slow_redeems(0, std::time::Duration::ZERO, 0);
    }
    /// Queue a fault for the next redeem of one bar code only (other tickets are not touched).
    pub fn push_fault_for_ticket(&self, bar_code: &str, fault: Fault) {
        self.ticket_faults.lock().unwrap_or_else(|p| p.into_inner()).push((bar_code.to_string(), fault));
    }
    /// Delay `per_mille` of redeems by `delay` (still applying them), reproducibly from `seed`; 0 turns it off.
    pub fn set_slow_redeems(&self, per_mille: u32, delay: std::time::Duration, seed: u64) {
        use rand::SeedableRng;
        *self.slow.lock().unwrap_or_else(|p| p.into_inner()) = (per_mille > 0).then(|| (per_mille.min(1000), delay, rand::rngs::StdRng::seed_from_u64(seed)));
    }
    fn slow_draw(&self) -> Option<std::time::Duration> {
        use rand::Rng;
        let mut s = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, delay, rng) = s.as_mut()?;
        (rng.gen_range(0..1000) < *rate).then_some(*delay)
    }
    /// Answer a thirdAward whose `transacId` reached the host before with `ret` (`"15"` or `"10030"`),
    /// whatever became of it; `None`: the lenient default (1307 with `transacIdOrg`).
    pub fn answer_resends_with(&self, ret: Option<&str>) {
        self.lock().resend_answer = ret.map(str::to_string);
    }
    /// Refuse awardSummary for `00000`/`00000` with 13 (the v0.8 history line: one batch at a time).
    pub fn refuse_summary_for_all(&self, refuse: bool) {
        self.lock().refuse_summary_all = refuse;
    }

    /// Expire every current token (their next use answers 27).
    pub fn expire_tokens(&self) {
        let mut st = self.lock();
        let cur: Vec<String> = st.current.values().cloned().collect();
        st.expired.extend(cur);
    }

    /// Log a station in from "another program" (its current token then answers 1021).
    pub fn log_in_elsewhere(&self, station: &str) {
        let mut st = self.lock();
        if let Some(old) = st.current.remove(station) {
            st.superseded.insert(old);
        }
    }

    /// Plant a payment only the backend knows of (reconciliation: "missing locally").
    pub fn plant_remote_award(&self, station: &str, transac_id: &str, ticket_no: &str, prize_fen: i64) {
        let mut st = self.lock();
        st.payments.push(SimPayment {
            transac_id: transac_id.into(),
            station: station.into(),
            bar_code: String::new(),
            ticket_no: ticket_no.into(),
            game_no: "00101".into(),
            pack_no: "99999".into(),
            level: 1,
            prize_fen,
            time: now_text(),
            user_id: String::new(),
            planted: true,
        });
    }

    /// Leave a payment out of awardSummary / awardDetail (reconciliation: "missing remotely").
    pub fn hide_from_reports(&self, transac_id: &str) {
        self.lock().hidden.insert(transac_id.into());
    }

    /// Count another prize for a payment in awardSummary (reconciliation: the amounts differ).
    pub fn report_prize(&self, transac_id: &str, prize_fen: i64) {
        self.lock().reported_prize.insert(transac_id.into(), prize_fen);
    }

    pub fn state_snapshot(&self) -> SimSnapshot {
        let st = self.lock();
        SimSnapshot {
            payments: st.payments.clone(),
            violations: st.violations.clone(),
            overlaps: st.overlaps,
            max_in_flight: st.max_in_flight,
            requests: st.requests,
            paths: st.paths.clone(),
            logins: st.logins,
            redeem_attempts: st.redeem_attempts,
            counts: st.counts.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            passwords: st.passwords.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// Serve HTTPS on `listener` until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, tls: tokio_rustls::TlsAcceptor, shutdown: impl Future<Output = ()>) {
        let sim = self;
        let handler = Arc::new(move |req: Request<Incoming>| {
            let sim = sim.clone();
            async move { sim.handle(req).await }
        });
        serve_tls(listener, tls, shutdown, handler).await;
    }

    fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
        super::server::reply(status, content_type, body)
    }

    fn json(a: &Ans) -> Result<Response<Full<Bytes>>, DropConnection> {
        Ok(Self::reply(200, "application/json; charset=UTF-8", a.to_json()))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, DropConnection> {
        if req.method() != hyper::Method::POST {
            return Ok(Self::reply(405, "text/plain", "only POST".into()));
        }
        let path = req.uri().path().trim_start_matches('/').to_string();
        let known = wire::op_by_path(&path).is_some() || path == wire::AWARD_SUMMARY || path == wire::AWARD_DETAIL;
        if !known {
            return Ok(Self::reply(404, "text/plain", format!("no such path /{path}")));
        }
        let ct = req.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = req.into_body().collect().await.map_err(|_| DropConnection)?.to_bytes();
        self.lock().requests += 1;
        let pairs = match wire::decode_body(&ct, &body) {
            Ok(p) => p,
            Err(e) => return Self::json(&Ans::fail("13", e)),
        };
        let (params, station) = match self.check_envelope(&path, &pairs) {
            Ok(x) => x,
            Err(a) => return Self::json(&a),
        };
        *self.lock().paths.entry(path.clone()).or_default() += 1;
        // The host works on a request to its end whether or not the client still waits for the answer.
        let sim = self.clone();
        tokio::spawn(async move { sim.work(path, station, params).await }).await.unwrap_or(Err(DropConnection))
    }

    async fn work(&self, path: String, station: String, params: Map<String, Value>) -> Result<Response<Full<Bytes>>, DropConnection> {
        // Section 7: one request at a time per station.
        {
            let mut st = self.lock();
            if !st.busy.insert(station.clone()) {
                st.overlaps += 1;
                st.violations.push(format!("{path}: station {station} got a second request while busy"));
                return Self::json(&Ans::fail("1005", "station busy: requests are serial per station"));
            }
            st.in_flight += 1;
            st.max_in_flight = st.max_in_flight.max(st.in_flight);
        }
        let _busy = Busy { sim: self, station: station.clone() };
        let for_ticket = (path == wire::REDEEM_PATH)
            .then(|| {
                let bar = text(&params, "barCode");
                let mut q = self.ticket_faults.lock().unwrap_or_else(|p| p.into_inner());
                q.iter().position(|(b, _)| *b == bar).map(|i| q.remove(i).1)
            })
            .flatten();
        let fault = for_ticket.or_else(|| self.faults.take(&path, path == wire::REDEEM_PATH));
        let slow = if path == wire::REDEEM_PATH && fault.is_none() { self.slow_draw() } else { None };
        match (fault, slow) {
            (Some(Fault::Delay(d)), _) | (None, Some(d)) => tokio::time::sleep(d).await,
            (Some(Fault::Reset), _) => return Err(DropConnection),
            (Some(Fault::Http500), _) => return Ok(Self::reply(500, "text/plain", "simulated internal error".into())),
            _ => {}
        }
        let answer = self.process(&path, &station, &params);
        match fault {
            Some(Fault::DropAfterCommit) => Err(DropConnection),
            Some(Fault::Garbage) => Ok(Self::reply(200, "text/html", "<html><body>502 Bad Gateway (simulated garbage)</body></html>".into())),
            // A hostile host: the request was applied, the answer is whatever the test wrote.
            Some(Fault::AnswerWith(body)) => Ok(Self::reply(200, "application/json; charset=UTF-8", body.to_string())),
            _ => Self::json(&answer),
        }
    }

    /// Check the common parameters, the signature and the session; give the business parameters and the
    /// station the request is for.
    fn check_envelope(&self, path: &str, pairs: &[(String, String)]) -> Result<(Map<String, Value>, String), Ans> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match get("app_key") {
            None | Some("") => return Err(Ans::fail("18", "missing app_key")),
            Some(k) if k != self.cfg.app_key => return Err(Ans::fail("19", "unknown app_key")),
            _ => {}
        }
        match get("v") {
            None | Some("") => return Err(Ans::fail("4", "missing v")),
            Some("1.0") => {}
            Some(_) => return Err(Ans::fail("5", "only v=1.0")),
        }
        let ts = get("timestamp").filter(|s| !s.is_empty()).ok_or_else(|| Ans::fail("7", "missing timestamp"))?;
        let when = if ts.bytes().all(|b| b.is_ascii_digit()) {
            ts.parse::<i64>().ok().map(|n| if n > 1_000_000_000_000 { n / 1000 } else { n })
        } else {
            NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").ok().and_then(|t| beijing().from_local_datetime(&t).single()).map(|t| t.timestamp())
        };
        #[allow(clippy::disallowed_methods)]
        let now = chrono::Utc::now().timestamp();
        match when {
            Some(t) if (t - now).abs() <= 30 * 60 => {}
            _ => return Err(Ans::fail("8", "timestamp more than 30 minutes off")),
        }
        let sig = get("sign").filter(|s| !s.is_empty()).ok_or_else(|| Ans::fail("11", "missing sign"))?;
        let method = match get("sign_method") {
            None => SignMethod::Md5,
            Some(m) => SignMethod::parse(m).ok_or_else(|| Ans::fail("12", "sign_method must be MD5 or SHA-1"))?,
        };
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if !sign::verify(&refs, &self.cfg.app_secret, method, sig) {
            self.lock().violations.push(format!("{path}: bad signature"));
            return Err(Ans::fail("12", "signature does not verify"));
        }
        let params: Map<String, Value> = match get("param_json").map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(m))) => m,
            _ => return Err(Ans::fail("13", "param_json must be a JSON object")),
        };
        if path == wire::LOGIN_PATH {
            let station = text(&params, "stationId");
            return Ok((params, station));
        }
        let token = get("access_token").filter(|s| !s.is_empty()).ok_or_else(|| Ans::fail("16", "missing access_token"))?;
        let st = self.lock();
        if st.superseded.contains(token) {
            return Err(Ans::fail("1021", "this station logged in elsewhere"));
        }
        if st.expired.contains(token) {
            return Err(Ans::fail("27", "token expired"));
        }
        let station = st.tokens.get(token).cloned().ok_or_else(|| Ans::fail("28", "unknown token"))?;
        Ok((params, station))
    }

    fn process(&self, path: &str, station: &str, p: &Map<String, Value>) -> Ans {
        let mut st = self.lock();
        match path {
            wire::LOGIN_PATH => self.login(&mut st, p),
            wire::REDEEM_PATH => self.redeem(&mut st, station, p),
            "proxy/station/password" => {
                let cur = st.passwords.get(station).cloned().unwrap_or_default();
                let new = text(p, "new");
                if text(p, "old") != cur || new.is_empty() {
                    return Ans::fail("10008", "old password wrong or new one empty");
                }
                st.passwords.insert(station.into(), new);
                Ans::ok("10000", json!({}))
            }
            "proxy/validate/getCount" => {
                let (t, a) = st.counts.get(station).copied().unwrap_or((0, 0));
                Ans::ok("10000", json!({"tickets": t, "amount": a / 100}))
            }
            "proxy/validate/resetCount" => {
                st.counts.insert(station.into(), (0, 0));
                Ans::ok("10000", json!({}))
            }
            "proxy/validate/getPrize" => {
                let bar = text(p, "barCode");
                if let Some(&i) = st.by_bar.get(&bar) {
                    let pay = &st.payments[i];
                    return Ans::ok("10000", json!({"level": pay.level, "prize": pay.prize_fen / 100, "stationId": pay.station, "awardTime": pay.time}));
                }
                match self.tickets.get(&bar) {
                    Some(t) if t.kind == TicketKind::RedeemedElsewhere => Ans::ok(
                        "10000",
                        json!({"level": t.level, "prize": t.prize_yuan, "stationId": self.cfg.other_station, "awardTime": "2026-01-01 10:00:00"}),
                    ),
                    _ => Ans::fail("3202", "no redemption record"),
                }
            }
            "migt/report/award"
                if text(p, "gameNo").is_empty() || text(p, "batchNo").is_empty() || text(p, "gameNo") == "00000" || text(p, "batchNo") == "00000" =>
            {
                Ans::fail("13", "report/award queries one game and batch (gameNo, batchNo required; no 00000 since v1.0)")
            }
            "migt/report/sales" | "migt/report/balance" | "migt/report/trace" | "migt/report/award" => {
                Ans::ok("10000", json!({"report": self.html_report(&st, path, station, p)}))
            }
            wire::AWARD_SUMMARY | wire::AWARD_DETAIL => {
                let (begin, end) = (text(p, "beginTime"), text(p, "endTime"));
                if NaiveDateTime::parse_from_str(&begin, "%Y-%m-%d %H:%M:%S").is_err() || NaiveDateTime::parse_from_str(&end, "%Y-%m-%d %H:%M:%S").is_err() {
                    return Ans::fail(if path == wire::AWARD_SUMMARY { "10038" } else { "10039" }, "beginTime/endTime must be YYYY-MM-DD HH:MM:SS");
                }
                let (game, batch) = (text(p, "gameNo"), text(p, "batchNo"));
                let all = game == "00000" && batch == "00000";
                if path == wire::AWARD_SUMMARY && all && st.refuse_summary_all {
                    return Ans::fail("13", "awardSummary queries one game and batch at a time");
                }
                // Every simulated ticket is of batch 00001.
                let rows: Vec<(&SimPayment, i64)> = st
                    .payments
                    .iter()
                    .filter(|x| x.station == station && x.time >= begin && x.time <= end && !st.hidden.contains(&x.transac_id))
                    .filter(|x| all || (x.game_no == game && batch == SIM_BATCH))
                    .map(|x| (x, st.reported_prize.get(&x.transac_id).copied().unwrap_or(x.prize_fen)))
                    .collect();
                if path == wire::AWARD_SUMMARY {
                    let amount: i64 = rows.iter().map(|r| r.1).sum();
                    Ans::ok("10000", json!({"gameNo": game, "batchNo": batch, "tickets": rows.len().to_string(), "amount": money::fen_to_yuan(amount)}))
                } else {
                    // 8.8.2's fields exactly: no prize, no level.
                    let list: Vec<Value> =
                        rows.iter().map(|(x, _)| json!({"gameNo": x.game_no, "batchNo": SIM_BATCH, "packNo": x.pack_no, "ticketNo": x.ticket_no, "transacId": x.transac_id, "time": x.time})).collect();
                    Ans::ok("10000", Value::Array(list))
                }
            }
            _ => Ans::fail("1004", "unsupported"),
        }
    }

    fn login(&self, st: &mut State, p: &Map<String, Value>) -> Ans {
        let id = text(p, "stationId");
        let Some(s) = self.cfg.stations.iter().find(|s| s.id == id) else { return Ans::fail("1030", "unknown station") };
        if text(p, "clerkId") != s.clerk {
            return Ans::fail("1006", "no such clerk");
        }
        if st.passwords.get(&id).map(String::as_str) != Some(text(p, "password").as_str()) {
            return Ans::fail("1007", "wrong password");
        }
        if text(p, "type").is_empty() || text(p, "version").is_empty() {
            return Ans::fail("1003", "type and version are required");
        }
        let serial = text(p, "serialNo");
        match st.serials.get(&id) {
            Some(bound) if *bound != serial => return Ans::fail("1011", "serial number differs from the bound one"),
            Some(_) => {}
            None => {
                st.serials.insert(id.clone(), serial);
            }
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        if let Some(old) = st.current.insert(id.clone(), token.clone()) {
            st.superseded.insert(old);
        }
        st.tokens.insert(token.clone(), id);
        st.logins += 1;
        Ans::ok("10000", json!({"token": token, "serverTime": now_text()}))
    }

    fn redeem(&self, st: &mut State, station: &str, p: &Map<String, Value>) -> Ans {
        st.redeem_attempts += 1;
        let (user, ip, transac, bar) = (text(p, "userId"), text(p, "userRealIp"), text(p, "transacId"), text(p, "barCode"));
        if user.is_empty() || ip.is_empty() || transac.is_empty() || bar.is_empty() || transac.len() > 32 || user.len() > 32 {
            return Ans::fail("1003", "userId, userRealIp, transacId (at most 32) and barCode are required");
        }
        if !user.bytes().all(|b| b.is_ascii_alphanumeric()) || !transac.bytes().all(|b| b.is_ascii_alphanumeric()) {
            st.violations.push(format!("userId {user:?} / transacId {transac:?}: letters and digits only (8.4)"));
            return Ans::fail("1003", "userId and transacId are letters and digits only");
        }
        if text(p, "type") != "1701" {
            return Ans::fail("1004", "only type 1701 (station machine-read) is supported");
        }
        if !st.seen_transac.insert(transac.clone()) {
            if let Some(ret) = st.resend_answer.clone() {
                return Ans::fail(&ret, "this transacId reached the host before");
            }
        }
        let already = |pay: &SimPayment, t: &SimTicket| {
            Ans::ok(
                "1307",
                json!({"transacId": transac, "transacIdOrg": pay.transac_id, "ticketNo": t.display_no(), "gameName": t.game_name, "price": t.price_yuan,
                       "level": t.level, "prize": t.prize_yuan, "balance": 0, "awardStation": pay.station, "awardTime": pay.time, "soldCity": "北京",
                       "Amoutticket": 0, "AmountPrize": 0}),
            )
        };
        if let Some(&i) = st.by_transac.get(&transac) {
            let pay = st.payments[i].clone();
            if pay.bar_code != bar {
                st.violations.push(format!("transacId {transac} reused for another ticket"));
                return Ans::fail("10030", "transacId already used for another ticket");
            }
        }
        let Some(t) = self.tickets.get(&bar) else { return Ans::fail("1303", "ticket unknown here") };
        let ticket_data = json!({"transacId": transac, "ticketNo": t.display_no(), "gameName": t.game_name, "price": t.price_yuan});
        match t.kind {
            TicketKind::Losing => return Ans { success: false, ret: "1305".into(), detail: None, content: ticket_data },
            TicketKind::OverLimit => return Ans { success: false, ret: "1304".into(), detail: None, content: ticket_data },
            TicketKind::RedeemedElsewhere => {
                let pay = SimPayment {
                    transac_id: format!("99{}", &bar[bar.len().saturating_sub(20)..]),
                    station: self.cfg.other_station.clone(),
                    bar_code: bar.clone(),
                    ticket_no: t.ticket_no.clone(),
                    game_no: t.game_no.clone(),
                    pack_no: t.pack_no.clone(),
                    level: t.level,
                    prize_fen: t.prize_yuan * 100,
                    time: "2026-01-01 10:00:00".into(),
                    user_id: String::new(),
                    planted: false,
                };
                return already(&pay, t);
            }
            TicketKind::Winning => {}
        }
        if let Some(&i) = st.by_bar.get(&bar) {
            let pay = st.payments[i].clone();
            return already(&pay, t);
        }
        let prize_fen = t.prize_yuan * 100;
        let pay = SimPayment {
            transac_id: transac.clone(),
            station: station.into(),
            bar_code: bar.clone(),
            ticket_no: t.ticket_no.clone(),
            game_no: t.game_no.clone(),
            pack_no: t.pack_no.clone(),
            level: t.level,
            prize_fen,
            time: now_text(),
            user_id: user,
            planted: false,
        };
        st.payments.push(pay);
        let i = st.payments.len() - 1;
        st.by_bar.insert(bar, i);
        st.by_transac.insert(transac.clone(), i);
        let c = st.counts.entry(station.into()).or_insert((0, 0));
        c.0 += 1;
        c.1 += prize_fen;
        let counts = *c;
        let bal = st.balances.entry(station.into()).or_insert(0);
        *bal += prize_fen;
        let balance = *bal as f64 / 100.0;
        Ans::ok(
            "1301",
            json!({"transacId": transac, "ticketNo": t.display_no(), "gameName": t.game_name, "price": t.price_yuan, "level": t.level, "prize": t.prize_yuan,
                   "balance": balance, "soldCity": "北京", "amountTicket": counts.0, "amountPrize": counts.1 / 100}),
        )
    }

    fn html_report(&self, st: &State, path: &str, station: &str, p: &Map<String, Value>) -> String {
        let title = match path {
            "migt/report/sales" => "进销存查询",
            "migt/report/balance" => "账户查询",
            "migt/report/trace" => "彩票追踪查询",
            _ => "兑奖明细记录查询",
        };
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let mut rows = String::new();
        match path {
            "migt/report/balance" => {
                let b = st.balances.get(station).copied().unwrap_or(0);
                rows.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", esc(station), money::fen_to_yuan(b)));
            }
            "migt/report/trace" => {
                let bar = text(p, "barCode");
                let state = if st.by_bar.contains_key(&bar) {
                    "已兑奖"
                } else if self.tickets.contains_key(&bar) {
                    "已入站"
                } else {
                    "未知"
                };
                rows.push_str(&format!("<tr><td>{}</td><td>{state}</td></tr>", esc(&bar)));
            }
            _ => {
                for x in st.payments.iter().filter(|x| x.station == station) {
                    rows.push_str(&format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&x.time),
                        esc(&x.ticket_no),
                        x.level,
                        money::fen_to_yuan(x.prize_fen)
                    ));
                }
            }
        }
        format!("<html><body><h3>{title} {}</h3><table>{rows}</table></body></html>", esc(station))
    }
}

impl std::fmt::Debug for LotterySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LotterySim").field("stations", &self.cfg.stations.len()).field("tickets", &self.cfg.tickets.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
