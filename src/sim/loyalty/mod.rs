//! The loyalty backend simulator: loyalty-pos.txt served over HTTPS with real state, spec checks and faults.
//!
//! What it checks, and the code it answers when a check fails (codes from the spec's 附 1):
//! - every field the spec marks `!` is present (and non-empty, except settlement `cardNo` and
//!   `oriRegisterTraceNo`): **30** (format error); malformed numbers/amounts/lists: **30**; negative: **13**
//! - `storeNo` unknown: **03**; `terminalNo` unknown: **97**; terminal registered to another store: **58**
//! - a terminal that has not checked in (or has settled its current batch since): **77**; a request whose
//!   `batchNo` is not the terminal's current batch: **77** (sign on again), not applied. Every check-in
//!   opens a NEW batch, even when the last one is still open (that one stays open for reversals and
//!   settlement), so a client that lost a check-in answer and keeps its old batch is told 77, as a
//!   strict real host does
//! - a `traceNo` already used in the batch (by any request the host looked at, declined ones too):
//!   **94** (duplicate transmission), not applied, counted ([`LoyaltySim::traces_reused`]) and recorded
//!   in `violations`; an original arriving after its own reversal (remembered from a "never arrived"
//!   reversal): **12**
//! - unknown card: **14**; inactive card: **15**; missing or wrong PIN: **55**; a PIN block that does not
//!   decrypt to a format-0 block under the terminal's PIN key: **99**; balance too low: **51**
//! - original not found (cancel, refund, refund-cancel): **25**; original in the wrong state (already
//!   voided, refunded, reversed, other card, other time, settled batch for a void): **22**
//! - unknown ticket id: **56**; wrong verify code at activation: **55**
//!
//! A check-in or settlement that arrives while another request of the same terminal is in flight (the host
//! still working on it) is recorded in `violations`: the terminal must send either alone.
//!
//! Reversals (`…Reversal`) need no check-in and no PIN and are taken for ANY unsettled batch of the
//! terminal, not only the current one: the original applied and not yet reversed is undone (**00**); a
//! second reversal answers **12** and changes nothing; a reversal whose original never arrived (or was
//! declined) answers **25**, and a late original with that batch+trace is then refused (spec: 00, 25 and
//! 12 all mean "reversed"). A reversal that does not match its original (operation, card, amount) or
//! targets a settled batch answers **22** and is recorded as a violation.
//!
//! Settlement names a batch and is taken for any unsettled batch the terminal has opened (not only the
//! current one; **25** for a batch it never opened, **77** before its first check-in). It compares the
//! terminal's totals with the simulator's own, computed with the rules of specs/README.md, answers
//! `settleFlag` `"ss"` only when they are equal (`"ns"` otherwise) and closes the batch either way: later
//! transactions in it get 77 (settling the current batch means checking in again), reversals 22. A
//! second settlement of a settled batch is refused with **94** (duplicate transmission) and changes
//! nothing. The upload endpoint stores the lines it is sent.
//!
//! [`LoyaltySim::ledger`] shows, per terminal and batch, what the host applied and settled, for tests to
//! check a client against.
//!
//! Faults ([`Fault`]): `Http500` and `Reset` do not apply the request; `DropAfterCommit` and `Garbage` do.
//! [`LoyaltySim::set_random_drops`] loses the answers of a share of ALL requests (check-in and settlement
//! included) after applying them.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use crate::backend::loyalty::codes;
use crate::backend::loyalty::crypto::{self, Key16, WorkingKeys};
use crate::backend::loyalty::wire::{self, WireOp};
use crate::backend::OpClass;
use crate::money;

use super::faults::{Fault, FaultPlan};
use super::server::{serve_tls, DropConnection};

mod host;
mod ledger;

use host::{Answer, Form};
pub use ledger::{BatchLedger, LedgerRecord, SimLedger, TerminalLedger};

/// A ticket (券) a card holds: type 01 团购券, 02 兑换券, 03 代金券 (also listed as `vaucher` in card queries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTicket {
    pub id: u64,
    pub kind: String,
    pub name: String,
    pub amount_fen: i64,
    pub num: i64,
}

/// A member card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCard {
    pub card_no: String,
    /// The PIN digits; empty means the card needs no PIN.
    pub pin: String,
    pub balance_fen: i64,
    pub active: bool,
    pub mobile_no: String,
    pub tickets: Vec<SimTicket>,
}

