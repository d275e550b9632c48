//! The lottery backend through the real daemon: reconciliation, risk rules, units and hostile answers over the local API
//! (tickets paid exactly once across SIGKILLs and lost answers: `world::crash_loop_lottery`, `world::soak_lottery`).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use posgate::sim::faults::Fault;
use serde_json::{json, Value};

use crate::support::{wait_recovered, Daemon};
use crate::world::all_records;
use crate::world::lottery::{beijing_today, tuned, world_with, LotteryWorld, OPEN_RISK};

/// The shipped example profile against a simulator, with the risk section replaced by `risk`.
async fn world(name: &str, risk: &str) -> LotteryWorld {
    world_with(name, risk, &|p| p).await
}

fn redeem_body(user: &str, bar: &str) -> Value {
    json!({"userId": user, "userRealIp": "127.0.0.1", "barCode": bar})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_rules_refuse_before_sending_and_name_their_code() {
    let w = world("lottery-risk", "enabled = true\nhours = \"00:00-00:00\"\nblacklist = [\"ubad\"]\ndaily_tickets = 2\nmin_interval_s = 0").await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = &d.client;
    let (s, v) = c.post("/v1/profiles/lottery/redeem", redeem_body("ubad", "GW00000001"), None).await.expect("redeem");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("10037"), "{v}");
    let mut codes = HashMap::new();
    for bar in ["GW00000002", "GW00000003", "GW00000004"] {
        let (s, v) = c.post("/v1/profiles/lottery/redeem", redeem_body("u1", bar), None).await.expect("redeem");
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

/// Relaxed risk rules: every ticket may go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_and_report_award_refusals_send_nothing() {
    let w = world("lottery-letter", OPEN_RISK).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = &d.client;
    for user in ["u_1", "u-2", "wx 3", &"a".repeat(33)] {
        let (s, v) = c.post("/v1/profiles/lottery/redeem", redeem_body(user, "GW00000001"), None).await.expect("redeem");
        assert_eq!(s, 400, "{user}: {v}");
        assert!(v["detail"].as_str().unwrap_or("").contains("userId"), "{v}");
    }
    let (s, v) = c.post("/v1/profiles/lottery/report-award", json!({"beginTime": "2026/03/10", "endTime": "2026/03/10"}), None).await.expect("report");
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("gameNo"), "{v}");
    let (s, v) = c
        .post("/v1/profiles/lottery/report-award", json!({"gameNo": "00101", "beginTime": "2026/03/10", "endTime": "2026/03/10"}), None)
        .await
        .expect("report");
    assert_eq!(s, 400, "{v}");
    let snap = w.sim.state_snapshot();
    assert_eq!(snap.redeem_attempts, 0);
    assert_eq!(snap.paths.get("proxy/validate/thirdAward"), None);
    assert_eq!(snap.paths.get("migt/report/award"), None);
    // With game and batch it goes, and the host answers.
    let (s, v) = c
        .post("/v1/profiles/lottery/report-award", json!({"gameNo": "00101", "batchNo": "00001", "beginTime": "2026/03/10", "endTime": "2026/03/10"}), None)
        .await
        .expect("report");
    assert_eq!((s, v["status"].clone()), (200, json!("approved")), "{v}");
    d.stop().await;
}

/// Finding 6: a host answering a resent transacId with 15 or 10030 left tickets without a final answer,
/// some parked. Now the query (getPrize + awardDetail) settles them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_answered_15_or_10030_ends_by_query_nothing_parked() {
    let w = world_with("lottery-seen", OPEN_RISK, &tuned(2000, "station_hold_ms = 300")).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = &d.client;
    for (ret, paid, lost) in [("15", "GW00000101", "GL00000101"), ("10030", "GW00000102", "GL00000102")] {
        w.sim.answer_resends_with(Some(ret));
        w.sim.push_fault(Fault::DropAfterCommit);
        let (_, first) = c.post("/v1/profiles/lottery/redeem", redeem_body("u1", paid), Some(&format!("k-{paid}"))).await.expect("redeem");
        w.sim.push_fault(Fault::DropAfterCommit);
        let (_, second) = c.post("/v1/profiles/lottery/redeem", redeem_body("u2", lost), Some(&format!("k-{lost}"))).await.expect("redeem");
        wait_recovered(c, Duration::from_secs(30)).await;
        let get = |v: &Value| {
            let id = v["id"].as_u64().expect("id");
            async move { c.get(&format!("/v1/journal/{id}")).await.expect("journal").1 }
        };
        let a = get(&first).await;
        assert_eq!((a["status"].clone(), a["result"]["resolved_by"].clone()), (json!("approved"), json!("query")), "{ret}: {a}");
        assert_eq!(a["amount_fen"], a["result"]["prize"], "{a}");
        let b = get(&second).await;
        assert_eq!((b["status"].clone(), b["code"].clone()), (json!("declined"), json!("3202")), "{ret}: {b}");
    }
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["needs_attention"], json!(0), "{st}");
    let snap = w.sim.state_snapshot();
    assert_eq!((snap.times_paid("GW00000101"), snap.times_paid("GW00000102")), (1, 1));
    assert_eq!(snap.overlaps, 0, "{:?}", snap.violations);
    d.stop().await;
}

