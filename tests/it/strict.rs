//! The engine against a strict host: single-flight sign-on, healing "sign on first", reversal first.
use std::time::Duration;

use posgate::sim::faults::Fault;
use serde_json::{json, Value};

use crate::support::{wait_recovered, World};

const CARD: &str = "6222020000000000008";

fn consume(fen: i64, reference: &str) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": fen, "cashAmount": 0, "registerTraceNo": reference})
}

fn checkins(records: &Value) -> usize {
    records["records"].as_array().map(|a| a.iter().filter(|r| r["operation"] == "checkin").count()).unwrap_or(0)
}

/// Regression: 8 lanes sending their first consume at once produced 8 check-ins; each moved the host to
/// a new batch, 2 sales were declined with 77 and 6 batches were abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_first_consumes_share_one_checkin_and_one_batch() {
    let world = World::new("signon-storm").await;
    let d = world.start(&[]).await;
    let mut lanes = tokio::task::JoinSet::new();
    for i in 0..8 {
        let c = d.client.clone();
        lanes.spawn(
            async move { c.post("/v1/profiles/loyalty/consume", consume(100 + i, &format!("L{i}")), Some(&format!("storm-{i}"))).await.expect("consume") },
        );
    }
    let mut batches = std::collections::BTreeSet::new();
    while let Some(r) = lanes.join_next().await {
        let (s, v) = r.expect("lane");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
        batches.insert(v["batch"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(batches.len(), 1, "every sale in one batch: {batches:?}");
    let (_, j) = d.client.get("/v1/journal").await.expect("journal");
    assert_eq!(checkins(&j), 1, "exactly one check-in: {j}");
    let snap = world.sim.state_snapshot();
    assert_eq!(snap.batches.get("10000001").map(String::as_str), batches.iter().next().map(String::as_str), "the host is on the daemon's batch");
    assert_eq!(snap.transactions.iter().filter(|t| t.op == "consume" && !t.reversed).count(), 8);
    d.stop().await;
}

/// Regression: a check-in the host committed but whose answer was lost left the daemon on its old batch,
/// and every later sale was declined with 77 until a person checked in by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_checkin_answer_heals_itself_and_no_sale_is_declined_with_77() {
    let world = World::new("lost-checkin").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(300, "A1"), Some("lc-1")).await.expect("first");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let first_batch = v["batch"].as_str().unwrap_or_default().to_string();
    // The host moves to a new batch, but its answer never arrives.
    world.sim.push_fault_on("jpos/terminal/checkin", Fault::DropAfterCommit);
    let (s, v) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_ne!(s, 200, "the check-in answer was lost: {v}");
    for i in 0..5 {
        let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(200 + i, &format!("B{i}")), Some(&format!("lc-b{i}"))).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "sale {i} after the lost check-in: {v}");
        assert_ne!(v["code"], "77", "{v}");
    }
    let snap = world.sim.state_snapshot();
    let applied = snap.transactions.iter().filter(|t| t.op == "consume" && !t.reversed).count();
    assert_eq!(applied, 6, "host-applied sales equal the sales told approved");
    // The first batch held an approved sale: it was settled before a new one was opened.
    assert!(snap.settlements.iter().any(|st| st.batch == first_batch), "batch {first_batch} settled: {:?}", snap.settlements);
    d.stop().await;
}

