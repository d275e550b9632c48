//! End-to-end tests: the loyalty backend driven against the loyalty simulator over real TLS on loopback.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::*;
use crate::backend::loyalty::LoyaltyBackend;
use crate::backend::{Backend, OriginalRef, Recovered, Recovery, Reply, SettleRequest, Stage, TerminalIdentity, TxRequest, Verdict};

const RICH: &str = "6222021234567890123";
const NOPIN: &str = "6222020000000000016";
const INACTIVE: &str = "6222029999999999997";

/// A tiny stand-in for the engine: trace numbers, session, running totals, originals.
struct Lane {
    b: LoyaltyBackend,
    id: TerminalIdentity,
    session: Value,
    batch: String,
    trace: u32,
    journal: u64,
    totals: BTreeMap<String, i64>,
    lines: Vec<Value>,
}

struct Done {
    reply: Result<Reply, crate::backend::BackendError>,
    original: OriginalRef,
    prepared: crate::backend::Prepared,
}

impl Lane {
    fn next_trace(&mut self) -> String {
        self.trace += 1;
        format!("{:06}", self.trace)
    }

    async fn sign_on(&mut self) {
        self.journal += 1;
        let t = self.next_trace();
        let s = self.b.sign_on(&self.id, self.journal, &t).await.unwrap();
        self.batch = s.batch.unwrap();
        self.session = s.session;
        self.totals.clear();
        self.lines.clear();
    }

