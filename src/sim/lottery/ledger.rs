//! The lottery host's books ([`LotterySim::ledger`]): what it paid, per ticket and station, and what it refused as a strict host.
use std::collections::BTreeMap;

use super::{LotterySim, SimPayment};

/// What the host holds, for a test to check a client against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimLedger {
    /// Every payment this simulation made (planted ones left out), in order.
    pub payments: Vec<SimPayment>,
    /// bar code -> the transacIds it was paid under (one when all is well).
    pub paid: BTreeMap<String, Vec<String>>,
    /// station -> (tickets, prize fen) paid, never reset.
    pub by_station: BTreeMap<String, (i64, i64)>,
    /// Logins applied (answered or not).
    pub logins: u64,
    /// Requests refused for a bad signature (12); each is a violation too.
    pub bad_signs: u64,
    /// Requests refused for a timestamp more than 30 minutes off (8).
    pub stale_timestamps: u64,
    /// Requests refused for a superseded (1021) or expired (27) token: what a client that lost a
    /// login answer meets next, and must heal by logging in again.
    pub stale_tokens: u64,
    /// thirdAwards refused because their transacId was used before for another ticket (10030).
    pub transac_reused: u64,
    /// Requests that reached a station still working on another (1005).
    pub overlaps: u64,
    /// Everything the host saw that a correct client never sends.
    pub violations: Vec<String>,
}

impl SimLedger {
    /// Bar codes paid more than once.
    pub fn paid_twice(&self) -> Vec<(String, Vec<String>)> {
        self.paid.iter().filter(|(_, t)| t.len() > 1).map(|(b, t)| (b.clone(), t.clone())).collect()
    }
}

impl LotterySim {
    /// The host's books: payments by ticket and station, logins, and the strict host's refusals.
    pub fn ledger(&self) -> SimLedger {
        let st = self.lock();
        let payments: Vec<SimPayment> = st.payments.iter().filter(|p| !p.planted).cloned().collect();
        let mut paid: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_station: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for p in &payments {
            paid.entry(p.bar_code.clone()).or_default().push(p.transac_id.clone());
            let e = by_station.entry(p.station.clone()).or_default();
            e.0 += 1;
            e.1 += p.prize_fen;
        }
        SimLedger {
            payments,
            paid,
            by_station,
            logins: st.logins,
            bad_signs: st.bad_signs,
            stale_timestamps: st.stale_timestamps,
            stale_tokens: st.stale_tokens,
            transac_reused: st.transac_reused,
            overlaps: st.overlaps,
            violations: st.violations.clone(),
        }
    }
}