impl SimCard {
    /// An active card with no tickets.
    pub fn new(card_no: &str, pin: &str, balance_fen: i64) -> Self {
        SimCard { card_no: card_no.into(), pin: pin.into(), balance_fen, active: true, mobile_no: "13800000000".into(), tickets: Vec::new() }
    }
}

/// A terminal the simulated backend knows, and its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTerminal {
    pub store: String,
    pub terminal: String,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The terminal master key shared with every terminal (the profile's `master_key` secret).
    pub master_key: Key16,
    pub cards: Vec<SimCard>,
    pub terminals: Vec<SimTerminal>,
    /// The protocol prefix in paths (`v1`).
    pub prefix: String,
    /// The batch number a terminal's first check-in opens.
    pub first_batch: u32,
    pub store_name: String,
    /// The code `send-verify-code` "texts" to every mobile number.
    pub verify_code: String,
}

/// The demo TMK (also in the demo profiles): a well-known test key, not a secret.
pub const DEMO_MASTER_KEY_HEX: &str = "0123456789ABCDEFFEDCBA9876543210";
/// The demo store and its terminals `10000001` ..= `10000064`.
pub const DEMO_STORE: &str = "100000000000001";

impl SimConfig {
    /// The demo backend: store [`DEMO_STORE`] with 64 terminals `10000001`..`10000064`, TMK
    /// [`DEMO_MASTER_KEY_HEX`], verify code `123456`, and these cards:
    ///
    /// | card | PIN | balance | notes |
    /// |---|---|---|---|
    /// | 6222021234567890123 | 123456 | 1000.00 | tickets: #1 团购券 10.00 ×5, #2 代金券 100.00 ×10 |
    /// | 6222021234567890131 | 654321 | 50.00 | |
    /// | 6222020000000000016 | (none) | 200.00 | no PIN needed |
    /// | 6222020000000000008 | (none) | 100,000,000.00 | for benchmarks |
    /// | 6222029999999999997 | 111111 | 0.00 | not yet activated (card-activate it) |
    pub fn demo() -> Self {
        let mut rich = SimCard::new("6222021234567890123", "123456", 100_000);
        rich.tickets = vec![
            SimTicket { id: 1, kind: "01".into(), name: "团购券".into(), amount_fen: 1_000, num: 5 },
            SimTicket { id: 2, kind: "03".into(), name: "代金券".into(), amount_fen: 10_000, num: 10 },
        ];
        let mut inactive = SimCard::new("6222029999999999997", "111111", 0);
        inactive.active = false;
        SimConfig {
            master_key: crypto::parse_key_hex(DEMO_MASTER_KEY_HEX).unwrap_or([0; 16]),
            cards: vec![
                rich,
                SimCard::new("6222021234567890131", "654321", 5_000),
                SimCard::new("6222020000000000016", "", 20_000),
                SimCard::new("6222020000000000008", "", 10_000_000_000),
                inactive,
            ],
            terminals: Self::terminals(DEMO_STORE, 10000001, 64),
            prefix: "v1".into(),
            first_batch: 1,
            store_name: "演示门店".into(),
            verify_code: "123456".into(),
        }
    }

    /// A backend with these keys and cards and the demo store's terminals, prefix `v1`, first batch 1.
    pub fn new(master_key: Key16, cards: Vec<SimCard>) -> Self {
        SimConfig { master_key, cards, ..Self::demo() }
    }

    /// `count` terminals of one store, numbered from `first` (8 digits).
    pub fn terminals(store: &str, first: u32, count: u32) -> Vec<SimTerminal> {
        (0..count).map(|i| SimTerminal { store: store.into(), terminal: format!("{:08}", first + i) }).collect()
    }
}

/// One applied transaction as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTx {
    pub op: String,
    pub terminal: String,
    pub batch: String,
    pub trace: String,
    pub amount_fen: i64,
    pub register_trace_no: Option<String>,
    pub reversed: bool,
    pub serial_no: String,
    pub card_no: String,
    /// A consume voided by a cancel, or a refund cancelled by a refund-cancel.
    pub voided: bool,
    /// A consume refunded.
    pub refunded: bool,
}

