//! End-to-end tests: the lottery backend driven against the lottery simulator over real TLS on loopback.
// The simulator runs on the wall clock (its award times are real), so these tests read it too.
#![allow(clippy::disallowed_methods)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::*;
use crate::backend::lottery::tests::{backend_for, noon_ms, temp_dir};
use crate::backend::lottery::LotteryBackend;
use crate::backend::{Backend, BackendError, PrepareContext, Prepared, Recovered, Recovery, Reply, ReportRequest, Stage, TerminalIdentity, TxRequest, Verdict};
use crate::net::client::HttpsClient;

/// A stand-in for the engine: journal ids, trace numbers, creation times.
struct Lane {
    b: Arc<LotteryBackend>,
    id: TerminalIdentity,
    trace: std::sync::atomic::AtomicU32,
}

struct Done {
    prepared: Prepared,
    trace: String,
    created_at: String,
    journal_id: u64,
    reply: Result<Reply, BackendError>,
}

impl Done {
    fn ok(&self) -> &Reply {
        match &self.reply {
            Ok(r) => r,
            Err(e) => panic!("expected an answer, got {e}"),
        }
    }
    /// The record view the engine would hand to `report`.
    fn view(&self, status: &str) -> Value {
        let result = self.reply.as_ref().map(|r| Value::Object(r.fields.clone())).unwrap_or(json!({}));
        json!({"id": self.journal_id, "operation": "redeem", "status": status, "trace": self.trace, "created_at": self.created_at, "request": self.prepared.public, "result": result})
    }
}

impl Lane {
    fn tx<'a>(&'a self, op: &'a str, d: &'a Done, transient: &'a Map<String, Value>) -> TxRequest<'a> {
        TxRequest {
            slot: None,
            journal_id: d.journal_id,
            operation: op,
            identity: &self.id,
            trace: &d.trace,
            batch: "000001",
            created_at: &d.created_at,
            session: &Value::Null,
            public: &d.prepared.public,
            vault: &d.prepared.vault,
            transient,
            original: None,
        }
    }

    async fn run(&self, op: &str, body: Value) -> Done {
        let prepared = self.b.prepare(op, body.as_object().unwrap(), None, &PrepareContext { now_ms: noon_ms(), recent: &[], card: None }).unwrap();
        let n = self.trace.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut d = Done { prepared, trace: format!("{n:06}"), created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true), journal_id: u64::from(n), reply: Err(BackendError::new("lottery", Stage::NotSent, "not run")) };
        let transient = d.prepared.transient.clone();
        d.reply = self.b.execute(self.tx(op, &d, &transient)).await;
        d
    }

    async fn redeem(&self, user: &str, bar: &str) -> Done {
        self.run("redeem", json!({"userId": user, "userRealIp": "10.0.0.8", "barCode": bar})).await
    }

    /// One recovery attempt, replayed from the journal (no transient fields).
    async fn resend(&self, d: &Done) -> Recovered {
        let empty = Map::new();
        self.b.recover(self.tx("redeem", d, &empty), Recovery::Resend).await.unwrap()
    }
}