/// The host answers 77 to a sale (it moved to another batch by itself): the daemon signs on once and the
/// same POS request is resent in the new batch with a fresh trace, answered approved; a retry with the
/// same Idempotency-Key finds the resend's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_refused_until_sign_on_is_resent_in_the_new_batch_inside_the_same_request() {
    let world = World::new("heal-77").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(100, "H0"), Some("h-0")).await.expect("first");
    assert_eq!(v["status"], "approved", "{v}");
    let first_batch = v["batch"].as_str().unwrap_or_default().to_string();
    // The host moves the terminal to another batch by itself; the daemon still thinks it is open.
    world.sim.move_to_new_batch("10000001");
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(250, "H1"), Some("h-1")).await.expect("sale");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_ne!(v["batch"].as_str(), Some(first_batch.as_str()), "resent in a new batch: {v}");
    assert_eq!(world.sim.declined_77(), 1, "the host refused the first send once");
    // The refused send is journaled, failed, pointing at its resend.
    let (_, j) = c.get("/v1/journal").await.expect("journal");
    let refused: Vec<&Value> = j["records"].as_array().map(|a| a.iter().filter(|r| r["superseded_by"] == v["id"]).collect()).unwrap_or_default();
    assert_eq!(refused.len(), 1, "{j}");
    assert_eq!(refused[0]["status"], "failed", "{j}");
    // The batch the first sale was in was settled before the new one opened.
    assert!(world.sim.state_snapshot().settlements.iter().any(|st| st.batch == first_batch));
    let (s2, again) = c.post("/v1/profiles/loyalty/consume", consume(250, "H1"), Some("h-1")).await.expect("retry");
    assert_eq!((s2, &again["id"]), (200, &v["id"]), "the retry answers from the resend: {again}");
    let snap = world.sim.state_snapshot();
    assert_eq!(snap.transactions.iter().filter(|t| t.op == "consume" && t.amount_fen == 250 && !t.reversed).count(), 1, "charged once");
    d.stop().await;
}

/// A new sale on a terminal that owes a reversal waits while the reversal goes out, then goes ahead
/// (as a bank terminal does) instead of bouncing the cashier with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_waits_for_the_owed_reversal_then_goes_ahead() {
    let world = World::with_profile_extra("reversal-first", "").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (_, v) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(v["status"], "approved", "{v}");
    // The sale's answer is lost and its immediate reversal too: the reversal is owed.
    world.sim.push_fault(Fault::DropAfterCommit);
    world.sim.push_fault(Fault::Reset);
    let (_, first) = c.post("/v1/profiles/loyalty/consume", consume(410, "R1"), Some("r-1")).await.expect("first");
    assert_ne!(first["status"], "approved", "{first}");
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(420, "R2"), Some("r-2")).await.expect("second");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "the second sale went ahead after the reversal: {v}");
    wait_recovered(c, Duration::from_secs(20)).await;
    let snap = world.sim.state_snapshot();
    let live: Vec<i64> = snap.transactions.iter().filter(|t| t.op == "consume" && !t.reversed).map(|t| t.amount_fen).collect();
    assert_eq!(live, vec![420], "the first sale was reversed before the second was sent");
    d.stop().await;
}

/// While the host keeps the reversal from completing, a new sale waits its budget, then gets 409 with
/// `Retry-After` and the owed record's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_that_cannot_complete_gives_409_with_retry_after_and_the_owed_id() {
    let world = World::with_profile_extra("reversal-409", "").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let _ = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    world.sim.push_fault(Fault::DropAfterCommit);
    for _ in 0..30 {
        world.sim.push_fault(Fault::Http500);
    }
    let (_, first) = c.post("/v1/profiles/loyalty/consume", consume(510, "Q1"), Some("q-1")).await.expect("first");
    let owed_id = first["id"].as_u64().expect("id");
    let r = c
        .request(
            hyper::Method::POST,
            "/v1/profiles/loyalty/consume",
            &[("content-type", "application/json"), ("idempotency-key", "q-2")],
            bytes::Bytes::from(consume(520, "Q2").to_string()),
        )
        .await
        .expect("second");
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!(r.status, 409, "{body}");
    assert_eq!(body["oldest"].as_u64(), Some(owed_id), "{body}");
    assert!(r.headers.get("retry-after").is_some(), "Retry-After: {:?}", r.headers);
    world.sim.clear_faults();
    // Parked meanwhile (the host failed it many times): a person re-queues it.
    let (_, st) = c.get("/v1/status").await.expect("status");
    if st["profiles"][0]["needs_attention"].as_u64().unwrap_or(0) > 0 {
        let (s, v) = c.post(&format!("/v1/reversals/{owed_id}/retry"), json!({}), None).await.expect("retry");
        assert_eq!(s, 200, "{v}");
    }
    wait_recovered(c, Duration::from_secs(30)).await;
    let snap = world.sim.state_snapshot();
    assert!(snap.transactions.iter().all(|t| t.amount_fen != 520), "the refused sale never reached the host");
    d.stop().await;
}

