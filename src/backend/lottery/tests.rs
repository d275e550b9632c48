//! Unit tests of the lottery backend: profile options, POS body checks, transacId, answer mapping, comparison.
use super::*;
use crate::net::client::HttpOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!("posgate-lottery-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A profile on disk (TOML + secrets + test CA) with `stations` stations `2101000n` and extra `[options]`
/// lines, and the backend built from it.
pub(crate) fn backend_for(base_url: &str, dir: &Path, app_secret: &str, password: &str, stations: u32, extra_options: &str) -> LotteryBackend {
    let pki = crate::net::tls::TestPki::ensure(dir).unwrap();
    std::fs::write(dir.join("app-secret.txt"), format!("{app_secret}\n")).unwrap();
    std::fs::write(dir.join("station.txt"), format!("{password}\n")).unwrap();
    let list: Vec<String> = (1..=stations).map(|n| format!("{{ id = \"2101{n:04}\", clerk = \"0\", serial = \"X1P4H1110200020{n}\" }}")).collect();
    let toml = format!(
        "name = \"lot\"\nbackend = \"lottery\"\nbase_url = \"{base_url}\"\nca_file = \"test-ca.pem\"\nstore = \"2101\"\nterminal = \"t1\"\noperator = \"0\"\ntimeout_ms = 3000\n[secrets]\napp_secret = \"app-secret.txt\"\nstation_password = \"station.txt\"\n[options]\napp_key = \"aa75c0f6a4bf462ea006b2920034cf5b\"\nstations = [{}]\n{extra_options}\n",
        list.join(", ")
    );
    let path = dir.join("lot.toml");
    std::fs::write(&path, toml).unwrap();
    let profile = Profile::load(&path).unwrap();
    let http = HttpsClient::new(&HttpOptions { ca_file: Some(pki.ca_file.clone()), connect_timeout: Duration::from_secs(2), timeout: profile.timeout, ..HttpOptions::default() }).unwrap();
    LotteryBackend::new(&profile, http).unwrap()
}

fn backend() -> LotteryBackend {
    backend_for("https://127.0.0.1:9", &temp_dir("unit"), "s3cret", "123456", 2, "")
}

fn body(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// Noon, Beijing time, 2026-03-10: inside the default service hours.
pub(crate) fn noon_ms() -> i64 {
    chrono::TimeZone::with_ymd_and_hms(&FixedOffset::east_opt(8 * 3600).unwrap(), 2026, 3, 10, 12, 0, 0).unwrap().timestamp_millis()
}

fn ctx() -> PrepareContext<'static> {
    PrepareContext { now_ms: noon_ms(), recent: &[], card: None }
}

#[test]
fn the_example_profile_parses() {
    let dir = temp_dir("example");
    std::fs::create_dir_all(dir.join("profiles")).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let pki = crate::net::tls::TestPki::ensure(&dir.join("pki")).unwrap();
    std::fs::write(dir.join("secrets/lottery-app-secret.txt"), "x\n").unwrap();
    std::fs::write(dir.join("secrets/lottery-station-password.txt"), "123456\n").unwrap();
    let path = dir.join("profiles/lottery.toml");
    std::fs::write(&path, include_str!("../../../terminal-profiles/lottery.toml")).unwrap();
    let profile = Profile::load(&path).unwrap();
    let http = HttpsClient::new(&HttpOptions { ca_file: Some(pki.ca_file), connect_timeout: Duration::from_secs(1), timeout: Duration::from_secs(1), ..HttpOptions::default() }).unwrap();
    let b = LotteryBackend::new(&profile, http).unwrap();
    assert_eq!(b.pool().len(), 4);
    assert_eq!(b.daily_job().map(|j| (j.at, j.operation)), Some((NaiveTime::from_hms_opt(1, 0, 0).unwrap(), "reconcile")));
}

#[test]
fn bad_profiles_are_refused_naming_the_option() {
    let dir = temp_dir("bad");
    let pki = crate::net::tls::TestPki::ensure(&dir).unwrap();
    std::fs::write(dir.join("s.txt"), "x").unwrap();
    let http = HttpsClient::new(&HttpOptions { ca_file: Some(pki.ca_file), connect_timeout: Duration::from_secs(1), timeout: Duration::from_secs(1), ..HttpOptions::default() }).unwrap();
    let head = "name = \"lot\"\nbackend = \"lottery\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\n[secrets]\napp_secret = \"s.txt\"\nstation_password = \"s.txt\"\n[options]\n";
    for (opts, want) in [
        ("stations = [{ id = \"1\", serial = \"x\" }]", "options.app_key"),
        ("app_key = \"k\"", "options.stations"),
        ("app_key = \"k\"\nstations = [{ id = \"1\" }]", "options.stations[0].serial"),
        ("app_key = \"k\"\nstations = [{ id = \"1\", serial = \"x\", password = \"nope\" }]", "secrets.nope"),
        ("app_key = \"k\"\nsign_method = \"RSA\"\nstations = [{ id = \"1\", serial = \"x\" }]", "options.sign_method"),
        ("app_key = \"k\"\nmerchant = \"123\"\nstations = [{ id = \"1\", serial = \"x\" }]", "options.merchant"),
        ("app_key = \"k\"\ntimezone = \"Beijing\"\nstations = [{ id = \"1\", serial = \"x\" }]", "options.timezone"),
        ("app_key = \"k\"\nstations = [{ id = \"1\", serial = \"x\" }]\n[options.risk]\ndaily_tickets = -1", "options.risk.daily_tickets"),
    ] {
        let path = dir.join("lot.toml");
        std::fs::write(&path, format!("{head}{opts}\n")).unwrap();
        let profile = Profile::load(&path).unwrap();
        let e = LotteryBackend::new(&profile, http.clone()).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn transac_id_is_merchant_beijing_time_and_trace() {
    let tz = FixedOffset::east_opt(8 * 3600).unwrap();
    assert_eq!(transac_id("01", "2026-03-10T02:03:04.123Z", "000042", tz).unwrap(), "0120260310100304000042");
    assert_eq!(transac_id("01", "2026-03-10T17:00:00Z", "999999", tz).unwrap(), "0120260311010000999999");
    assert!(transac_id("01", "2026-03-10T02:03:04Z", "42", tz).is_err());
    assert!(transac_id("01", "yesterday", "000042", tz).is_err());
}

#[test]
fn prepare_masks_the_bar_code_and_refuses_daemon_fields() {
    let b = backend();
    let bar = "GW00000001234567";
    let p = b.prepare("redeem", &body(json!({"userId": "wx0001", "userRealIp": "10.0.0.8", "barCode": bar})), None, &ctx()).unwrap();
    assert_eq!(p.public["barCode"], json!(mask_card(bar)));
    assert_eq!(p.vault["barCode"], json!(bar));
    assert!(!serde_json::to_string(&p.public).unwrap().contains(bar));
    assert_eq!(p.amount_fen, 0);
    assert_eq!(p.pos_reference.as_deref(), Some(mask_card(bar).as_str()));
    for k in ["transacId", "type", "access_token"] {
        let mut m = body(json!({"userId": "wx0001", "userRealIp": "10.0.0.8", "barCode": bar}));
        m.insert(k.into(), json!("x"));
        assert_eq!(b.prepare("redeem", &m, None, &ctx()).unwrap_err(), PrepareError::DaemonOwned(k.into()));
    }
    assert_eq!(b.prepare("redeem", &body(json!({"userId": "wx0001", "barCode": bar})), None, &ctx()).unwrap_err(), PrepareError::Missing("userRealIp".into()));
    assert!(matches!(b.prepare("redeem", &body(json!({"userId": "wx0001", "userRealIp": "1", "barCode": bar, "colour": 1})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "colour"));
    // A risk refusal carries its business code (service hours here: 23:30 Beijing).
    let late = PrepareContext { now_ms: noon_ms() + 11 * 3_600_000 + 1_800_000, recent: &[], card: None };
    let e = b.prepare("redeem", &body(json!({"userId": "wx0001", "userRealIp": "10.0.0.8", "barCode": bar})), None, &late).unwrap_err().to_string();
    assert!(e.contains("10032"), "{e}");
    // Passwords never reach the journal; a report's dates are checked; stations must be known.
    let p = b.prepare("password", &body(json!({"stationId": "21010001", "old": "123456", "new": "654321"})), None, &ctx()).unwrap();
    assert!(p.public.get("new").is_none() && p.transient["new"] == json!("654321"));
    assert!(matches!(b.prepare("password", &body(json!({"stationId": "21010001", "old": "000000", "new": "1"})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "old"));
    assert_eq!(b.prepare("password", &body(json!({"new": "1"})), None, &ctx()).unwrap_err(), PrepareError::Missing("stationId".into()));
    assert!(b.prepare("report-sales", &body(json!({"beginDate": "2026/03/01", "endDate": "2026/03/10"})), None, &ctx()).is_ok());
    assert!(matches!(b.prepare("report-sales", &body(json!({"beginDate": "2026-03-01", "endDate": "2026/03/10"})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "beginDate"));
    assert!(matches!(b.prepare("count", &body(json!({"stationId": "99"})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "stationId"));
}

fn answer(success: bool, ret: &str, content: Value) -> Answer {
    Answer { success, ret: ret.into(), msg: String::new(), content }
}

#[test]
fn redeem_answers_map_to_verdicts() {
    let me = "0120260310100304000042";
    let paid = redeem_reply(&answer(true, "1301", json!({"transacId": me, "ticketNo": "00101-00001-GW001", "gameName": "好运十倍", "price": 10, "level": 3, "prize": 50, "balance": 10050.5, "amountPrize": 150})), me, "21010001").unwrap();
    assert_eq!(paid.verdict, Verdict::Approved);
    assert_eq!((paid.fields["prize"].clone(), paid.fields["price"].clone(), paid.fields["balance"].clone(), paid.fields["amountPrize"].clone()), (json!(5000), json!(1000), json!(1005050), json!(15000)));
    assert_eq!(paid.fields["transacId"], json!(me));
    assert_eq!(paid.reference.as_deref(), Some("00101-00001-GW001"));
    let ours = redeem_reply(&answer(true, "1307", json!({"transacIdOrg": me, "prize": 50, "awardStation": "21010002", "awardTime": "2026-03-10 10:03:05"})), me, "21010001").unwrap();
    assert_eq!((ours.verdict.clone(), ours.code.as_str()), (Verdict::Approved, "1307"));
    let theirs = redeem_reply(&answer(true, "1307", json!({"transacIdOrg": "99x", "awardStation": "21019999", "awardTime": "2026-01-01 10:00:00"})), me, "21010001").unwrap();
    assert_eq!(theirs.verdict, Verdict::Declined);
    assert!(theirs.message_en.contains("21019999") && theirs.message_en.contains("2026-01-01 10:00:00"), "{}", theirs.message_en);
    let losing = redeem_reply(&answer(false, "1305", json!({"transacId": me, "ticketNo": "T", "gameName": "G", "price": 10})), me, "21010001").unwrap();
    assert_eq!((losing.verdict.clone(), losing.fields["ticketNo"].clone(), losing.message.as_str()), (Verdict::Declined, json!("T"), "兑奖失败, 此票未中奖"));
    assert_eq!(redeem_reply(&answer(false, "1005", json!({})), me, "s").unwrap_err().stage, Stage::Unknown);
    assert!(ticket_level("1305") && ticket_level("1307") && !ticket_level("12") && !ticket_level("1005"));
    // Tokens in a login answer never reach the journal-bound fields.
    assert!(plain_reply(&answer(true, "10000", json!({"token": "t0k3n", "serverTime": "x"})), "s").fields.get("token").is_none());
}

#[test]
fn comparison_names_every_difference() {
    let tz = FixedOffset::east_opt(8 * 3600).unwrap();
    let rec = |id: u64, t: &str, status: &str, prize: i64| json!({"id": id, "operation": "redeem", "status": status, "trace": "000001", "created_at": "2026-03-10T02:00:00Z", "request": {"barCode": "GW0000****0001"}, "result": {"transacId": t, "ticketNo": format!("T{id}"), "prize": prize}});
    let mut records = vec![rec(1, "A", "approved", 500), rec(2, "B", "approved", 1000), rec(3, "C", "approved", 2000), rec(4, "D", "declined", 0)];
    // The engine hands over a day either side: 23:59 and 00:00 Beijing of the neighbouring days are not this day.
    let mut before = rec(5, "E", "approved", 700);
    before["created_at"] = json!("2026-03-09T15:59:59Z");
    let mut after = rec(6, "F", "approved", 700);
    after["created_at"] = json!("2026-03-10T16:00:00Z");
    records.extend([before, after]);
    let row = |t: &str, prize: i64| json!({"gameNo": "00101", "packNo": "00001", "ticketNo": format!("N{t}"), "transacId": t, "time": "2026-03-10 10:00:00", "prize": prize}).as_object().cloned().unwrap();
    let rows = vec![row("A", 5), row("C", 30), row("X", 100)];
    let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
    let remote = Remote { rows, summary_count: 3, summary_amount_fen: 13_500, stations: vec!["21010001".into()] };
    let m = compare(date, &records, &remote, "01", tz);
    let ids = |k: &str| m[k].as_array().unwrap().iter().map(|x| x["transacId"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids("missing_locally"), ["X"]);
    assert_eq!(ids("missing_remotely"), ["B"]);
    assert_eq!(ids("prize_mismatch"), ["C"]);
    assert_eq!(m["prize_mismatch"][0]["local_prize_fen"], json!(2000));
    assert_eq!(m["prize_mismatch"][0]["remote_prize_fen"], json!(3000));
    assert_eq!(m["totals"], json!({"local_count": 3, "local_amount_fen": 3500, "remote_count": 3, "remote_amount_fen": 13500, "summary_count": 3, "summary_amount_fen": 13500}));
    assert_eq!((m["balanced"].clone(), m["differences"].clone()), (json!(false), json!(3)));
}