/// One settlement request as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSettlement {
    pub terminal: String,
    pub batch: String,
    pub flag: String,
    /// The terminal's totals (engine keys, amounts in fen).
    pub theirs: BTreeMap<String, i64>,
    /// The simulator's totals for the batch.
    pub ours: BTreeMap<String, i64>,
}

/// Everything a test may want to assert on.
#[derive(Debug, Clone)]
pub struct SimSnapshot {
    pub balances: BTreeMap<String, i64>,
    pub active: BTreeMap<String, bool>,
    pub transactions: Vec<SimTx>,
    pub violations: Vec<String>,
    /// (terminal, batch) -> totals with the engine's keys (counts, fen).
    pub totals: BTreeMap<(String, String), BTreeMap<String, i64>>,
    pub settlements: Vec<SimSettlement>,
    pub uploads: Vec<Vec<Value>>,
    /// terminal -> current batch (terminals that checked in at least once).
    pub batches: BTreeMap<String, String>,
    /// Remembered reversals whose original never arrived.
    pub tombstones: usize,
    /// Requests handled (faulted ones included).
    pub requests: u64,
}

impl SimSnapshot {
    /// Totals of one batch (all zero keys absent).
    pub fn batch_totals(&self, terminal: &str, batch: &str) -> BTreeMap<String, i64> {
        self.totals.get(&(terminal.to_string(), batch.to_string())).cloned().unwrap_or_default()
    }
}

struct Term {
    store: String,
    /// The current batch (the one the last check-in opened).
    batch: u32,
    /// `false` until the first check-in.
    opened: bool,
    /// The current batch is settled: refuses work until the next check-in opens the next batch.
    closed: bool,
    keys: Option<WorkingKeys>,
    /// Check-ins applied (answered or not).
    checkins: u64,
    /// Every batch a check-in opened.
    batches: BTreeSet<u32>,
}

struct Tx {
    view: SimTx,
    trans_time: String,
    cash_fen: i64,
    original: Option<usize>,
    tickets: Vec<(u64, i64)>,
}

type Key3 = (String, String, String);

struct State {
    cards: HashMap<String, SimCard>,
    terms: HashMap<String, Term>,
    stores: HashSet<String>,
    txs: Vec<Tx>,
    applied: HashMap<Key3, usize>,
    seen: HashSet<Key3>,
    tombstones: HashSet<Key3>,
    by_serial: HashMap<String, usize>,
    violations: Vec<String>,
    settlements: BTreeMap<(String, String), SimSettlement>,
    uploads: Vec<Vec<Value>>,
    verify_codes: HashMap<String, String>,
    next_serial: u64,
    requests: u64,
    /// Requests refused because their trace was used before in the batch.
    reused: u64,
    /// Canned refusals for coming requests: (endpoint, status), answered without applying anything.
    refusals: Vec<(String, &'static str)>,
    /// Transactions and inquiries answered 77 (not checked in, or not in the current batch).
    declined_77: u64,
    /// (terminal, batch) -> settlements refused because the batch was settled already.
    settle_refused: BTreeMap<(String, String), u64>,
    /// terminal -> requests of it the host is working on now (arrived, not yet answered or abandoned).
    in_flight: HashMap<String, u32>,
}

/// Counts one request as in flight at its terminal until the host is done with it (answered, or the
/// client closed the connection and the server dropped the work).
struct InFlight<'a> {
    sim: &'a LoyaltySim,
    terminal: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = State::lock(&self.sim.state);
        if let Some(n) = st.in_flight.get_mut(&self.terminal) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The simulated loyalty backend. Share it as `Arc<LoyaltySim>`: `serve` runs on one clone while tests
/// inject faults and read snapshots through others.
pub struct LoyaltySim {
    cfg: SimConfig,
    state: Mutex<State>,
    faults: FaultPlan,
}

impl LoyaltySim {
    pub fn new(cfg: SimConfig) -> Self {
        let cards = cfg.cards.iter().map(|c| (c.card_no.clone(), c.clone())).collect();
        let terms = cfg
            .terminals
            .iter()
            .map(|t| {
                let term = Term {
                    store: t.store.clone(),
                    batch: cfg.first_batch.max(1),
                    opened: false,
                    closed: false,
                    keys: None,
                    checkins: 0,
                    batches: BTreeSet::new(),
                };
                (t.terminal.clone(), term)
            })
            .collect();
        let stores = cfg.terminals.iter().map(|t| t.store.clone()).collect();
        LoyaltySim {
            state: Mutex::new(State {
                cards,
                terms,
                stores,
                txs: Vec::new(),
                applied: HashMap::new(),
                seen: HashSet::new(),
                tombstones: HashSet::new(),
                by_serial: HashMap::new(),
                violations: Vec::new(),
                settlements: BTreeMap::new(),
                uploads: Vec::new(),
                verify_codes: HashMap::new(),
                next_serial: 10_000_000_000_000,
                requests: 0,
                reused: 0,
                refusals: Vec::new(),
                declined_77: 0,
                settle_refused: BTreeMap::new(),
                in_flight: HashMap::new(),
            }),
            cfg,
            faults: FaultPlan::default(),
        }
    }