/// Regression (the daemon hung 4 s into a slow-host run): two recovery attempts on one record met and
/// the claim deadlocked, after which `GET /v1/status` never answered and SIGTERM was ignored. With the
/// host slower than the timeout and 4 lanes, the local API keeps answering throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_a_slow_host_the_local_api_keeps_answering_status() {
    let world = World::new("watchdog").await;
    let d = world.start(&[]).await;
    let c = d.client.clone();
    let _ = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    // Every financial request and reversal is answered after the client's 2 s timeout for a while.
    for _ in 0..24 {
        world.sim.push_fault(Fault::Delay(Duration::from_millis(2300)));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..4 {
        let (c, stop) = (c.clone(), stop.clone());
        lanes.spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c.post("/v1/profiles/loyalty/consume", consume(100 + lane, &format!("W{lane}-{n}")), Some(&format!("w-{lane}-{n}"))).await;
                n += 1;
            }
        });
    }
    let mut worst = Duration::ZERO;
    let mut took = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < end {
        let t0 = tokio::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), c.get("/v1/status")).await;
        let dt = t0.elapsed();
        assert!(matches!(r, Ok(Ok((200, _)))), "GET /v1/status did not answer within 5 s: {r:?}");
        worst = worst.max(dt);
        took.push(dt);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    world.sim.clear_faults();
    while lanes.join_next().await.is_some() {}
    took.sort();
    let median = took[took.len() / 2];
    eprintln!("status latency under a slow host: {} probes, median {median:?}, worst {worst:?}", took.len());
    // A hang is seconds; the figures are printed. Only a generous bound is asserted (noisy machines).
    assert!(median < Duration::from_millis(100), "median status latency {median:?}");
    assert!(worst < Duration::from_secs(1), "worst status latency {worst:?}");
    wait_recovered(&c, Duration::from_secs(60)).await;
    // SIGTERM is obeyed.
    d.stop().await;
}

/// Regression (money lost): a consume answered with a `status` of the wrong type (`0`, `true`, a list, an
/// object), a code the document does not define, or no status, was booked "declined" with no reversal
/// owed while the host had applied it. Each now ends unknown and is reversed; the host's books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_answer_is_never_a_decline_it_is_reversed() {
    let world = World::new("hostile").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let _ = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    let hostile = [
        r#"{"status":0,"message":"x"}"#,
        r#"{"status":true}"#,
        r#"{"status":["00"]}"#,
        r#"{"status":{"code":"51"}}"#,
        r#"{"status":"Q7","message":"?"}"#,
        r#"{"message":"no status"}"#,
        r#"{"status":"00","traceNo":"999999","serialNo":"1"}"#,
        r#"{"status":"51","batchNo":"999999"}"#,
    ];
    for (i, body) in hostile.iter().enumerate() {
        world.sim.push_fault(Fault::AnswerWith(body));
        let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(600 + i as i64, &format!("X{i}")), Some(&format!("x-{i}"))).await.expect("consume");
        assert_ne!(v["status"], "declined", "{body} was booked as a decline: {v}");
        assert_ne!(v["status"], "approved", "{body} was believed: {v}");
        wait_recovered(c, Duration::from_secs(20)).await;
        let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(600 + i as i64, &format!("X{i}")), Some(&format!("x-{i}"))).await.expect("again");
        assert_eq!(v["status"], "reversed", "{body}: {v}");
    }
    assert!(world.sim.applied_sales().is_empty(), "every hostile-answered sale was reversed at the host: {:?}", world.sim.applied_sales());
    d.stop().await;
}

