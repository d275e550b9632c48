//! End-to-end tests: the lottery backend driven against the lottery simulator over real TLS on loopback.
// The simulator runs on the wall clock (its award times are real), so these tests read it too.
#![allow(clippy::disallowed_methods)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::*;
use crate::backend::lottery::tests::{backend_with_timeout, noon_ms, temp_dir};
use crate::backend::lottery::LotteryBackend;
use crate::backend::{
    Backend, BackendError, Lease, PrepareContext, Prepared, Recovered, Recovery, Reply, ReportRequest, Stage, TerminalIdentity, TxRequest, Verdict,
};
use crate::net::client::HttpsClient;

/// A stand-in for the engine: journal ids, trace numbers, creation times.
struct Lane {
    b: Arc<LotteryBackend>,
    id: TerminalIdentity,
    trace: std::sync::atomic::AtomicU32,
}

struct Done {
    /// The leased station, when the redeem ran the engine's way.
    slot: Option<String>,
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
            slot: d.slot.as_deref(),
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
        self.run_on(None, op, body).await
    }

    async fn run_on(&self, slot: Option<&str>, op: &str, body: Value) -> Done {
        let prepared = self.b.prepare(op, body.as_object().unwrap(), None, &PrepareContext { now_ms: noon_ms(), recent: &[], card: None }).unwrap();
        let n = self.trace.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut d = Done {
            slot: slot.map(str::to_string),
            prepared,
            trace: format!("{n:06}"),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            journal_id: u64::from(n),
            reply: Err(BackendError::new("lottery", Stage::NotSent, "not run")),
        };
        let transient = d.prepared.transient.clone();
        d.reply = self.b.execute(self.tx(op, &d, &transient)).await;
        d
    }

    async fn redeem(&self, user: &str, bar: &str) -> Done {
        self.run("redeem", json!({"userId": user, "userRealIp": "10.0.0.8", "barCode": bar})).await
    }

    /// The engine's way: lease a station first, redeem on it; the lease comes back with the result.
    async fn redeem_leased(&self, user: &str, bar: &str) -> (Lease, Done) {
        let lease = self.b.lease("redeem", &Map::new(), Duration::from_secs(5)).await.unwrap().expect("redeem leases a station");
        let d = self.run_on(Some(&lease.slot), "redeem", json!({"userId": user, "userRealIp": "10.0.0.8", "barCode": bar})).await;
        (lease, d)
    }

    /// One recovery attempt, replayed from the journal (no transient fields).
    async fn resend(&self, d: &Done) -> Recovered {
        let empty = Map::new();
        self.b.recover(self.tx("redeem", d, &empty), Recovery::Resend).await.unwrap()
    }
}

async fn start_with(stations: u32, extra: &str) -> (Arc<LotterySim>, Lane, tokio::sync::oneshot::Sender<()>) {
    start_timed(stations, 3000, extra).await
}

