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

/// One transaction the host applied, as the ledger shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecord {
    pub trace: String,
    pub op: String,
    pub amount_fen: i64,
    pub reversed: bool,
    /// The POS's own reference (`registerTraceNo`), when the request carried one.
    pub register_trace_no: Option<String>,
}

/// What the host holds of one batch of one terminal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchLedger {
    /// Applied transactions, in the order applied (reversed ones included, marked).
    pub records: Vec<LedgerRecord>,
    /// The terminal's current batch (the last check-in opened it).
    pub current: bool,
    pub settled: bool,
    /// The `settleFlag` the settlement was answered with.
    pub settle_flag: Option<String>,
    /// The totals the settlement claimed (engine keys, fen, zero keys left out).
    pub claimed: Option<BTreeMap<String, i64>>,
    /// The host's totals of what it applied and did not reverse (engine keys, fen, zero keys left out).
    pub applied: BTreeMap<String, i64>,
    /// Settled with claimed totals equal to the applied ones; `None` while unsettled.
    pub balanced: Option<bool>,
    /// Later settlements of this batch, refused with 94.
    pub settlements_refused: u64,
}

impl BatchLedger {
    /// Whether anything applied here still stands (a record not reversed): money moved in this
    /// batch, so it must be settled.
    pub fn has_applied(&self) -> bool {
        self.records.iter().any(|r| !r.reversed)
    }
}

/// What the host holds of one terminal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TerminalLedger {
    /// Check-ins applied (whether their answers arrived or not); each opened a batch.
    pub checkins: u64,
    pub current_batch: Option<String>,
    /// Batch number -> its ledger: every batch a check-in opened or a transaction named.
    pub batches: BTreeMap<String, BatchLedger>,
}

/// The host's books, per terminal and batch, for a test to check a client against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimLedger {
    pub terminals: BTreeMap<String, TerminalLedger>,
    /// Requests refused because their trace was used before in their batch.
    pub traces_reused: u64,
    /// Transactions and inquiries answered 77 (not checked in, or not in the current batch).
    pub declined_77: u64,
}

impl SimLedger {
    /// Consumes applied and not reversed, every terminal and batch (voided or refunded ones included:
    /// they were charged, and their void or refund is a transaction of its own).
    pub fn applied_sales(&self) -> Vec<(String, String, LedgerRecord)> {
        let mut out = Vec::new();
        for (t, tl) in &self.terminals {
            for (b, bl) in &tl.batches {
                for r in bl.records.iter().filter(|r| r.op == "consume" && !r.reversed) {
                    out.push((t.clone(), b.clone(), r.clone()));
                }
            }
        }
        out
    }

    /// (terminal, batch) of every batch holding an applied, unreversed record and not settled.
    pub fn unsettled_batches_with_applied(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (t, tl) in &self.terminals {
            for (b, bl) in &tl.batches {
                if !bl.settled && bl.has_applied() {
                    out.push((t.clone(), b.clone()));
                }
            }
        }
        out
    }

    /// (terminal, batch) of every settled batch whose settlement did not balance.
    pub fn unbalanced_settlements(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (t, tl) in &self.terminals {
            for (b, bl) in &tl.batches {
                if bl.balanced == Some(false) {
                    out.push((t.clone(), b.clone()));
                }
            }
        }
        out
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
}

/// The simulated loyalty backend. Share it as `Arc<LoyaltySim>`: `serve` runs on one clone while tests
/// inject faults and read snapshots through others.
pub struct LoyaltySim {
    cfg: SimConfig,
    state: Mutex<State>,
    faults: FaultPlan,
}

/// One answer: status, message and further fields as raw JSON text (amounts written as exact decimals).
struct Answer {
    code: &'static str,
    detail: Option<String>,
    fields: Vec<(&'static str, String)>,
}

fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn yuan(fen: i64) -> String {
    money::fen_to_yuan(fen)
}

/// The simulator stands for a remote system with its own clock; it is not the engine's.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> String {
    chrono::Utc::now().timestamp_millis().to_string()
}

impl Answer {
    fn ok(fields: Vec<(&'static str, String)>) -> Self {
        Answer { code: "00", detail: None, fields }
    }
    fn fail(code: &'static str, detail: impl Into<String>) -> Self {
        Answer { code, detail: Some(detail.into()), fields: Vec::new() }
    }
    fn to_json(&self) -> String {
        let (zh, _) = codes::lookup(self.code);
        let message = match &self.detail {
            Some(d) => format!("{zh} ({d})"),
            None => {
                if self.code == "00" {
                    "成功".to_string()
                } else {
                    zh.to_string()
                }
            }
        };
        let mut out = format!("{{\"status\":{},\"message\":{}", json_str(self.code), json_str(&message));
        for (k, v) in &self.fields {
            out.push_str(&format!(",{}:{}", json_str(k), v));
        }
        out.push('}');
        out
    }
}

type Form = HashMap<String, String>;

fn get<'a>(form: &'a Form, k: &str) -> &'a str {
    form.get(k).map(String::as_str).unwrap_or("")
}