/// Regression: an answer naming another trace was taken as the reversal's (counted reversed while the
/// host still held the consume) and as the settlement's (batch closed here, open at the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_requests_answer_is_not_a_reversal_or_a_settlement() {
    let world = World::new("other-answer").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let _ = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    // The consume's answer is lost; its reversal is answered with another trace's "reversed".
    world.sim.push_fault(Fault::DropAfterCommit);
    world.sim.push_fault(Fault::AnswerWith(r#"{"status":"00","traceNo":"999998"}"#));
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(700, "Y1"), Some("y-1")).await.expect("consume");
    assert_ne!(v["status"], "reversed", "another trace's answer was taken for the reversal: {v}");
    wait_recovered(c, Duration::from_secs(20)).await;
    assert!(world.sim.applied_sales().is_empty(), "the consume was really reversed at the host");
    // A sale, then a settlement answered for another batch: not settled here.
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(710, "Y2"), None).await.expect("consume");
    assert_eq!(v["status"], "approved", "{v}");
    world.sim.push_fault_on("jpos/trans/settle", Fault::AnswerWith(r#"{"status":"00","settleFlag":"ss","batchNo":"999999"}"#));
    let (_, s) = c.post("/v1/profiles/loyalty/settle", json!({}), None).await.expect("settle");
    assert_ne!(s["status"], "approved", "another batch's answer was taken for the settlement: {s}");
    wait_recovered(c, Duration::from_secs(20)).await;
    assert!(world.sim.unsettled_batches_with_applied().is_empty(), "the settlement's resend settled the batch at the host");
    d.stop().await;
}

/// No batch is abandoned: a batch holding approved sales is settled before a check-in opens a new one;
/// where the host refuses, it is listed as unsettled in status until `settle --batch N` settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_host_refused_to_settle_is_listed_and_settled_by_number_later() {
    let world = World::new("unsettled").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(800, "U1"), None).await.expect("consume");
    assert_eq!(v["status"], "approved", "{v}");
    let first = v["batch"].as_str().unwrap_or_default().to_string();
    // The host refuses the settlement the check-in starts with (95: reconciliation error).
    world.sim.push_refusal_on("jpos/trans/settle", "95");
    let (s, v) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_ne!(v["batch"].as_str(), Some(first.as_str()), "{v}");
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["unsettled_batches"], json!([first]), "{st}");
    assert_eq!(world.sim.unsettled_batches_with_applied(), vec![("10000001".to_string(), first.clone())]);
    // New sales go into the new batch meanwhile.
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(810, "U2"), None).await.expect("consume");
    assert_eq!(v["status"], "approved", "{v}");
    // The technician settles the old batch by number (the CLI, through the real binary).
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
        .args(["settle", "loyalty", "--batch", &first, "--socket"])
        .arg(&world.socket)
        .output()
        .await
        .expect("posgate settle");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["unsettled_batches"], json!([]), "{st}");
    let ledger = world.sim.unsettled_batches_with_applied();
    assert!(ledger.iter().all(|(_, b)| *b != first), "batch {first} settled at the host: {ledger:?}");
    assert!(world.sim.state_snapshot().settlements.iter().any(|s| s.batch == first && s.flag == "ss"));
    // A batch that is neither open nor listed cannot be named.
    let (s, v) = c.post("/v1/profiles/loyalty/settle", json!({"batch": "123456"}), None).await.expect("settle");
    assert_eq!(s, 400, "{v}");
    d.stop().await;
}

