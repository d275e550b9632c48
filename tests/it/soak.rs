//! Soak: 8 POS lanes of consumes through the real daemon, SIGKILLed every ~1.5 s, against the strict
//! loyalty host losing 15 % of all answers (check-in, consume, reversal, settlement) after applying them.
//!
//! It runs `POSGATE_SOAK_SECS` seconds (20 by default; README.md has the long command) and then checks
//! the host's books against what the POS was told: every sale the POS was told approved is applied once
//! at the host and nothing else is, no trace was reused, no sale was turned down because the daemon sat
//! in a batch the host had moved past (77), and every batch with applied records is settled, balanced.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::client::ApiClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::World;

const LANES: usize = 8;
/// The demo card with the deepest balance and no PIN: no sale is declined for money.
const CARD: &str = "6222020000000000008";
const FINAL: [&str; 4] = ["approved", "declined", "reversed", "failed"];

#[derive(Debug, Clone)]
struct Sale {
    key: String,
    reference: String,
    amount: i64,
    /// The final answer, once there is one.
    answer: Option<Value>,
}

fn body(s: &Sale) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": s.amount, "cashAmount": 0, "registerTraceNo": s.reference})
}

/// Send (or resend with the same key) sale `i` once; true when its answer is final.
async fn send(c: &ApiClient, sales: &Mutex<Vec<Sale>>, i: usize) -> bool {
    let s = sales.lock().unwrap()[i].clone();
    match c.post("/v1/profiles/loyalty/consume", body(&s), Some(&s.key)).await {
        // Connection refused or cut (the daemon died): the same key again, later.
        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        // Reversal pending: wait for recovery, then the same key again.
        Ok((409, _)) => tokio::time::sleep(Duration::from_millis(50)).await,
        Ok((_, v)) => {
            if FINAL.contains(&v.get("status").and_then(Value::as_str).unwrap_or("")) {
                sales.lock().unwrap()[i].answer = Some(v);
                return true;
            }
            // Pending, sign-on failed, shutting down: the same key again, later.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    false
}

/// One POS lane for one life of the daemon: its unfinished sale first, then new ones, until aborted.
async fn lane(c: ApiClient, n: usize, sales: Arc<Mutex<Vec<Sale>>>, current: Arc<Mutex<[Option<usize>; LANES]>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let mine = current.lock().unwrap()[n];
        let i = match mine {
            Some(i) => i,
            None => {
                let mut all = sales.lock().unwrap();
                let k = all.iter().filter(|s| s.key.starts_with(&format!("soak-{n}-"))).count();
                all.push(Sale { key: format!("soak-{n}-{k}"), reference: format!("L{n}N{k:06}"), amount: rng.gen_range(1..10_000), answer: None });
                let i = all.len() - 1;
                current.lock().unwrap()[n] = Some(i);
                i
            }
        };
        if send(&c, &sales, i).await {
            current.lock().unwrap()[n] = None;
        }
    }
}

/// The profile's batches the daemon says are not settled: `unsettled_batches` (strings or objects with
/// a `batch`), once the engine reports them.
fn unsettled(status: &Value) -> Vec<String> {
    let p = &status["profiles"][0];
    p["unsettled_batches"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b.as_str().or_else(|| b["batch"].as_str()).map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Poll the status until no recovery is owed, an entry is parked, or `limit` passes; the last status
/// and whether recovery drained.
async fn drain(c: &ApiClient, limit: Duration) -> (Value, bool) {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let st = c.get("/v1/status").await.map(|(_, v)| v).unwrap_or(Value::Null);
        let p = &st["profiles"][0];
        let (owed, parked) = (p["pending_recovery"].as_u64().unwrap_or(0), p["needs_attention"].as_u64().unwrap_or(0));
        if owed == 0 && parked == 0 {
            return (st, true);
        }
        if parked > 0 || tokio::time::Instant::now() >= until {
            return (st, false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POST a settlement until it has a definite answer (bounded); returns the last (status, body).
async fn settle(c: &ApiClient, body: Value) -> (u16, Value) {
    let mut last = (0, Value::Null);
    for _ in 0..40 {
        match c.post("/v1/profiles/loyalty/settle", body.clone(), None).await {
            Ok((s, v)) if s == 409 || s >= 500 => last = (s, v),
            Ok(r) => return r,
            Err(e) => last = (0, json!(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_sigkill_every_1_5s_with_15_percent_of_all_answers_lost_books_balance() {
    let secs: u64 = std::env::var("POSGATE_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("POSGATE_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x50a4_0001);
    eprintln!("soak: {secs} s, {LANES} lanes, 15 % of answers lost, SIGKILL every ~1.5 s, seed {seed}");
    let world = World::new("soak").await;
    world.sim.set_random_drops(150, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let sales = Arc::new(Mutex::new(Vec::<Sale>::new()));
    let current = Arc::new(Mutex::new([None; LANES]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut lives = 0;
    while tokio::time::Instant::now() < deadline {
        lives += 1;
        let d = world.start(&[]).await;
        if std::env::var_os("POSGATE_SOAK_VERBOSE").is_some() {
            eprintln!("soak: life {lives}, {} sales so far", sales.lock().unwrap().len());
        }
        let mut tasks = Vec::new();
        for n in 0..LANES {
            tasks.push(tokio::spawn(lane(d.client.clone(), n, sales.clone(), current.clone(), rng.gen())));
        }
        // Now and then a settlement in the middle of it all (its answer may be lost too).
        if rng.gen_bool(0.3) {
            let c = d.client.clone();
            let wait = Duration::from_millis(rng.gen_range(100..1000));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = c.post("/v1/profiles/loyalty/settle", json!({}), None).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2000))).await;
        d.kill9().await;
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    // The end: no more lost answers, a clean daemon, recovery drained, a final answer for every key.
    world.sim.set_random_drops(0, 0);
    let d = world.start(&[]).await;
    let c = d.client.clone();
    let mut failures: Vec<String> = Vec::new();
    eprintln!("soak: {lives} lives done; draining recovery");
    let (st, drained) = drain(&c, Duration::from_secs(60)).await;
    if !drained {
        failures.push(format!("recovery did not drain after the last restart: {}", st["profiles"][0]));
    }
    // Every unanswered key resent until final, all of them within one bounded minute.
    let n = sales.lock().unwrap().len();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        while sales.lock().unwrap()[i].answer.is_none() && tokio::time::Instant::now() < until {
            send(&c, &sales, i).await;
        }
    }
    let (st, drained) = drain(&c, Duration::from_secs(30)).await;
    if !drained {
        failures.push(format!("recovery did not drain after the resends: {}", st["profiles"][0]));
    }
    eprintln!("soak: settling");
    // Settle the open batch, then every batch the daemon lists as unsettled (by name).
    let (_, status) = c.get("/v1/status").await.expect("status");
    let open = status["profiles"][0]["batch_open"].as_bool().unwrap_or(false);
    let mut settlements = Vec::new();
    if open {
        settlements.push(("open".to_string(), settle(&c, json!({})).await));
    }
    for b in unsettled(&status) {
        settlements.push((b.clone(), settle(&c, json!({"batch": b})).await));
    }
    let (_, status_after) = c.get("/v1/status").await.expect("status");
    // The final answer of each key, fetched again with the same key.
    let mut told: BTreeMap<String, Value> = BTreeMap::new();
    let all = sales.lock().unwrap().clone();
    for s in &all {
        let (_, v) = c.post("/v1/profiles/loyalty/consume", body(s), Some(&s.key)).await.expect("refetch");
        told.insert(s.reference.clone(), v);
    }
    d.stop().await;

    let ledger = world.sim.ledger();
    let snap = world.sim.state_snapshot();
    let approved: BTreeSet<&str> = told.iter().filter(|(_, v)| v["status"] == "approved").map(|(r, _)| r.as_str()).collect();
    let mut applied: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (_, _, r) in ledger.applied_sales() {
        applied.entry(r.register_trace_no.clone().unwrap_or_default()).or_default().push(r.amount_fen);
    }
    let words = told.values().fold(BTreeMap::<String, usize>::new(), |mut m, v| {
        *m.entry(v["status"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        m
    });
    let term = ledger.terminals.get("10000001").cloned().unwrap_or_default();
    eprintln!(
        "soak: {lives} lives, {} sales {words:?}; host: {} check-ins, {} batches, {} applied sales, {} answered 77, {} traces reused, {} requests",
        all.len(),
        term.checkins,
        term.batches.len(),
        ledger.applied_sales().len(),
        ledger.declined_77,
        ledger.traces_reused,
        snap.requests
    );
    eprintln!("soak: final settlements {settlements:?}");

    let unanswered: Vec<&str> = all.iter().filter(|s| s.answer.is_none()).map(|s| s.key.as_str()).collect();
    if !unanswered.is_empty() {
        failures.push(format!("{} sales never got a final answer: {:?}", unanswered.len(), &unanswered[..unanswered.len().min(10)]));
    }
    let amounts: BTreeMap<&str, i64> = all.iter().map(|s| (s.reference.as_str(), s.amount)).collect();
    let twice: Vec<_> = applied.iter().filter(|(_, a)| a.len() > 1).collect();
    if !twice.is_empty() {
        failures.push(format!("{} sales applied more than once at the host: {:?}", twice.len(), &twice[..twice.len().min(10)]));
    }
    let unknown: Vec<_> = applied.keys().filter(|r| !amounts.contains_key(r.as_str())).collect();
    if !unknown.is_empty() {
        failures.push(format!("the host applied consumes no sale asked for: {unknown:?}"));
    }
    let wrong_amount: Vec<_> = applied.iter().filter(|(r, a)| amounts.get(r.as_str()).is_some_and(|m| a.iter().any(|x| x != m))).collect();
    if !wrong_amount.is_empty() {
        failures.push(format!("applied with another amount: {wrong_amount:?}"));
    }
    let not_told: Vec<_> = applied.keys().filter(|r| !approved.contains(r.as_str())).map(|r| (r.clone(), told.get(r).map(|v| v["status"].clone()))).collect();
    if !not_told.is_empty() {
        failures.push(format!("{} sales applied at the host but the POS was not told approved: {:?}", not_told.len(), &not_told[..not_told.len().min(10)]));
    }
    let lost: Vec<_> = approved.iter().filter(|r| !applied.contains_key(**r)).collect();
    if !lost.is_empty() {
        failures.push(format!("{} sales told approved but not applied at the host: {:?}", lost.len(), &lost[..lost.len().min(10)]));
    }
    if ledger.traces_reused != 0 {
        failures.push(format!("{} requests reused a trace (the host refused them with 94)", ledger.traces_reused));
    }
    let declined_77: Vec<_> = told.iter().filter(|(_, v)| v["code"] == "77" || v.to_string().contains("SignOnFirst")).collect();
    if !declined_77.is_empty() {
        let first = declined_77[0].1.get("error").cloned().unwrap_or(Value::Null);
        failures.push(format!("{} sales ended turned down by a 77 (the daemon was outside the host's batch); first: {first}", declined_77.len()));
    }
    let open_batches = ledger.unsettled_batches_with_applied();
    if !open_batches.is_empty() {
        failures.push(format!(
            "{} batches with applied records were never settled: {:?} (daemon's unsettled list after the final settlement: {})",
            open_batches.len(),
            &open_batches[..open_batches.len().min(10)],
            status_after["profiles"][0].get("unsettled_batches").cloned().unwrap_or(Value::Null)
        ));
    }
    let unbalanced = ledger.unbalanced_settlements();
    if !unbalanced.is_empty() {
        failures.push(format!("{} settlements did not balance: {unbalanced:?}", unbalanced.len()));
    }
    let violations: Vec<_> = snap.violations.iter().filter(|v| !v.contains("duplicate trace")).collect();
    if !violations.is_empty() {
        failures.push(format!("the host saw protocol violations: {:?}", &violations[..violations.len().min(10)]));
    }
    assert!(failures.is_empty(), "soak found {} problems:\n- {}", failures.len(), failures.join("\n- "));
}
