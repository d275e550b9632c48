//! The scenic backend through the real daemon against its strict simulator: create, cancel, lost and garbage answers, local resident-ID checks.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::net::tls::TestPki;
use posgate::sim::faults::Fault;
use posgate::sim::scenic::{ScenicSim, DEMO_APP_SECRET};
use serde_json::{json, Value};

use crate::support::{scratch, wait_recovered, Daemon};

struct ScenicWorld {
    dir: PathBuf,
    sim: Arc<ScenicSim>,
    config: PathBuf,
    socket: PathBuf,
}

impl Drop for ScenicWorld {
    fn drop(&mut self) {
        if std::env::var_os("POSGATE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The shipped example profile against a fresh simulator over TLS, with short timeouts and backoff.
async fn world(name: &str) -> ScenicWorld {
    let dir = scratch(name);
    let pki = TestPki::ensure(&dir.join("pki")).expect("pki");
    std::fs::create_dir_all(dir.join("secrets")).expect("secrets");
    std::fs::write(dir.join("secrets/scenic-app-secret.txt"), DEMO_APP_SECRET).expect("secret");
    let sim = Arc::new(ScenicSim::demo());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sim.clone().serve(listener, pki.acceptor().expect("acceptor"), std::future::pending::<()>()));
    let example = posgate::backend::registry::find("scenic").expect("registered").example_text;
    let profile = crate::support::fast_profile(example, "https://127.0.0.1:18446", &format!("https://{addr}"));
    std::fs::create_dir_all(dir.join("terminal-profiles")).expect("profiles");
    std::fs::write(dir.join("terminal-profiles/scenic.toml"), profile).expect("profile");
    let config = dir.join("posgate.toml");
    std::fs::write(&config, "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n").expect("config");
    let socket = dir.join("posgate.sock");
    ScenicWorld { dir, sim, config, socket }
}

fn order(count: i64) -> Value {
    json!({"product_code": "XXX", "take_phone": "13456451211", "date": "2030-04-01", "price": 600, "amount": 600 * count, "count": count})
}

async fn record(c: &ApiClient, id: u64) -> Value {
    c.get(&format!("/v1/journal/{id}")).await.expect("record").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_approved_with_the_platforms_order_and_a_bad_resident_id_is_refused_locally() {
    let w = world("scenic-create").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    let (s, v) = c.post("/v1/profiles/scenic/create-order", order(5), Some("o-1")).await.expect("create");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let num = v["reference"].as_str().expect("order_num").to_string();
    let l = w.sim.ledger();
    assert!(l.told_approved.contains(&num), "{l:?}");
    assert_eq!(l.orders[&num].amount_fen, 3000);
    assert!(l.orders[&num].params.contains("\"price\":6.00,\"amount\":30.00,\"count\":5"), "{}", l.orders[&num].params);
    let rec = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(rec["result"]["check_state"], "awaiting-check-in", "{rec}");
    assert!(!rec.to_string().contains("13456451211"), "the phone is journaled masked: {rec}");
    // A real-name order with a resident ID whose check digit is wrong: refused here, naming the field.
    let before = w.sim.ledger().requests;
    let mut bad = order(1);
    bad["product_code"] = json!("REAL");
    bad["tourist_info"] = json!({"410102195431547812": "张三"});
    let (s, v) = c.post("/v1/profiles/scenic/create-order", bad.clone(), None).await.expect("create");
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("tourist_info") && !v.to_string().contains("410102195431547812"), "{v}");
    assert_eq!(w.sim.ledger().requests, before, "nothing was sent");
    // The same with a valid ID goes through (and the platform checks it too).
    bad["tourist_info"] = json!({"11010519491231002X": "张三"});
    let (s, v) = c.post("/v1/profiles/scenic/create-order", bad, None).await.expect("create");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_answer_is_resolved_by_resending_the_same_order_without_a_second_one() {
    let w = world("scenic-lost").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    w.sim.push_fault_on("public/createOrder", Fault::DropAfterCommit);
    let (_, v) = c.post("/v1/profiles/scenic/create-order", order(2), None).await.expect("create");
    assert_ne!(v["status"], "declined", "{v}");
    wait_recovered(&c, Duration::from_secs(20)).await;
    let r = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(r["status"], "approved", "{r}");
    let channel = r["request"]["channel_order_num"].as_str().expect("journaled").to_string();
    let l = w.sim.ledger();
    assert_eq!(l.created_for(&channel), 1, "{l:?}");
    assert_eq!((l.orders.len(), l.duplicate_creates), (1, 1), "{l:?}");
    assert_eq!(r["reference"].as_str(), l.orders.keys().next().map(String::as_str));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_approved_and_a_lost_cancel_answer_ends_cancelled_once() {
    let w = world("scenic-cancel").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    let (_, a) = c.post("/v1/profiles/scenic/create-order", order(1), None).await.expect("create");
    let (_, b) = c.post("/v1/profiles/scenic/create-order", order(1), None).await.expect("create");
    let (s, v) = c.post("/v1/profiles/scenic/cancel-order", json!({"original": a["id"]}), Some("c-1")).await.expect("cancel");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(w.sim.ledger().cancelled, 1);
    // Cancelled again: the platform's 4002 is a decline for a fresh cancel.
    let (_, v) = c.post("/v1/profiles/scenic/cancel-order", json!({"original": a["id"]}), None).await.expect("cancel");
    assert_eq!((v["status"].as_str(), v["code"].as_str()), (Some("declined"), Some("4002")), "{v}");
    // A cancel whose answer is lost is resent; the resend's 4002 is our own cancel.
    w.sim.push_fault_on("public/cancelOrder", Fault::DropAfterCommit);
    let (_, v) = c.post("/v1/profiles/scenic/cancel-order", json!({"original": b["id"]}), None).await.expect("cancel");
    wait_recovered(&c, Duration::from_secs(20)).await;
    let r = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(r["status"], "approved", "{r}");
    let l = w.sim.ledger();
    assert_eq!((l.cancelled, l.orders.values().filter(|o| o.cancelled).count()), (2, 2), "{l:?}");
    // A cancel needs a create-order original.
    let (s, _) = c.post("/v1/profiles/scenic/cancel-order", json!({}), None).await.expect("cancel");
    assert_eq!(s, 400);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_mistyped_answers_are_unknown_never_declines() {
    let w = world("scenic-garbage").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    let answers: [Fault; 5] = [
        Fault::Garbage,
        Fault::AnswerWith(r#"{"code":1000,"message":"成功","data":{"order_num":"x"}}"#),
        Fault::AnswerWith(r#"{"code":"7777","message":"?"}"#),
        Fault::AnswerWith(r#"{"code":"1000","message":"成功","data":""}"#),
        Fault::Http500,
    ];
    for f in answers {
        w.sim.push_fault_on("public/createOrder", f);
        let (_, v) = c.post("/v1/profiles/scenic/create-order", order(1), None).await.expect("create");
        assert_ne!(v["status"], "declined", "{f:?} was believed: {v}");
        wait_recovered(&c, Duration::from_secs(20)).await;
        let r = record(&c, v["id"].as_u64().expect("id")).await;
        assert_eq!(r["status"], "approved", "{f:?}: {r}");
        let channel = r["request"]["channel_order_num"].as_str().expect("journaled").to_string();
        assert_eq!(w.sim.ledger().created_for(&channel), 1, "{f:?}");
    }
    // Every record named its own order: five orders, none twice.
    assert_eq!(w.sim.ledger().orders.len(), 5);
    d.stop().await;
}