async fn start_timed(stations: u32, timeout_ms: u64, extra: &str) -> (Arc<LotterySim>, Lane, tokio::sync::oneshot::Sender<()>) {
    let dir = temp_dir("sim");
    let pki = crate::net::tls::TestPki::ensure(&dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sim = Arc::new(LotterySim::demo());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sim.clone().serve(listener, pki.acceptor().unwrap(), async move {
        let _ = stopped.await;
    }));
    let b = backend_with_timeout(&format!("https://127.0.0.1:{port}"), &dir, DEMO_APP_SECRET, DEMO_PASSWORD, stations, timeout_ms, extra);
    let lane = Lane { b: Arc::new(b), id: TerminalIdentity { store: "2101".into(), terminal: "t1".into(), operator: "0".into() }, trace: Default::default() };
    (sim, lane, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_end_to_end_with_a_dropped_answer_paid_once() {
    // A broken connection holds its station: keep that short here.
    let (sim, lane, _stop) = start_with(2, "station_hold_ms = 50").await;
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
        let env = crate::backend::lottery::wire::Envelope {
            app_key: DEMO_APP_KEY,
            access_token: Some(&token),
            timestamp: ts,
            sign_method: crate::backend::lottery::sign::SignMethod::Md5,
            param_json: "{}".into(),
        };
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
    assert_eq!(sim.state_snapshot().overlaps, 1);
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
    assert_eq!(
        (none.ok().verdict.clone(), none.ok().code.as_str(), none.ok().message_en.as_str()),
        (Verdict::Declined, "3202", "no redemption record for this ticket")
    );

    for (op, body) in [
        ("report-sales", json!({"beginDate": "2026/03/01", "endDate": "2026/03/10"})),
        ("report-balance", json!({"beginDate": "2026/03/01", "endDate": "2026/03/10"})),
        ("report-trace", json!({"barCode": "GW00000001"})),
        ("report-award", json!({"gameNo": "00101", "batchNo": "00001", "beginTime": "2026/03/10", "endTime": "2026/03/10", "stationId": "21010001"})),
    ] {
        let r = lane.run(op, body).await;
        let f = &r.ok().fields;
        assert!(f["report"].as_str().unwrap().starts_with("<html>"), "{op}");
        assert!(!f["report_text"].as_str().unwrap().contains('<'), "{op}");
    }
}

fn today_beijing() -> chrono::NaiveDate {
    chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap()).date_naive()
}

async fn reconcile(lane: &Lane, records: &[Value]) -> Result<Reply, BackendError> {
    let empty = Map::new();
    // Reports get typed records; these tests write them as the API's record views.
    let records: Vec<crate::backend::ReportRecord> = records.iter().map(|r| serde_json::from_value(r.clone()).unwrap()).collect();
    let req = ReportRequest {
        journal_id: 99,
        operation: "reconcile",
        identity: &lane.id,
        trace: "000099",
        created_at: "2026-03-11T17:00:00Z",
        date: today_beijing(),
        records: &records,
        public: &empty,
    };
    lane.b.report(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_names_each_planted_difference() {
    let (sim, lane, _stop) = start_with(2, "").await;
    lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    let a = lane.redeem("u", "GW00000001").await; // 10 yuan, agrees
    let b = lane.redeem("u", "GW00000002").await; // 20 yuan, hidden from the backend's reports
    let c = lane.redeem("u", "GW00000003").await; // 50 yuan, counted as 60 in the summary
    let lose = lane.redeem("u", "GL00000005").await; // declined: on neither side
    let t = |d: &Done| d.ok().fields["transacId"].as_str().unwrap().to_string();
    sim.hide_from_reports(&t(&b));
    sim.report_prize(&t(&c), 6_000);
    sim.plant_remote_award("21010002", "0120260310999999999999", "PLANTED", 10_000);

    let records = vec![a.view("approved"), b.view("approved"), c.view("approved"), lose.view("declined")];
    let r = reconcile(&lane, &records).await.unwrap();
    let f = &r.fields;
    let ids = |k: &str| f[k].as_array().unwrap().iter().map(|x| x["transacId"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids("missing_locally"), ["0120260310999999999999"]);
    assert_eq!(f["missing_locally"][0]["station"], json!("21010002"));
    assert_eq!(f["missing_locally"][0]["ticketNo"], json!("00101-99999-PLANTED"));
    assert_eq!(ids("missing_remotely"), [t(&b)]);
    assert_eq!(f["missing_remotely"][0]["ticketNo"], b.ok().fields["ticketNo"]);
    // The amounts differ where c was paid (60 counted, 50 paid), where b is missing and where X was planted.
    let mut off: Vec<String> = f["amount_mismatch"].as_array().unwrap().iter().map(|x| x["station"].as_str().unwrap().to_string()).collect();
    let mut want = vec![c.ok().fields["station"].as_str().unwrap().to_string(), b.ok().fields["station"].as_str().unwrap().to_string(), "21010002".to_string()];
    off.sort();
    want.sort();
    want.dedup();
    assert_eq!(off, want, "{}", f["report_text"]);
    assert_eq!(f["totals"]["local_amount_fen"], json!(8_000));
    assert_eq!(f["totals"]["summary_amount_fen"], json!(1_000 + 6_000 + 10_000));
    assert_eq!(f["balanced"], json!(false));
    assert_eq!(r.verdict, Verdict::Approved);
    assert!(f["report_text"].as_str().unwrap().contains("NOT balanced"));
}

/// Finding 4: the host's awardDetail rows have no prize (8.8.2), and the day could never balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn award_detail_rows_without_prize_balance_and_a_missing_row_is_named() {
    for scope in ["all", "per-batch"] {
        let (sim, lane, _stop) = start_with(2, &format!("summary_scope = \"{scope}\"")).await;
        let mut recs = Vec::new();
        for n in 4..8u32 {
            recs.push(lane.redeem("u", &format!("GW{n:08}")).await);
        }
        // What the host sends is exactly the document's row.
        let station = recs[0].ok().fields["station"].as_str().unwrap().to_string();
        let g = lane.b.pool().acquire_station(lane.b.pool().index_of(&station).unwrap(), None).await.unwrap();
        let params = [
            ("gameNo", json!("00000")),
            ("batchNo", json!("00000")),
            ("beginTime", json!(format!("{} 00:00:00", today_beijing()))),
            ("endTime", json!(format!("{} 23:59:59", today_beijing()))),
        ];
        let d = lane.b.call_for_tests(g.station(), crate::backend::lottery::wire::AWARD_DETAIL, &params).await.unwrap();
        drop(g);
        let row = d.content.as_array().unwrap()[0].as_object().unwrap();
        let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["batchNo", "gameNo", "packNo", "ticketNo", "time", "transacId"]);

        let views: Vec<Value> = recs.iter().map(|d| d.view("approved")).collect();
        let r = reconcile(&lane, &views).await.unwrap();
        assert_eq!(r.fields["balanced"], json!(true), "{scope}: {}", r.fields["report_text"]);
        // One ticket removed from the host's rows (and its summary): named.
        let gone = &recs[2];
        sim.hide_from_reports(gone.ok().fields["transacId"].as_str().unwrap());
        let r = reconcile(&lane, &views).await.unwrap();
        assert_eq!(r.fields["balanced"], json!(false));
        assert_eq!(r.fields["missing_remotely"][0]["ticketNo"], gone.ok().fields["ticketNo"], "{scope}");
        assert!(r.fields["report_text"].as_str().unwrap().contains(gone.ok().fields["ticketNo"].as_str().unwrap()));
    }
    // A host that refuses the 00000 summary: asked once per game and batch, still balanced.
    let (sim, lane, _stop) = start_with(2, "").await;
    sim.refuse_summary_for_all(true);
    let x = lane.redeem("u", "GW00000009").await;
    let r = reconcile(&lane, &[x.view("approved")]).await.unwrap();
    assert_eq!(r.fields["balanced"], json!(true), "{}", r.fields["report_text"]);
    assert!(r.fields["report_text"].as_str().unwrap().contains("once per game and batch"));
}

/// Finding 1: a station whose answer timed out was given to the next request (and to the resend) while
/// the host was still working on the first; a timed-out awardDetail freed its station the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_station_gets_no_second_request_until_the_host_is_done() {
    let (sim, lane, _stop) = start_timed(2, 300, "station_hold_ms = 900").await;
    let on = lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    assert_eq!(on.reply.fields["held"], json!([]));
    // The host answers after the client's timeout (and pays).
    sim.push_fault(Fault::Delay(Duration::from_millis(700)));
    let (lease, slow) = lane.redeem_leased("u1", "GW00000030").await;
    assert_eq!(slow.reply.as_ref().unwrap_err().stage, Stage::Unknown);
    let held = lease.slot.clone();
    // Meanwhile: sign-on does not log the held station in; other tickets go on the other station.
    let on = lane.b.sign_on(&lane.id, 2, "").await.unwrap();
    assert_eq!(on.reply.fields["held"], json!([held.clone()]));
    for n in 31..34u32 {
        let (l, d) = lane.redeem_leased("u2", &format!("GW{n:08}")).await;
        assert_ne!(l.slot, held);
        assert_eq!(d.ok().verdict, Verdict::Approved);
    }
    // A per-station request on the held station waits (bounded by the timeout) and names it.
    let c = lane.run("count", json!({"stationId": held})).await;
    let e = c.reply.unwrap_err();
    assert_eq!(e.stage, Stage::NotSent);
    assert!(e.detail.contains(&held), "{}", e.detail);
    // The resend on the leased station waits out the hold, then learns it was ours.
    match lane.resend(&slow).await {
        Recovered::Settled(r) => {
            assert_eq!((r.verdict, r.code.as_str()), (Verdict::Approved, "1307"));
            assert_eq!(r.fields["station"], json!(held));
        }
        other => panic!("{other:?}"),
    }
    drop(lease);
    // A timed-out awardDetail (no lease) holds its station too: the next count there must not overlap it.
    sim.push_fault_on(crate::backend::lottery::wire::AWARD_DETAIL, Fault::Delay(Duration::from_millis(700)));
    assert_eq!(reconcile(&lane, &[]).await.unwrap_err().stage, Stage::Unknown);
    let _ = lane.run("count", json!({})).await;
    let _ = lane.run("count", json!({})).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(lane.run("count", json!({})).await.ok().verdict, Verdict::Approved);
    let snap = sim.state_snapshot();
    assert_eq!(snap.overlaps, 0, "{:?}", snap.violations);
    assert_eq!(snap.times_paid("GW00000030"), 1);
}

/// Finding 6: a host answering a resent transacId with 15 or 10030 left tickets without a final answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_answered_15_or_10030_is_settled_by_query() {
    let (sim, lane, _stop) = start_with(2, "station_hold_ms = 50").await;
    lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    let settle = |r: Recovered| match r {
        Recovered::Settled(r) => r,
        other => panic!("{other:?}"),
    };
    for ret in ["15", "10030"] {
        sim.answer_resends_with(Some(ret));
        // Paid, answer lost: the resend learns nothing; the query finds our transacId in awardDetail.
        sim.push_fault(Fault::DropAfterCommit);
        let n = if ret == "15" { 40 } else { 41 };
        let (lease, paid) = lane.redeem_leased("u1", &format!("GW{n:08}")).await;
        assert_eq!(paid.reply.as_ref().unwrap_err().stage, Stage::Unknown);
        let r = settle(lane.resend(&paid).await);
        assert_eq!(r.verdict, Verdict::Approved, "{ret}: {r:?}");
        assert_eq!((r.fields["station"].clone(), r.fields["resolved_by"].clone()), (json!(lease.slot), json!("query")));
        assert_eq!(r.amount_fen, Some([5, 10, 20, 50, 100, 500, 1000][(n % 7) as usize] * 100));
        drop(lease);
        // A losing ticket whose answer was lost: getPrize says 3202, declined.
        sim.push_fault(Fault::DropAfterCommit);
        let lost = lane.redeem("u2", &format!("GL{n:08}")).await;
        assert_eq!(lost.reply.as_ref().unwrap_err().stage, Stage::Unknown);
        let r = settle(lane.resend(&lost).await);
        assert_eq!((r.verdict, r.code.as_str()), (Verdict::Declined, "3202"), "{ret}");
        // Paid earlier under another transacId of ours: declined, naming the winner.
        let first = lane.redeem("u3", &format!("GW{:08}", n + 10)).await;
        sim.push_fault(Fault::DropAfterCommit);
        let second = lane.redeem("u3", &format!("GW{:08}", n + 10)).await;
        let r = settle(lane.resend(&second).await);
        assert_eq!(r.verdict, Verdict::Declined, "{ret}");
        // The candidates are the rows paid at that second on that station (awardDetail has no bar code).
        assert!(r.fields["winning_transacId"].as_array().unwrap().contains(&first.ok().fields["transacId"]), "{r:?}");
        // Paid at a station not ours before: declined, naming it.
        sim.push_fault(Fault::DropAfterCommit);
        let elsewhere = lane.redeem("u4", &format!("GE{:08}", n - 30)).await;
        let r = settle(lane.resend(&elsewhere).await);
        assert_eq!(r.verdict, Verdict::Declined);
        assert!(r.message_en.contains("21019999"), "{}", r.message_en);
    }
    // Resends that keep failing are followed by the query, which settles it.
    sim.answer_resends_with(None);
    sim.push_fault(Fault::DropAfterCommit);
    let lost = lane.redeem("u5", "GW00000060").await;
    for _ in 0..3 {
        sim.push_fault(Fault::Http500);
    }
    assert!(matches!(lane.resend(&lost).await, Recovered::Again(_)));
    assert!(matches!(lane.resend(&lost).await, Recovered::Again(_)));
    let r = settle(lane.resend(&lost).await);
    assert_eq!((r.verdict, r.fields["resolved_by"].clone()), (Verdict::Approved, json!("query")));
    let snap = sim.state_snapshot();
    assert_eq!(snap.times_paid("GW00000040") + snap.times_paid("GW00000041") + snap.times_paid("GW00000060"), 3);
    assert_eq!(snap.overlaps, 0);
}