    /// The simulator with [`SimConfig::demo`].
    pub fn demo() -> Self {
        Self::new(SimConfig::demo())
    }

    /// Queue a fault for the next financial request (consume, cancel, refunds, ticket consume, activation,
    /// and every reversal).
    pub fn push_fault(&self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Queue a fault for the next request to one endpoint, given as the path after the prefix
    /// (`jpos/terminal/checkin`, `jpos/trans/consumeReversal`, `jpos/trans/settle`, ...).
    pub fn push_fault_on(&self, endpoint: &str, fault: Fault) {
        self.faults.push_on(endpoint, fault);
    }

    /// Fault `rate_per_mille` of financial requests at random (uniformly among the five kinds, delays of
    /// 5..200 ms), reproducibly from `seed`. 0 turns random faults off.
    pub fn set_random_faults(&self, rate_per_mille: u32, seed: u64) {
        self.faults.set_random(rate_per_mille, seed);
    }

    /// Apply `rate_per_mille` of ALL requests (check-in, inquiries, financial requests, reversals,
    /// settlement, uploads) and then lose their answers, reproducibly from `seed`; 0 turns it off.
    /// Settable at any time, also while the simulator serves.
    pub fn set_random_drops(&self, rate_per_mille: u32, seed: u64) {
        self.faults.set_random_drops(rate_per_mille, seed);
    }

    /// Answer the next request to `endpoint` (path after the prefix, as for [`Self::push_fault_on`])
    /// with `status` and apply nothing: a host that says something this one would not (for example 77
    /// to a reversal).
    pub fn push_refusal_on(&self, endpoint: &str, status: &'static str) {
        State::lock(&self.state).refusals.push((endpoint.trim_matches('/').to_string(), status));
    }

    /// The host moves a terminal to a new batch by itself (as after a check-in from elsewhere), keeping
    /// its working keys: the daemon learns of it only from the 77 its next request gets.
    pub fn move_to_new_batch(&self, terminal: &str) {
        let mut st = State::lock(&self.state);
        if let Some(t) = st.terms.get_mut(terminal) {
            t.batch = if t.batch >= 999_999 { 1 } else { t.batch + 1 };
            t.closed = false;
            t.opened = true;
            t.batches.insert(t.batch);
        }
    }

    /// Forget queued faults and stop random ones (lost answers included).
    pub fn clear_faults(&self) {
        self.faults.clear();
    }

    pub fn state_snapshot(&self) -> SimSnapshot {
        let st = State::lock(&self.state);
        let mut totals = BTreeMap::new();
        let batches: HashSet<(String, String)> = st.txs.iter().map(|t| (t.view.terminal.clone(), t.view.batch.clone())).collect();
        for (t, b) in batches {
            let m = st.totals(&t, &b);
            totals.insert((t, b), m);
        }
        SimSnapshot {
            balances: st.cards.iter().map(|(k, c)| (k.clone(), c.balance_fen)).collect(),
            active: st.cards.iter().map(|(k, c)| (k.clone(), c.active)).collect(),
            transactions: st.txs.iter().map(|t| t.view.clone()).collect(),
            violations: st.violations.clone(),
            totals,
            settlements: st.settlements.values().cloned().collect(),
            uploads: st.uploads.clone(),
            batches: st.terms.iter().filter(|(_, t)| t.opened).map(|(k, t)| (k.clone(), format!("{:06}", t.batch))).collect(),
            tombstones: st.tombstones.len(),
            requests: st.requests,
        }
    }

    /// Consumes the host applied and did not reverse (voided or refunded ones included).
    pub fn applied_sales(&self) -> Vec<SimTx> {
        let st = State::lock(&self.state);
        st.txs.iter().map(|t| &t.view).filter(|v| v.op == "consume" && !v.reversed).cloned().collect()
    }

    /// Requests refused (94) because their trace was used before in their batch.
    pub fn traces_reused(&self) -> u64 {
        State::lock(&self.state).reused
    }

    /// Transactions and inquiries answered 77.
    pub fn declined_77(&self) -> u64 {
        State::lock(&self.state).declined_77
    }

    /// (terminal, batch) of every unsettled batch holding an applied, unreversed record.
    pub fn unsettled_batches_with_applied(&self) -> Vec<(String, String)> {
        self.ledger().unsettled_batches_with_applied()
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

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, DropConnection> {
        if req.method() != hyper::Method::POST {
            return Ok(Self::reply(405, "text/plain", "only POST".into()));
        }
        let path = req.uri().path().to_string();
        let prefix = format!("/{}/", self.cfg.prefix);
        let Some(rest) = path.strip_prefix(&prefix).map(str::to_string) else {
            return Ok(Self::reply(404, "text/plain", format!("no such path {path}")));
        };
        let body = req.into_body().collect().await.map_err(|_| DropConnection)?.to_bytes();
        if rest == wire::UPLOAD_PATH {
            let fault = self.faults.take(&rest, false);
            State::lock(&self.state).requests += 1;
            let answer = match serde_json::from_slice::<Vec<Value>>(&body) {
                Ok(lines) => {
                    State::lock(&self.state).uploads.push(lines);
                    Answer::ok(Vec::new())
                }
                Err(e) => Answer::fail("30", format!("upload must be a JSON array: {e}")),
            };
            return self.finish(fault, || answer).await;
        }
        let Some((w, reversal)) = wire::op_by_path(&rest) else {
            return Ok(Self::reply(404, "text/plain", format!("no such path {path}")));
        };
        let financial = reversal || matches!(w.spec.class, OpClass::Financial(_));
        let fault = self.faults.take(&rest, financial);
        let form: Form = wire::decode_form(&body).into_iter().collect();
        let terminal = form.get("terminalNo").cloned().unwrap_or_default();
        *State::lock(&self.state).in_flight.entry(terminal.clone()).or_insert(0) += 1;
        let _flight = InFlight { sim: self, terminal };
        let refusal = {
            let mut st = State::lock(&self.state);
            let at = st.refusals.iter().position(|(e, _)| *e == rest);
            at.map(|i| st.refusals.remove(i).1)
        };
        if let Some(code) = refusal {
            return self.finish(fault, || Answer::fail(code, "refused on purpose (test)")).await;
        }
        self.finish(fault, || self.process(w, reversal, &form)).await
    }

    /// Apply the fault around processing: some faults stop before `process`, others after it.
    async fn finish(&self, fault: Option<Fault>, process: impl FnOnce() -> Answer) -> Result<Response<Full<Bytes>>, DropConnection> {
        match fault {
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Reset) => {
                State::lock(&self.state).requests += 1;
                return Err(DropConnection);
            }
            Some(Fault::Http500) => {
                State::lock(&self.state).requests += 1;
                return Ok(Self::reply(500, "text/plain", "simulated internal error".into()));
            }
            _ => {}
        }
        let mut answer = process();
        if let Some(Fault::Huge(n)) = fault {
            answer.fields.retain(|(k, _)| *k != "advertisement");
            // Plain ASCII, which needs no escaping: the simulator spends no time making it.
            answer.fields.push(("advertisement", format!("\"{}\"", "x".repeat(n))));
        }
        match fault {
            Some(Fault::DropAfterCommit) => Err(DropConnection),
            Some(Fault::Garbage) => Ok(Self::reply(200, "text/html", "<html><body>502 Bad Gateway (simulated garbage)</body></html>".into())),
            Some(Fault::AnswerWith(body)) => Ok(Self::reply(200, "application/json; charset=UTF-8", body.to_string())),
            _ => Ok(super::server::bend(fault, Self::reply(200, "application/json; charset=UTF-8", answer.to_json())).await),
        }
    }
}

impl std::fmt::Debug for LoyaltySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoyaltySim").field("prefix", &self.cfg.prefix).field("terminals", &self.cfg.terminals.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