/// Finding 5: a failed reconcile was never tried again (`daily-<op>-<date>` returned the first record
/// whatever its status), and one killed mid-way stayed failed. Now: interrupted, then refused by the
/// host, then the true result, without anyone touching the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_interrupted_daily_reconcile_runs_again_until_it_has_a_result() {
    // Run time 00:00: a daemon started at any hour catches up on yesterday at once.
    let w = world_with("lottery-retry", OPEN_RISK, &|p: String| p.replace("reconcile_at = \"01:00\"", "reconcile_at = \"00:00\"")).await;
    #[allow(clippy::disallowed_methods)]
    let yesterday = chrono::Local::now().date_naive().pred_opt().expect("yesterday").to_string();
    // Life 1: the host is slow on awardDetail; the daemon dies while the reconcile is in flight.
    w.sim.push_fault_on("migt/account/awardDetail", Fault::Delay(Duration::from_millis(1500)));
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let mut seen = false;
    for _ in 0..200 {
        if all_records(&d.client).await.iter().any(|r| r["operation"] == "reconcile" && r["status"] == "pending") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the daily reconcile did not start");
    d.kill9().await;
    // The host finishes what it was doing before the next life asks again (see the report on this).
    tokio::time::sleep(Duration::from_millis(1700)).await;
    // Life 2: the host fails the next attempt; a later one gets the true result. (Under load life 1 can
    // die before its awardDetail was sent: its delay must not carry over and turn attempt 2 into a
    // slow success.)
    w.sim.clear_faults();
    w.sim.push_fault_on("migt/account/awardDetail", Fault::Http500);
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = &d.client;
    let mut daily = Value::Null;
    for _ in 0..500 {
        let (_, st) = c.get("/v1/status").await.expect("status");
        daily = st["profiles"][0]["daily"].clone();
        if daily["status"] == "approved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (daily["date"].clone(), daily["status"].clone(), daily["balanced"].clone(), daily["attempts"].clone()),
        (json!(yesterday), json!("approved"), json!(true), json!(3)),
        "{daily}"
    );
    let mut runs: Vec<Value> = all_records(c).await.into_iter().filter(|r| r["operation"] == "reconcile").collect();
    runs.reverse();
    let keys: Vec<&str> = runs.iter().map(|r| r["idempotency_key"].as_str().unwrap_or("")).collect();
    assert_eq!(keys, [format!("daily-reconcile-{yesterday}"), format!("daily-reconcile-{yesterday}-2"), format!("daily-reconcile-{yesterday}-3")], "{runs:?}");
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap_or("")).collect();
    assert_eq!(statuses, ["failed", "failed", "approved"]);
    assert!(runs[0]["error"].as_str().unwrap_or("").contains("stopped"), "{}", runs[0]);
    // A restart after the result runs nothing more for that day.
    d.stop().await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(all_records(&d.client).await.iter().filter(|r| r["operation"] == "reconcile").count(), 3);
    d.stop().await;
}