    /// prepare + execute with a given trace; approved totals are added like the engine would.
    async fn run_at(&mut self, op: &str, body: Value, original: Option<&OriginalRef>, trace: String) -> Done {
        let p = self.b.prepare(op, body.as_object().unwrap(), original, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap();
        self.journal += 1;
        let tx = TxRequest {
            slot: None,
            journal_id: self.journal,
            operation: op,
            identity: &self.id,
            trace: &trace,
            batch: &self.batch,
            created_at: "2026-11-23T02:00:00.000Z",
            session: &self.session,
            public: &p.public,
            vault: &p.vault,
            transient: &p.transient,
            original,
        };
        let reply = self.b.execute(tx).await;
        if let Ok(r) = &reply {
            if r.verdict == Verdict::Approved {
                for (k, v) in &p.totals {
                    *self.totals.entry(k.clone()).or_insert(0) += v;
                }
                self.lines.push(json!({"operation": op, "trace": trace, "amount_fen": p.amount_fen, "card": p.card_masked}));
            }
        }
        let original = OriginalRef {
            id: self.journal,
            operation: op.into(),
            trace: trace.clone(),
            batch: self.batch.clone(),
            amount_fen: p.amount_fen,
            reference: reply.as_ref().ok().and_then(|r| r.reference.clone()),
            trans_time: reply.as_ref().ok().and_then(|r| r.trans_time.clone()),
            created_at: chrono::Local::now().to_rfc3339(),
            public: p.public.clone(),
            vault: p.vault.clone(),
        };
        Done { reply, original, prepared: p }
    }

    async fn run(&mut self, op: &str, body: Value, original: Option<&OriginalRef>) -> Done {
        let t = self.next_trace();
        self.run_at(op, body, original, t).await
    }

    /// One reversal attempt of a record, replayed from the journal (no transient fields).
    async fn reverse(&mut self, d: &Done, original: Option<&OriginalRef>) -> Result<Recovered, crate::backend::BackendError> {
        let empty = Map::new();
        let tx = TxRequest {
            slot: None,
            journal_id: d.original.id,
            operation: &d.original.operation,
            identity: &self.id,
            trace: &d.original.trace,
            batch: &d.original.batch,
            created_at: "2026-11-23T02:00:00.000Z",
            session: &self.session,
            public: &d.prepared.public,
            vault: &d.prepared.vault,
            transient: &empty,
            original,
        };
        self.b.recover(tx, Recovery::Reverse).await
    }

    async fn settle(&mut self) -> crate::backend::Settled {
        self.journal += 1;
        let t = self.next_trace();
        let empty = Map::new();
        let lines = self.lines.clone();
        let req = SettleRequest {
            journal_id: self.journal,
            identity: &self.id,
            trace: &t,
            batch: &self.batch,
            session: &self.session,
            totals: &self.totals,
            lines: &|| Ok(lines.clone()),
            public: &empty,
        };
        self.b.settle(req).await.unwrap()
    }
}

fn approved(d: &Done) -> &Reply {
    match &d.reply {
        Ok(r) if r.verdict == Verdict::Approved => r,
        other => panic!("expected approved, got {other:?}"),
    }
}

fn code(d: &Done) -> String {
    match &d.reply {
        Ok(r) => r.code.clone(),
        Err(e) => panic!("expected an answer, got {e}"),
    }
}

fn stage(d: &Done) -> Stage {
    match &d.reply {
        Err(e) => e.stage,
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

async fn start() -> (Arc<LoyaltySim>, Lane, tokio::sync::oneshot::Sender<()>) {
    let dir = std::env::temp_dir().join(format!("posgate-loyalty-sim-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = crate::net::tls::TestPki::ensure(&dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sim = Arc::new(LoyaltySim::demo());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sim.clone().serve(listener, pki.acceptor().unwrap(), async move {
        let _ = stopped.await;
    }));
    let b = crate::backend::loyalty::tests::backend_for(&format!("https://127.0.0.1:{port}"), &dir, DEMO_MASTER_KEY_HEX, DEMO_STORE, "10000001");
    let lane = Lane {
        b,
        id: TerminalIdentity { store: DEMO_STORE.into(), terminal: "10000001".into(), operator: "01".into() },
        session: Value::Null,
        batch: String::new(),
        trace: 0,
        journal: 0,
        totals: BTreeMap::new(),
        lines: Vec::new(),
    };
    (sim, lane, stop)
}

fn consume(card: &str, fen: i64, pin: Option<&str>, reg: &str) -> Value {
    let mut v = json!({"cardNo": card, "consumeType": "01", "pointAmount": fen, "cashAmount": 500, "registerTraceNo": reg});
    if let Some(p) = pin {
        v["password"] = json!(p);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_against_simulator_end_to_end() {
    let (sim, mut lane, stop) = start().await;
    let balance = |sim: &LoyaltySim, card: &str| sim.state_snapshot().balances[card];

    // Before check-in the terminal has no PIN key; the simulator refuses it with 77.
    lane.batch = "000001".into();
    let d = lane.run("card-query", json!({"cardNo": RICH}), None).await;
    assert_eq!(code(&d), "77");

    lane.sign_on().await;
    assert_eq!(lane.batch, "000001");
    assert_eq!(lane.session["storeName"], json!("演示门店"));
    assert_eq!(lane.session["workingKey"].as_str().unwrap().len(), 64);

    let q = lane.run("card-query", json!({"cardNo": RICH}), None).await;
    assert_eq!(approved(&q).fields["pointBalance"], json!(100_000));
    assert_eq!(approved(&q).fields["vaucher"][0]["amount"], json!(10_000));

    // Consume with the right PIN, then a wrong PIN.
    let sale = lane.run("consume", consume(RICH, 1050, Some("123456"), "R1"), None).await;
    let r = approved(&sale);
    assert_eq!(r.fields["pointBalance"], json!(100_000 - 1050));
    assert!(r.reference.is_some() && r.trans_time.is_some());
    let bad = lane.run("consume", consume(RICH, 100, Some("000000"), "R2"), None).await;
    assert_eq!(code(&bad), "55");
    assert_eq!(bad.reply.as_ref().unwrap().verdict, Verdict::Declined);
    let poor = lane.run("consume", consume("6222021234567890131", 999_999, Some("654321"), "R3"), None).await;
    assert_eq!(code(&poor), "51");

    // Answer lost after commit: unknown; the reversal applies once, the repeat answers 12.
    sim.push_fault(Fault::DropAfterCommit);
    let lost = lane.run("consume", consume(RICH, 700, Some("123456"), "R4"), None).await;
    assert_eq!(stage(&lost), Stage::Unknown);
    assert_eq!(balance(&sim, RICH), 100_000 - 1050 - 700);
    match lane.reverse(&lost, None).await.unwrap() {
        Recovered::Reversed { code, .. } => assert_eq!(code, "00"),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(&sim, RICH), 100_000 - 1050);
    match lane.reverse(&lost, None).await.unwrap() {
        Recovered::Reversed { code, .. } => assert!(code == "12" || code == "25", "{code}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(&sim, RICH), 100_000 - 1050);

    // Reset before applying: the reversal finds nothing (25) and a late original is refused.
    sim.push_fault(Fault::Reset);
    let trace = lane.next_trace();
    let reset = lane.run_at("consume", consume(NOPIN, 300, None, "R5"), None, trace.clone()).await;
    assert_eq!(stage(&reset), Stage::Unknown);
    match lane.reverse(&reset, None).await.unwrap() {
        Recovered::Reversed { code, .. } => assert_eq!(code, "25"),
        other => panic!("{other:?}"),
    }
    let late = lane.run_at("consume", consume(NOPIN, 300, None, "R5"), None, trace).await;
    assert_eq!(code(&late), "12");
    assert_eq!(balance(&sim, NOPIN), 20_000);

    // 500 is unknown and applies nothing; garbage is unknown and applied, so it must be reversed.
    sim.push_fault(Fault::Http500);
    let e500 = lane.run("consume", consume(NOPIN, 100, None, "R6"), None).await;
    assert_eq!(stage(&e500), Stage::Unknown);
    assert_eq!(balance(&sim, NOPIN), 20_000);
    sim.push_fault(Fault::Garbage);
    let junk = lane.run("consume", consume(NOPIN, 100, None, "R7"), None).await;
    assert_eq!(stage(&junk), Stage::Unknown);
    assert!(junk.reply.as_ref().unwrap_err().detail.contains("not JSON"));
    assert_eq!(balance(&sim, NOPIN), 19_900);
    assert!(matches!(lane.reverse(&junk, None).await.unwrap(), Recovered::Reversed { .. }));
    assert!(matches!(lane.reverse(&e500, None).await.unwrap(), Recovered::Reversed { .. }));
    assert_eq!(balance(&sim, NOPIN), 20_000);

    // Void the first sale; refund and refund-cancel a second one.
    let void = lane.run("cancel", json!({}), Some(&sale.original)).await;
    approved(&void);
    assert_eq!(balance(&sim, RICH), 100_000);
    let again = lane.run("cancel", json!({}), Some(&sale.original)).await;
    assert_eq!(code(&again), "22");
    let sale2 = lane.run("consume", consume(RICH, 2000, Some("123456"), "R8"), None).await;
    approved(&sale2);
    let refund = lane.run("refund", json!({}), Some(&sale2.original)).await;
    assert_eq!(approved(&refund).fields["returnPoint"], json!(2000));
    assert_eq!(approved(&refund).fields["returnCash"], json!(500));
    assert_eq!(balance(&sim, RICH), 100_000);
    let rc = lane.run("refund-cancel", json!({}), Some(&refund.original)).await;
    approved(&rc);
    assert_eq!(balance(&sim, RICH), 98_000);

    // A voided sale whose void is lost and reversed: the sale is live again.
    sim.push_fault(Fault::DropAfterCommit);
    let sale3 = lane.run("consume", consume(RICH, 100, Some("123456"), "R9"), None).await;
    assert_eq!(stage(&sale3), Stage::Unknown);
    assert!(matches!(lane.reverse(&sale3, None).await.unwrap(), Recovered::Reversed { .. }));

    // Tickets, verify code and activation.
    let tq = lane.run("ticket-query", json!({"cardNo": RICH}), None).await;
    assert_eq!(approved(&tq).fields["ticket"][0]["amount"], json!(1000));
    let tc = lane.run("ticket-consume", json!({"cardNo": RICH, "ticket": [{"id": 1, "type": "01", "num": 2, "amount": 1000}]}), None).await;
    approved(&tc);
    approved(&lane.run("send-verify-code", json!({"mobileNo": "13900000000"}), None).await);
    let act = lane.run("card-activate", json!({"cardNo": INACTIVE, "mobileNo": "13900000000", "verifyCode": "123456", "idType": "01"}), None).await;
    approved(&act);
    assert!(sim.state_snapshot().active[INACTIVE]);

    // A reused trace is refused and recorded as the daemon's fault.
    let used = sale2.original.trace.clone();
    let dup = lane.run_at("consume", consume(NOPIN, 1, None, "R10"), None, used).await;
    assert_eq!(code(&dup), "94");
    assert_eq!(sim.state_snapshot().violations.len(), 1);

    // Settlement with the engine's totals balances.
    let snap = sim.state_snapshot();
    assert_eq!(snap.batch_totals("10000001", "000001"), lane.totals.iter().filter(|(_, v)| **v != 0).map(|(k, v)| (k.clone(), *v)).collect());
    let s = lane.settle().await;
    assert!(s.balanced && !s.uploaded, "{:?}", s.reply);
    // The batch is closed: work is refused until the next check-in.
    let closed = lane.run("card-query", json!({"cardNo": RICH}), None).await;
    assert_eq!(code(&closed), "77");

    // Next batch: an unbalanced settlement uploads the lines.
    lane.sign_on().await;
    assert_eq!(lane.batch, "000002");
    approved(&lane.run("consume", consume(NOPIN, 250, None, "R11"), None).await);
    *lane.totals.entry("pointDebitAmount".into()).or_insert(0) += 1;
    let s = lane.settle().await;
    assert!(!s.balanced && s.uploaded);
    let snap = sim.state_snapshot();
    assert_eq!(snap.uploads.len(), 1);
    assert_eq!(snap.uploads[0].len(), 1);
    assert_eq!(snap.settlements.iter().map(|s| (s.batch.as_str(), s.flag.as_str())).collect::<Vec<_>>(), [("000001", "ss"), ("000002", "ns")]);

    // A repeated settlement of a settled batch answers the same flag.
    lane.batch = "000001".into();
    lane.totals.clear();
    let s = lane.settle().await;
    assert!(s.balanced);
    assert_eq!(sim.state_snapshot().violations.len(), 1);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_refuses_unknown_terminals_and_missing_fields() {
    let (_sim, mut lane, stop) = start().await;
    lane.id.terminal = "99999999".into();
    lane.journal += 1;
    let e = lane.b.sign_on(&lane.id, 1, "000001").await.unwrap_err();
    assert!(e.stage == Stage::Rejected && e.detail.contains("97"), "{e}");
    lane.id.store = "nope".into();
    let e = lane.b.sign_on(&lane.id, 1, "000001").await.unwrap_err();
    assert!(e.detail.contains("03"), "{e}");
    lane.id = TerminalIdentity { store: DEMO_STORE.into(), terminal: "10000002".into(), operator: "01".into() };
    lane.sign_on().await;
    // A checkin whose answer is garbage is an unknown outcome, not a session.
    _sim.push_fault_on("jpos/terminal/checkin", Fault::Garbage);
    let e = lane.b.sign_on(&lane.id, 9, "000009").await.unwrap_err();
    assert_eq!(e.stage, Stage::Unknown);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_answers_30_for_a_missing_field_and_99_for_a_foreign_pin_key() {
    let (sim, mut lane, stop) = start().await;
    lane.sign_on().await;
    // Raw form without cardNo, straight through the HTTPS client.
    let base = lane.b.base_for_tests().to_string();
    let form = crate::backend::loyalty::wire::encode_form(&[
        ("storeNo", DEMO_STORE.into()),
        ("terminalNo", "10000001".into()),
        ("traceNo", "000777".into()),
        ("batchNo", lane.batch.clone()),
    ]);
    let http = lane.b.http_for_tests();
    let r = http.post(&format!("{base}jpos/cards"), "application/x-www-form-urlencoded", bytes::Bytes::from(form), 0).await.unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], json!("30"));
    assert!(v["message"].as_str().unwrap().contains("cardNo"));
    // A PIN block made under another terminal's key does not decrypt: 99.
    let real = lane.session.clone();
    lane.session = json!({"workingKey": crate::backend::loyalty::crypto::wrap_working_key(
        &crate::backend::loyalty::crypto::parse_key_hex(DEMO_MASTER_KEY_HEX).unwrap(),
        &crate::backend::loyalty::crypto::WorkingKeys { pin: [7; 16], mac: None })});
    let d = lane.run("consume", consume(RICH, 100, Some("123456"), "X"), None).await;
    assert_eq!(code(&d), "99");
    lane.session = real;
    // Delay only slows the answer down.
    sim.push_fault(Fault::Delay(std::time::Duration::from_millis(50)));
    approved(&lane.run("consume", consume(RICH, 100, Some("123456"), "Y"), None).await);
    assert!(sim.state_snapshot().violations.is_empty());
    let _ = stop.send(());
}
