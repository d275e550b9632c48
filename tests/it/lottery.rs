//! The lottery backend through the real daemon: tickets paid exactly once across SIGKILLs and lost answers,
//! station totals equal to the backend's, reconciliation and risk rules over the local API.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::net::tls::TestPki;
use posgate::sim::faults::Fault;
use posgate::sim::lottery::{LotterySim, DEMO_APP_SECRET, DEMO_PASSWORD};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::{scratch, wait_recovered, Daemon};

struct LotteryWorld {
    dir: PathBuf,
    sim: Arc<LotterySim>,
    config: PathBuf,
    socket: PathBuf,
}

impl Drop for LotteryWorld {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The shipped example profile against a simulator, with the risk section replaced by `risk`.
async fn world(name: &str, risk: &str) -> LotteryWorld {
    let dir = scratch(name);
    let pki = TestPki::ensure(&dir.join("pki")).expect("pki");
    std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
    std::fs::write(dir.join("secrets/lottery-app-secret.txt"), DEMO_APP_SECRET).expect("secret");
    std::fs::write(dir.join("secrets/lottery-station-password.txt"), DEMO_PASSWORD).expect("secret");
    let sim = Arc::new(LotterySim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sim.clone().serve(listener, pki.acceptor().expect("acceptor"), std::future::pending::<()>()));
    let example = posgate::demo::LOTTERY_PROFILE;
    let cut = example.find("[options.risk]").expect("the example has a risk section");
    let profile = format!("{}[options.risk]\n{risk}\n", &example[..cut])
        .replace("https://127.0.0.1:18444", &format!("https://{addr}"))
        .replace("backoff_initial_ms = 200", "backoff_initial_ms = 20")
        .replace("backoff_max_ms = 60000", "backoff_max_ms = 200")
        .replace("max_attempts = 12", "max_attempts = 50");
    std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
    std::fs::write(dir.join("terminal-profiles/lottery.toml"), profile).expect("profile");
    let config = dir.join("posgate.toml");
    std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n").expect("config");
    let socket = dir.join("posgate.sock");
    LotteryWorld { dir, sim, config, socket }
}

fn redeem_body(user: &str, bar: &str) -> Value {
    json!({"userId": user, "userRealIp": "127.0.0.1", "barCode": bar})
}

const FINAL: [&str; 4] = ["approved", "declined", "reversed", "failed"];

#[derive(Debug, Clone)]
struct Ticket {
    bar: String,
    key: String,
    status: Option<String>,
    prize: i64,
}

async fn send(c: &ApiClient, t: &Ticket) -> Option<(String, i64)> {
    let (_, v) = c.post("/v1/profiles/lottery/redeem", redeem_body(&format!("u{}", &t.bar[2..]), &t.bar), Some(&t.key)).await.ok()?;
    let st = v.get("status").and_then(Value::as_str)?.to_string();
    if st == "approved" {
        // The journal record carries what was paid, from the answer.
        assert_eq!(v["amount_fen"], v["result"]["prize"], "{v}");
    }
    FINAL.contains(&st.as_str()).then(|| (st, v["amount_fen"].as_i64().unwrap_or(0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_ticket_is_paid_once_across_sigkill_and_lost_answers() {
    let lives: usize = std::env::var("POSGATE_LOTTERY_LIVES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let w = world("lottery-crash", "hours = \"00:00-00:00\"\nmin_interval_s = 0\ndaily_tickets = 100000\ndaily_amount_fen = 10000000000\ndaily_abnormal = 100000").await;
    let mut rng = StdRng::seed_from_u64(0x10_77e5);
    let mut tickets: Vec<Ticket> = Vec::new();
    let points = ["before_send", "after_send", "after_outcome"];
    let mut hits = 0;
    for life in 0..lives {
        let point = points[life % points.len()];
        // Most lives lose a redeem answer after the backend paid it.
        if rng.gen_bool(0.6) {
            w.sim.push_fault(Fault::DropAfterCommit);
        }
        let mut d = Daemon::start(&w.config, &w.socket, &[("POSGATE_CRASH_AT", format!("{point}:{}", rng.gen_range(1..=3)))]).await;
        let c = d.client.clone();
        // Start-up resends what the last life left unknown before new redeems are taken.
        wait_recovered(&c, Duration::from_secs(30)).await;
        let mut work = Vec::new();
        for _ in 0..4 {
            let open: Vec<usize> = (0..tickets.len()).filter(|&i| tickets[i].status.is_none()).collect();
            let i = if !open.is_empty() && rng.gen_bool(0.5) {
                open[rng.gen_range(0..open.len())]
            } else {
                let n = tickets.len();
                // Mostly winners, some losers, some already paid elsewhere.
                let bar = match rng.gen_range(0..10) {
                    0 => format!("GL{:08}", n + 1),
                    1 => format!("GE{:08}", n + 1),
                    _ => format!("GW{:08}", n + 1),
                };
                tickets.push(Ticket { key: format!("t-{n}"), bar, status: None, prize: 0 });
                n
            };
            let (c, t) = (c.clone(), tickets[i].clone());
            work.push(tokio::spawn(async move { (i, send(&c, &t).await) }));
        }
        let crashed = async {
            while let Some(l) = d.stderr.recv().await {
                if l.starts_with("posgate-crashpoint") {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        let finished = async {
            let mut out = Vec::new();
            for t in work {
                if let Ok(r) = t.await {
                    out.push(r);
                }
            }
            out
        };
        tokio::select! {
            _ = crashed => hits += 1,
            out = tokio::time::timeout(Duration::from_secs(10), finished) => {
                for (i, r) in out.unwrap_or_default() {
                    if let Some((st, prize)) = r {
                        tickets[i].status = Some(st);
                        tickets[i].prize = prize;
                    }
                }
            }
        }
        d.kill9().await;
    }
    assert!(hits >= lives / 4, "crash points reached only {hits} times in {lives} lives");

    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    wait_recovered(&c, Duration::from_secs(60)).await;
    for t in tickets.iter_mut().filter(|t| t.status.is_none()) {
        for _ in 0..100 {
            if let Some((st, prize)) = send(&c, t).await {
                t.status = Some(st);
                t.prize = prize;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let snap = w.sim.state_snapshot();
    let mut paid_fen = 0;
    for t in &tickets {
        let status = t.status.as_deref().unwrap_or_else(|| panic!("ticket without a final answer: {t:?}"));
        let want = usize::from(status == "approved" && t.bar.starts_with("GW"));
        assert_eq!(snap.times_paid(&t.bar), want, "ticket {t:?} paid {} times", snap.times_paid(&t.bar));
        if want == 1 {
            paid_fen += t.prize;
        }
    }
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    assert!(tickets.iter().filter(|t| t.status.as_deref() == Some("approved")).count() > 10, "too few tickets paid to prove anything: {tickets:?}");
    // Station totals through the API equal the simulator's own, and the prizes the POS was told.
    let (s, v) = c.post("/v1/profiles/lottery/count", json!({}), None).await.expect("count");
    assert_eq!(s, 200, "{v}");
    let sim_total: i64 = snap.counts.values().map(|(_, fen)| fen).sum();
    assert_eq!(v["result"]["amount"].as_i64(), Some(sim_total), "{v}");
    assert_eq!(sim_total, paid_fen);
    // And today's reconciliation balances.
    // The business day is the backend's (+08:00), whatever this host's zone and hour; the daemon under
    // test reads the same wall clock.
    #[allow(clippy::disallowed_methods)]
    let today = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00")).date_naive().to_string();
    let (s, v) = c.post("/v1/profiles/lottery/reconcile", json!({"date": today}), None).await.expect("reconcile");
    assert_eq!((s, v["result"]["balanced"].clone()), (200, json!(true)), "{v}");
    eprintln!("lottery: {} tickets, {} paid, {paid_fen} fen, {hits} crashes", tickets.len(), tickets.iter().filter(|t| t.status.as_deref() == Some("approved")).count());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_rules_refuse_before_sending_and_name_their_code() {
    let w = world("lottery-risk", "enabled = true\nhours = \"00:00-00:00\"\nblacklist = [\"u-bad\"]\ndaily_tickets = 2\nmin_interval_s = 0").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = &d.client;
    let (s, v) = c.post("/v1/profiles/lottery/redeem", redeem_body("u-bad", "GW00000001"), None).await.expect("redeem");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("10037"), "{v}");
    let mut codes = HashMap::new();
    for bar in ["GW00000002", "GW00000003", "GW00000004"] {
        let (s, v) = c.post("/v1/profiles/lottery/redeem", redeem_body("u-1", bar), None).await.expect("redeem");
        *codes.entry(s).or_insert(0) += 1;
        if s == 400 {
            assert!(v["detail"].as_str().unwrap_or("").contains("10035"), "the third ticket of the day is over the limit: {v}");
        }
    }
    assert_eq!(codes.get(&200), Some(&2), "{codes:?}");
    assert_eq!(codes.get(&400), Some(&1), "{codes:?}");
    assert_eq!(w.sim.state_snapshot().redeem_attempts, 2, "refusals never reach the backend");
    d.stop().await;
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_reconciliation_runs_once_for_yesterday_even_across_a_restart() {
    use chrono::TimeZone;
    use posgate::engine::clock::ManualClock;
    use posgate::engine::{Engine, EngineConfig, JournalQuery};
    let w = world("lottery-daily", "hours = \"00:00-00:00\"").await;
    let cfg = posgate::config::DaemonConfig::load(&w.config).expect("config");
    // Today, 01:00:30 local: just past the default reconcile_at of 01:00.
    let today = chrono::Local::now().date_naive();
    let at = chrono::Local.from_local_datetime(&today.and_hms_opt(1, 0, 30).expect("time")).earliest().expect("local time");
    let yesterday = today.pred_opt().expect("yesterday").to_string();
    let reconciles = |e: &Engine| {
        e.journal(&JournalQuery { profile: Some("lottery".into()), ..Default::default() })
            .expect("journal")
            .into_iter()
            .filter(|r| r["operation"] == "reconcile")
            .collect::<Vec<_>>()
    };
    for life in 0..2 {
        let clock = Arc::new(ManualClock::new(at.timestamp_millis()));
        let engine = Engine::open(EngineConfig { data_dir: cfg.data_dir.clone(), profiles: cfg.profiles.clone() }, clock).await.expect("engine");
        for _ in 0..200 {
            if !reconciles(&engine).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let it finish (a loaded machine is slow), give a second run every chance to happen, then check
        // there was just one.
        for _ in 0..250 {
            if reconciles(&engine).iter().all(|r| r["status"] != "pending") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let found = reconciles(&engine);
        assert_eq!(found.len(), 1, "life {life}: {found:?}");
        assert_eq!(found[0]["request"]["date"], json!(yesterday), "{:?}", found[0]);
        assert_eq!(found[0]["idempotency_key"], json!(format!("daily-reconcile-{yesterday}")));
        assert_eq!(found[0]["status"], "approved", "{:?}", found[0]);
        engine.shutdown().await;
        drop(engine);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
