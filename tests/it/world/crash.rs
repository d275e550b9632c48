//! The generic crash loop: the real daemon SIGKILLed at every crash point it offers, life after life, then the host's books checked.
//!
//! Each life arms one crash point (`POSGATE_CRASH_AT=<point>:<n>`, in turn), maybe a fault and maybe a lost
//! answer of a random kind, sends a few rounds of concurrent requests (old keys and new ones; a
//! settlement beside them when the point is in settlement), and is killed at the point or after its
//! rounds. The last life runs clean: recovery drains, every request ends final, every batch is settled,
//! and the world's ledger check runs. `POSGATE_CRASH_ITERS` (lives) and `POSGATE_CRASH_SEED` tune it.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{env_or, finish, lock, send, side, Kind, Mode, Told, VendorWorld};
use crate::support::{wait_recovered, Daemon};

/// Wait for the daemon's `posgate-crashpoint` line (never returns when it does not come).
pub async fn crashed(d: &mut Daemon) {
    while let Some(l) = d.stderr.recv().await {
        if l.starts_with("posgate-crashpoint") {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// One life: recovery of what the last life left, then a few rounds of work (a fault of the world's
/// choosing before `fault_round`); true when the armed crash point was reached.
async fn one_life<W: VendorWorld>(
    w: &Arc<W>,
    d: &mut Daemon,
    all: &Arc<Mutex<Vec<Told>>>,
    rng: &mut StdRng,
    with_settle: bool,
    with_side: bool,
    fault_round: Option<usize>,
) -> bool {
    // Start-up resolves what the last life left owed before the terminal takes new work. Recovery itself
    // resends (settlements too), so the armed point may be reached right here: a crash like any other.
    let client = d.client.clone();
    tokio::select! {
        _ = crashed(d) => return true,
        _ = wait_recovered(&client, Duration::from_secs(30)) => {}
    }
    for round in 0..6 {
        if fault_round == Some(round) {
            w.random_fault(rng);
        }
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let pick = {
                let mut v = lock(all);
                let open: Vec<usize> = (0..v.len()).filter(|&i| v[i].answer.is_none()).collect();
                if !open.is_empty() && rng.gen_bool(0.5) {
                    open[rng.gen_range(0..open.len())]
                } else {
                    let n = v.len();
                    let req = w.next_request_after(rng, 0, n, &v);
                    v.push(Told::new(req));
                    n
                }
            };
            let (c, a) = (d.client.clone(), all.clone());
            tasks.push(tokio::spawn(async move { send(&c, W::PROFILE, &a, pick).await }));
        }
        if with_settle {
            let c = d.client.clone();
            tasks.push(tokio::spawn(async move {
                let _ = c.post(&format!("/v1/profiles/{}/settle", W::PROFILE), json!({}), None).await;
                true
            }));
        }
        if with_side {
            let (c, w) = (d.client.clone(), w.clone());
            tasks.push(tokio::spawn(async move {
                side(&*w, &c).await;
                true
            }));
        }
        let all_done = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        tokio::select! {
            _ = crashed(d) => return true,
            _ = tokio::time::timeout(Duration::from_secs(10), all_done) => {}
        }
    }
    false
}

/// What one crash loop did and found.
pub struct CrashRun {
    /// Lives, each ended by SIGKILL (at its crash point or after its rounds).
    pub kills: usize,
    /// Lives killed at their armed crash point.
    pub at_points: usize,
    /// Every request and what the POS was finally told.
    pub told: Vec<Told>,
    /// The daemon's journal at the end: (operation, status) → records.
    pub journal: std::collections::BTreeMap<(String, String), usize>,
    /// Every problem found, in words.
    pub failures: Vec<String>,
}

/// The crash loop for one world; panics with every problem found.
pub async fn run<W: VendorWorld>() {
    let iters: usize = env_or("POSGATE_CRASH_ITERS", W::CRASH_LIVES);
    let seed: u64 = env_or("POSGATE_CRASH_SEED", 0x5eed_0001);
    let r = run_lives::<W>(&format!("crash-{}", W::NAME), iters, seed).await;
    assert!(r.failures.is_empty(), "crash loop {} found {} problems:\n- {}", W::NAME, r.failures.len(), r.failures.join("\n- "));
}

/// `iters` lives of the crash loop in a fresh world called `name`, then the clean last life and the checks.
pub async fn run_lives<W: VendorWorld>(name: &str, iters: usize, seed: u64) -> CrashRun {
    let quiet = std::env::var_os("POSGATE_CAMPAIGN_KILLS").is_some();
    if !quiet {
        eprintln!("crash loop {}: {iters} lives, seed {seed}", W::NAME);
    }
    let w = Arc::new(W::start(name, Mode::Crash).await);
    let mut rng = StdRng::seed_from_u64(seed);
    let all = Arc::new(Mutex::new(Vec::<Told>::new()));
    let points = W::CRASH_POINTS;
    let mut hits: HashMap<&str, usize> = HashMap::new();
    let mut lost: HashMap<String, usize> = HashMap::new();
    for life in 0..iters {
        let point = points[life % points.len()];
        let nth = rng.gen_range(1..=3);
        // The answer of one request of any kind lost (check-in, settlement, reports too).
        let mut with_side = rng.gen_bool(0.1);
        if rng.gen_bool(0.3) {
            let kind = W::KINDS[rng.gen_range(0..W::KINDS.len())];
            *lost.entry(format!("{kind:?}")).or_default() += 1;
            w.lose_next_answer(kind);
            with_side |= kind == Kind::Report;
        }
        let mut d = Daemon::start(w.config(), w.socket(), &[("POSGATE_CRASH_AT", format!("{point}:{nth}"))]).await;
        // In the middle of the life, so that what the host does to sessions meets this life's.
        let fault_round = rng.gen_bool(0.35).then(|| rng.gen_range(0..3));
        if one_life(&w, &mut d, &all, &mut rng, W::SETTLES && point.contains("settle"), with_side, fault_round).await {
            *hits.entry(point).or_default() += 1;
        }
        d.kill9().await;
    }
    if !quiet {
        eprintln!("crash loop {}: points reached {hits:?}, answers lost {lost:?}", W::NAME);
    }
    let mut failures = Vec::new();
    for p in points {
        if hits.get(p).copied().unwrap_or(0) < (iters / points.len() / 4).max(1) {
            failures.push(format!("crash point {p} was reached too rarely: {hits:?}"));
        }
    }

    // The last life: no crash point, no faults.
    w.quiet();
    let d = Daemon::start(w.config(), w.socket(), &[]).await;
    let c = d.client.clone();
    failures.extend(finish::<W>(&c, &all).await);
    let told = lock(&all).clone();
    failures.extend(w.check_ledger(&told, &c).await);
    let mut words: HashMap<String, usize> = HashMap::new();
    for t in &told {
        *words.entry(t.status().to_string()).or_default() += 1;
    }
    if !quiet {
        eprintln!("crash loop {}: {} requests {words:?}", W::NAME, told.len());
    }
    let journal = journal_counts(&c).await;
    d.stop().await;
    CrashRun { kills: iters, at_points: hits.values().sum(), told, journal, failures }
}

/// The daemon's journal by (operation, status).
async fn journal_counts(c: &posgate::client::ApiClient) -> std::collections::BTreeMap<(String, String), usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in super::all_records(c).await {
        let key = (r["operation"].as_str().unwrap_or("?").to_string(), r["status"].as_str().unwrap_or("?").to_string());
        *out.entry(key).or_default() += 1;
    }
    out
}