async fn start_with(stations: u32, extra: &str) -> (Arc<LotterySim>, Lane, tokio::sync::oneshot::Sender<()>) {
    let dir = temp_dir("sim");
    let pki = crate::net::tls::TestPki::ensure(&dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sim = Arc::new(LotterySim::demo());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sim.clone().serve(listener, pki.acceptor().unwrap(), async move {
        let _ = stopped.await;
    }));
    let b = backend_for(&format!("https://127.0.0.1:{port}"), &dir, DEMO_APP_SECRET, DEMO_PASSWORD, stations, extra);
    let lane = Lane { b: Arc::new(b), id: TerminalIdentity { store: "2101".into(), terminal: "t1".into(), operator: "0".into() }, trace: Default::default() };
    (sim, lane, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_end_to_end_with_a_dropped_answer_paid_once() {
    let (sim, lane, _stop) = start_with(2, "").await;
    let on = lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    assert_eq!(on.session["stations"], json!(["21010001", "21010002"]));
    assert!(!on.session.to_string().contains("token"));
    assert_eq!(sim.state_snapshot().logins, 2);

    let win = lane.redeem("wx0001", "GW00000003").await;
    let r = win.ok();
    assert_eq!((r.verdict.clone(), r.code.as_str()), (Verdict::Approved, "1301"));
    assert_eq!(r.fields["prize"], json!(5_000)); // 50 yuan (3 mod 7)
    assert_eq!(r.fields["ticketNo"], json!("00101-00000-GW003"));
    assert_eq!(r.fields["transacId"].as_str().unwrap().len(), 22);

    // The same ticket again, under a new transacId: someone (us, earlier) already has it.
    let again = lane.redeem("wx0001", "GW00000003").await;
    let a = again.ok();
    assert_eq!((a.verdict.clone(), a.code.as_str()), (Verdict::Declined, "1307"));
    assert_eq!(a.fields["transacIdOrg"], r.fields["transacId"]);
    // Losing, over the limit, and redeemed at another station.
    let lose = lane.redeem("wx0002", "GL00000001").await;
    assert_eq!((lose.ok().verdict.clone(), lose.ok().code.as_str(), lose.ok().fields["gameName"].clone()), (Verdict::Declined, "1305", json!("好运十倍")));
    assert_eq!(lane.redeem("wx0002", "GO00000001").await.ok().code, "1304");
    let other = lane.redeem("wx0002", "GE00000001").await;
    assert_eq!(other.ok().verdict, Verdict::Declined);
    assert_eq!(other.ok().fields["awardStation"], json!("21019999"));
    assert!(other.ok().message_en.contains("21019999"));

    // The answer is lost after the backend paid: unknown; the resend (same transacId) settles it as ours.
    sim.push_fault(Fault::DropAfterCommit);
    let lost = lane.redeem("wx0003", "GW00000010").await;
    assert_eq!(lost.reply.as_ref().unwrap_err().stage, Stage::Unknown);
    assert_eq!(sim.state_snapshot().times_paid("GW00000010"), 1);
    match lane.resend(&lost).await {
        Recovered::Settled(r) => {
            assert_eq!((r.verdict, r.code.as_str()), (Verdict::Approved, "1307"));
            assert_eq!(r.fields["transacIdOrg"], r.fields["transacId"]);
            assert_eq!(r.fields["prize"], json!(5_000)); // 10 mod 7 = 3: 50 yuan
        }
        other => panic!("{other:?}"),
    }
    // A reset before the backend applied anything: the resend pays it, once.
    sim.push_fault(Fault::Reset);
    let reset = lane.redeem("wx0003", "GW00000011").await;
    assert_eq!(reset.reply.as_ref().unwrap_err().stage, Stage::Unknown);
    assert_eq!(sim.state_snapshot().times_paid("GW00000011"), 0);
    assert!(matches!(lane.resend(&reset).await, Recovered::Settled(ref r) if r.verdict == Verdict::Approved && r.code == "1301"));
    // An ambiguous answer to a resend settles nothing.
    sim.push_fault(Fault::Http500);
    assert!(matches!(lane.resend(&reset).await, Recovered::Again(_)));
    let snap = sim.state_snapshot();
    assert_eq!((snap.times_paid("GW00000010"), snap.times_paid("GW00000011"), snap.times_paid("GW00000003")), (1, 1, 1));
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_log_in_again_after_1021_27_and_28() {
    let (sim, lane, _stop) = start_with(1, "sign_method = \"SHA-1\"\nbody = \"json\"").await;
    // No sign-on at all: the first call logs the station in by itself.
    assert_eq!(lane.redeem("u1", "GW00000020").await.ok().verdict, Verdict::Approved);
    assert_eq!(sim.state_snapshot().logins, 1);
    sim.expire_tokens(); // 27
    assert_eq!(lane.redeem("u1", "GW00000021").await.ok().verdict, Verdict::Approved);
    sim.log_in_elsewhere("21010001"); // 1021
    assert_eq!(lane.redeem("u1", "GW00000022").await.ok().verdict, Verdict::Approved);
    lane.b.pool().stations()[0].set_token(Some(crate::secret::Secret::new(b"forged".to_vec()))); // 28
    assert_eq!(lane.redeem("u1", "GW00000023").await.ok().verdict, Verdict::Approved);
    let snap = sim.state_snapshot();
    assert_eq!(snap.logins, 4);
    assert_eq!(snap.payments.len(), 4);

    // Password change: the new password is used at the next login.
    let p = lane.run("password", json!({"stationId": "21010001", "new": "654321"})).await;
    assert_eq!(p.ok().verdict, Verdict::Approved);
    assert_eq!(sim.state_snapshot().passwords["21010001"], "654321");
    sim.expire_tokens();
    assert_eq!(lane.run("count", json!({})).await.ok().fields["tickets"], json!(4));
    assert_eq!(sim.state_snapshot().logins, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stations_are_never_shared_and_n_stations_give_n_in_flight() {
    // Three stations, six redeems each held 300 ms by the simulator: three at a time, in two waves.
    let (sim, lane, _stop) = start_with(3, "").await;
    lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    for _ in 0..6 {
        sim.push_fault(Fault::Delay(Duration::from_millis(300)));
    }
    let lane = Arc::new(lane);
    let t0 = Instant::now();
    let mut js = tokio::task::JoinSet::new();
    for i in 0..6u32 {
        let lane = lane.clone();
        js.spawn(async move { lane.redeem(&format!("u{i}"), &format!("GW{:08}", 100 + i)).await.reply.map(|r| r.verdict) });
    }
    while let Some(r) = js.join_next().await {
        assert_eq!(r.unwrap().unwrap(), Verdict::Approved);
    }
    let took = t0.elapsed();
    let snap = sim.state_snapshot();
    assert_eq!(snap.max_in_flight, 3, "three stations, three requests in flight");
    assert_eq!(lane.b.pool().max_in_flight(), 3);
    assert!(snap.violations.is_empty(), "{:?}", snap.violations);
    assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(1500), "{took:?}");
    let per_station: std::collections::BTreeMap<String, usize> = snap.payments.iter().fold(Default::default(), |mut m, p| {
        *m.entry(p.station.clone()).or_default() += 1;
        m
    });
    assert_eq!(per_station.values().copied().collect::<Vec<_>>(), [2, 2, 2]);

    // One station, two concurrent requests: one after the other, never together.
    let (sim1, lane1, _stop1) = start_with(1, "").await;
    sim1.push_fault(Fault::Delay(Duration::from_millis(200)));
    sim1.push_fault(Fault::Delay(Duration::from_millis(200)));
    let (a, b) = tokio::join!(lane1.redeem("u1", "GW00000200"), lane1.redeem("u2", "GW00000201"));
    assert_eq!((a.ok().verdict.clone(), b.ok().verdict.clone()), (Verdict::Approved, Verdict::Approved));
    assert_eq!(sim1.state_snapshot().max_in_flight, 1);
    assert!(sim1.state_snapshot().violations.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_refuses_a_second_request_on_a_busy_station() {
    let (sim, lane, _stop) = start_with(1, "").await;
    lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    // Two raw getCount calls with the same station's token, bypassing the pool.
    let token = lane.b.pool().stations()[0].token().unwrap();
    let token = token.expose_str().unwrap().to_string();
    let raw = || {
        let ts = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap()).format("%Y-%m-%d %H:%M:%S").to_string();
        let env = crate::backend::lottery::wire::Envelope { app_key: DEMO_APP_KEY, access_token: Some(&token), timestamp: ts, sign_method: crate::backend::lottery::sign::SignMethod::Md5, param_json: "{}".into() };
        crate::backend::lottery::wire::encode_body(&env.signed_pairs(DEMO_APP_SECRET), crate::backend::lottery::wire::BodyFormat::Form)
    };
    let dir = temp_dir("raw");
    let pki = crate::net::tls::TestPki::ensure(&dir).unwrap();
    let _ = pki;
    let http: HttpsClient = lane.b.http_for_tests().clone();
    let url = format!("{}/proxy/validate/getCount", lane.b.base_for_tests());
    sim.push_fault_on("proxy/validate/getCount", Fault::Delay(Duration::from_millis(300)));
    let (ct1, b1) = raw();
    let (ct2, b2) = raw();
    let first = http.post(&url, ct1, bytes::Bytes::from(b1), 1);
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        http.post(&url, ct2, bytes::Bytes::from(b2), 2).await
    };
    let (r1, r2) = tokio::join!(first, second);
    let a1 = crate::backend::lottery::wire::parse_answer(&r1.unwrap().body).unwrap();
    let a2 = crate::backend::lottery::wire::parse_answer(&r2.unwrap().body).unwrap();
    assert_eq!((a1.ret.as_str(), a2.ret.as_str()), ("10000", "1005"));
    assert_eq!(sim.state_snapshot().violations.len(), 1);
    // A forged signature is refused with 12.
    let (ct, body) = raw();
    let forged = body.replace("sign=", "sign=0");
    let a = crate::backend::lottery::wire::parse_answer(&http.post(&url, ct, bytes::Bytes::from(forged), 3).await.unwrap().body).unwrap();
    assert_eq!(a.ret, "12");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_prizes_and_html_reports() {
    let (_sim, lane, _stop) = start_with(2, "").await;
    lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    for n in [1u32, 2, 3] {
        assert_eq!(lane.redeem("u", &format!("GW{n:08}")).await.ok().verdict, Verdict::Approved);
    }
    let c = lane.run("count", json!({})).await;
    assert_eq!((c.ok().fields["tickets"].clone(), c.ok().fields["amount"].clone()), (json!(3), json!(1_000 + 2_000 + 5_000)));
    assert_eq!(c.ok().fields["stations"].as_array().unwrap().len(), 2);
    assert_eq!(lane.run("reset-count", json!({"stationId": "21010001"})).await.ok().verdict, Verdict::Approved);
    let after = lane.run("count", json!({"stationId": "21010002"})).await;
    assert_eq!(after.ok().fields["stations"][0]["station"], json!("21010002"));

    let prize = lane.run("prize", json!({"barCode": "GW00000002"})).await;
    assert_eq!((prize.ok().verdict.clone(), prize.ok().fields["prize"].clone()), (Verdict::Approved, json!(2_000)));
    assert!(prize.prepared.public["barCode"].as_str().unwrap().contains('*'));
    let none = lane.run("prize", json!({"barCode": "GW00000999"})).await;
    assert_eq!((none.ok().verdict.clone(), none.ok().code.as_str(), none.ok().message_en.as_str()), (Verdict::Declined, "3202", "no redemption record for this ticket"));

    for (op, body) in [
        ("report-sales", json!({"beginDate": "2026/03/01", "endDate": "2026/03/10"})),
        ("report-balance", json!({"beginDate": "2026/03/01", "endDate": "2026/03/10"})),
        ("report-trace", json!({"barCode": "GW00000001"})),
        ("report-award", json!({"beginTime": "2026/03/10", "endTime": "2026/03/10", "stationId": "21010001"})),
    ] {
        let r = lane.run(op, body).await;
        let f = &r.ok().fields;
        assert!(f["report"].as_str().unwrap().starts_with("<html>"), "{op}");
        assert!(!f["report_text"].as_str().unwrap().contains('<'), "{op}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_names_each_planted_difference() {
    let (sim, lane, _stop) = start_with(2, "").await;
    lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    let a = lane.redeem("u", "GW00000001").await; // 10 yuan, agrees
    let b = lane.redeem("u", "GW00000002").await; // 20 yuan, hidden from the backend's reports
    let c = lane.redeem("u", "GW00000003").await; // 50 yuan, reported as 60
    let lose = lane.redeem("u", "GL00000005").await; // declined: on neither side
    let t = |d: &Done| d.ok().fields["transacId"].as_str().unwrap().to_string();
    sim.hide_from_reports(&t(&b));
    sim.report_prize(&t(&c), 6_000);
    sim.plant_remote_award("21010002", "0120260310999999999999", "PLANTED", 10_000);

    let records = vec![a.view("approved"), b.view("approved"), c.view("approved"), lose.view("declined")];
    let date = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap()).date_naive();
    let empty = Map::new();
    let req = ReportRequest { journal_id: 99, operation: "reconcile", identity: &lane.id, trace: "000099", created_at: "2026-03-11T17:00:00Z", date, records: &records, public: &empty };
    let r = lane.b.report(req).await.unwrap();
    let f = &r.fields;
    let ids = |k: &str| f[k].as_array().unwrap().iter().map(|x| x["transacId"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids("missing_locally"), ["0120260310999999999999"]);
    assert_eq!(f["missing_locally"][0]["remote_prize_fen"], json!(10_000));
    assert_eq!(f["missing_locally"][0]["station"], json!("21010002"));
    assert_eq!(ids("missing_remotely"), [t(&b)]);
    assert_eq!(f["missing_remotely"][0]["ticketNo"], b.ok().fields["ticketNo"]);
    assert_eq!(ids("prize_mismatch"), [t(&c)]);
    assert_eq!((f["prize_mismatch"][0]["local_prize_fen"].clone(), f["prize_mismatch"][0]["remote_prize_fen"].clone()), (json!(5_000), json!(6_000)));
    assert_eq!(
        f["totals"],
        json!({"local_count": 3, "local_amount_fen": 8_000, "remote_count": 3, "remote_amount_fen": 1_000 + 6_000 + 10_000, "summary_count": 3, "summary_amount_fen": 17_000})
    );
    assert_eq!((f["balanced"].clone(), f["differences"].clone()), (json!(false), json!(3)));
    assert_eq!(r.verdict, Verdict::Approved);
    assert!(f["report_text"].as_str().unwrap().contains("NOT balanced: 3"));

    // Without the planted differences the same day balances.
    let (sim2, lane2, _stop2) = start_with(2, "").await;
    let x = lane2.redeem("u", "GW00000004").await;
    let recs = vec![x.view("approved")];
    let req = ReportRequest { journal_id: 1, operation: "reconcile", identity: &lane2.id, trace: "000001", created_at: "2026-03-11T17:00:00Z", date, records: &recs, public: &empty };
    let r = lane2.b.report(req).await.unwrap();
    assert_eq!(r.fields["balanced"], json!(true), "{}", r.fields["report_text"]);
    assert_eq!(sim2.state_snapshot().payments.len(), 1);
}
