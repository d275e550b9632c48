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
        self.try_settle().await.unwrap()
    }

    async fn try_settle(&mut self) -> Result<crate::backend::Settled, crate::backend::BackendError> {
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
        self.b.settle(req).await
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
    let (sim, lane, stop, _) = start_at().await;
    (sim, lane, stop)
}

/// [`start`], and a function that makes another lane of the same terminal against the same simulator.
async fn start_at() -> (Arc<LoyaltySim>, Lane, tokio::sync::oneshot::Sender<()>, impl Fn() -> Lane) {
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
    let lane = move || Lane {
        b: crate::backend::loyalty::tests::backend_for(&format!("https://127.0.0.1:{port}"), &dir, DEMO_MASTER_KEY_HEX, DEMO_STORE, "10000001"),
        id: TerminalIdentity { store: DEMO_STORE.into(), terminal: "10000001".into(), operator: "01".into() },
        session: Value::Null,
        batch: String::new(),
        trace: 0,
        journal: 0,
        totals: BTreeMap::new(),
        lines: Vec::new(),
    };
    (sim, lane(), stop, lane)
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

    // Before check-in the terminal has no PIN key; the simulator refuses it with 77, which the backend
    // hands the engine as "sign on first" rather than a decline.
    lane.batch = "000001".into();
    let d = lane.run("card-query", json!({"cardNo": RICH}), None).await;
    assert_eq!(stage(&d), Stage::SignOnFirst);

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
    // An answer far over the answer limit (1 MiB by default) is unknown and applied: reversed too.
    sim.push_fault(Fault::Huge(3 << 20));
    let huge = lane.run("consume", consume(NOPIN, 100, None, "R7h"), None).await;
    assert_eq!(stage(&huge), Stage::Unknown, "{:?}", huge.reply);
    assert_eq!(balance(&sim, NOPIN), 19_900);
    assert!(matches!(lane.reverse(&huge, None).await.unwrap(), Recovered::Reversed { .. }));
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
    // The batch is closed: work is refused (77, sign on first) until the next check-in.
    let closed = lane.run("card-query", json!({"cardNo": RICH}), None).await;
    assert_eq!(stage(&closed), Stage::SignOnFirst);

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

    // A repeated settlement of a settled batch is refused (94) and changes nothing.
    lane.batch = "000001".into();
    lane.totals.clear();
    let e = lane.try_settle().await.unwrap_err();
    assert!(e.stage == Stage::Rejected && e.detail.contains("94"), "{e}");
    assert_eq!(sim.state_snapshot().settlements.len(), 2);
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
async fn simulator_answers_30_for_a_missing_field_and_sign_on_first_for_a_foreign_pin_key() {
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
    // A PIN block made under another terminal's key does not decrypt: 99 (校验错, 请重新签到), which
    // the backend hands the engine as "sign on first".
    let real = lane.session.clone();
    lane.session = json!({"workingKey": crate::backend::loyalty::crypto::wrap_working_key(
        &crate::backend::loyalty::crypto::parse_key_hex(DEMO_MASTER_KEY_HEX).unwrap(),
        &crate::backend::loyalty::crypto::WorkingKeys { pin: [7; 16], mac: None })});
    let d = lane.run("consume", consume(RICH, 100, Some("123456"), "X"), None).await;
    assert!(stage(&d) == Stage::SignOnFirst && d.reply.as_ref().unwrap_err().detail.starts_with("99"), "{:?}", d.reply);
    lane.session = real;
    // Delay only slows the answer down.
    sim.push_fault(Fault::Delay(std::time::Duration::from_millis(50)));
    approved(&lane.run("consume", consume(RICH, 100, Some("123456"), "Y"), None).await);
    assert!(sim.state_snapshot().violations.is_empty());
    let _ = stop.send(());
}

// ---- The strict host: batches, traces, reversals and settlements as a real host enforces them ----

const TERM: &str = "10000001";

/// The ledger of one batch of the test lane's terminal.
fn batch_ledger(sim: &LoyaltySim, batch: &str) -> BatchLedger {
    sim.ledger().terminals.get(TERM).and_then(|t| t.batches.get(batch).cloned()).unwrap_or_else(|| panic!("no batch {batch} in the ledger"))
}

fn balance(sim: &LoyaltySim, card: &str) -> i64 {
    sim.state_snapshot().balances[card]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_checkin_opens_a_new_batch_and_any_transaction_outside_it_gets_77_unapplied() {
    let (sim, mut lane, stop) = start().await;
    lane.sign_on().await;
    assert_eq!(lane.batch, "000001");
    let sale = lane.run("consume", consume(RICH, 1000, Some("123456"), "A1"), None).await;
    approved(&sale);
    // A check-in while 000001 is open still opens a new batch (the old one is not closed by it).
    lane.sign_on().await;
    assert_eq!(lane.batch, "000002");
    lane.sign_on().await;
    assert_eq!(lane.batch, "000003");
    let before = sim.state_snapshot();
    // Every kind of request in a batch that is not the current one: 77, nothing applied. The backend
    // hands each to the engine as SignOnFirst, never as a decline.
    for old in ["000001", "000002", "000004"] {
        lane.batch = old.into();
        let tries = [
            lane.run("consume", consume(RICH, 100, Some("123456"), "A2"), None).await,
            lane.run("consume", consume(NOPIN, 100, None, "A3"), None).await,
            lane.run("cancel", json!({}), Some(&sale.original)).await,
            lane.run("refund", json!({}), Some(&sale.original)).await,
            lane.run("ticket-consume", json!({"cardNo": RICH, "ticket": [{"id": 1, "num": 1}]}), None).await,
            lane.run("card-activate", json!({"cardNo": INACTIVE, "mobileNo": "13900000000", "verifyCode": "123456", "idType": "01"}), None).await,
            lane.run("card-query", json!({"cardNo": RICH}), None).await,
        ];
        for d in &tries {
            assert_eq!(stage(d), Stage::SignOnFirst, "batch {old}: {:?}", d.reply);
            assert!(d.reply.as_ref().unwrap_err().detail.starts_with("77"), "{:?}", d.reply);
        }
    }
    assert_eq!(sim.declined_77(), 21);
    let after = sim.state_snapshot();
    assert_eq!(after.transactions, before.transactions, "a request outside the current batch was applied");
    assert_eq!(after.balances, before.balances);
    assert!(!after.active[INACTIVE]);
    // In the current batch the same requests go through.
    lane.batch = "000003".into();
    approved(&lane.run("consume", consume(NOPIN, 100, None, "A3"), None).await);
    let l = sim.ledger();
    let t = &l.terminals[TERM];
    assert_eq!((t.checkins, t.current_batch.as_deref()), (3, Some("000003")));
    assert_eq!(t.batches.keys().collect::<Vec<_>>(), ["000001", "000002", "000003"]);
    assert_eq!(t.batches["000001"].records.len(), 1);
    assert!(t.batches["000002"].records.is_empty() && !t.batches["000002"].current);
    assert!(t.batches["000003"].current && t.batches["000003"].records[0].register_trace_no.as_deref() == Some("A3"));
    assert_eq!(l.declined_77, 21);
    assert!(sim.state_snapshot().violations.is_empty());
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_checkin_answer_leaves_the_client_on_its_old_batch_and_every_sale_gets_77() {
    let (sim, mut lane, stop) = start().await;
    lane.sign_on().await;
    approved(&lane.run("consume", consume(NOPIN, 100, None, "L1"), None).await);
    sim.push_fault_on("jpos/terminal/checkin", Fault::DropAfterCommit);
    lane.journal += 1;
    let e = lane.b.sign_on(&lane.id, lane.journal, "").await.unwrap_err();
    assert_eq!(e.stage, Stage::Unknown);
    // The host moved to 000002; the client, still on 000001, is refused until it checks in.
    assert_eq!(sim.ledger().terminals[TERM].current_batch.as_deref(), Some("000002"));
    for i in 0..5 {
        let d = lane.run("consume", consume(NOPIN, 100, None, &format!("L{}", i + 2)), None).await;
        assert_eq!(stage(&d), Stage::SignOnFirst);
    }
    assert_eq!((sim.declined_77(), balance(&sim, NOPIN)), (5, 19_900));
    lane.sign_on().await;
    assert_eq!(lane.batch, "000003");
    approved(&lane.run("consume", consume(NOPIN, 100, None, "L7"), None).await);
    // 000001 holds an applied sale and nobody settled it; 000002 (the lost check-in's) is empty.
    assert_eq!(sim.unsettled_batches_with_applied(), [(TERM.to_string(), "000001".to_string()), (TERM.to_string(), "000003".to_string())]);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_trace_is_refused_with_94_and_not_applied() {
    let (sim, mut lane, stop) = start().await;
    lane.sign_on().await;
    let t = lane.next_trace();
    approved(&lane.run_at("consume", consume(NOPIN, 100, None, "T1"), None, t.clone()).await);
    let dup = lane.run_at("consume", consume(NOPIN, 200, None, "T2"), None, t.clone()).await;
    assert_eq!((code(&dup), dup.reply.as_ref().unwrap().verdict.clone()), ("94".to_string(), Verdict::Declined));
    // A declined request used its trace too.
    let u = lane.next_trace();
    assert_eq!(code(&lane.run_at("consume", consume(RICH, 100, Some("000000"), "T3"), None, u.clone()).await), "55");
    assert_eq!(code(&lane.run_at("consume", consume(NOPIN, 300, None, "T4"), None, u).await), "94");
    // Inquiries carry traces as well.
    let q = lane.next_trace();
    approved(&lane.run_at("card-query", json!({"cardNo": RICH}), None, q.clone()).await);
    assert_eq!(code(&lane.run_at("card-query", json!({"cardNo": RICH}), None, q).await), "94");
    assert_eq!(balance(&sim, NOPIN), 19_900);
    assert_eq!(sim.traces_reused(), 3);
    assert_eq!(sim.ledger().traces_reused, 3);
    assert_eq!(sim.applied_sales().len(), 1);
    // The same trace number in the next batch is a new trace.
    lane.sign_on().await;
    approved(&lane.run_at("consume", consume(NOPIN, 100, None, "T5"), None, t).await);
    assert_eq!(sim.traces_reused(), 3);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_in_an_older_unsettled_batch_is_accepted() {
    let (sim, mut lane, stop) = start().await;
    lane.sign_on().await;
    sim.push_fault(Fault::DropAfterCommit);
    let lost = lane.run("consume", consume(NOPIN, 300, None, "V1"), None).await;
    assert_eq!(stage(&lost), Stage::Unknown);
    sim.push_fault(Fault::Reset);
    let never = lane.run("consume", consume(NOPIN, 400, None, "V2"), None).await;
    assert_eq!(stage(&never), Stage::Unknown);
    assert_eq!(balance(&sim, NOPIN), 19_700);
    // Two check-ins later, the reversals of batch 000001 are still taken: 00 undoes, 25 finds nothing.
    lane.sign_on().await;
    lane.sign_on().await;
    assert_eq!(lane.batch, "000003");
    match lane.reverse(&lost, None).await.unwrap() {
        Recovered::Reversed { code, .. } => assert_eq!(code, "00"),
        other => panic!("{other:?}"),
    }
    match lane.reverse(&never, None).await.unwrap() {
        Recovered::Reversed { code, .. } => assert_eq!(code, "25"),
        other => panic!("{other:?}"),
    }
    match lane.reverse(&lost, None).await.unwrap() {
        Recovered::Reversed { code, .. } => assert_eq!(code, "12"),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(&sim, NOPIN), 20_000);
    let b1 = batch_ledger(&sim, "000001");
    assert_eq!(b1.records.len(), 1);
    assert!(b1.records[0].reversed && !b1.has_applied() && b1.applied.is_empty());
    assert!(sim.applied_sales().is_empty() && sim.unsettled_batches_with_applied().is_empty());
    assert!(sim.state_snapshot().violations.is_empty());
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_batch_settles_once_balanced_only_on_equal_totals_and_is_closed_after() {
    let (sim, mut lane, stop) = start().await;
    lane.sign_on().await;
    let sale = lane.run("consume", consume(NOPIN, 250, None, "S1"), None).await;
    approved(&sale);
    let sale2 = lane.run("consume", consume(NOPIN, 50, None, "S2"), None).await;
    approved(&sale2);
    let b1_totals = lane.totals.clone();
    lane.sign_on().await;
    assert_eq!(lane.batch, "000002");
    approved(&lane.run("consume", consume(NOPIN, 100, None, "S3"), None).await);
    let b2_totals = lane.totals.clone();
    assert_eq!(sim.unsettled_batches_with_applied().len(), 2);

    // Settle the older batch while 000002 is current: balanced.
    lane.batch = "000001".into();
    lane.totals = b1_totals.clone();
    let s = lane.try_settle().await.unwrap();
    assert!(s.balanced, "{:?}", s.reply);
    // The same settlement again (as when its answer was lost) gets the first answer again; other
    // totals for the settled batch are refused (94) and change nothing.
    let again = lane.try_settle().await.unwrap();
    assert!(again.balanced, "{:?}", again.reply);
    let n = sim.state_snapshot().settlements.len();
    lane.totals.clear();
    let e = lane.try_settle().await.unwrap_err();
    assert!(e.stage == Stage::Rejected && e.detail.contains("94"), "{e}");
    assert_eq!(sim.state_snapshot().settlements.len(), n);
    lane.totals = b1_totals.clone();
    // Its transactions and reversals are refused now: 77 for new work (not the current batch), 22 for a
    // reversal (a settled batch is final; recovery must not count it as done).
    let d = lane.run("cancel", json!({}), Some(&sale.original)).await;
    assert_eq!(stage(&d), Stage::SignOnFirst);
    assert!(matches!(lane.reverse(&sale2, None).await.unwrap(), Recovered::Again(m) if m.starts_with("22")));
    assert_eq!(balance(&sim, NOPIN), 20_000 - 400);
    // The current batch was not touched by settling the older one.
    lane.batch = "000002".into();
    lane.totals = b2_totals.clone();
    approved(&lane.run("consume", consume(NOPIN, 1, None, "S4"), None).await);
    // Totals that differ by a fen: ns (and the lines are uploaded).
    *lane.totals.get_mut("pointDebitAmount").unwrap() -= 1;
    let s = lane.try_settle().await.unwrap();
    assert!(!s.balanced && s.uploaded);
    // Settling the current batch closes it: sign on first.
    assert_eq!(stage(&lane.run("consume", consume(NOPIN, 1, None, "S5"), None).await), Stage::SignOnFirst);
    // A batch this terminal never opened: 25.
    lane.batch = "000042".into();
    let e = lane.try_settle().await.unwrap_err();
    assert!(e.detail.contains("25"), "{e}");

    // The ledger says all of it.
    let l = sim.ledger();
    let t = &l.terminals[TERM];
    assert_eq!(t.checkins, 2);
    let (b1, b2) = (&t.batches["000001"], &t.batches["000002"]);
    assert_eq!(
        b1.records.iter().map(|r| (r.trace.as_str(), r.op.as_str(), r.amount_fen, r.reversed)).collect::<Vec<_>>(),
        [(sale.original.trace.as_str(), "consume", 250, false), (sale2.original.trace.as_str(), "consume", 50, false)]
    );
    assert!(b1.settled && b1.balanced == Some(true) && b1.settle_flag.as_deref() == Some("ss") && b1.settlements_refused == 1);
    let nz = |m: &BTreeMap<String, i64>| m.iter().filter(|(_, v)| **v != 0).map(|(k, v)| (k.clone(), *v)).collect::<BTreeMap<_, _>>();
    assert_eq!(b1.claimed.as_ref(), Some(&nz(&b1_totals)));
    assert_eq!(b1.applied, nz(&b1_totals));
    assert_eq!(b1.applied["pointDebitAmount"], 300);
    assert!(b2.settled && b2.balanced == Some(false) && b2.settle_flag.as_deref() == Some("ns"));
    assert_eq!(b2.applied["pointDebitAmount"], 101);
    assert_eq!(b2.claimed.as_ref().unwrap()["pointDebitAmount"], 100);
    assert_eq!(l.unbalanced_settlements(), [(TERM.to_string(), "000002".to_string())]);
    assert!(l.unsettled_batches_with_applied().is_empty());
    assert_eq!(
        l.applied_sales().iter().map(|(_, b, r)| (b.as_str(), r.amount_fen)).collect::<Vec<_>>(),
        [("000001", 250), ("000001", 50), ("000002", 100), ("000002", 1)]
    );
    assert_eq!(sim.applied_sales().len(), 4);
    // The reversal after settlement is the one violation.
    assert_eq!(sim.state_snapshot().violations.len(), 1, "{:?}", sim.state_snapshot().violations);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_of_every_kind_are_still_applied() {
    let (sim, mut lane, stop) = start().await;
    // Every answer lost, check-in included: the check-in opened 000001 all the same.
    sim.set_random_drops(1000, 42);
    lane.journal += 1;
    assert_eq!(lane.b.sign_on(&lane.id, lane.journal, "").await.unwrap_err().stage, Stage::Unknown);
    assert_eq!(sim.ledger().terminals[TERM].checkins, 1);
    sim.set_random_drops(0, 0);
    lane.sign_on().await;
    assert_eq!(lane.batch, "000002");

    sim.set_random_drops(1000, 43);
    let q = lane.run("card-query", json!({"cardNo": NOPIN}), None).await;
    assert_eq!(stage(&q), Stage::Unknown);
    let sale = lane.run("consume", consume(NOPIN, 300, None, "D1"), None).await;
    assert_eq!(stage(&sale), Stage::Unknown);
    assert_eq!(balance(&sim, NOPIN), 19_700);
    // The reversal's answer is lost too; it undid the sale.
    assert_eq!(lane.reverse(&sale, None).await.unwrap_err().stage, Stage::Unknown);
    assert_eq!(balance(&sim, NOPIN), 20_000);
    let sale2 = lane.run("consume", consume(NOPIN, 500, None, "D2"), None).await;
    assert_eq!(stage(&sale2), Stage::Unknown);
    // The settlement (with the host's totals: one 5.00 debit) is applied and its answer lost.
    lane.totals = [("pointDebitCount", 1), ("pointDebitAmount", 500), ("totalTransCount", 1)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(lane.try_settle().await.unwrap_err().stage, Stage::Unknown);
    sim.set_random_drops(0, 0);

    let b2 = batch_ledger(&sim, "000002");
    assert_eq!(b2.records.iter().map(|r| (r.amount_fen, r.reversed)).collect::<Vec<_>>(), [(300, true), (500, false)]);
    assert!(b2.settled && b2.balanced == Some(true));
    // The resend of the settlement gets the first answer again: settled, balanced.
    let again = lane.try_settle().await.unwrap();
    assert!(again.balanced, "{:?}", again.reply);
    assert_eq!(sim.applied_sales().iter().map(|s| s.amount_fen).collect::<Vec<_>>(), [500]);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_maps_77_99_a0_to_sign_on_first_and_a_reversal_answered_77_is_again() {
    let (sim, mut lane, stop) = start().await;
    lane.sign_on().await;
    for code in ["77", "99", "A0"] {
        sim.push_refusal_on("jpos/trans/consume", code);
        let d = lane.run("consume", consume(NOPIN, 100, None, "M1"), None).await;
        let e = d.reply.as_ref().unwrap_err();
        assert!(e.stage == Stage::SignOnFirst && e.detail.starts_with(code), "{code}: {e}");
    }
    // Other refusals stay declines.
    sim.push_refusal_on("jpos/trans/consume", "51");
    assert_eq!(code(&lane.run("consume", consume(NOPIN, 100, None, "M2"), None).await), "51");
    assert_eq!(balance(&sim, NOPIN), 20_000);
    // A reversal answered 77 is not done: Again, and the sale stays charged until a later attempt.
    sim.push_fault(Fault::DropAfterCommit);
    let lost = lane.run("consume", consume(NOPIN, 700, None, "M3"), None).await;
    assert_eq!(stage(&lost), Stage::Unknown);
    sim.push_refusal_on("jpos/trans/consumeReversal", "77");
    assert!(matches!(lane.reverse(&lost, None).await.unwrap(), Recovered::Again(m) if m.starts_with("77")));
    assert_eq!(balance(&sim, NOPIN), 19_300);
    assert!(matches!(lane.reverse(&lost, None).await.unwrap(), Recovered::Reversed { code, .. } if code == "00"));
    assert_eq!(balance(&sim, NOPIN), 20_000);
    let _ = stop.send(());
}

/// The host sees what the daemon promises (ARCHITECTURE: one sign-on at a time): a check-in or a
/// settlement sent while another request of the terminal is in flight is a violation; alone, it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkin_or_settlement_beside_a_request_in_flight_is_a_violation() {
    let (sim, mut lane, stop, another) = start_at().await;
    lane.sign_on().await;
    let mut other = another();
    other.trace = 500;
    other.sign_on().await;
    lane.sign_on().await;
    assert!(sim.state_snapshot().violations.is_empty(), "{:?}", sim.state_snapshot().violations);
    for op in ["checkin", "settle"] {
        other.sign_on().await;
        lane.sign_on().await;
        sim.push_fault(Fault::Delay(std::time::Duration::from_millis(700)));
        let slow = tokio::spawn(async move {
            let d = lane.run("consume", consume(NOPIN, 100, None, "F1"), None).await;
            (lane, d)
        });
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if op == "checkin" {
            other.sign_on().await;
        } else {
            other.batch = sim.state_snapshot().batches[TERM].clone();
            let _ = other.try_settle().await;
        }
        lane = slow.await.unwrap().0;
        let v = sim.state_snapshot().violations;
        let beside: Vec<_> = v.iter().filter(|m| m.starts_with(&format!("{op} of {TERM} sent beside 1 other request"))).collect();
        assert_eq!(beside.len(), 1, "{v:?}");
    }
    let _ = stop.send(());
}