/// Issue 16: a hostile host's answer (wrong-typed `success`, a `ret` the document does not define, a
/// required field missing, another request's `transacId`) was booked: as a decline, or as a payment of the
/// wrong ticket. Each is now an unknown outcome, and the resend (same transacId) settles it: paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_redeem_answers_are_unknown_and_the_resend_settles_them() {
    let (sim, lane, _stop) = start_with(1, "").await;
    lane.b.sign_on(&lane.id, 1, "").await.unwrap();
    let hostile: [&'static str; 5] = [
        r#"{"success":"false","ret":"1305","msg":"此票未中奖","content":{}}"#,
        r#"{"success":false,"ret":"1399","msg":"兑奖失败","content":{}}"#,
        r#"{"success":false,"ret":1305,"msg":"此票未中奖","content":{}}"#,
        r#"{"success":false,"ret":"1305","msg":"此票未中奖","content":{"transacId":"01202601011000000000009","ticketNo":"00101-00000-GL009"}}"#,
        r#"{"success":true,"ret":"1301","msg":"ok","content":{"transacId":"01202601011000000000009","ticketNo":"00101-00000-GW009","gameName":"好运十倍","price":10,"level":1,"prize":9000,"balance":1.0,"soldCity":"北京","amountTicket":1,"amountPrize":9000}}"#,
    ];
    for (i, body) in hostile.into_iter().enumerate() {
        let bar = format!("GW{:08}", 20 + i);
        sim.push_fault_for_ticket(&bar, Fault::AnswerWith(body));
        let d = lane.redeem("wx0001", &bar).await;
        assert_eq!(d.reply.as_ref().map(|r| r.verdict.clone()).map_err(|e| e.stage), Err(Stage::Unknown), "{body}");
        assert_eq!(sim.state_snapshot().times_paid(&bar), 1, "the host applied it");
        match lane.resend(&d).await {
            Recovered::Settled(r) => {
                assert_eq!((r.verdict, r.code.as_str(), r.fields["recovered"].clone()), (Verdict::Approved, "1307", json!(true)), "{body}");
                assert_ne!(r.amount_fen, Some(900_000), "{body}");
            }
            other => panic!("{body}: {other:?}"),
        }
        assert_eq!(sim.state_snapshot().times_paid(&bar), 1);
    }
}