/// An unbalanced day: the reconcile names the ticket, emits a `reconcile` event, and the CLI exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbalanced_reconcile_names_the_ticket_emits_an_event_and_the_cli_fails() {
    let w = world("lottery-unbalanced", OPEN_RISK).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = &d.client;
    let (s, paid) = c.post("/v1/profiles/lottery/redeem", redeem_body("u1", "GW00000201"), None).await.expect("redeem");
    assert_eq!((s, paid["status"].clone()), (200, json!("approved")), "{paid}");
    let (s, _) = c.post("/v1/profiles/lottery/redeem", redeem_body("u1", "GW00000202"), None).await.expect("redeem");
    assert_eq!(s, 200);
    let cli = |date: String| {
        let socket = w.socket.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate"))
                .args(["report", "lottery", "reconcile", "--body", &json!({"date": date}).to_string(), "--socket"])
                .arg(&socket)
                .output()
                .await
                .expect("posgate report")
        }
    };
    let out = cli(beijing_today()).await;
    assert!(out.status.success(), "balanced: {}", String::from_utf8_lossy(&out.stdout));
    let mut events = c.events().await.expect("events");
    w.sim.hide_from_reports(paid["result"]["transacId"].as_str().expect("transacId"));
    let out = cli(beijing_today()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "unbalanced must fail: {text}");
    assert!(text.contains(paid["result"]["ticketNo"].as_str().expect("ticketNo")), "{text}");
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.next().await {
                Ok(Some(e)) if e.event == "reconcile" => return e,
                Ok(Some(_)) => continue,
                other => panic!("event stream ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a reconcile event");
    assert_eq!((ev.data["balanced"].clone(), ev.data["profile"].clone()), (json!(false), json!("lottery")), "{:?}", ev.data);
    d.stop().await;
}

/// Per-unit owing: while one ticket's outcome stays unknown, other tickets are redeemed on the other
/// stations (needs the engine's leases and per-unit owing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unknown_ticket_does_not_hold_back_the_others() {
    let w = world_with("lottery-unit", OPEN_RISK, &tuned(500, "station_hold_ms = 600")).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = d.client.clone();
    // The first answer is late (the host pays) and every resend for a while fails.
    w.sim.push_fault_for_ticket("GW00000301", Fault::Delay(Duration::from_millis(900)));
    for _ in 0..6 {
        w.sim.push_fault_for_ticket("GW00000301", Fault::Http500);
    }
    let (_, stuck) = c.post("/v1/profiles/lottery/redeem", redeem_body("u1", "GW00000301"), Some("stuck")).await.expect("redeem");
    assert_eq!(stuck["status"], json!("pending"), "{stuck}");
    let held = stuck["slot"].as_str().map(str::to_string);
    assert!(held.is_some(), "the record names its station: {stuck}");
    let mut stations = std::collections::BTreeSet::new();
    for n in 302..308 {
        let (s, v) = c.post("/v1/profiles/lottery/redeem", redeem_body("u2", &format!("GW{n:08}")), None).await.expect("redeem");
        assert_eq!((s, v["status"].clone()), (200, json!("approved")), "other tickets go on: {v}");
        assert_ne!(v["result"]["station"].as_str(), held.as_deref(), "{v}");
        stations.insert(v["result"]["station"].as_str().unwrap_or("").to_string());
    }
    assert!(stations.len() >= 2, "{stations:?}");
    // The same ticket again waits for its own outcome (one unit), and it ends paid once.
    wait_recovered(&c, Duration::from_secs(30)).await;
    let (_, v) = c.get(&format!("/v1/journal/{}", stuck["id"])).await.expect("journal");
    assert_eq!((v["status"].clone(), v["result"]["station"].clone()), (json!("approved"), json!(held)), "{v}");
    let snap = w.sim.state_snapshot();
    assert_eq!(snap.times_paid("GW00000301"), 1);
    assert_eq!(snap.overlaps, 0, "{:?}", snap.violations);
    d.stop().await;
}

