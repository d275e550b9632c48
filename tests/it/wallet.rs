//! The wallet backend through the real daemon against its strict simulator: pay, cancel, undo of lost answers, delivery jobs.
use std::path::PathBuf;
use std::time::Duration;

use posgate::client::ApiClient;
use posgate::sim::faults::Fault;
use posgate::sim::wallet::DEMO_APP_KEY;
use serde_json::{json, Value};

use crate::support::{wait_recovered, Daemon};
use crate::world::wallet::{world, WalletWorld};

const ACCOUNT: &str = "2001755000000001";
const START: i64 = 1_000_000;

fn pay(sum: i64) -> Value {
    json!({"consumerId": "13912345678", "paymentCode": "123456", "sum": sum, "productName": "0号柴油", "productPrice": 500, "productQuantity": "1.55"})
}

fn balance(w: &WalletWorld) -> i64 {
    w.sim.ledger().balances.get(ACCOUNT).copied().unwrap_or_default()
}

async fn record(c: &ApiClient, id: u64) -> Value {
    c.get(&format!("/v1/journal/{id}")).await.expect("record").1
}

/// Wait until a job record is no longer pending (or paused), at most `limit`.
async fn job_end(c: &ApiClient, id: u64, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let r = record(c, id).await;
        if r["status"] != "pending" || r["result"]["state"] == "paused" {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "job did not end: {}", r["result"]["state"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_is_approved_and_moves_the_ledger_then_pay_cancel_voids_it() {
    let w = world("wallet-pay", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    let (s, v) = c.post("/v1/profiles/wallet/pay", pay(5000), Some("pay-1")).await.expect("pay");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(balance(&w), START - 5000);
    let order_id = v["reference"].as_str().expect("orderId").to_string();
    assert!(w.sim.ledger().told_approved.contains(&order_id));
    // The journal never holds the consumerId in clear, nor the payment code.
    let rec = record(&c, v["id"].as_u64().expect("id")).await.to_string();
    assert!(!rec.contains("13912345678") && !rec.contains("123456\""), "{rec}");
    let (_, b) = c.post("/v1/profiles/wallet/balance", json!({"consumerId": ACCOUNT}), None).await.expect("balance");
    assert_eq!(b["result"]["balance"], json!(START - 5000), "{b}");
    let (s, v) = c.post("/v1/profiles/wallet/pay-cancel", json!({"original": v["id"]}), Some("cancel-1")).await.expect("cancel");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(balance(&w), START);
    assert_eq!(w.sim.ledger().cancelled, 1);
    // Its own totals: one pay and one cancel in the batch.
    let (_, st) = c.get("/v1/status").await.expect("status");
    let t = &st["profiles"][0]["totals"];
    assert_eq!(
        (t["payCount"].as_i64(), t["paySum"].as_i64(), t["cancelCount"].as_i64(), t["cancelSum"].as_i64()),
        (Some(1), Some(5000), Some(1), Some(5000)),
        "{st}"
    );
    // A consumerId outside the encoding rule is refused locally, naming the field; nothing is sent.
    let before = w.sim.ledger().requests;
    let (s, v) = c.post("/v1/profiles/wallet/pay", json!({"consumerId": "3001755000000001", "paymentCode": "1", "sum": 1}), None).await.expect("pay");
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("consumerId"), "{v}");
    assert_eq!(w.sim.ledger().requests, before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pay_answer_ends_reversed_through_pay_undo_and_the_ledger_is_whole() {
    let w = world("wallet-lost", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    w.sim.push_fault_on("gw/offline/pay", Fault::DropAfterCommit);
    let (_, v) = c.post("/v1/profiles/wallet/pay", pay(7000), None).await.expect("pay");
    wait_recovered(&c, Duration::from_secs(20)).await;
    let r = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(r["status"], "reversed", "{r}");
    let l = w.sim.ledger();
    assert_eq!((l.undone, l.pays_standing.len()), (1, 0), "{l:?}");
    assert_eq!(balance(&w), START);
    assert_eq!(l.by_path.get("gw/offline/pay"), Some(&1), "a pay is never resent");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_of_a_pay_that_never_arrived_ends_not_applied() {
    let w = world("wallet-never", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    // The connection is cut after the request was written, before the platform applied it.
    w.sim.push_fault_on("gw/offline/pay", Fault::Reset);
    let (_, v) = c.post("/v1/profiles/wallet/pay", pay(3000), None).await.expect("pay");
    wait_recovered(&c, Duration::from_secs(20)).await;
    let r = record(&c, v["id"].as_u64().expect("id")).await;
    assert_eq!(r["status"], "reversed", "{r}");
    assert!(r["message"].as_str().unwrap_or_default().contains("not applied"), "{r}");
    let l = w.sim.ledger();
    assert_eq!((l.undo_unknown, l.undone), (1, 0), "{l:?}");
    assert_eq!(balance(&w), START);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_mistyped_answers_are_unknown_never_declines() {
    let w = world("wallet-garbage", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    let answers: [Fault; 4] = [
        Fault::Garbage,
        Fault::AnswerWith(r#"{"errcode":"0","errmsg":"ok"}"#),
        Fault::AnswerWith(r#"{"errcode":0,"errmsg":"线下支付成功","order":{"orderId":"x1","terminalOrderId":"999999"}}"#),
        Fault::AnswerWith(r#"{"errcode":0,"errmsg":"线下支付成功"}"#),
    ];
    for f in answers {
        w.sim.push_fault_on("gw/offline/pay", f);
        let (_, v) = c.post("/v1/profiles/wallet/pay", pay(1000), None).await.expect("pay");
        wait_recovered(&c, Duration::from_secs(20)).await;
        let r = record(&c, v["id"].as_u64().expect("id")).await;
        assert_eq!(r["status"], "reversed", "{f:?} was believed: {r}");
    }
    assert_eq!(balance(&w), START, "every applied pay was undone");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_lanes_paying_at_once_on_one_terminal_are_each_applied_once() {
    let w = world("wallet-lanes", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = d.client.clone();
        tasks.push(tokio::spawn(async move { c.post("/v1/profiles/wallet/pay", pay(100 + i), Some(&format!("lane-{i}"))).await.expect("pay").1 }));
    }
    let mut traces = std::collections::HashSet::new();
    for t in tasks {
        let v = t.await.expect("task");
        assert_eq!(v["status"], "approved", "{v}");
        traces.insert(v["trace"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(traces.len(), 8, "every pay has its own terminalOrderId");
    let l = w.sim.ledger();
    assert_eq!(l.pays_standing.len(), 8);
    assert_eq!(balance(&w), START - (100..108).sum::<i64>());
    d.stop().await;
}

/// A POSP delivery file of `n` seeded orders.
fn delivery_file(w: &WalletWorld, n: usize) -> PathBuf {
    let orders: Vec<Value> = w.sim.seed_offline_orders(n).into_iter().map(|id| json!({"orderId": id, "accountType": "OAC"})).collect();
    let f = w.dir.join("delivery.json");
    std::fs::write(&f, json!({ "orders": orders }).to_string()).expect("file");
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4500_order_delivery_goes_out_as_three_requests_with_progress_shown() {
    let w = world("wallet-delivery", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let file = delivery_file(&w, 4500);
    // One order refused as unknown to the platform, one busy once (sent again, then accepted).
    let extra = w.dir.join("delivery2.json");
    let mut body: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    body["orders"].as_array_mut().expect("orders").push(json!({"orderId": "NOPE0001", "accountType": "OAC"}));
    std::fs::write(&extra, body.to_string()).expect("write");
    w.sim.push_busy("D000000007");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
        .args(["run", "wallet", "delivery", "--body", &format!("@{}", extra.display())])
        .env("POSGATE_SOCKET", &w.socket)
        .output()
        .await
        .expect("posgate run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("chunks 3/3"), "{stdout}");
    assert!(stdout.lines().filter(|l| l.starts_with("job ")).count() >= 2, "progress lines: {stdout}");
    assert!(stdout.contains("订单不存在"), "the refused order is reported: {stdout}");
    let l = w.sim.ledger();
    // 3 chunks of at most 2,000, plus one resend of the busy order.
    assert_eq!((l.delivery_requests, l.largest_delivery), (4, 2000), "{:?}", l.by_path);
    assert_eq!(l.delivered.len(), 4500);
    assert!(l.delivered.values().all(|n| *n == 1), "an order delivered twice");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_then_restart_resumes_and_sends_no_order_twice() {
    let w = world("wallet-delivery-kill", DEMO_APP_KEY).await;
    let file = delivery_file(&w, 4500);
    let body: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    let mut d = Daemon::start(&w.config, &w.socket, &[("POSGATE_CRASH_AT", "job_chunk:2".into())]).await;
    let (s, v) = d.client.post("/v1/profiles/wallet/delivery", body, Some("delivery-1")).await.expect("delivery");
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_u64().expect("id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    'wait: loop {
        for l in d.drain() {
            if l.contains("posgate-crashpoint job_chunk") {
                break 'wait;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the crash point was not reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.sim.ledger().delivery_requests, 2);
    d.kill9().await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let r = job_end(&d.client, id, Duration::from_secs(20)).await;
    assert_eq!(r["status"], "approved", "{}", r["result"]);
    assert_eq!((r["result"]["chunks_done"].as_u64(), r["result"]["accepted"].as_u64()), (Some(3), Some(4500)));
    let l = w.sim.ledger();
    assert_eq!(l.delivery_requests, 3, "a chunk with a journaled outcome was sent again");
    assert!(l.delivered.values().all(|n| *n == 1) && l.delivered.len() == 4500);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_payments_are_merged_and_opened_at_delivery_and_unmatched_parts_reported() {
    let w = world("wallet-merge", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    let (_, p) = c.post("/v1/profiles/wallet/products", json!({}), None).await.expect("products");
    assert_eq!(p["status"], "approved", "{p}");
    let (s, cat) = c.get("/v1/profiles/wallet/products").await.expect("catalog");
    assert_eq!(s, 200);
    assert_eq!(cat["products"].as_array().map(Vec::len), Some(3), "{cat}");
    assert!(cat["version"]["hash"].as_str().is_some_and(|h| h.len() == 64), "{cat}");
    let open = |app: &str, sum: i64| json!({"ID": "515411244445444444X", "name": "李四", "mobileNum": "13912345678", "appOrderId": app, "productId": "1010", "paySum": sum, "remark": "开卡"});
    for (app, sum) in [("A-1", 200_000), ("A-1", 250_000), ("B-1", 100_000)] {
        let (_, v) = c.post("/v1/profiles/wallet/open-card", open(app, sum), None).await.expect("open");
        assert_eq!(v["status"], "approved", "the merge answer is success to the POS: {v}");
        assert_eq!(v["result"]["merge"], true, "{v}");
        assert!(!v.to_string().contains("515411244445444444X"), "the ID number is never journaled in clear");
    }
    let (_, v) = c.post("/v1/profiles/wallet/open-card", open("C-1", 450_000), None).await.expect("open");
    assert_eq!(v["result"]["merge"], Value::Null, "{v}");
    assert_eq!(w.sim.ledger().opened, 1);
    let (s, v) = c.post("/v1/profiles/wallet/delivery", json!({}), None).await.expect("delivery");
    assert_eq!(s, 202, "{v}");
    let r = job_end(&c, v["id"].as_u64().expect("id"), Duration::from_secs(20)).await;
    assert_eq!(r["status"], "approved", "{}", r["result"]);
    let l = w.sim.ledger();
    assert_eq!(l.opened, 2, "the two A-1 parts were opened as one card");
    assert_eq!(l.delivered.len(), 2, "C-1 and the merged A-1 were delivered: {:?}", l.delivered);
    let unmatched = &r["result"]["report"]["unmatched"];
    assert_eq!(unmatched.as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(unmatched[0]["appOrderId"], "B-1");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_app_key_is_refused_by_the_platform_and_nothing_is_applied() {
    let w = world("wallet-badkey", "not-the-platforms-app-key-000").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let (_, v) = d.client.post("/v1/profiles/wallet/pay", pay(1000), None).await.expect("pay");
    assert_eq!(v["status"], "declined", "{v}");
    assert_eq!(v["code"], "40001", "{v}");
    let l = w.sim.ledger();
    assert_eq!((l.refused, l.pays_standing.len()), (1, 0));
    d.stop().await;
}

/// An appKey shorter than 24 bytes leaves the 3DES key zero-padded: `doctor` and the status say so,
/// naming the length and never the key; the demo's 30-byte key is no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_status_warn_that_a_short_app_key_makes_a_weak_zero_padded_3des_key() {
    let short = "short-appkey-1";
    let w = world("wallet-short-key", short).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let text = posgate::doctor::run(&w.config, Some(&d.client)).await.render();
    let line = text.lines().find(|l| l.contains("3DES")).unwrap_or_default().to_string();
    assert!(line.starts_with("WARN profile wallet: secrets.app_key is 14 bytes") && line.contains("zero-padded and weak"), "{text}");
    assert!(!text.contains(short), "doctor printed the appKey: {text}");
    let (_, st) = d.client.get("/v1/status").await.expect("status");
    let warnings = st["profiles"][0]["warnings"].to_string();
    assert!(warnings.contains("zero-padded and weak") && !warnings.contains(short), "{st}");
    d.stop().await;

    let w = world("wallet-long-key", DEMO_APP_KEY).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let text = posgate::doctor::run(&w.config, Some(&d.client)).await.render();
    assert!(!text.contains("3DES"), "a 30-byte appKey is warned about: {text}");
    d.stop().await;
}