/// Regression: a settlement whose outcome was unknown, resent while the host was unreachable (refused
/// before a byte left), was marked failed and its batch reopened, although the first send may have
/// settled the batch at the host. The resend says nothing about the first send: the record stays owed,
/// the batch stays closed, and once the host is back the resend settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_resend_not_sent_keeps_it_owed_and_the_batch_closed() {
    let mut world = World::new("settle-resend-notsent").await;
    let d = world.start(&[]).await;
    let c = d.client.clone();
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(700, "S1"), None).await.expect("consume");
    assert_eq!(v["status"], "approved", "{v}");
    let batch = v["batch"].as_str().unwrap_or_default().to_string();
    // The host holds the settlement; then it goes away, taking the open connection with it.
    world.sim.push_fault_on("jpos/trans/settle", Fault::Delay(Duration::from_secs(5)));
    let settle = tokio::spawn({
        let c = c.clone();
        async move { c.post("/v1/profiles/loyalty/settle", json!({}), None).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    world.stop_sim();
    let (s, v) = settle.await.expect("join").expect("settle answer");
    assert_eq!((s, v["status"].as_str()), (202, Some("pending")), "{v}");
    let id = v["id"].as_u64().expect("id");
    // Let the resends meet the refused connection a few times.
    let mut rec = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rec = c.get(&format!("/v1/journal/{id}")).await.expect("record").1;
        if rec["recovery"]["attempts"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
    }
    assert!(rec["recovery"]["attempts"].as_u64().unwrap_or(0) >= 2, "resends tried: {rec}");
    assert_eq!(rec["state"], "unknown", "a resend that was not sent must not end the settlement: {rec}");
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["batch_open"], json!(false), "batch {batch} must stay closed: {st}");
    // A sale meanwhile waits for the settlement rather than going into the closed batch.
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(10, "S2"), None).await.expect("consume");
    assert_eq!(s, 409, "{v}");
    world.restart_sim().await;
    let st = wait_recovered(&c, Duration::from_secs(20)).await;
    let rec = c.get(&format!("/v1/journal/{id}")).await.expect("record").1;
    assert_eq!(rec["status"], "approved", "{rec} / {st}");
    assert!(world.sim.state_snapshot().settlements.iter().any(|s| s.batch == batch), "settled at the host");
}

/// Regression (the generic crash loop: sales ended "refused until the terminal signs on again"): a sale
/// the host refused with 77 whose resend was never journaled (here both healing check-ins lose their
/// answers; in the crash loop the daemon was killed in between) ended `failed` for good, and the POS
/// asking again with the same Idempotency-Key was told so. Now that retry heals it: one sign-on, one
/// resend, approved, applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_refused_until_sign_on_whose_resend_never_went_out_is_resent_on_the_pos_retry() {
    let world = World::new("heal-on-retry").await;
    let d = world.start(&[]).await;
    let c = &d.client;
    let (_, v) = c.post("/v1/profiles/loyalty/consume", consume(100, "R1"), Some("r1")).await.expect("consume");
    assert_eq!(v["status"], "approved", "{v}");
    world.sim.move_to_new_batch("10000001");
    world.sim.push_fault_on("jpos/terminal/checkin", Fault::DropAfterCommit);
    world.sim.push_fault_on("jpos/terminal/checkin", Fault::DropAfterCommit);
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(200, "R2"), Some("r2")).await.expect("consume");
    assert_ne!(v["status"], "approved", "both check-ins lost: the first try cannot end approved ({s} {v})");
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(200, "R2"), Some("r2")).await.expect("retry");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "the retry heals it: {v}");
    let applied = world.sim.applied_sales().iter().filter(|t| t.register_trace_no.as_deref() == Some("R2")).count();
    assert_eq!(applied, 1, "applied exactly once");
    // And again: the same answer, nothing sent.
    let (_, again) = c.post("/v1/profiles/loyalty/consume", consume(200, "R2"), Some("r2")).await.expect("again");
    assert_eq!(again["id"], v["id"], "{again}");
}
