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
//! [`LotterySim::set_random_drops`] loses the answers of a share of ALL requests (login and reports included)
//! after applying them. [`LotterySim::ledger`] shows what the host paid and refused, for tests to check a client against.
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

mod host;
mod ledger;

pub use ledger::SimLedger;

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
    /// Requests refused for a bad signature (12).
    bad_signs: u64,
    /// Requests refused for a timestamp more than 30 minutes off (8).
    stale_timestamps: u64,
    /// Requests refused for a superseded (1021) or expired (27) token.
    stale_tokens: u64,
    /// thirdAwards refused because their transacId was used for another ticket (10030).
    transac_reused: u64,
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
    /// Apply `rate_per_mille` of ALL requests that pass the envelope checks (login, redeem, queries,
    /// password, counts, reports, awardSummary/awardDetail) and then lose their answers, reproducibly
    /// from `seed`; 0 turns it off. Settable while the simulator serves.
    pub fn set_random_drops(&self, rate_per_mille: u32, seed: u64) {
        self.faults.set_random_drops(rate_per_mille, seed);
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
            _ => Ok(super::server::bend(fault, Self::json(&answer)?).await),
        }
    }
}

impl std::fmt::Debug for LotterySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LotterySim").field("stations", &self.cfg.stations.len()).field("tickets", &self.cfg.tickets.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
