//! Crash tests: the real daemon SIGKILLed at every crash point, hundreds of times, proven against the simulator.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::sim::faults::Fault;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::{wait_recovered, Daemon, World};

/// Demo cards without a PIN (see `SimConfig::demo`), and their opening balances.
const CARDS: [&str; 2] = ["6222020000000000008", "6222020000000000016"];

#[derive(Debug, Clone)]
struct Sale {
    key: String,
    reference: String,
    card: &'static str,
    amount: i64,
    /// The last answer's status word, once final.
    status: Option<String>,
    id: Option<u64>,
}

const FINAL: [&str; 4] = ["approved", "declined", "reversed", "failed"];

/// Send (or resend, with the same Idempotency-Key) one sale; record a final answer when there is one.
async fn send_sale(c: &ApiClient, sales: &Mutex<Vec<Sale>>, i: usize) {
    let s = sales.lock().unwrap()[i].clone();
    let body = json!({"cardNo": s.card, "consumeType": "01", "pointAmount": s.amount, "cashAmount": 0, "registerTraceNo": s.reference});
    if let Ok((_, v)) = c.post("/v1/profiles/loyalty/consume", body, Some(&s.key)).await {
        let st = v.get("status").and_then(Value::as_str).unwrap_or("").to_string();
        let mut all = sales.lock().unwrap();
        if let Some(id) = v.get("id").and_then(Value::as_u64) {
            all[i].id = Some(id);
        }
        if FINAL.contains(&st.as_str()) {
            all[i].status = Some(st);
        }
    }
}

async fn settle(c: &ApiClient) -> Option<Value> {
    match c.post("/v1/profiles/loyalty/settle", json!({}), None).await {
        Ok((200, v)) => Some(v),
        _ => None,
    }
}

fn random_fault(rng: &mut StdRng) -> Fault {
    match rng.gen_range(0..5) {
        0 => Fault::DropAfterCommit,
        1 => Fault::Reset,
        2 => Fault::Http500,
        3 => Fault::Garbage,
        _ => Fault::Delay(Duration::from_millis(rng.gen_range(1..50))),
    }
}

