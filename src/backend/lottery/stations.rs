//! The pool of lottery stations of one profile: the backend is serial per station (section 7), so each
//! request holds one station exclusively until its outcome is known; N stations give N requests in flight.
//!
//! A station is also unavailable while it is *held*: a request on it timed out or its connection broke,
//! so the host may still be working on it. Until the hold period ends (profile option `station_hold_ms`,
//! default 2 × the timeout) no request may go to that station, whoever asks: the pool skips it, a taker of
//! that very station waits (bounded), and a caller who already holds it (a lease) waits before sending.
//!
//! Each station keeps its session token in memory only (never journaled); the clerk password comes from
//! a profile secret file and changes in memory after a successful `password` operation.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

use crate::secret::Secret;

/// One station (站点) and clerk (工号) the profile may log in as.
pub struct Station {
    pub id: String,
    pub clerk: String,
    /// The hardware serial number the backend binds at first login.
    pub serial: String,
    password: Mutex<Secret>,
    token: Mutex<Option<Secret>>,
    /// Until when the host may still be working on a request of ours whose answer never came.
    held_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Station")
            .field("id", &self.id)
            .field("clerk", &self.clerk)
            .field("serial", &self.serial)
            .field("logged_in", &self.token().is_some())
            .finish()
    }
}

impl Station {
    pub fn new(id: &str, clerk: &str, serial: &str, password: Secret) -> Self {
        Station {
            id: id.into(),
            clerk: clerk.into(),
            serial: serial.into(),
            password: Mutex::new(password),
            token: Mutex::new(None),
            held_until: Mutex::new(None),
        }
    }
    pub fn password(&self) -> Secret {
        self.password.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set_password(&self, s: Secret) {
        *self.password.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
    pub fn token(&self) -> Option<Secret> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set_token(&self, t: Option<Secret>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }
    /// The host may be working on a request of ours on this station for up to `hold` from now.
    pub fn hold(&self, hold: Duration) {
        let until = Instant::now() + hold;
        let mut h = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_none_or(|t| t < until) {
            *h = Some(until);
        }
    }
    /// How long this station stays held, if it is.
    pub fn held_for(&self) -> Option<Duration> {
        let mut h = self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        match *h {
            Some(t) if t > Instant::now() => Some(t - Instant::now()),
            Some(_) => {
                *h = None;
                None
            }
            None => None,
        }
    }
    fn held_until(&self) -> Option<Instant> {
        *self.held_until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The stations of one profile and who holds them.
#[derive(Debug)]
pub struct StationPool {
    stations: Vec<Station>,
    locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// Told whenever a station is given back, so takers of "any station" look again.
    freed: Notify,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A station taken exclusively until dropped.
pub struct StationGuard {
    pool: Arc<StationPool>,
    index: usize,
    lock: Option<OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for StationGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StationGuard").field("station", &self.station().id).finish()
    }
}

impl StationGuard {
    pub fn station(&self) -> &Station {
        &self.pool.stations[self.index]
    }
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for StationGuard {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Unlock before telling the waiters, or they would find it still locked and sleep again.
        drop(self.lock.take());
        self.pool.freed.notify_waiters();
    }
}

impl StationPool {
    /// A pool of at least one station.
    pub fn new(stations: Vec<Station>) -> Arc<Self> {
        let n = stations.len();
        Arc::new(StationPool {
            locks: (0..n).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect(),
            stations,
            freed: Notify::new(),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.stations.len()
    }
    pub fn is_empty(&self) -> bool {
        self.stations.is_empty()
    }
    pub fn stations(&self) -> &[Station] {
        &self.stations
    }
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.stations.iter().position(|s| s.id == id)
    }
    pub fn contains(&self, id: &str) -> bool {
        self.index_of(id).is_some()
    }
    /// The most stations ever taken at once (for tests and `doctor`).
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn guard(self: &Arc<Self>, index: usize, lock: OwnedMutexGuard<()>) -> StationGuard {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        StationGuard { pool: self.clone(), index, lock: Some(lock) }
    }

    /// Take a free, unheld station now (round robin), if there is one.
    pub fn try_any(self: &Arc<Self>) -> Option<StationGuard> {
        let n = self.stations.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let k = (start + i) % n;
            if let Some(g) = self.try_station(k) {
                return Some(g);
            }
        }
        None
    }

    /// Take one station now if it is neither taken nor held.
    pub fn try_station(self: &Arc<Self>, index: usize) -> Option<StationGuard> {
        if self.stations.get(index)?.held_for().is_some() {
            return None;
        }
        let lock = self.locks[index].clone().try_lock_owned().ok()?;
        // Held between the check and the lock? Give it back.
        if self.stations[index].held_for().is_some() {
            return None;
        }
        Some(self.guard(index, lock))
    }

    /// Wait for any free, unheld station, at most `wait` (`None`: as long as it takes).
    pub async fn acquire(self: &Arc<Self>, wait: Option<Duration>) -> Result<StationGuard, String> {
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(g) = self.try_any() {
                return Ok(g);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                let held: Vec<&str> = self.stations.iter().filter(|s| s.held_for().is_some()).map(|s| s.id.as_str()).collect();
                return Err(if held.is_empty() {
                    "every station is busy".to_string()
                } else {
                    format!("every station is busy (held, the host may still be working on an unanswered request: {})", held.join(", "))
                });
            }
            // Wake when a station is given back, when a hold ends, or at the deadline.
            let hold_end = self.stations.iter().filter_map(Station::held_until).filter(|t| *t > now).min();
            let wake = [hold_end, deadline].into_iter().flatten().min();
            match wake {
                Some(t) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Wait for one particular station, at most `wait` (`None`: as long as it takes), including the rest
    /// of its hold period. The error names the station.
    pub async fn acquire_station(self: &Arc<Self>, index: usize, wait: Option<Duration>) -> Result<StationGuard, String> {
        let station = self.stations.get(index).ok_or_else(|| format!("no station #{index}"))?;
        let lock = self.locks[index].clone();
        let busy = || format!("station {} is busy (a request on it has no answer yet)", station.id);
        let lock = match wait {
            Some(w) => tokio::time::timeout(w, lock.lock_owned()).await.map_err(|_| busy())?,
            None => lock.lock_owned().await,
        };
        let g = self.guard(index, lock);
        if let Some(rest) = station.held_for() {
            if wait.is_some_and(|w| rest > w) {
                return Err(format!(
                    "station {} is held: the host may still be working on a request whose answer was lost (for {} ms more)",
                    station.id,
                    rest.as_millis()
                ));
            }
            tokio::time::sleep(rest).await;
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn pool(n: usize) -> Arc<StationPool> {
        StationPool::new((0..n).map(|i| Station::new(&format!("S{i}"), "0", "X", Secret::new(b"p".to_vec()))).collect())
    }

    async fn hammer(p: Arc<StationPool>, tasks: usize, specific_every: usize) -> (usize, bool) {
        let busy: Arc<Vec<AtomicBool>> = Arc::new((0..p.len()).map(|_| AtomicBool::new(false)).collect());
        let clash = Arc::new(AtomicBool::new(false));
        let mut js = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let (p, busy, clash) = (p.clone(), busy.clone(), clash.clone());
            js.spawn(async move {
                let g = if specific_every > 0 && t % specific_every == 0 { p.acquire_station(t % p.len(), None).await } else { p.acquire(None).await }.unwrap();
                if busy[g.index()].swap(true, Ordering::SeqCst) {
                    clash.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
                busy[g.index()].store(false, Ordering::SeqCst);
            });
        }
        while js.join_next().await.is_some() {}
        (p.max_in_flight(), clash.load(Ordering::SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_requests_never_share_a_station_and_n_stations_give_n_in_flight() {
        // One station, two concurrent takers: strictly one after the other.
        assert_eq!(hammer(pool(1), 2, 0).await, (1, false));
        // Three stations, many takers (some asking for a given station): exactly three at once, no clash.
        assert_eq!(hammer(pool(3), 24, 4).await, (3, false));
    }

    /// Finding 1: a station whose answer timed out was handed to the next request at once, while the
    /// host could still be working on the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_station_is_skipped_waited_for_and_named() {
        let p = pool(2);
        p.stations()[0].hold(Duration::from_millis(300));
        // "Any station" never gets the held one while the hold lasts.
        for _ in 0..4 {
            let g = p.acquire(Some(Duration::from_millis(10))).await.unwrap();
            assert_eq!(g.station().id, "S1");
        }
        assert!(p.try_station(0).is_none());
        // With the other one taken, "any station" waits for the hold to end, or says who is busy.
        let other = p.acquire_station(1, None).await.unwrap();
        let e = p.acquire(Some(Duration::from_millis(50))).await.unwrap_err();
        assert!(e.contains("every station is busy") && e.contains("S0"), "{e}");
        // Asking for that very station: bounded wait below the hold is refused, naming it.
        let e = p.acquire_station(0, Some(Duration::from_millis(50))).await.unwrap_err();
        assert!(e.contains("S0"), "{e}");
        let t0 = Instant::now();
        let g = p.acquire(Some(Duration::from_secs(2))).await.unwrap();
        assert_eq!(g.station().id, "S0");
        assert!(t0.elapsed() >= Duration::from_millis(150), "{:?}", t0.elapsed());
        drop(other);
        // A taken station is waited for and named when the wait runs out.
        let e = p.acquire_station(0, Some(Duration::from_millis(30))).await.unwrap_err();
        assert!(e.contains("S0") && e.contains("busy"), "{e}");
        drop(g);
        assert!(p.acquire_station(0, Some(Duration::from_millis(30))).await.is_ok());
    }
}
