//! The kill campaign: thousands of SIGKILLs of the real daemon across every backend and crash point, with counts, failing on any loss or double.
//!
//! Not in CI (`#[ignore]`). `POSGATE_CAMPAIGN_KILLS` (default 10,000) is split evenly over the five
//! backends, which run side by side, each its own world and daemon. A backend runs the crash loop
//! ([`super::crash::run_lives`]: every crash point in turn, random faults and lost answers) in chunks of
//! `POSGATE_CAMPAIGN_CHUNK` lives (default 250), each a fresh world ending with its clean life and the
//! full ledger check, and prints a line after each chunk, so a run stopped early still shows what it
//! proved. The end prints per backend and in total: kills, kills at a crash point, requests, sales
//! (approved), reversals, settlements, declined, failed, and the problems: lost, doubled, unresolved,
//! other; any problem fails the test. README.md has the command.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use super::crash::run_lives;
use super::{env_or, VendorWorld};

/// The counts of one backend (or all).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub kills: usize,
    pub at_points: usize,
    pub requests: usize,
    pub sales: usize,
    pub reversals: usize,
    pub settlements: usize,
    pub declined: usize,
    pub failed: usize,
    pub lost: usize,
    pub doubled: usize,
    pub unresolved: usize,
    pub other: usize,
    pub problems: Vec<String>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.kills += o.kills;
        self.at_points += o.at_points;
        self.requests += o.requests;
        self.sales += o.sales;
        self.reversals += o.reversals;
        self.settlements += o.settlements;
        self.declined += o.declined;
        self.failed += o.failed;
        self.lost += o.lost;
        self.doubled += o.doubled;
        self.unresolved += o.unresolved;
        self.other += o.other;
        self.problems.extend(o.problems.iter().cloned());
    }

    fn line(&self) -> String {
        format!(
            "kills {} (at a crash point {}), requests {}, sales {}, reversals {}, settlements {}, declined {}, failed {} | lost {}, doubled {}, unresolved {}, other problems {}",
            self.kills,
            self.at_points,
            self.requests,
            self.sales,
            self.reversals,
            self.settlements,
            self.declined,
            self.failed,
            self.lost,
            self.doubled,
            self.unresolved,
            self.other
        )
    }

    /// Sort one problem (a ledger check's sentence) into lost, doubled, unresolved or other.
    fn classify(&mut self, p: &str) {
        let has = |words: &[&str]| words.iter().any(|w| p.contains(w));
        if has(&["more than once", " times", "twice", "reused"]) {
            self.doubled += 1;
        } else if has(&["never got a final answer", "did not drain", "never settled", "did not balance", "cancelled="]) {
            self.unresolved += 1;
        } else if has(&[
            "not applied",
            "never applied",
            "never opened",
            "does not have",
            "not told approved",
            "no POS",
            "but the platform accepted",
            "balance of",
            "fen, the POS",
        ]) {
            self.lost += 1;
        } else {
            self.other += 1;
        }
    }
}

/// One backend's share of the campaign, chunk by chunk; its tally goes into `out` as it grows.
async fn backend<W: VendorWorld>(kills: usize, chunk: usize, seed: u64, started: Instant, out: Arc<Mutex<BTreeMap<&'static str, Tally>>>) {
    let mut done = 0;
    let mut n = 0;
    while done < kills {
        let lives = chunk.min(kills - done);
        let r = run_lives::<W>(&format!("campaign-{}-{n}", W::NAME), lives, seed.wrapping_add(n as u64 * 7919)).await;
        let mut t = Tally { kills: r.kills, at_points: r.at_points, requests: r.told.len(), ..Tally::default() };
        for told in &r.told {
            match told.status() {
                "approved" => t.sales += 1,
                "reversed" => t.reversals += 1,
                "declined" => t.declined += 1,
                "failed" => t.failed += 1,
                _ => {}
            }
        }
        for ((op, status), count) in &r.journal {
            // Reversals the daemon made itself (recovery), beside those the POS was told.
            if op.contains("settle") && status == "approved" {
                t.settlements += count;
            }
            if (op.contains("revers") || op.contains("cancel")) && status == "approved" {
                t.reversals += count;
            }
        }
        for p in &r.failures {
            t.classify(p);
        }
        t.problems = r.failures.iter().map(|p| format!("{} chunk {n}: {p}", W::NAME)).collect();
        done += lives;
        n += 1;
        let mine = {
            let mut all = out.lock().unwrap_or_else(|p| p.into_inner());
            let e = all.entry(W::NAME).or_default();
            e.add(&t);
            e.clone()
        };
        let mins = started.elapsed().as_secs_f64() / 60.0;
        eprintln!("campaign {} chunk {n}: {} | {:.1} min, {:.1} kills/min for this backend", W::NAME, mine.line(), mins, mine.kills as f64 / mins.max(1e-9));
        for p in &t.problems {
            eprintln!("campaign PROBLEM {p}");
        }
    }
}

/// The whole campaign; panics with every problem found.
pub async fn run() {
    let kills: usize = env_or("POSGATE_CAMPAIGN_KILLS", 10_000);
    let chunk: usize = env_or("POSGATE_CAMPAIGN_CHUNK", 250);
    let seed: u64 = env_or("POSGATE_CAMPAIGN_SEED", 0xca_0001);
    let per = kills.div_ceil(5);
    eprintln!("campaign: {kills} kills, {per} per backend, chunks of {chunk} lives, seed {seed}");
    let started = Instant::now();
    let out = Arc::new(Mutex::new(BTreeMap::<&'static str, Tally>::new()));
    let (o, s) = (out.clone(), started);
    // The worlds' start-up futures are not `Send`: the backends share one thread (they mostly wait).
    let local = tokio::task::LocalSet::new();
    let panics = local
        .run_until(async move {
            let tasks = vec![
                tokio::task::spawn_local(backend::<super::loyalty::LoyaltyWorld>(per, chunk, seed, s, o.clone())),
                tokio::task::spawn_local(backend::<super::lottery::LotteryWorld>(per, chunk, seed ^ 1, s, o.clone())),
                tokio::task::spawn_local(backend::<super::wallet::WalletWorld>(per, chunk, seed ^ 2, s, o.clone())),
                tokio::task::spawn_local(backend::<super::scenic::ScenicWorld>(per, chunk, seed ^ 3, s, o.clone())),
                tokio::task::spawn_local(backend::<super::consign::ConsignWorld>(per, chunk, seed ^ 4, s, o)),
            ];
            let mut panics = Vec::new();
            for t in tasks {
                if let Err(e) = t.await {
                    panics.push(format!("a backend's campaign panicked: {e}"));
                }
            }
            panics
        })
        .await;
    let all = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut total = Tally::default();
    let mins = started.elapsed().as_secs_f64() / 60.0;
    eprintln!("campaign done in {mins:.1} min:");
    for (name, t) in &all {
        eprintln!("  {name:8} {}", t.line());
        total.add(t);
    }
    eprintln!("  {:8} {}", "total", total.line());
    eprintln!("  rate: {:.1} kills/min", total.kills as f64 / mins.max(1e-9));
    let problems: Vec<String> = total.problems.into_iter().chain(panics).collect();
    assert!(problems.is_empty(), "the campaign found {} problems:\n- {}", problems.len(), problems.join("\n- "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "hours: the documented kill campaign (README.md), not CI"]
async fn campaign() {
    run().await;
}