fn six_digits(s: &str) -> Option<u32> {
    (s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn key3(t: &str, b: &str, tr: &str) -> Key3 {
    (t.to_string(), b.to_string(), tr.to_string())
}

fn add(m: &mut BTreeMap<String, i64>, k: &str, v: i64) {
    *m.entry(k.to_string()).or_insert(0) += v;
}

impl State {
    fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serial(&mut self) -> String {
        self.next_serial += 1;
        format!("{:014}", self.next_serial)
    }

    /// Record an applied transaction and return its index.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        op: &str,
        form: &Form,
        card: &str,
        amount_fen: i64,
        cash_fen: i64,
        original: Option<usize>,
        tickets: Vec<(u64, i64)>,
    ) -> (usize, String, String) {
        let serial = self.serial();
        let trans_time = now_ms();
        let view = SimTx {
            op: op.into(),
            terminal: get(form, "terminalNo").into(),
            batch: get(form, "batchNo").into(),
            trace: get(form, "traceNo").into(),
            amount_fen,
            register_trace_no: form.get("registerTraceNo").cloned(),
            reversed: false,
            serial_no: serial.clone(),
            card_no: card.into(),
            voided: false,
            refunded: false,
        };
        let k = key3(&view.terminal, &view.batch, &view.trace);
        self.txs.push(Tx { view, trans_time: trans_time.clone(), cash_fen, original, tickets });
        let i = self.txs.len() - 1;
        self.applied.insert(k, i);
        self.by_serial.insert(serial.clone(), i);
        (i, serial, trans_time)
    }

    /// The batch totals of specs/README.md over applied, unreversed transactions.
    fn totals(&self, terminal: &str, batch: &str) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for tx in self.txs.iter().map(|t| &t.view).filter(|v| v.terminal == terminal && v.batch == batch && !v.reversed) {
            let a = tx.amount_fen;
            match tx.op.as_str() {
                "consume" | "refund-cancel" => {
                    add(&mut m, "pointDebitCount", 1);
                    add(&mut m, "pointDebitAmount", a);
                }
                "ticket-consume" => {
                    add(&mut m, "ticketDebitCount", 1);
                    add(&mut m, "ticketDebitAmount", a);
                }
                "cancel" => {
                    add(&mut m, "pointCreditCount", 1);
                    add(&mut m, "pointCreditAmount", a);
                    add(&mut m, "cancelCount", 1);
                }
                "refund" => {
                    add(&mut m, "pointCreditCount", 1);
                    add(&mut m, "pointCreditAmount", a);
                    add(&mut m, "refundCount", 1);
                }
                "card-activate" => add(&mut m, "cardActiveCount", 1),
                _ => continue,
            }
            add(&mut m, "totalTransCount", 1);
        }
        m
    }

    fn balance_fields(&self, card: &str) -> Vec<(&'static str, String)> {
        let b = self.cards.get(card).map(|c| c.balance_fen).unwrap_or(0);
        vec![("pointBalance", yuan(b)), ("avaiablePointBalance", yuan(b.max(0)))]
    }
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

    /// The host's books per terminal and batch: applied records, settlement, claimed vs applied totals,
    /// check-ins; plus the refused reused traces and the 77 answers.
    pub fn ledger(&self) -> SimLedger {
        let st = State::lock(&self.state);
        let mut terminals: BTreeMap<String, TerminalLedger> = BTreeMap::new();
        for (name, t) in st.terms.iter().filter(|(_, t)| t.opened) {
            let tl = terminals.entry(name.clone()).or_default();
            tl.checkins = t.checkins;
            tl.current_batch = Some(format!("{:06}", t.batch));
            for b in &t.batches {
                tl.batches.entry(format!("{b:06}")).or_default();
            }
        }
        for tx in &st.txs {
            let v = &tx.view;
            let bl = terminals.entry(v.terminal.clone()).or_default().batches.entry(v.batch.clone()).or_default();
            bl.records.push(LedgerRecord {
                trace: v.trace.clone(),
                op: v.op.clone(),
                amount_fen: v.amount_fen,
                reversed: v.reversed,
                register_trace_no: v.register_trace_no.clone(),
            });
        }
        for (name, tl) in terminals.iter_mut() {
            let current = tl.current_batch.clone();
            for (b, bl) in tl.batches.iter_mut() {
                bl.current = current.as_deref() == Some(b.as_str());
                bl.applied = st.totals(name, b).into_iter().filter(|(_, v)| *v != 0).collect();
                let k = (name.clone(), b.clone());
                bl.settlements_refused = st.settle_refused.get(&k).copied().unwrap_or(0);
                if let Some(s) = st.settlements.get(&k) {
                    bl.settled = true;
                    bl.settle_flag = Some(s.flag.clone());
                    bl.claimed = Some(s.theirs.clone());
                    bl.balanced = Some(s.flag == "ss" && s.theirs == bl.applied);
                }
            }
        }
        SimLedger { terminals, traces_reused: st.reused, declined_77: st.declined_77 }
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
            _ => Ok(Self::reply(200, "application/json; charset=UTF-8", answer.to_json())),
        }
    }

    fn process(&self, w: &WireOp, reversal: bool, form: &Form) -> Answer {
        let mut st = State::lock(&self.state);
        st.requests += 1;
        let name = w.spec.name;
        for f in w.fields {
            let may_be_empty = (name == "settle" && f.name == "cardNo") || f.name == "oriRegisterTraceNo";
            match form.get(f.name) {
                None if f.required => return Answer::fail("30", format!("missing field {}", f.name)),
                Some(v) if f.required && v.is_empty() && !may_be_empty => return Answer::fail("30", format!("empty field {}", f.name)),
                _ => {}
            }
        }
        let store = get(form, "storeNo");
        let terminal = get(form, "terminalNo").to_string();
        match st.terms.get(&terminal) {
            Some(t) if t.store == store => {}
            Some(_) if st.stores.contains(store) => return Answer::fail("58", "terminal belongs to another store"),
            _ if !st.stores.contains(store) => return Answer::fail("03", "unknown store"),
            _ => return Answer::fail("97", "unknown terminal"),
        }
        match (name, reversal) {
            ("checkin", _) => self.checkin(&mut st, &terminal),
            ("settle", _) => self.settle(&mut st, &terminal, form),
            (_, true) => self.reverse(&mut st, name, &terminal, form),
            _ => self.transact(&mut st, name, &terminal, form),
        }
    }

    /// Every check-in opens a new batch (the first one `first_batch`); the previous batch, settled or
    /// not, stays as it was: open for reversals and its settlement, closed to new transactions.
    fn checkin(&self, st: &mut State, terminal: &str) -> Answer {
        let first = self.cfg.first_batch.max(1);
        let Some(t) = st.terms.get_mut(terminal) else { return Answer::fail("97", "unknown terminal") };
        if t.opened {
            t.batch = if t.batch >= 999_999 { 1 } else { t.batch + 1 };
        } else {
            t.batch = first;
        }
        t.closed = false;
        t.opened = true;
        t.checkins += 1;
        t.batches.insert(t.batch);
        let keys = WorkingKeys { pin: rand::random(), mac: Some(rand::random()) };
        let wk = crypto::wrap_working_key(&self.cfg.master_key, &keys);
        t.keys = Some(keys);
        Answer::ok(vec![
            ("transTime", now_ms()),
            ("batchNo", json_str(&format!("{:06}", t.batch))),
            ("storeName", json_str(&self.cfg.store_name)),
            ("workingKey", json_str(&wk)),
        ])
    }

    /// Settle one named batch of the terminal: any batch a check-in opened and nobody settled yet.
    fn settle(&self, st: &mut State, terminal: &str, form: &Form) -> Answer {
        let batch = get(form, "batchNo").to_string();
        let Some(number) = six_digits(&batch) else { return Answer::fail("30", "batchNo must be 6 digits") };
        let k = (terminal.to_string(), batch.clone());
        if let Some(s) = st.settlements.get(&k) {
            // The same settlement again (its answer was lost): the first answer again. Other totals for
            // a settled batch: refused.
            let same = wire::TOTALS.iter().all(|&(wire_name, key, is_amount)| {
                let text = form.get(wire_name).or_else(|| form.get(key)).map(String::as_str).unwrap_or("");
                let v = if is_amount { money::yuan_to_fen(text).ok() } else { text.trim().parse::<i64>().ok() };
                v == Some(s.theirs.get(key).copied().unwrap_or(0))
            });
            if same {
                let flag = s.flag.clone();
                return Answer::ok(vec![("settleFlag", json_str(&flag))]);
            }
            let detail = format!("batch {batch} was settled before ({}) with other totals", s.flag);
            *st.settle_refused.entry(k).or_insert(0) += 1;
            return Answer::fail("94", detail);
        }
        let Some(t) = st.terms.get(terminal) else { return Answer::fail("97", "unknown terminal") };
        if !t.opened {
            return Answer::fail("77", "terminal has not checked in");
        }
        if !t.batches.contains(&number) {
            return Answer::fail("25", format!("batch {batch} was never opened by this terminal"));
        }
        let mut theirs = BTreeMap::new();
        for &(wire_name, key, is_amount) in wire::TOTALS {
            let text = form.get(wire_name).or_else(|| form.get(key)).map(String::as_str).unwrap_or("");
            let v = if is_amount { money::yuan_to_fen(text).ok() } else { text.trim().parse::<i64>().ok() };
            match v {
                Some(v) => {
                    if v != 0 {
                        theirs.insert(key.to_string(), v);
                    }
                }
                None => return Answer::fail("30", format!("bad total {wire_name}")),
            }
        }
        let ours = st.totals(terminal, &batch);
        let ours_nz: BTreeMap<String, i64> = ours.into_iter().filter(|(_, v)| *v != 0).collect();
        let flag = if theirs == ours_nz { "ss" } else { "ns" };
        if let Some(t) = st.terms.get_mut(terminal).filter(|t| t.batch == number) {
            t.closed = true;
            t.keys = None;
        }
        st.settlements
            .insert((terminal.to_string(), batch.clone()), SimSettlement { terminal: terminal.to_string(), batch, flag: flag.into(), theirs, ours: ours_nz });
        Answer::ok(vec![("settleFlag", json_str(flag))])
    }

    fn reverse(&self, st: &mut State, name: &str, terminal: &str, form: &Form) -> Answer {
        let (batch, trace) = (get(form, "batchNo"), get(form, "traceNo"));
        if six_digits(batch).is_none() || six_digits(trace).is_none() {
            return Answer::fail("30", "batchNo and traceNo are 6 digits");
        }
        let k = key3(terminal, batch, trace);
        if st.settlements.contains_key(&(terminal.to_string(), batch.to_string())) {
            st.violations.push(format!("{name} reversal of {terminal}/{batch}/{trace} after the batch was settled"));
            return Answer::fail("22", "batch already settled");
        }
        let Some(&i) = st.applied.get(&k) else {
            if !st.seen.contains(&k) {
                st.tombstones.insert(k);
            }
            return Answer::fail("25", "original not found");
        };
        let tx = &st.txs[i];
        if tx.view.op != name {
            let msg = format!("{name} reversal of {terminal}/{batch}/{trace} which is a {}", tx.view.op);
            st.violations.push(msg);
            return Answer::fail("22", "reversal does not match the original operation");
        }
        if tx.view.reversed {
            return Answer::fail("12", "already reversed");
        }
        let mut mismatch = None;
        if get(form, "cardNo") != tx.view.card_no {
            mismatch = Some("card");
        }
        if name == "consume" && money::yuan_to_fen(get(form, "pointAmount")).ok() != Some(tx.view.amount_fen) {
            mismatch = Some("amount");
        }
        if name == "consume" && (tx.view.voided || tx.view.refunded) {
            mismatch = Some("state (already voided or refunded)");
        }
        if let Some(what) = mismatch {
            st.violations.push(format!("{name} reversal of {terminal}/{batch}/{trace}: {what} differs from the original"));
            return Answer::fail("22", format!("reversal {what} does not match the original"));
        }
        let (card, amount, original, tickets) = (tx.view.card_no.clone(), tx.view.amount_fen, tx.original, tx.tickets.clone());
        match name {
            "consume" => {
                if let Some(c) = st.cards.get_mut(&card) {
                    c.balance_fen += amount;
                }
            }
            "cancel" => {
                if let Some(c) = st.cards.get_mut(&card) {
                    c.balance_fen -= amount;
                }
                if let Some(o) = original {
                    st.txs[o].view.voided = false;
                }
            }
            "ticket-consume" => {
                if let Some(c) = st.cards.get_mut(&card) {
                    for (id, n) in tickets {
                        if let Some(t) = c.tickets.iter_mut().find(|t| t.id == id) {
                            t.num += n;
                        }
                    }
                }
            }
            _ => return Answer::fail("12", "no reversal for this operation"),
        }
        st.txs[i].view.reversed = true;
        Answer::ok(Vec::new())
    }

    fn transact(&self, st: &mut State, name: &str, terminal: &str, form: &Form) -> Answer {
        let Some(t) = st.terms.get(terminal) else { return Answer::fail("97", "unknown terminal") };
        let Some(keys) = t.keys.clone().filter(|_| !t.closed) else {
            st.declined_77 += 1;
            return Answer::fail("77", "terminal has not checked in");
        };
        let current = t.batch;
        let (batch, trace) = (get(form, "batchNo").to_string(), get(form, "traceNo").to_string());
        // send-verify-code may omit its batch; everything else must be in the current one. Outside
        // it, nothing is looked at or applied: the terminal must check in (and so learn the batch).
        if (!batch.is_empty() || name != "send-verify-code") && six_digits(&batch) != Some(current) {
            st.declined_77 += 1;
            return Answer::fail("77", format!("batch {batch} is not the current batch {current:06}: check in"));
        }
        if !trace.is_empty() {
            if six_digits(&trace).is_none() {
                return Answer::fail("30", "traceNo must be 6 digits");
            }
            let k = key3(terminal, &batch, &trace);
            if st.tombstones.contains(&k) {
                return Answer::fail("12", "this trace was reversed before it arrived");
            }
            if !st.seen.insert(k) {
                st.reused += 1;
                st.violations.push(format!("{name}: duplicate trace {terminal}/{batch}/{trace}"));
                return Answer::fail("94", "duplicate trace in this batch");
            }
        }
        let card_no = get(form, "cardNo").to_string();
        let needs_card = name != "send-verify-code";
        if needs_card && !st.cards.contains_key(&card_no) {
            return Answer::fail("14", "unknown card");
        }
        match name {
            "card-query" => {
                let c = &st.cards[&card_no];
                let vouchers: Vec<String> = c
                    .tickets
                    .iter()
                    .filter(|t| t.kind == "03")
                    .map(|t| format!("{{\"id\":{},\"amount\":{},\"num\":{},\"name\":{}}}", t.id, yuan(t.amount_fen), t.num, json_str(&t.name)))
                    .collect();
                let mut f = st.balance_fields(&card_no);
                f.extend([
                    ("transTime", now_ms()),
                    ("vaucher", format!("[{}]", vouchers.join(","))),
                    ("idType", json_str("01")),
                    ("idNo", json_str("110101199001011234")),
                    ("name", json_str("张三")),
                    ("gender", json_str("01")),
                    ("mobileNo", json_str(&c.mobile_no)),
                    ("grade", json_str(if c.active { "1" } else { "0" })),
                    ("address", json_str("")),
                    ("email", json_str("member@example.com")),
                ]);
                Answer::ok(f)
            }
            "ticket-query" => {
                let c = &st.cards[&card_no];
                let items: Vec<String> = c
                    .tickets
                    .iter()
                    .map(|t| {
                        format!(
                            "{{\"id\":{},\"type\":{},\"amount\":{},\"name\":{},\"num\":{}}}",
                            t.id,
                            json_str(&t.kind),
                            yuan(t.amount_fen),
                            json_str(&t.name),
                            t.num
                        )
                    })
                    .collect();
                let mut f = st.balance_fields(&card_no);
                f.extend([("transTime", now_ms()), ("ticket", format!("[{}]", items.join(",")))]);
                Answer::ok(f)
            }
            "send-verify-code" => {
                st.verify_codes.insert(get(form, "mobileNo").to_string(), self.cfg.verify_code.clone());
                Answer::ok(Vec::new())
            }
            "consume" => self.consume(st, &keys, form, &card_no),
            "cancel" => Self::cancel(st, terminal, form, &card_no),
            "refund" => Self::refund(st, form, &card_no),
            "refund-cancel" => Self::refund_cancel(st, form, &card_no),
            "ticket-consume" => Self::ticket_consume(st, form, &card_no),
            "card-activate" => {
                let mobile = get(form, "mobileNo").to_string();
                if st.cards[&card_no].active {
                    return Answer::fail("22", "card already active");
                }
                if st.verify_codes.get(&mobile).map(String::as_str) != Some(get(form, "verifyCode")) {
                    return Answer::fail("55", "wrong verify code");
                }
                if let Some(c) = st.cards.get_mut(&card_no) {
                    c.active = true;
                    c.mobile_no = mobile;
                }
                let (_, serial, time) = st.record("card-activate", form, &card_no, 0, 0, None, Vec::new());
                Answer::ok(vec![("serialNo", json_str(&serial)), ("transTime", time)])
            }
            _ => Answer::fail("12", "unsupported operation"),
        }
    }

    fn consume(&self, st: &mut State, keys: &WorkingKeys, form: &Form, card_no: &str) -> Answer {
        let c = &st.cards[card_no];
        if !c.active {
            return Answer::fail("15", "card not activated");
        }
        let (Ok(points), Ok(cash)) = (money::yuan_to_fen(get(form, "pointAmount")), money::yuan_to_fen(get(form, "cashAmount"))) else {
            return Answer::fail("30", "pointAmount and cashAmount are yuan with 2 decimals");
        };
        if points < 0 || cash < 0 {
            return Answer::fail("13", "negative amount");
        }
        if let Some(v) = form.get("vaucher") {
            if serde_json::from_str::<Vec<Value>>(v).is_err() {
                return Answer::fail("30", "vaucher must be a JSON list");
            }
        }
        match form.get("password") {
            Some(block) => match crypto::decrypt_pin_block(&keys.pin, block, card_no) {
                Ok(pin) if pin == c.pin => {}
                Ok(_) => return Answer::fail("55", "wrong PIN"),
                Err(_) => return Answer::fail("99", "PIN block does not decrypt under this terminal's PIN key"),
            },
            None if !c.pin.is_empty() => return Answer::fail("55", "PIN required"),
            None => {}
        }
        if c.balance_fen < points {
            return Answer::fail("51", "insufficient balance");
        }
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen -= points;
        }
        let (_, serial, time) = st.record("consume", form, card_no, points, cash, None, Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("usePoint", yuan(points)), ("persentPoint", yuan(0)), ("advertisement", json_str("欢迎参加 posgate 演示活动"))]);
        Answer::ok(f)
    }

    fn cancel(st: &mut State, terminal: &str, form: &Form, card_no: &str) -> Answer {
        let k = key3(terminal, get(form, "oriBatchNo"), get(form, "oriTraceNo"));
        let Some(&o) = st.applied.get(&k) else { return Answer::fail("25", "original not found") };
        let orig = &st.txs[o];
        let v = &orig.view;
        if v.op != "consume" || v.reversed || v.voided || v.refunded {
            return Answer::fail("22", "original is not a live consume");
        }
        if v.card_no != card_no || orig.trans_time != get(form, "oriTransTime") {
            return Answer::fail("22", "card or oriTransTime does not match the original");
        }
        if let Some(r) = form.get("oriRegisterTraceNo").filter(|r| !r.is_empty()) {
            if v.register_trace_no.as_deref() != Some(r.as_str()) {
                return Answer::fail("22", "oriRegisterTraceNo does not match the original");
            }
        }
        if st.settlements.contains_key(&(v.terminal.clone(), v.batch.clone())) {
            return Answer::fail("22", "original batch is settled: refund it instead");
        }
        let amount = v.amount_fen;
        st.txs[o].view.voided = true;
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen += amount;
        }
        let (_, serial, time) = st.record("cancel", form, card_no, amount, 0, Some(o), Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("usePoint", yuan(amount)), ("persentPoint", yuan(0))]);
        Answer::ok(f)
    }

    fn refund(st: &mut State, form: &Form, card_no: &str) -> Answer {
        let Some(&o) = st.by_serial.get(get(form, "oriSerialNo")) else { return Answer::fail("25", "original not found") };
        let orig = &st.txs[o];
        let v = &orig.view;
        if v.op != "consume" || v.reversed || v.voided || v.refunded {
            return Answer::fail("22", "original is not a live consume");
        }
        if v.card_no != card_no || v.register_trace_no.as_deref().unwrap_or("") != get(form, "oriRegisterTraceNo") {
            return Answer::fail("22", "card or oriRegisterTraceNo does not match the original");
        }
        let date = get(form, "oriTransDate");
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Answer::fail("30", "oriTransDate must be YYYYMMDD");
        }
        let (amount, cash) = (v.amount_fen, orig.cash_fen);
        st.txs[o].view.refunded = true;
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen += amount;
        }
        let (_, serial, time) = st.record("refund", form, card_no, amount, 0, Some(o), Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("returnPoint", yuan(amount)), ("returnPersentPoint", yuan(0)), ("returnCash", yuan(cash)), ("supplyCash", yuan(0))]);
        Answer::ok(f)
    }

    fn refund_cancel(st: &mut State, form: &Form, card_no: &str) -> Answer {
        let Some(&o) = st.by_serial.get(get(form, "oriSerialNo")) else { return Answer::fail("25", "original not found") };
        let orig = &st.txs[o];
        let v = &orig.view;
        if v.op != "refund" || v.reversed || v.voided {
            return Answer::fail("22", "original is not a live refund");
        }
        if v.card_no != card_no || v.batch != get(form, "oriBatchNo") || v.trace != get(form, "oriTraceNo") || orig.trans_time != get(form, "oriTransTime") {
            return Answer::fail("22", "card, oriBatchNo, oriTraceNo or oriTransTime does not match the original");
        }
        let (amount, sale) = (v.amount_fen, orig.original);
        if st.cards[card_no].balance_fen < amount {
            return Answer::fail("51", "insufficient balance");
        }
        st.txs[o].view.voided = true;
        if let Some(s) = sale {
            st.txs[s].view.refunded = false;
        }
        if let Some(c) = st.cards.get_mut(card_no) {
            c.balance_fen -= amount;
        }
        let (_, serial, time) = st.record("refund-cancel", form, card_no, amount, 0, Some(o), Vec::new());
        let mut f = vec![("transTime", time), ("serialNo", json_str(&serial))];
        f.extend(st.balance_fields(card_no));
        f.extend([("usePoint", yuan(amount)), ("persentPoint", yuan(0))]);
        Answer::ok(f)
    }

    fn ticket_consume(st: &mut State, form: &Form, card_no: &str) -> Answer {
        if !st.cards[card_no].active {
            return Answer::fail("15", "card not activated");
        }
        let Ok(items) = serde_json::from_str::<Vec<serde_json::Map<String, Value>>>(get(form, "ticket")) else {
            return Answer::fail("30", "ticket must be a JSON list of objects");
        };
        let mut wanted: Vec<(u64, i64)> = Vec::new();
        for item in &items {
            let id = match item.get("id") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            let num = item.get("num").and_then(Value::as_i64).filter(|n| *n > 0);
            let (Some(id), Some(num)) = (id, num) else { return Answer::fail("30", "each ticket needs an id and a positive num") };
            wanted.push((id, num));
        }
        let c = &st.cards[card_no];
        let mut amount = 0i64;
        for &(id, num) in &wanted {
            let Some(t) = c.tickets.iter().find(|t| t.id == id) else { return Answer::fail("56", format!("no ticket {id} on this card")) };
            let already: i64 = wanted.iter().filter(|(i, _)| *i == id).map(|(_, n)| n).sum();
            if t.num < already {
                return Answer::fail("51", format!("not enough of ticket {id}"));
            }
            amount += t.amount_fen * num;
        }
        if let Some(c) = st.cards.get_mut(card_no) {
            for &(id, num) in &wanted {
                if let Some(t) = c.tickets.iter_mut().find(|t| t.id == id) {
                    t.num -= num;
                }
            }
        }
        let (_, serial, time) = st.record("ticket-consume", form, card_no, amount, 0, None, wanted);
        Answer::ok(vec![("serialNo", json_str(&serial)), ("advertisement", json_str("券已使用")), ("transTime", time)])
    }
}

impl std::fmt::Debug for LoyaltySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoyaltySim").field("prefix", &self.cfg.prefix).field("terminals", &self.cfg.terminals.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