/// One life of the daemon: a few rounds of concurrent work until the armed crash point is reached.
async fn one_life(d: &mut Daemon, sales: &Arc<Mutex<Vec<Sale>>>, rng: &mut StdRng, with_settle: bool) -> bool {
    // Start-up resolves what the last life left owed before the terminal takes new work; wait for it
    // so this life's requests are not all refused with "reversal pending". Recovery itself resends
    // settlements, so the armed crash point may be reached right here: that is a crash like any other.
    let client = d.client.clone();
    let crashed_in_recovery = async {
        while let Some(l) = d.stderr.recv().await {
            if l.starts_with("posgate-crashpoint") {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = crashed_in_recovery => return true,
        _ = wait_recovered(&client, Duration::from_secs(30)) => {}
    }
    for _round in 0..6 {
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let pick = {
                let mut all = sales.lock().unwrap();
                let open: Vec<usize> = (0..all.len()).filter(|&i| all[i].status.is_none()).collect();
                if !open.is_empty() && rng.gen_bool(0.5) {
                    open[rng.gen_range(0..open.len())]
                } else {
                    let n = all.len();
                    all.push(Sale {
                        key: format!("sale-{n}"),
                        reference: format!("R{n:08}"),
                        card: CARDS[rng.gen_range(0..CARDS.len())],
                        amount: rng.gen_range(1..5000),
                        status: None,
                        id: None,
                    });
                    n
                }
            };
            let (c, s) = (d.client.clone(), sales.clone());
            tasks.push(tokio::spawn(async move { send_sale(&c, &s, pick).await }));
        }
        if with_settle {
            let c = d.client.clone();
            tasks.push(tokio::spawn(async move {
                settle(&c).await;
            }));
        }
        let all_done = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let crashed = async {
            while let Some(l) = d.stderr.recv().await {
                if l.starts_with("posgate-crashpoint") {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = crashed => return true,
            _ = tokio::time::timeout(Duration::from_secs(10), all_done) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_every_crash_point_loses_nothing_and_charges_nothing_twice() {
    let iters: usize = std::env::var("POSGATE_CRASH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let seed: u64 = std::env::var("POSGATE_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0001);
    eprintln!("crash loop: {iters} lives, seed {seed}");
    let world = World::new("crash").await;
    let opening: BTreeMap<String, i64> = world.sim.state_snapshot().balances.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let sales = Arc::new(Mutex::new(Vec::<Sale>::new()));
    let points = ["before_send", "after_send", "after_outcome", "in_settle", "settle_sent"];
    let mut hits: HashMap<&str, usize> = HashMap::new();
    for life in 0..iters {
        let point = points[life % points.len()];
        let nth = rng.gen_range(1..=3);
        if rng.gen_bool(0.35) {
            world.sim.push_fault(random_fault(&mut rng));
        }
        let mut d = world.start(&[("POSGATE_CRASH_AT", format!("{point}:{nth}"))]).await;
        if one_life(&mut d, &sales, &mut rng, point.contains("settle")).await {
            *hits.entry(point).or_default() += 1;
        }
        d.kill9().await;
    }
    eprintln!("crash points reached: {hits:?}");
    for p in points {
        assert!(hits.get(p).copied().unwrap_or(0) >= iters / points.len() / 4, "crash point {p} was reached too rarely: {hits:?}");
    }

    // The last life: no crash points, no faults. Recovery must finish, then every sale gets a final answer.
    let d = world.start(&[]).await;
    let c = d.client.clone();
    wait_recovered(&c, Duration::from_secs(60)).await;
    let n = sales.lock().unwrap().len();
    for i in 0..n {
        for _ in 0..200 {
            if sales.lock().unwrap()[i].status.is_some() {
                break;
            }
            send_sale(&c, &sales, i).await;
            if sales.lock().unwrap()[i].status.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let sales = sales.lock().unwrap().clone();
    let unfinished: Vec<&Sale> = sales.iter().filter(|s| s.status.is_none()).collect();
    if !unfinished.is_empty() {
        let mut why = Vec::new();
        for s in &unfinished {
            if let Some(id) = s.id {
                why.push(c.get(&format!("/v1/journal/{id}")).await.map(|(_, v)| v.to_string()).unwrap_or_default());
            }
        }
        panic!("sales without a final answer: {unfinished:?}\njournal: {why:#?}");
    }
    let snap = world.sim.state_snapshot();

    // Nothing charged twice, nothing lost: each approved sale is applied exactly once at the backend,
    // every other sale has no net effect there.
    let mut applied: HashMap<String, usize> = HashMap::new();
    for t in snap.transactions.iter().filter(|t| t.op == "consume" && !t.reversed) {
        *applied.entry(t.register_trace_no.clone().unwrap_or_default()).or_default() += 1;
    }
    let mut expected: BTreeMap<String, i64> = opening.clone();
    for s in &sales {
        let got = applied.get(&s.reference).copied().unwrap_or(0);
        let want = usize::from(s.status.as_deref() == Some("approved"));
        assert_eq!(got, want, "sale {s:?}: applied {got} times at the backend");
        if want == 1 {
            *expected.get_mut(s.card).expect("card") -= s.amount;
        }
    }
    let references: HashSet<&str> = sales.iter().map(|s| s.reference.as_str()).collect();
    for r in applied.keys() {
        assert!(references.contains(r.as_str()), "the backend applied a consume no sale asked for: {r}");
    }
    for card in CARDS {
        assert_eq!(snap.balances.get(card), expected.get(card), "balance of {card}");
    }
    assert!(snap.violations.is_empty(), "simulator saw protocol violations: {:?}", snap.violations);

    // Trace numbers unique within each batch, in the daemon's own journal.
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut before: Option<u64> = None;
    loop {
        let q = match before {
            Some(b) => format!("/v1/journal?limit=1000&before={b}"),
            None => "/v1/journal?limit=1000".to_string(),
        };
        let (_, page) = c.get(&q).await.expect("journal");
        let page = page["records"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            break;
        }
        for r in &page {
            let trace = r["trace"].as_str().unwrap_or("").to_string();
            if !trace.is_empty() {
                assert!(seen.insert((r["batch"].as_str().unwrap_or("").to_string(), trace.clone())), "trace {trace} reused in batch {}", r["batch"]);
            }
        }
        before = page.last().and_then(|r| r["id"].as_u64());
    }

    // Settlement balances with the backend's own totals, now and in every earlier settlement.
    // Sign on (a no-op for an open batch) so there is a batch to settle even if the last life settled.
    let (s, v) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    let (s, v) = c.post("/v1/profiles/loyalty/settle", json!({}), None).await.expect("settle");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["balanced"], json!(true), "final settlement did not balance: {v}");
    let snap = world.sim.state_snapshot();
    assert!(snap.settlements.iter().all(|s| s.flag == "ss"), "an earlier settlement did not balance: {:?}", snap.settlements);
    eprintln!(
        "sales: {} ({} approved), settlements: {}",
        sales.len(),
        sales.iter().filter(|s| s.status.as_deref() == Some("approved")).count(),
        snap.settlements.len()
    );
    d.stop().await;
}
