//! A profile's lane: its backend, the recovery it owes (mirrored from the journal), the units and slots
//! held while an outcome is unknown, and the locks that order sign-on, settlement and sales.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify, RwLock};

use super::*;

/// Recovery owed by one record, mirrored in memory from the journal.
#[derive(Debug, Clone)]
pub(super) struct Owed {
    pub(super) next_at_ms: i64,
    pub(super) parked: bool,
    /// What it holds back (`Record::unit`): `None` is the whole terminal.
    pub(super) unit: Option<String>,
}

impl Owed {
    pub(super) fn of(rec: &Record) -> Option<Owed> {
        rec.recovery.as_ref().map(|r| Owed { next_at_ms: r.next_at_ms, parked: r.parked, unit: rec.unit.clone() })
    }
    /// Whether this entry holds back a new request for `unit` (`None`: the request needs the terminal).
    pub(super) fn blocks(&self, unit: Option<&str>) -> bool {
        match (&self.unit, unit) {
            (None, _) | (_, None) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
        }
    }
}

/// What holds a new request back: how many entries, the oldest id, how many are parked, when the next
/// attempt is due.
pub(super) struct Blocking {
    pub(super) count: usize,
    pub(super) oldest: u64,
    pub(super) parked: usize,
    pub(super) next_at_ms: i64,
}

/// One terminal profile and its backend.
///
/// Lock order, never reversed: `signon` → `gate` → the std mutexes (`owed`, `busy`, `units`, `leases`,
/// `recent`). A std mutex is held only for a few statements, never across an await, and no value whose
/// `Drop` takes one of them is built or dropped while one is held.
pub(super) struct Lane {
    pub(super) profile: Profile,
    pub(super) backend: Arc<dyn Backend>,
    /// Money-moving requests and reversals hold it shared; settlement and sign-on hold it exclusively,
    /// so no batch changes under a request in flight and no totals move under a settlement.
    pub(super) gate: RwLock<()>,
    /// One sign-on (or settlement) at a time per terminal.
    pub(super) signon: Mutex<()>,
    pub(super) online: AtomicBool,
    /// Wakes the recovery worker.
    pub(super) wake: Notify,
    /// Notified (all waiters) whenever an owed entry resolves or a unit is freed.
    pub(super) changed: Notify,
    pub(super) owed: std::sync::Mutex<BTreeMap<u64, Owed>>,
    pub(super) busy: std::sync::Mutex<HashSet<u64>>,
    /// Units (lottery tickets) with a request in flight or an outcome being recovered: unit → record
    /// id (0 while the request is not yet journaled).
    pub(super) units: std::sync::Mutex<HashMap<String, u64>>,
    /// Slots (lottery stations) held by records whose outcome is unknown.
    pub(super) leases: std::sync::Mutex<HashMap<u64, Lease>>,
    /// The last 48 hours of records, for backends with local risk rules (`wants_history`).
    pub(super) recent: std::sync::Mutex<std::collections::VecDeque<backend::HistoryItem>>,
}

impl Lane {
    pub(super) fn new(profile: Profile, backend: Arc<dyn Backend>) -> Lane {
        Lane {
            profile,
            backend,
            gate: RwLock::new(()),
            signon: Mutex::new(()),
            online: AtomicBool::new(false),
            wake: Notify::new(),
            changed: Notify::new(),
            owed: Default::default(),
            busy: Default::default(),
            units: Default::default(),
            leases: Default::default(),
            recent: Default::default(),
        }
    }

    /// The entries that hold back a new request for `unit`, if any.
    pub(super) fn blocking(&self, unit: Option<&str>) -> Option<Blocking> {
        self.blocking_where(|o| o.blocks(unit))
    }

    /// The entries that hold the whole terminal back (no unit): they go out before any sign-on.
    pub(super) fn blocking_terminal(&self) -> Option<Blocking> {
        self.blocking_where(|o| o.unit.is_none())
    }

    pub(super) fn blocking_where(&self, holds: impl Fn(&Owed) -> bool) -> Option<Blocking> {
        let owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        let mut b: Option<Blocking> = None;
        for (id, o) in owed.iter().filter(|(_, o)| holds(o)) {
            let e = b.get_or_insert(Blocking { count: 0, oldest: *id, parked: 0, next_at_ms: i64::MAX });
            e.count += 1;
            e.parked += usize::from(o.parked);
            if !o.parked {
                e.next_at_ms = e.next_at_ms.min(o.next_at_ms);
            }
        }
        b
    }

    /// A cashier is waiting: make the entries that hold `unit` back due now.
    pub(super) fn expedite(&self, unit: Option<&str>, now_ms: i64) {
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        for o in owed.values_mut().filter(|o| !o.parked && o.blocks(unit)) {
            o.next_at_ms = o.next_at_ms.min(now_ms);
        }
    }

    pub(super) fn set_owed(&self, id: u64, owed: Option<Owed>) {
        let resolved = {
            let mut m = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            match owed {
                Some(o) => {
                    m.insert(id, o);
                    None
                }
                None => m.remove(&id),
            }
        };
        if let Some(resolved) = resolved {
            // The outcome is known: the slot and the unit it held are free again. The lease is taken
            // out of the map first and dropped after the lock is released.
            let lease = self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            drop(lease);
            if let Some(unit) = resolved.unit {
                let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
                if units.get(&unit) == Some(&id) {
                    units.remove(&unit);
                }
            }
            self.changed.notify_waiters();
        }
    }

    pub(super) fn hold_lease(&self, id: u64, lease: Lease) {
        let old = self.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(id, lease);
        drop(old);
    }

    /// Whether this backend settles batches at all (it offers a settle operation).
    pub(super) fn settles(&self) -> bool {
        self.backend.operations().iter().any(|s| s.class == OpClass::Settle)
    }
}

/// A unit (lottery ticket) claimed by one request; freed on drop unless its outcome stays unknown.
pub(super) struct UnitClaim {
    pub(super) lane: Arc<Lane>,
    pub(super) unit: String,
    pub(super) id: u64,
    pub(super) keep: bool,
}

impl UnitClaim {
    pub(super) fn set_id(&mut self, id: u64) {
        let mut units = self.lane.units.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = units.get_mut(&self.unit) {
            if *v == self.id {
                *v = id;
            }
        }
        drop(units);
        self.id = id;
    }
}

impl Drop for UnitClaim {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        {
            let mut units = self.lane.units.lock().unwrap_or_else(|p| p.into_inner());
            if units.get(&self.unit) == Some(&self.id) {
                units.remove(&self.unit);
            }
        }
        self.lane.changed.notify_waiters();
    }
}

/// Why a sign-on is asked for; looked at again once the sign-on lock is held (single flight).
#[derive(Debug, Clone)]
pub(super) enum SignOnNeed {
    /// The POS asked for it (`checkin`): always.
    Asked,
    /// A request found no open batch: only if there still is none.
    NoOpenBatch,
    /// The host refused a request in this batch until the terminal signs on: only if it is still the
    /// current batch (somebody else may have signed on meanwhile).
    Stale(String),
}

/// Whether a unit was claimed, or the request was answered from an earlier one for the same unit.
pub(super) enum UnitWait {
    Claimed(Option<UnitClaim>),
    Answered(Answer),
}
