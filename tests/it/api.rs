//! The daemon end to end through its local API: bad input, idempotency across SIGKILL, recovery, blocking.
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use posgate::sim::faults::Fault;
use serde_json::{json, Value};

use crate::support::{wait_recovered, World};

fn consume(card: &str, fen: i64, reference: &str) -> Value {
    json!({"cardNo": card, "consumeType": "01", "pointAmount": fen, "cashAmount": 0, "registerTraceNo": reference})
}

const CARD: &str = "6222020000000000008";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_profile_is_refused_at_start_naming_file_line_and_field() {
    let world = World::new("badprofile").await;
    let path = world.dir.join("terminal-profiles/loyalty.toml");
    let text = std::fs::read_to_string(&path).expect("profile");
    std::fs::write(&path, text.replace("store = \"100000000000001\"", "store = 100000000000001")).expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).args(["serve", "--config"]).arg(&world.config).output().await.expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loyalty.toml:5") && err.contains("store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_problems_and_lose_nothing() {
    let world = World::new("badinput").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (s, v) = c.post("/v1/profiles/nosuch/consume", json!({}), None).await.expect("post");
    assert_eq!(s, 404, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("nosuch"), "{v}");
    let (s, v) = c.post("/v1/profiles/loyalty/teleport", json!({}), None).await.expect("post");
    assert_eq!(s, 404, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("teleport"), "{v}");
    let ct = [("content-type", "application/json")];
    let r = c.request(Method::POST, "/v1/profiles/loyalty/consume", &ct, Bytes::from_static(b"{\"cardNo\": ")).await.expect("post");
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("line"), "{:?}", r.body);
    let r = c.request(Method::POST, "/v1/profiles/loyalty/consume", &ct, Bytes::from(vec![b' '; 200_000])).await.expect("post");
    assert_eq!(r.status, 413, "{:?}", r.body);
    let (s, v) =
        c.post("/v1/profiles/loyalty/consume", json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 10.5, "cashAmount": 0}), None).await.expect("post");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("pointAmount"), "{v}");
    let (s, v) = c.post("/v1/profiles/loyalty/consume", json!({"consumeType": "01", "pointAmount": 10, "cashAmount": 0}), None).await.expect("post");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("cardNo"), "{v}");
    let (s, v) = c
        .post("/v1/profiles/loyalty/consume", json!({"cardNo": CARD, "traceNo": "000001", "consumeType": "01", "pointAmount": 10, "cashAmount": 0}), None)
        .await
        .expect("post");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("traceNo"), "{v}");
    // None of that reached the journal or the backend.
    let (_, j) = c.get("/v1/journal").await.expect("journal");
    assert_eq!(j["records"].as_array().map(Vec::len), Some(0), "{j}");
    assert!(world.sim.state_snapshot().transactions.is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_backend_is_reversed_and_named() {
    let world = World::new("garbage").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (s, _) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200);
    world.sim.push_fault(Fault::Garbage);
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 700, "G1"), Some("g-1")).await.expect("consume");
    assert!(v["error"].as_str().unwrap_or("").to_lowercase().contains("json"), "the error should say the answer was not JSON: {v}");
    wait_recovered(c, Duration::from_secs(20)).await;
    let (_, r) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 700, "G1"), Some("g-1")).await.expect("retry");
    assert_eq!(r["status"], "reversed", "{r}");
    let snap = world.sim.state_snapshot();
    assert!(snap.transactions.iter().filter(|t| t.op == "consume").all(|t| t.reversed), "{:?}", snap.transactions);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_result_across_sigkill() {
    let world = World::new("idem").await;
    let d = world.start(&[]).await;
    let (s, first) = d.client.post("/v1/profiles/loyalty/consume", consume(CARD, 1234, "I1"), Some("idem-1")).await.expect("consume");
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["status"], "approved");
    d.kill9().await;
    let d = world.start(&[]).await;
    let (s, again) = d.client.post("/v1/profiles/loyalty/consume", consume(CARD, 1234, "I1"), Some("idem-1")).await.expect("consume");
    assert_eq!(s, 200);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["trace"], first["trace"]);
    let applied = world.sim.state_snapshot().transactions.iter().filter(|t| t.op == "consume" && !t.reversed).count();
    assert_eq!(applied, 1);
    // The same key for another operation is a conflict, not a silent replay.
    let (s, v) = d.client.post("/v1/profiles/loyalty/card-query", json!({"cardNo": CARD}), Some("idem-1")).await.expect("query");
    assert_eq!(s, 409, "{v}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_owing_a_reversal_sends_it_before_new_money() {
    let world = World::with_profile_extra("blocked", "").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (s, _) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200);
    // The consume's answer is lost after the backend applied it, and the first reversals fail too.
    world.sim.push_fault(Fault::DropAfterCommit);
    for _ in 0..5 {
        world.sim.push_fault(Fault::Http500);
    }
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 999, "B1"), Some("b-1")).await.expect("consume");
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "pending", "{v}");
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["pending_recovery"], 1, "{st}");
    // Reversal first: the next sale waits while the owed reversal goes out, then goes ahead.
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 5, "B2"), Some("b-2")).await.expect("consume");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["pending_recovery"], 0, "the reversal went out before the sale: {st}");
    let (_, r) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 999, "B1"), Some("b-1")).await.expect("retry");
    assert_eq!(r["status"], "reversed", "{r}");
    let snap = world.sim.state_snapshot();
    let b1: Vec<_> = snap.transactions.iter().filter(|t| t.register_trace_no.as_deref() == Some("B1")).collect();
    assert!(b1.len() == 1 && b1[0].reversed, "{b1:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn void_refund_and_settlement_balance_with_the_backend() {
    let world = World::new("settle").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (_, a) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 1000, "S1"), None).await.expect("consume");
    let (_, b) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 250, "S2"), None).await.expect("consume");
    assert_eq!(a["status"], "approved", "{a}");
    let (s, v) = c.post("/v1/profiles/loyalty/cancel", json!({"original": a["id"]}), None).await.expect("cancel");
    assert_eq!((s, v["status"].clone()), (200, json!("approved")), "{v}");
    let (s, v) = c.post("/v1/profiles/loyalty/refund", json!({"original": b["id"]}), None).await.expect("refund");
    assert_eq!((s, v["status"].clone()), (200, json!("approved")), "{v}");
    let (_, st) = c.get("/v1/status").await.expect("status");
    let totals = &st["profiles"][0]["totals"];
    assert_eq!(totals["pointDebitAmount"], 1250, "{st}");
    assert_eq!(totals["pointCreditAmount"], 1250, "{st}");
    let (s, v) = c.post("/v1/profiles/loyalty/settle", json!({}), None).await.expect("settle");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["balanced"], true, "{v}");
    // The card is back where it started.
    let snap = world.sim.state_snapshot();
    assert!(snap.settlements.iter().all(|s| s.flag == "ss"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_that_keeps_failing_is_parked_visible_and_still_blocks_until_resolved() {
    let world = World::new("parked").await;
    let path = world.dir.join("terminal-profiles/loyalty.toml");
    let text = std::fs::read_to_string(&path).expect("profile").replace("max_attempts = 50", "max_attempts = 3");
    std::fs::write(&path, text).expect("profile");
    let d = world.start(&[]).await;
    let c = &d.client;
    let mut events = c.events().await.expect("events");
    let (s, _) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200);
    // Applied at the backend, answer lost; then every reversal fails.
    world.sim.push_fault(Fault::DropAfterCommit);
    for _ in 0..20 {
        world.sim.push_fault(Fault::Http500);
    }
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 321, "P1"), Some("p-1")).await.expect("consume");
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_u64().expect("id");
    // Parked after 3 attempts: visible in status, the reversals list and as a `recovery` event.
    let mut parked_event = None;
    while parked_event.is_none() {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next()).await.expect("in time").expect("stream").expect("open");
        if ev.event == "recovery" && ev.data["needs_attention"] == true {
            parked_event = Some(ev.data);
        }
    }
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["needs_attention"], 1, "{st}");
    assert_eq!(st["profiles"][0]["pending_recovery"], 0, "{st}");
    let (_, list) = c.get("/v1/reversals").await.expect("reversals");
    assert_eq!(list["records"][0]["id"].as_u64(), Some(id), "{list}");
    assert_eq!(list["records"][0]["recovery"]["parked"], true, "{list}");
    // Still an unresolved charge: no new money on this terminal, and the answer says what to do.
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 5, "P2"), Some("p-2")).await.expect("consume");
    assert_eq!(s, 409, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("--retry"), "{v}");
    assert_eq!(v["parked"], 1, "{v}");
    // A person re-queues it; the backend works again; the reversal goes through.
    world.sim.clear_faults();
    let (s, v) = c.post(&format!("/v1/reversals/{id}/retry"), json!({}), None).await.expect("retry");
    assert_eq!(s, 200, "{v}");
    wait_recovered(c, Duration::from_secs(20)).await;
    let (_, r) = c.get(&format!("/v1/journal/{id}")).await.expect("record");
    assert_eq!(r["status"], "reversed", "{r}");
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(CARD, 5, "P2"), Some("p-2")).await.expect("consume");
    assert_eq!((s, v["status"].clone()), (200, json!("approved")), "{v}");
    // A refund whose answer is lost has no automatic recovery: parked at once, resolved by hand.
    world.sim.push_fault(Fault::DropAfterCommit);
    let (s, v) = c.post("/v1/profiles/loyalty/refund", json!({"original": v["id"]}), None).await.expect("refund");
    assert_eq!(s, 202, "{v}");
    let rid = v["id"].as_u64().expect("id");
    assert_eq!(v["recovery"]["how"], "manual", "{v}");
    let (s, v) =
        c.post(&format!("/v1/reversals/{rid}/resolve"), json!({"outcome": "approved", "note": "vendor confirmed serial 1"}), None).await.expect("resolve");
    assert_eq!((s, v["status"].clone()), (200, json!("approved")), "{v}");
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["totals"]["refundCount"], 1, "the hand-resolved refund counts in the totals: {st}");
    let (s, v) = c.post("/v1/profiles/loyalty/settle", json!({}), None).await.expect("settle");
    assert_eq!((s, v["result"]["balanced"].clone()), (200, json!(true)), "{v}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_secrets_backends_and_the_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new("doctor").await;
    let tmk = world.dir.join("secrets/loyalty-tmk.hex");
    std::fs::set_permissions(&tmk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let d = world.start(&[]).await;
    let report = posgate::doctor::run(&world.config, Some(&d.client)).await;
    let text = report.render();
    assert!(!report.failed(), "{text}");
    assert!(text.contains("profile loyalty: backend reachable, certificate verified"), "{text}");
    assert!(text.contains("secret master_key present and private"), "{text}");
    assert!(text.contains("daemon running"), "{text}");
    assert!(!text.contains(crate::support::TMK_HEX), "doctor printed a secret: {text}");
    // A world-readable key is a failure (the daemon refuses to start with it), with the fix.
    std::fs::set_permissions(&tmk, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = posgate::doctor::run(&world.config, Some(&d.client)).await.render();
    assert!(text.contains("FAIL config") && text.contains("secrets.master_key") && text.contains("mode 0644") && text.contains("chmod 600"), "{text}");
    std::fs::set_permissions(&tmk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A backend whose certificate the CA bundle does not sign is a failure.
    let other = posgate::net::tls::TestPki::ensure(&world.dir.join("other-ca")).expect("pki");
    std::fs::copy(&other.ca_file, world.dir.join("pki/test-ca.pem")).expect("swap CA");
    let report = posgate::doctor::run(&world.config, Some(&d.client)).await;
    let text = report.render();
    assert!(report.failed(), "{text}");
    // In the same words the POS app would get for a failed request, never a debug dump.
    assert!(text.contains("FAIL profile loyalty: backend: TLS handshake with 127.0.0.1:") && text.contains("CA bundle"), "{text}");
    assert!(!text.contains("Custom {") && !text.contains("InvalidCertificate"), "{text}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_idempotency_key_sent_concurrently_charges_once() {
    let world = World::new("idem-race").await;
    let d = world.start(&[]).await;
    world.sim.push_fault(Fault::Delay(Duration::from_millis(200)));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = d.client.clone();
        tasks.push(tokio::spawn(async move { c.post("/v1/profiles/loyalty/consume", consume(CARD, 777, "R1"), Some("race-1")).await.expect("consume") }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (s, v) = t.await.expect("task");
        assert!(s == 200 || s == 202, "{s} {v}");
        ids.insert(v["id"].as_u64().expect("id"));
    }
    assert_eq!(ids.len(), 1, "one journal record for one key: {ids:?}");
    let (_, v) = d.client.post("/v1/profiles/loyalty/consume", consume(CARD, 777, "R1"), Some("race-1")).await.expect("consume");
    assert_eq!(v["status"], "approved", "{v}");
    let applied = world.sim.state_snapshot().transactions.iter().filter(|t| t.op == "consume").count();
    assert_eq!(applied, 1);
    d.stop().await;
}