/// Issue 16: a redeem answered with a wrong-typed `success`, a `ret` the document does not define, or
/// another ticket's answer was booked as a decline (the host had paid) or as the other ticket's payment.
/// Now each is an unknown outcome, settled by the resend of the same transacId: paid once, told so,
/// nothing parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_redeem_answers_end_settled_by_the_resend_never_declined() {
    let w = world_with("lottery-hostile", OPEN_RISK, &tuned(2000, "station_hold_ms = 300")).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let c = &d.client;
    let hostile: [(&str, &'static str); 4] = [
        ("GW00000401", r#"{"success":"false","ret":"1305","msg":"兑奖失败, 此票未中奖","content":{}}"#),
        ("GW00000402", r#"{"success":false,"ret":"1399","msg":"兑奖失败","content":{}}"#),
        (
            "GW00000403",
            r#"{"success":false,"ret":"1305","msg":"兑奖失败, 此票未中奖","content":{"transacId":"01202601011000000000009","ticketNo":"00101-00000-GL009","gameName":"好运十倍","price":10}}"#,
        ),
        (
            "GW00000404",
            r#"{"success":true,"ret":"1301","msg":"ok","content":{"transacId":"01202601011000000000009","ticketNo":"00101-00000-GW009","gameName":"好运十倍","price":10,"level":1,"prize":9000,"balance":1.0,"soldCity":"北京","amountTicket":1,"amountPrize":9000}}"#,
        ),
    ];
    for (bar, body) in hostile {
        w.sim.push_fault_for_ticket(bar, Fault::AnswerWith(body));
        let (_, first) = c.post("/v1/profiles/lottery/redeem", redeem_body("u1", bar), Some(&format!("k-{bar}"))).await.expect("redeem");
        assert_ne!(first["status"], json!("declined"), "{body} was booked as a decline: {first}");
        // The engine may settle it by the resend before it answers: then it says so.
        if first["status"] == json!("approved") {
            assert_eq!((first["code"].clone(), first["result"]["recovered"].clone()), (json!("1307"), json!(true)), "{body} was believed: {first}");
        }
        wait_recovered(c, Duration::from_secs(30)).await;
        let (_, v) = c.get(&format!("/v1/journal/{}", first["id"])).await.expect("journal");
        assert_eq!((v["status"].clone(), v["code"].clone(), v["result"]["recovered"].clone()), (json!("approved"), json!("1307"), json!(true)), "{body}: {v}");
        assert_eq!(v["amount_fen"], v["result"]["prize"], "{v}");
        assert_ne!(v["amount_fen"], json!(900_000), "the other ticket's prize: {v}");
        // The POS asking again (same key) is told the final answer.
        let (_, again) = c.post("/v1/profiles/lottery/redeem", redeem_body("u1", bar), Some(&format!("k-{bar}"))).await.expect("again");
        assert_eq!(again["status"], json!("approved"), "{again}");
        assert_eq!(w.sim.state_snapshot().times_paid(bar), 1, "{bar}");
    }
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["needs_attention"], json!(0), "{st}");
    let snap = w.sim.state_snapshot();
    assert_eq!(snap.overlaps, 0, "{:?}", snap.violations);
    d.stop().await;
}

/// Finding (strict-host harness: `soak_lottery` ended a redeem `failed` this way): a station's session
/// superseded (1021), the login that follows loses its answer (the host logged the station in), and the
/// POS's redeem ended `failed` ("not sent: station … login: … closed by the server"). A login is safe to
/// repeat (the host supersedes the earlier token), so the backend now logs in again, after the station's
/// hold, and the redeem goes on; no two requests meet on the station (no overlap at the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_login_answer_logs_in_again_and_the_redeem_goes_on() {
    let w = world_with("lottery-lostlogin", OPEN_RISK, &tuned(2000, "station_hold_ms = 300")).await;
    let d = Daemon::start(&w.config, &w.socket, &[]).await;
    let (_, v) = d.client.post("/v1/profiles/lottery/redeem", redeem_body("u1", "GW00000500"), Some("first")).await.expect("redeem");
    assert_eq!(v["status"], json!("approved"), "{v}");
    // Yesterday's reconciliation runs at start-up on a station too: let it end, so the lost login is the redeem's.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while d.client.get("/v1/status").await.map(|(_, st)| st["profiles"][0]["daily"]["status"] != json!("approved")).unwrap_or(true) {
        assert!(tokio::time::Instant::now() < until, "the daily reconciliation did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 1..=4 {
        w.sim.log_in_elsewhere(&format!("2101{n:04}"));
    }
    w.sim.push_fault_on("proxy/station/login", Fault::DropAfterCommit);
    let logins = w.sim.ledger().logins;
    let t0 = tokio::time::Instant::now();
    let (_, v) = d.client.post("/v1/profiles/lottery/redeem", redeem_body("u1", "GW00000501"), Some("lost-login")).await.expect("redeem");
    assert_eq!(v["status"], json!("approved"), "{v}");
    // The second login waited out the station's hold (300 ms): the host might still have been on the first.
    assert!(t0.elapsed() >= Duration::from_millis(300), "logged in again before the hold ended: {:?}", t0.elapsed());
    let l = w.sim.ledger();
    assert_eq!(l.logins - logins, 2, "one lost login, one more: {l:?}");
    assert_eq!(l.paid.get("GW00000501").map(Vec::len), Some(1), "{l:?}");
    assert!(l.violations.is_empty() && l.overlaps == 0, "{l:?}");
    d.stop().await;
}
