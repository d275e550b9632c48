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
    backend_with_timeout(base_url, dir, app_secret, password, stations, 3000, extra_options)
}

/// [`backend_for`] with another `timeout_ms`.
pub(crate) fn backend_with_timeout(
    base_url: &str,
    dir: &Path,
    app_secret: &str,
    password: &str,
    stations: u32,
    timeout_ms: u64,
    extra_options: &str,
) -> LotteryBackend {
    let pki = crate::net::tls::TestPki::ensure(dir).unwrap();
    crate::fsmode::write_private(dir.join("app-secret.txt"), format!("{app_secret}\n")).unwrap();
    crate::fsmode::write_private(dir.join("station.txt"), format!("{password}\n")).unwrap();
    let list: Vec<String> = (1..=stations).map(|n| format!("{{ id = \"2101{n:04}\", clerk = \"0\", serial = \"X1P4H1110200020{n}\" }}")).collect();
    let toml = format!(
        "name = \"lot\"\nbackend = \"lottery\"\nbase_url = \"{base_url}\"\nca_file = \"test-ca.pem\"\nstore = \"2101\"\nterminal = \"t1\"\noperator = \"0\"\ntimeout_ms = {timeout_ms}\n[secrets]\napp_secret = \"app-secret.txt\"\nstation_password = \"station.txt\"\n[options]\napp_key = \"aa75c0f6a4bf462ea006b2920034cf5b\"\nstations = [{}]\n{extra_options}\n",
        list.join(", "),
    );
    let path = dir.join("lot.toml");
    std::fs::write(&path, toml).unwrap();
    let profile = Profile::load(&path).unwrap();
    let http = HttpsClient::new(&HttpOptions {
        ca_file: Some(pki.ca_file.clone()),
        connect_timeout: Duration::from_secs(2),
        timeout: profile.timeout,
        ..HttpOptions::default()
    })
    .unwrap();
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
    crate::fsmode::write_private(dir.join("secrets/lottery-app-secret.txt"), "x\n").unwrap();
    crate::fsmode::write_private(dir.join("secrets/lottery-station-password.txt"), "123456\n").unwrap();
    let path = dir.join("profiles/lottery.toml");
    std::fs::write(&path, include_str!("../../../terminal-profiles/lottery.toml")).unwrap();
    let profile = Profile::load(&path).unwrap();
    let http = HttpsClient::new(&HttpOptions {
        ca_file: Some(pki.ca_file),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        ..HttpOptions::default()
    })
    .unwrap();
    let b = LotteryBackend::new(&profile, http).unwrap();
    assert_eq!(b.pool().len(), 4);
    assert_eq!(b.daily_job().map(|j| (j.at, j.operation)), Some((NaiveTime::from_hms_opt(1, 0, 0).unwrap(), "reconcile")));
}

