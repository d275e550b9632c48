//! The pool of lottery stations of one profile: the backend is serial per station (section 7), so each
//! request holds one station exclusively until its answer; N stations give N requests in flight.
//!
//! Each station keeps its session token in memory only (never journaled); the clerk password comes from
//! a profile secret file and changes in memory after a successful `password` operation.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::secret::Secret;

/// One station (站点) and clerk (工号) the profile may log in as.
pub struct Station {
    pub id: String,
    pub clerk: String,
    /// The hardware serial number the backend binds at first login.
    pub serial: String,
    password: Mutex<Secret>,
    token: Mutex<Option<Secret>>,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Station").field("id", &self.id).field("clerk", &self.clerk).field("serial", &self.serial).field("logged_in", &self.token().is_some()).finish()
    }
}

impl Station {
    pub fn new(id: &str, clerk: &str, serial: &str, password: Secret) -> Self {
        Station { id: id.into(), clerk: clerk.into(), serial: serial.into(), password: Mutex::new(password), token: Mutex::new(None) }
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
}

/// The stations of one profile and who holds them.
#[derive(Debug)]
pub struct StationPool {
    stations: Vec<Station>,
    /// One permit per station: a holder of a station always holds a permit, so a taker of "any station"
    /// who got a permit always finds one unlocked.
    permits: Arc<Semaphore>,
    locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A station held exclusively until dropped.
pub struct StationGuard {
    pool: Arc<StationPool>,
    index: usize,
    _lock: OwnedMutexGuard<()>,
    _permit: OwnedSemaphorePermit,
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
    }
}

impl StationPool {
    /// A pool of at least one station.
    pub fn new(stations: Vec<Station>) -> Arc<Self> {
        let n = stations.len();
        Arc::new(StationPool {
            locks: (0..n).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect(),
            permits: Arc::new(Semaphore::new(n)),
            stations,
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
    /// The most stations ever held at once (for tests and `doctor`).
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn guard(self: &Arc<Self>, index: usize, lock: OwnedMutexGuard<()>, permit: OwnedSemaphorePermit) -> StationGuard {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        StationGuard { pool: self.clone(), index, _lock: lock, _permit: permit }
    }

    /// Wait for any free station (round robin among the free ones).
    pub async fn acquire(self: &Arc<Self>) -> Result<StationGuard, String> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| "station pool closed".to_string())?;
        let n = self.stations.len();
        loop {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let k = (start + i) % n;
                if let Ok(lock) = self.locks[k].clone().try_lock_owned() {
                    return Ok(self.guard(k, lock, permit));
                }
            }
            // Cannot happen while every holder holds a permit; yield rather than spin if it ever does.
            tokio::task::yield_now().await;
        }
    }

    /// Wait for one particular station.
    pub async fn acquire_station(self: &Arc<Self>, index: usize) -> Result<StationGuard, String> {
        let lock = self.locks.get(index).ok_or_else(|| format!("no station #{index}"))?.clone();
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| "station pool closed".to_string())?;
        let lock = lock.lock_owned().await;
        Ok(self.guard(index, lock, permit))
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
                let g = if specific_every > 0 && t % specific_every == 0 { p.acquire_station(t % p.len()).await } else { p.acquire().await }.unwrap();
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
}