/// The strict harness loses answers of every kind: a lost login answer (the host logged the station in),
/// a lost redeem answer (the host paid) and a lost count answer are each applied at the host and shown
/// in its ledger; the station logs in again afterwards (a lost login answer is sent again, 3 logins in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_of_every_kind_are_still_applied_and_in_the_ledger() {
    let (sim, lane, stop) = start_with(1, "station_hold_ms = 1").await;
    sim.set_random_drops(1000, 7);
    let first = lane.redeem("u1", "GW00000901").await;
    assert!(first.reply.is_err(), "the login's answer was lost: {:?}", first.reply.as_ref().map(|r| &r.code));
    let l = sim.ledger();
    assert_eq!((l.logins, l.payments.len()), (3, 0), "{l:?}");
    sim.set_random_drops(0, 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(lane.redeem("u1", "GW00000902").await.ok().code, "1301");
    sim.set_random_drops(1000, 8);
    assert_eq!(lane.redeem("u1", "GW00000903").await.reply.map(|r| r.code).map_err(|e| e.stage), Err(Stage::Unknown));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(lane.run("count", json!({})).await.reply.is_err());
    sim.set_random_drops(0, 0);
    let l = sim.ledger();
    assert_eq!(l.logins, 4, "{l:?}");
    assert_eq!(l.paid.keys().map(String::as_str).collect::<Vec<_>>(), ["GW00000902", "GW00000903"]);
    assert!(l.paid_twice().is_empty() && l.violations.is_empty() && l.stale_tokens == 0, "{l:?}");
    assert_eq!(sim.state_snapshot().paths.get("proxy/validate/getCount"), Some(&1));
    let _ = stop.send(());
}