#[test]
fn bad_profiles_are_refused_naming_the_option() {
    let dir = temp_dir("bad");
    let pki = crate::net::tls::TestPki::ensure(&dir).unwrap();
    crate::fsmode::write_private(dir.join("s.txt"), "x").unwrap();
    let http = HttpsClient::new(&HttpOptions {
        ca_file: Some(pki.ca_file),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        ..HttpOptions::default()
    })
    .unwrap();
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
    assert!(
        matches!(b.prepare("redeem", &body(json!({"userId": "wx0001", "userRealIp": "1", "barCode": bar, "colour": 1})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "colour")
    );
    // A risk refusal carries its business code (service hours here: 23:30 Beijing).
    let late = PrepareContext { now_ms: noon_ms() + 11 * 3_600_000 + 1_800_000, recent: &[], card: None };
    let e = b.prepare("redeem", &body(json!({"userId": "wx0001", "userRealIp": "10.0.0.8", "barCode": bar})), None, &late).unwrap_err().to_string();
    assert!(e.contains("10032"), "{e}");
    // Passwords never reach the journal; a report's dates are checked; stations must be known.
    let p = b.prepare("password", &body(json!({"stationId": "21010001", "old": "123456", "new": "654321"})), None, &ctx()).unwrap();
    assert!(p.public.get("new").is_none() && p.transient["new"] == json!("654321"));
    assert!(
        matches!(b.prepare("password", &body(json!({"stationId": "21010001", "old": "000000", "new": "1"})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "old")
    );
    assert_eq!(b.prepare("password", &body(json!({"new": "1"})), None, &ctx()).unwrap_err(), PrepareError::Missing("stationId".into()));
    assert!(b.prepare("report-sales", &body(json!({"beginDate": "2026/03/01", "endDate": "2026/03/10"})), None, &ctx()).is_ok());
    assert!(
        matches!(b.prepare("report-sales", &body(json!({"beginDate": "2026-03-01", "endDate": "2026/03/10"})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "beginDate")
    );
    assert!(
        matches!(b.prepare("count", &body(json!({"stationId": "99"})), None, &ctx()), Err(PrepareError::Invalid { ref field, .. }) if field == "stationId")
    );
}

fn answer(success: bool, ret: &str, content: Value) -> Answer {
    Answer { success, ret: ret.into(), msg: String::new(), content }
}

fn ours(id: &str) -> bool {
    id.starts_with("210100")
}

/// A complete 8.4 兑奖成功 content for transacId `me`.
fn paid_content(me: &str) -> Value {
    json!({"transacId": me, "ticketNo": "00101-00001-GW001", "gameName": "好运十倍", "price": 10, "level": 3, "prize": 50, "balance": 10050.5, "soldCity": "北京", "amountTicket": 3, "amountPrize": 150})
}

/// A complete 8.4 重复兑奖 content: `org` paid it at `station`.
fn again_content(me: &str, org: &str, station: &str, at: &str) -> Value {
    json!({"transacId": me, "transacIdOrg": org, "ticketNo": "00101-00001-GW001", "gameName": "好运十倍", "price": 10, "level": 3, "prize": 50, "balance": 0,
           "awardStation": station, "awardTime": at, "soldCity": "北京", "Amoutticket": 0, "AmountPrize": 0})
}

#[test]
fn redeem_answers_map_to_verdicts() {
    let me = "0120260310100304000042";
    let paid = redeem_reply(&answer(true, "1301", paid_content(me)), me, "21010001", &ours).unwrap();
    assert_eq!(paid.verdict, Verdict::Approved);
    assert_eq!(
        (paid.fields["prize"].clone(), paid.fields["price"].clone(), paid.fields["balance"].clone(), paid.fields["amountPrize"].clone()),
        (json!(5000), json!(1000), json!(1005050), json!(15000))
    );
    assert_eq!(paid.fields["transacId"], json!(me));
    assert_eq!(paid.fields["station"], json!("21010001"));
    assert_eq!(paid.reference.as_deref(), Some("00101-00001-GW001"));
    let theirs = redeem_reply(&answer(true, "1307", again_content(me, "99x", "21019999", "2026-01-01 10:00:00")), me, "21010001", &ours).unwrap();
    assert_eq!(theirs.verdict, Verdict::Declined);
    assert!(theirs.message_en.contains("21019999") && theirs.message_en.contains("2026-01-01 10:00:00"), "{}", theirs.message_en);
    let losing = redeem_reply(&answer(false, "1305", json!({"transacId": me, "ticketNo": "T", "gameName": "G", "price": 10})), me, "21010001", &ours).unwrap();
    assert_eq!((losing.verdict.clone(), losing.fields["ticketNo"].clone(), losing.message.as_str()), (Verdict::Declined, json!("T"), "兑奖失败, 此票未中奖"));
    assert_eq!(redeem_reply(&answer(false, "1005", json!({})), me, "s", &ours).unwrap_err().stage, Stage::Unknown);
    assert!(ticket_level("1305") && ticket_level("1307") && !ticket_level("12") && !ticket_level("1005") && !ticket_level("15") && !ticket_level("10030"));
    // Tokens in a login answer never reach the journal-bound fields.
    assert!(plain_reply(&answer(true, "10000", json!({"token": "t0k3n", "serverTime": "x"})), wire::LOGIN_PATH, "s").fields.get("token").is_none());
}

/// Finding 3: a redeem settled by a resend was journaled under the resending station; the host paid it
/// at `awardStation`. And a 1307 naming our transacId at a station not ours is not our payment.
#[test]
fn a_1307_of_ours_is_journaled_under_award_station_and_needs_one_of_our_stations() {
    let me = "0120260310100304000042";
    let ours_elsewhere = redeem_reply(&answer(true, "1307", again_content(me, me, "21010002", "2026-03-10 10:03:05")), me, "21010001", &ours).unwrap();
    assert_eq!((ours_elsewhere.verdict.clone(), ours_elsewhere.code.as_str()), (Verdict::Approved, "1307"));
    assert_eq!(ours_elsewhere.fields["station"], json!("21010002"), "journaled where the host paid it");
    assert_eq!(ours_elsewhere.fields["sent_on"], json!("21010001"));
    assert_eq!(ours_elsewhere.amount_fen, Some(5000));
    let foreign = redeem_reply(&answer(true, "1307", again_content(me, me, "31019999", "2026-03-10 10:03:05")), me, "21010001", &ours).unwrap();
    assert_eq!(foreign.verdict, Verdict::Declined);
    assert!(foreign.message_en.contains("31019999"), "{}", foreign.message_en);
    assert_eq!(foreign.amount_fen, None);
}

/// Findings 7 and 8: `u_1`, `u-2` were sent although 8.4 allows letters and digits only; report-award
/// sent `00000` for a left-out game and batch, which the host refuses since v1.0.
#[test]
fn user_id_is_letters_and_digits_and_report_award_needs_game_and_batch() {
    let b = backend();
    let redeem = |user: &str| b.prepare("redeem", &body(json!({"userId": user, "userRealIp": "10.0.0.8", "barCode": "GW00000001"})), None, &ctx());
    for bad in ["u_1", "u-2", "wx 1", "用户1", &"a".repeat(33)] {
        assert!(matches!(redeem(bad), Err(PrepareError::Invalid { ref field, .. }) if field == "userId"), "{bad}");
    }
    for good in ["u1", "WX0001abc", &"a".repeat(32)] {
        assert!(redeem(good).is_ok(), "{good}");
    }
    // The unit an unknown outcome holds back is the ticket.
    assert_eq!(redeem("u1").unwrap().unit.as_deref(), Some("ticket:GW00000001"));
    let award = |v: Value| b.prepare("report-award", &body(v), None, &ctx());
    assert_eq!(award(json!({"beginTime": "2026/03/10", "endTime": "2026/03/10"})).unwrap_err(), PrepareError::Missing("gameNo".into()));
    assert_eq!(award(json!({"gameNo": "00101", "beginTime": "2026/03/10", "endTime": "2026/03/10"})).unwrap_err(), PrepareError::Missing("batchNo".into()));
    let ok = award(json!({"gameNo": "00101", "batchNo": "00001", "beginTime": "2026/03/10", "endTime": "2026/03/10"})).unwrap();
    assert_eq!((ok.public["gameNo"].clone(), ok.public["batchNo"].clone()), (json!("00101"), json!("00001")));
}

fn detail_row(t: &str, station: &str, ticket: &str, batch: &str) -> Map<String, Value> {
    // Exactly the document's 8.8.2 fields: no prize.
    let mut m = json!({"gameNo": "00101", "batchNo": batch, "packNo": "00001", "ticketNo": ticket, "transacId": t, "time": "2026-03-10 10:00:00"})
        .as_object()
        .cloned()
        .unwrap();
    m.insert("station".into(), json!(station));
    m
}

fn summary(station: &str, game: &str, batch: &str, tickets: i64, fen: i64) -> Summary {
    Summary { station: station.into(), game_no: game.into(), batch_no: batch.into(), tickets, amount_fen: fen }
}

/// Finding 4: awardDetail rows carry no prize, and the comparison read a per-row prize: a day could not
/// balance. Amounts now come from awardSummary per (gameNo, batchNo).
#[test]
fn comparison_without_row_prizes_names_every_difference() {
    let tz = FixedOffset::east_opt(8 * 3600).unwrap();
    let rec = |id: u64, t: &str, status: &str, prize: i64, station: &str| {
        json!({"id": id, "operation": "redeem", "status": status, "trace": "000001", "created_at": "2026-03-10T02:00:00Z", "request": {"barCode": "GW0000****0001"},
               "result": {"transacId": t, "ticketNo": format!("00101-00001-T{id}"), "prize": prize, "station": station}})
    };
    let mut records =
        vec![rec(1, "A", "approved", 500, "S1"), rec(2, "B", "approved", 1000, "S1"), rec(3, "C", "approved", 2000, "S2"), rec(4, "D", "declined", 0, "S1")];
    // The engine hands over a day either side: 23:59 and 00:00 Beijing of the neighbouring days are not this day.
    let mut before = rec(5, "E", "approved", 700, "S1");
    before["created_at"] = json!("2026-03-09T15:59:59Z");
    let mut after = rec(6, "F", "approved", 700, "S1");
    after["created_at"] = json!("2026-03-10T16:00:00Z");
    records.extend([before, after]);
    // The engine hands typed records; these are written as the API's record views.
    let records: Vec<crate::backend::ReportRecord> = records.into_iter().map(|r| serde_json::from_value(r).unwrap()).collect();
    let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();

    // Both sides agree: balanced, with the summary per station for all games, or per batch.
    let rows = vec![detail_row("A", "S1", "T1", "00001"), detail_row("B", "S1", "T2", "00002"), detail_row("C", "S2", "T3", "00001")];
    let all = Remote {
        rows: rows.clone(),
        summaries: vec![summary("S1", "00000", "00000", 2, 1500), summary("S2", "00000", "00000", 1, 2000)],
        stations: vec!["S1".into(), "S2".into()],
        notes: vec![],
    };
    let m = compare(date, &records, &all, "01", tz);
    assert_eq!(m["balanced"], json!(true), "{}", m["report_text"]);
    let per = Remote {
        summaries: vec![summary("S1", "00101", "00001", 1, 500), summary("S1", "00101", "00002", 1, 1000), summary("S2", "00101", "00001", 1, 2000)],
        ..all.clone()
    };
    assert_eq!(compare(date, &records, &per, "01", tz)["balanced"], json!(true));

    // One ticket removed from the host's rows: named, with its ticket.
    let gone = Remote { rows: vec![rows[0].clone(), rows[2].clone()], ..all.clone() };
    let m = compare(date, &records, &gone, "01", tz);
    assert_eq!(m["balanced"], json!(false));
    assert_eq!(m["missing_remotely"][0]["transacId"], json!("B"));
    assert_eq!(m["missing_remotely"][0]["ticketNo"], json!("00101-00001-T2"));
    assert!(m["report_text"].as_str().unwrap().contains("00101-00001-T2"));

    // A ticket only the host paid, another transacId winning ours, a station mismatch, a summary off.
    let mut rows2 = vec![
        detail_row("A", "S2", "T1", "00001"),
        detail_row("X", "S1", "T9", "00001"),
        detail_row("Z", "S1", "T2", "00002"),
        detail_row("C", "S2", "T3", "00001"),
    ];
    rows2[0].insert("station".into(), json!("S2"));
    let odd = Remote { rows: rows2, summaries: vec![summary("S1", "00000", "00000", 2, 1500), summary("S2", "00000", "00000", 2, 2000)], ..all.clone() };
    let m = compare(date, &records, &odd, "01", tz);
    let ids = |k: &str| m[k].as_array().unwrap().iter().map(|x| x["transacId"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(ids("missing_locally"), ["X"]);
    assert!(ids("missing_remotely").is_empty());
    assert_eq!(ids("different_winner"), ["B"]);
    assert_eq!(m["different_winner"][0]["winning_transacId"], json!("Z"));
    assert_eq!(ids("station_mismatch"), ["A"]);
    let stations: Vec<&str> = m["amount_mismatch"].as_array().unwrap().iter().map(|x| x["station"].as_str().unwrap()).collect();
    assert_eq!(stations, ["S2"], "{}", m["report_text"]);
    assert_eq!((m["balanced"].clone(), m["differences"].clone()), (json!(false), json!(4)));
    assert_eq!(m["totals"], json!({"local_count": 3, "local_amount_fen": 3500, "remote_count": 4, "summary_count": 4, "summary_amount_fen": 3500}));
}

/// Issue 16: a redeem answer whose `success` contradicts its code, whose code no table defines or no
/// decline table names, or that lacks a field the document requires (or has it of another type) was booked
/// as a decline (or a payment). Each is an unknown outcome now.
#[test]
fn redeem_answers_the_document_does_not_give_are_unknown_never_declined() {
    let me = "0120260310100304000042";
    let unknown = |a: Answer| match redeem_reply(&a, me, "21010001", &ours) {
        Err(e) => assert_eq!(e.stage, Stage::Unknown, "{a:?}: {e}"),
        Ok(r) => panic!("{a:?} was booked {:?}", r.verdict),
    };
    let refused = json!({"transacId": me, "ticketNo": "T", "gameName": "G", "price": 10});
    // success contradicting the code.
    unknown(answer(true, "1305", refused.clone()));
    unknown(answer(false, "1301", paid_content(me)));
    unknown(answer(false, "10000", paid_content(me)));
    unknown(answer(false, "1307", again_content(me, me, "21010001", "2026-03-10 10:03:05")));
    unknown(answer(true, "1303", json!({})));
    // Codes no table defines, and defined codes that are no answer to a redeem.
    for ret in ["1399", "9999", "", " 1305", "1305 ", "10038", "3202", "10008"] {
        unknown(answer(false, ret, json!({})));
    }
    // Required fields missing or of another type.
    for (ret, success, full) in [
        ("1301", true, paid_content(me)),
        ("1307", true, again_content(me, me, "21010001", "t")),
        ("1305", false, refused.clone()),
        ("1304", false, refused.clone()),
    ] {
        for name in full.as_object().unwrap().keys() {
            let mut c = full.clone();
            c.as_object_mut().unwrap().remove(name);
            unknown(answer(success, ret, c.clone()));
            c[name.as_str()] = json!(["x"]);
            unknown(answer(success, ret, c));
        }
    }
    let mut c = paid_content(me);
    c["prize"] = json!("50");
    unknown(answer(true, "1301", c));
    let mut c = paid_content(me);
    c["prize"] = json!(50.5);
    unknown(answer(true, "1301", c));
    unknown(answer(true, "1301", json!("not an object")));
    unknown(answer(false, "1303", json!("not an object")));
    // The complete answers are still answers.
    assert_eq!(redeem_reply(&answer(false, "1305", refused), me, "s", &ours).unwrap().verdict, Verdict::Declined);
    assert_eq!(redeem_reply(&answer(false, "1303", json!({})), me, "s", &ours).unwrap().verdict, Verdict::Declined);
    assert_eq!(redeem_reply(&answer(false, "10035", json!({})), me, "s", &ours).unwrap().verdict, Verdict::Declined);
}

/// Issue 16: an answer naming another transacId (another request's answer) was believed: approved with
/// the other ticket's prize, or declined.
#[test]
fn a_redeem_answer_naming_another_transac_id_is_unknown() {
    let me = "0120260310100304000042";
    let other = "0120260310100304000043";
    for a in [
        answer(true, "1301", paid_content(other)),
        answer(true, "10000", paid_content(other)),
        answer(true, "1307", again_content(other, me, "21010001", "2026-03-10 10:03:05")),
        answer(true, "1307", again_content(other, other, "21019999", "2026-03-10 10:03:05")),
        answer(false, "1305", json!({"transacId": other, "ticketNo": "T", "gameName": "G", "price": 10})),
        answer(false, "1303", json!({"transacId": other})),
        answer(false, "1303", json!({"transacId": 42})),
    ] {
        let e = redeem_reply(&a, me, "21010001", &ours).unwrap_err();
        assert_eq!(e.stage, Stage::Unknown, "{a:?}");
        assert!(e.detail.contains("another request"), "{}", e.detail);
    }
}

/// Issue 16: every field of the answer went into the journal, unbounded; now only the fields the
/// document's answer table defines, text bounded with a marker (a report keeps a larger bound).
#[test]
fn only_the_documents_answer_fields_are_journaled_and_bounded() {
    let me = "0120260310100304000042";
    let mut c = paid_content(me);
    c["gameName"] = json!("好".repeat(10_000));
    c["injected"] = json!("x".repeat(100));
    c["cardNo"] = json!("6222020200112233445");
    let r = redeem_reply(&answer(true, "1301", c), me, "21010001", &ours).unwrap();
    assert!(r.fields.get("injected").is_none() && r.fields.get("cardNo").is_none(), "{:?}", r.fields);
    let name = r.fields["gameName"].as_str().unwrap();
    assert_eq!(name.chars().count(), wire::FIELD_MAX_CHARS);
    assert!(name.ends_with(wire::TRUNCATED));
    // Another interface's fields are not a redeem's, and a count keeps its own only.
    let count = plain_reply(&answer(true, "10000", json!({"tickets": 3, "amount": 20, "report": "<html>", "secret": "s"})), "proxy/validate/getCount", "s");
    assert_eq!(count.fields.keys().cloned().collect::<Vec<_>>(), ["amount", "station", "tickets"]);
    let html = format!("<html><body>{}</body></html>", "<tr><td>行</td></tr>".repeat(20_000));
    let rep = plain_reply(&answer(true, "10000", json!({"report": html})), "migt/report/sales", "s");
    let kept = rep.fields["report"].as_str().unwrap();
    assert!(kept.chars().count() > wire::FIELD_MAX_CHARS && kept.chars().count() <= wire::REPORT_MAX_CHARS, "{}", kept.len());
    assert!(rep.fields["report_text"].as_str().unwrap().chars().count() <= wire::REPORT_MAX_CHARS);
    let small = plain_reply(&answer(true, "10000", json!({"report": "<p>a</p>"})), "migt/report/sales", "s");
    assert_eq!(small.fields["report"], json!("<p>a</p>"));
}
