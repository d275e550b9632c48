//! The loyalty host's books per terminal and batch ([`LoyaltySim::ledger`]), for tests to check a client against.
use std::collections::BTreeMap;

use super::{LoyaltySim, State};

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

impl LoyaltySim {
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
}
