//! The generic strict-host soak: 8 POS lanes on one terminal through the real daemon, SIGKILLed every ~1.5 s, against a host losing 15 % of all answers.
//!
//! Lost answers hit every kind of request (sign-on, money, reversals, settlement, reports), each applied
//! first; the world adds its own faults ([`VendorWorld::soak_faults`]). Now and then a settlement runs in
//! the middle of it all. It runs `POSGATE_SOAK_SECS` seconds (short by default; README.md has the long
//! command), then the end of [`super::finish`] and the world's ledger check.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::client::ApiClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{env_or, finish, lock, send, side, Mode, Told, VendorWorld};
use crate::support::Daemon;

pub const LANES: usize = 8;

/// One POS lane for one life of the daemon: its unfinished request first, then new ones, until aborted.
async fn lane<W: VendorWorld>(w: Arc<W>, c: ApiClient, n: usize, all: Arc<Mutex<Vec<Told>>>, current: Arc<Mutex<[Option<usize>; LANES]>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let mine = current.lock().unwrap_or_else(|p| p.into_inner())[n];
        let i = match mine {
            Some(i) => i,
            None => {
                let mut v = lock(&all);
                let k = v.len();
                let req = w.next_request_after(&mut rng, n, k, &v);
                v.push(Told::new(req));
                current.lock().unwrap_or_else(|p| p.into_inner())[n] = Some(k);
                k
            }
        };
        if send(&c, W::PROFILE, &all, i).await {
            current.lock().unwrap_or_else(|p| p.into_inner())[n] = None;
        }
    }
}

/// The soak for one world; panics with every problem found.
pub async fn run<W: VendorWorld>() {
    let secs: u64 = env_or("POSGATE_SOAK_SECS", 12);
    let seed: u64 = env_or("POSGATE_SOAK_SEED", 0x50a4_0001);
    let drops: u32 = env_or("POSGATE_SOAK_DROPS_PER_MILLE", 150);
    eprintln!("soak {}: {secs} s, {LANES} lanes, {drops} ‰ of all answers lost, SIGKILL every ~1.5 s, seed {seed}", W::NAME);
    let w = Arc::new(W::start(&format!("soak-{}", W::NAME), Mode::Soak).await);
    w.lose_answers(drops, seed);
    w.soak_faults(seed ^ 0x0f0f);
    let mut rng = StdRng::seed_from_u64(seed);
    let all = Arc::new(Mutex::new(Vec::<Told>::new()));
    let current = Arc::new(Mutex::new([None; LANES]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut lives = 0;
    while tokio::time::Instant::now() < deadline {
        lives += 1;
        let d = Daemon::start(w.config(), w.socket(), &[]).await;
        if std::env::var_os("POSGATE_SOAK_VERBOSE").is_some() {
            eprintln!("soak {}: life {lives}, {} requests so far", W::NAME, lock(&all).len());
        }
        let mut tasks = Vec::new();
        for n in 0..LANES {
            tasks.push(tokio::spawn(lane(w.clone(), d.client.clone(), n, all.clone(), current.clone(), rng.gen())));
        }
        if W::SETTLES && rng.gen_bool(0.3) {
            let c = d.client.clone();
            let wait = Duration::from_millis(rng.gen_range(100..1000));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = c.post(&format!("/v1/profiles/{}/settle", W::PROFILE), json!({}), None).await;
            }));
        }
        if rng.gen_bool(0.3) {
            let (c, w) = (d.client.clone(), w.clone());
            let wait = Duration::from_millis(rng.gen_range(100..1000));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                side(&*w, &c).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2000))).await;
        d.kill9().await;
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    // The end: no more faults, a clean daemon.
    w.quiet();
    eprintln!("soak {}: {lives} lives done; draining", W::NAME);
    let d = Daemon::start(w.config(), w.socket(), &[]).await;
    let c = d.client.clone();
    let mut failures = finish::<W>(&c, &all).await;
    let told = lock(&all).clone();
    failures.extend(w.check_ledger(&told, &c).await);
    let words = told.iter().fold(BTreeMap::<String, usize>::new(), |mut m, t| {
        *m.entry(t.status().to_string()).or_default() += 1;
        m
    });
    eprintln!("soak {}: {lives} lives, {} requests {words:?}", W::NAME, told.len());
    d.stop().await;
    assert!(failures.is_empty(), "soak {} found {} problems:\n- {}", W::NAME, failures.len(), failures.join("\n- "));
}
