//! Unit tests of the loyalty backend: POS body checks, the request form, answer parsing.
use super::*;
use crate::backend::Backend;
use crate::net::client::HttpOptions;
use std::path::PathBuf;
use std::time::Duration;

const TMK: &str = "0123456789ABCDEFFEDCBA9876543210";
/// PIN key 11223344556677888877665544332211 and MAC key A1A2..B8 under the TMK (see crypto.rs tests).
const WORKING_KEY: &str = "3EB3B72576BBBE832532DF5DD75880D3720D29FF7CEE3BD9BD6DCBEEC616646C";
const CARD: &str = "6222021234567890123";

fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!("posgate-loyalty-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A profile on disk (TOML + TMK file + test CA) and the backend built from it.
pub(crate) fn backend_for(base_url: &str, dir: &std::path::Path, tmk: &str, store: &str, terminal: &str) -> LoyaltyBackend {
    let pki = crate::net::tls::TestPki::ensure(dir).unwrap();
    crate::fsmode::write_private(dir.join("tmk.hex"), format!("{tmk}\n")).unwrap();
    let toml = format!(
        "name = \"loy\"\nbackend = \"loyalty\"\nbase_url = \"{base_url}\"\nca_file = \"test-ca.pem\"\nstore = \"{store}\"\nterminal = \"{terminal}\"\noperator = \"01\"\ntimeout_ms = 3000\n[secrets]\nmaster_key = \"tmk.hex\"\n[options]\nprotocol_prefix = \"v1\"\n"
    );
    let path = dir.join("loy.toml");
    std::fs::write(&path, toml).unwrap();
    let profile = Profile::load(&path).unwrap();
    let http = HttpsClient::new(&HttpOptions {
        ca_file: Some(pki.ca_file.clone()),
        connect_timeout: Duration::from_secs(2),
        timeout: profile.timeout,
        ..HttpOptions::default()
    })
    .unwrap();
    LoyaltyBackend::new(&profile, http).unwrap()
}

fn backend() -> LoyaltyBackend {
    backend_for("https://127.0.0.1:9", &temp_dir("unit"), TMK, "100000000000001", "10000001")
}

fn body(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn consume_original() -> OriginalRef {
    let b = backend();
    let p = b
        .prepare(
            "consume",
            &body(json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 1050, "cashAmount": 0, "registerTraceNo": "R001"})),
            None,
            &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None },
        )
        .unwrap();
    OriginalRef {
        id: 7,
        operation: "consume".into(),
        trace: "000012".into(),
        batch: "000003".into(),
        amount_fen: p.amount_fen,
        reference: Some("10000000000012".into()),
        trans_time: Some("1415125804472".into()),
        created_at: "2014-11-11T10:20:30+08:00".into(),
        public: p.public,
        vault: p.vault,
    }
}

#[test]
fn a_bad_master_key_is_a_clear_config_error() {
    let dir = temp_dir("tmk");
    let pki = crate::net::tls::TestPki::ensure(&dir).unwrap();
    crate::fsmode::write_private(dir.join("tmk.hex"), "0123").unwrap();
    let path = dir.join("loy.toml");
    std::fs::write(
        &path,
        "name = \"loy\"\nbackend = \"loyalty\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\n[secrets]\nmaster_key = \"tmk.hex\"\n",
    )
    .unwrap();
    let profile = Profile::load(&path).unwrap();
    let http = HttpsClient::new(&HttpOptions {
        ca_file: Some(pki.ca_file),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        ..HttpOptions::default()
    })
    .unwrap();
    let e = LoyaltyBackend::new(&profile, http.clone()).unwrap_err().to_string();
    assert!(e.contains("secrets.master_key") && e.contains("32 hex"), "{e}");
    std::fs::write(&path, "name = \"loy\"\nbackend = \"loyalty\"\nbase_url = \"https://h\"\nstore = \"1\"\nterminal = \"2\"\n").unwrap();
    let profile = Profile::load(&path).unwrap();
    let e = LoyaltyBackend::new(&profile, http).unwrap_err().to_string();
    assert!(e.contains("secrets.master_key"), "{e}");
}

#[test]
fn prepare_refuses_missing_daemon_owned_float_and_unknown_fields() {
    let b = backend();
    let ok = json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 1050, "cashAmount": 0});
    assert!(b.prepare("consume", &body(ok.clone()), None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).is_ok());
    let mut m = body(ok.clone());
    m.remove("cardNo");
    assert_eq!(
        b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap_err(),
        PrepareError::Missing("cardNo".into())
    );
    let mut m = body(ok.clone());
    m.remove("pointAmount");
    assert_eq!(
        b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap_err(),
        PrepareError::Missing("pointAmount".into())
    );
    let mut m = body(ok.clone());
    m.insert("traceNo".into(), json!("000001"));
    assert_eq!(
        b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap_err(),
        PrepareError::DaemonOwned("traceNo".into())
    );
    let mut m = body(ok.clone());
    m.insert("storeNo".into(), json!("1"));
    assert_eq!(
        b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap_err(),
        PrepareError::DaemonOwned("storeNo".into())
    );
    for bad in [json!(10.5), json!("10.50"), json!(1050.0), json!(-1)] {
        let mut m = body(ok.clone());
        m.insert("pointAmount".into(), bad.clone());
        assert!(
            matches!(b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }), Err(PrepareError::Invalid { ref field, .. }) if field == "pointAmount"),
            "{bad}"
        );
    }
    let mut m = body(ok.clone());
    m.insert("colour".into(), json!("red"));
    assert!(
        matches!(b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }), Err(PrepareError::Invalid { ref field, .. }) if field == "colour")
    );
    let mut m = body(ok.clone());
    m.insert("password".into(), json!("12"));
    assert!(
        matches!(b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }), Err(PrepareError::Invalid { ref field, .. }) if field == "password")
    );
    let mut m = body(ok);
    m.insert("vaucher".into(), json!([{"id": 1}]));
    assert_eq!(
        b.prepare("consume", &m, None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap_err(),
        PrepareError::Missing("vaucher[0].num".into())
    );
    assert!(b.prepare("frobnicate", &Map::new(), None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).is_err());
}

#[test]
fn prepare_splits_public_vault_and_transient() {
    let b = backend();
    let p = b
        .prepare(
            "consume",
            &body(json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 1050, "cashAmount": 200, "password": "123456", "track2": "6222021234567890123=4912", "registerTraceNo": "R001", "vaucher": [{"id": 1, "num": 2}]})),
            None,
            &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None },
        )
        .unwrap();
    assert_eq!(p.public["cardNo"], json!("622202*********0123"));
    assert_eq!(p.vault["cardNo"], json!(CARD));
    assert_eq!(p.transient["password"], json!("123456"));
    assert!(p.transient.contains_key("track2"));
    let shown = serde_json::to_string(&p.public).unwrap();
    assert!(!shown.contains(CARD) && !shown.contains("123456") && !shown.contains("4912"), "{shown}");
    assert_eq!(p.amount_fen, 1050);
    assert_eq!(p.card_masked.as_deref(), Some("622202*********0123"));
    assert_eq!(p.pos_reference.as_deref(), Some("R001"));
    assert_eq!(p.totals, vec![("pointDebitCount".into(), 1), ("pointDebitAmount".into(), 1050), ("totalTransCount".into(), 1)]);

    let t = b
        .prepare(
            "ticket-consume",
            &body(json!({"cardNo": CARD, "ticket": [{"id": 1, "type": "01", "num": 2, "amount": 1000}, {"id": 2, "num": 1}]})),
            None,
            &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None },
        )
        .unwrap();
    assert_eq!(t.amount_fen, 2000);
    assert_eq!(t.totals, vec![("ticketDebitCount".into(), 1), ("ticketDebitAmount".into(), 2000), ("totalTransCount".into(), 1)]);
    let a = b
        .prepare(
            "card-activate",
            &body(json!({"cardNo": CARD, "mobileNo": "13800000000", "verifyCode": "123456", "idType": "01"})),
            None,
            &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None },
        )
        .unwrap();
    assert_eq!(a.totals, vec![("cardActiveCount".into(), 1), ("totalTransCount".into(), 1)]);
}

/// Found by review: ID numbers, mobile numbers and verify codes from card activation were journaled in clear.
#[test]
fn activation_personal_fields_are_masked_in_the_journal_and_sealed_for_a_resend() {
    let b = backend();
    let personal = json!({"cardNo": CARD, "mobileNo": "13812345678", "verifyCode": "654321", "idType": "01", "idNo": "110101199001011234"});
    let a = b.prepare("card-activate", &body(personal), None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap();
    let public = serde_json::to_string(&a.public).unwrap();
    for clear in ["13812345678", "654321", "110101199001011234"] {
        assert!(!public.contains(clear), "{clear} in the journal's public fields: {public}");
    }
    assert_eq!(a.public["mobileNo"], json!("138****5678"));
    assert_eq!(a.vault["mobileNo"], json!("13812345678"));
    assert_eq!(a.vault["verifyCode"], json!("654321"));
    assert_eq!(a.vault["idNo"], json!("110101199001011234"));
}

#[test]
fn originals_supply_card_amount_and_must_be_the_right_kind() {
    let b = backend();
    let o = consume_original();
    let c = b.prepare("cancel", &Map::new(), Some(&o), &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap();
    assert_eq!(c.vault["cardNo"], json!(CARD));
    assert_eq!(c.amount_fen, 1050);
    assert_eq!(c.totals, vec![("pointCreditCount".into(), 1), ("pointCreditAmount".into(), 1050), ("cancelCount".into(), 1), ("totalTransCount".into(), 1)]);
    let r = b.prepare("refund", &Map::new(), Some(&o), &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap();
    assert_eq!(r.totals, vec![("pointCreditCount".into(), 1), ("pointCreditAmount".into(), 1050), ("refundCount".into(), 1), ("totalTransCount".into(), 1)]);
    assert_eq!(r.public["registerTraceNo"], json!("R001"));
    assert_eq!(
        b.prepare("cancel", &Map::new(), None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap_err(),
        PrepareError::Missing("original".into())
    );
    assert!(
        matches!(b.prepare("refund-cancel", &Map::new(), Some(&o), &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }), Err(PrepareError::Invalid { ref field, .. }) if field == "original")
    );
    assert!(
        matches!(b.prepare("cancel", &body(json!({"cardNo": "6222020000000000000"})), Some(&o), &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }), Err(PrepareError::Invalid { ref field, .. }) if field == "cardNo")
    );
    let refund = OriginalRef { operation: "refund".into(), public: r.public.clone(), vault: r.vault.clone(), ..o.clone() };
    let rc = b.prepare("refund-cancel", &Map::new(), Some(&refund), &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap();
    assert_eq!(rc.totals, vec![("pointDebitCount".into(), 1), ("pointDebitAmount".into(), 1050), ("totalTransCount".into(), 1)]);
}

#[test]
fn consume_form_matches_an_independent_encoding() {
    let b = backend();
    let p = b
        .prepare("consume", &body(json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 1050, "cashAmount": 0, "password": "123456", "registerTraceNo": "R 001", "vaucher": [{"id": 1, "num": 2}]})), None, &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None })
        .unwrap();
    let identity = TerminalIdentity { store: "100000000000001".into(), terminal: "10000001".into(), operator: "01".into() };
    let session = json!({ "workingKey": WORKING_KEY });
    let tx = TxRequest {
        slot: None,
        journal_id: 1,
        operation: "consume",
        identity: &identity,
        trace: "000042",
        batch: "000003",
        session: &session,
        public: &p.public,
        vault: &p.vault,
        transient: &p.transient,
        original: None,
        created_at: "2026-11-23T02:00:00.000Z",
    };
    let w = wire::op("consume").unwrap();
    let form = b.build_form(w, &tx, true).unwrap();
    // Expected text from python3, pairs in the spec's field order:
    //   urllib.parse.urlencode([("storeNo","100000000000001"),("terminalNo","10000001"),
    //     ("cardNo","6222021234567890123"),("traceNo","000042"),("batchNo","000003"),
    //     ("password","5B1C6693FCEA1913"),("consumeType","01"),("pointAmount","10.50"),
    //     ("cashAmount","0.00"),("vaucher",'[{"id":1,"num":2}]'),("registerTraceNo","R 001")])
    // where 5B1C6693FCEA1913 = openssl enc -des-ede -K 11223344556677888877665544332211 -nopad of the
    // format-0 block 06122662A9876FED (PIN 123456, this card); see crypto.rs tests.
    assert_eq!(
        wire::encode_form(&form),
        "storeNo=100000000000001&terminalNo=10000001&cardNo=6222021234567890123&traceNo=000042&batchNo=000003&password=5B1C6693FCEA1913&consumeType=01&pointAmount=10.50&cashAmount=0.00&vaucher=%5B%7B%22id%22%3A1%2C%22num%22%3A2%7D%5D&registerTraceNo=R+001"
    );
    // The reversal replay carries neither PIN nor track data.
    let empty = Map::new();
    let replay = TxRequest { transient: &empty, ..tx };
    let form = b.build_form(w, &replay, false).unwrap();
    assert!(form.iter().all(|(k, _)| *k != "password" && *k != "track2"));
    // Without a session there is no PIN key: a clear error that names no value.
    let none = Value::Null;
    let e = b.build_form(w, &TxRequest { session: &none, ..tx }, true).unwrap_err();
    assert!(e.contains("check in") && !e.contains("123456"), "{e}");
}

#[test]
fn cancel_and_refund_forms_quote_the_original() {
    let b = backend();
    let o = consume_original();
    let identity = TerminalIdentity { store: "S".into(), terminal: "T".into(), operator: "01".into() };
    let session = json!({ "workingKey": WORKING_KEY });
    for (op, want) in [
        ("cancel", vec![("oriBatchNo", "000003"), ("oriTraceNo", "000012"), ("oriTransTime", "1415125804472"), ("oriRegisterTraceNo", "R001")]),
        ("refund", vec![("oriSerialNo", "10000000000012"), ("oriTransDate", "20141111"), ("oriRegisterTraceNo", "R001")]),
    ] {
        let p = b.prepare(op, &Map::new(), Some(&o), &crate::backend::PrepareContext { now_ms: 0, recent: &[], card: None }).unwrap();
        let tx = TxRequest {
            slot: None,
            journal_id: 2,
            operation: op,
            identity: &identity,
            trace: "000013",
            batch: "000003",
            session: &session,
            public: &p.public,
            vault: &p.vault,
            transient: &p.transient,
            original: Some(&o),
            created_at: "2026-11-23T02:00:00.000Z",
        };
        let form = b.build_form(wire::op(op).unwrap(), &tx, true).unwrap();
        for (k, v) in want {
            assert!(form.iter().any(|(fk, fv)| *fk == k && fv == v), "{op}: {k}={v} in {form:?}");
        }
        assert!(form.iter().any(|(k, v)| *k == "cardNo" && v == CARD));
    }
}

fn http(status: u16, body: &str) -> HttpReply {
    HttpReply { status, content_type: Some("application/json".into()), body: Bytes::from(body.to_string()) }
}

fn consume() -> &'static [wire::AnswerField] {
    wire::op("consume").unwrap().answer
}

#[test]
fn answers_parse_to_fen_and_failures_to_stages() {
    let r = parse_reply(
        &http(200, r#"{"status":"00","message":"成功","transTime":1415125804472,"serialNo":"10000000000012","pointBalance":1234567.89,"avaiablePointBalance":"12.5","usePoint":0,"persentPoint":0.1}"#),
        consume(),
    )
    .unwrap();
    assert_eq!(r.verdict, Verdict::Approved);
    assert_eq!(r.reference.as_deref(), Some("10000000000012"));
    assert_eq!(r.trans_time.as_deref(), Some("1415125804472"));
    assert_eq!(r.fields["pointBalance"], json!(123456789));
    assert_eq!(r.fields["avaiablePointBalance"], json!(1250));
    assert_eq!(r.fields["persentPoint"], json!(10));
    assert!(!r.fields.contains_key("status"));
    let q = parse_reply(
        &http(200, r#"{"status":"00","message":"ok","transTime":1,"pointBalance":0,"avaiablePointBalance":0,"idType":"01","idNo":"x","name":"n","gender":"01","mobileNo":"1","address":"","email":"","transTime":1,"vaucher":[{"id":1,"amount":1,"num":2,"name":"vv1"}],"idNo":"110101199001011234"}"#),
        wire::op("card-query").unwrap().answer,
    )
    .unwrap();
    assert_eq!(q.fields["vaucher"][0]["amount"], json!(100));
    assert_eq!(q.fields["idNo"], json!("110101********1234"));

    let d = parse_reply(&http(200, r#"{"status":"51"}"#), consume()).unwrap();
    assert_eq!((d.verdict, d.message.as_str(), d.message_en.as_str()), (Verdict::Declined, "余额不足, 请查询", "insufficient balance, please query"));
    // A code the document does not define, or a status of the wrong type, is no decline: unknown.
    assert_eq!(parse_reply(&http(200, r#"{"status":"Q7","message":""}"#), consume()).unwrap_err().stage, Stage::Unknown);
    for wrong in [r#"{"status":0}"#, r#"{"status":true}"#, r#"{"status":["00"]}"#, r#"{"status":{"c":"00"}}"#, r#"{"status":51}"#] {
        let e = parse_reply(&http(200, wrong), consume()).unwrap_err();
        assert_eq!(e.stage, Stage::Unknown, "{wrong}: {e}");
    }
    // Another request's answer (another trace or batch) is unknown, never approved.
    let sent = [("traceNo", "000007"), ("batchNo", "000002")];
    let e = parse_reply_to(&http(200, r#"{"status":"00","message":"ok","transTime":1,"serialNo":"S0","pointBalance":0,"avaiablePointBalance":0,"usePoint":0,"persentPoint":0,"traceNo":"000008","batchNo":"000002"}"#), consume(), &sent).unwrap_err();
    assert_eq!(e.stage, Stage::Unknown, "{e}");
    let e = parse_reply_to(&http(200, r#"{"status":"00","message":"ok","transTime":1,"serialNo":"S0","pointBalance":0,"avaiablePointBalance":0,"usePoint":0,"persentPoint":0,"batchNo":"000001"}"#), consume(), &sent).unwrap_err();
    assert_eq!(e.stage, Stage::Unknown, "{e}");
    assert_eq!(parse_reply_to(&http(200, r#"{"status":"00","message":"ok","transTime":1,"serialNo":"S0","pointBalance":0,"avaiablePointBalance":0,"usePoint":0,"persentPoint":0,"traceNo":"000007"}"#), consume(), &sent).unwrap().verdict, Verdict::Approved);

    let e = parse_reply(&http(200, "<html>oops 6222021234567890123</html>"), consume()).unwrap_err();
    assert_eq!(e.stage, Stage::Unknown);
    assert!(e.detail.starts_with("answer is not JSON") && !e.detail.contains(CARD), "{}", e.detail);
    let e = parse_reply(&http(200, r#"{"message":"x"}"#), consume()).unwrap_err();
    assert_eq!(e.stage, Stage::Unknown);
    assert!(e.detail.contains("status"));
    assert_eq!(parse_reply(&http(500, "boom"), consume()).unwrap_err().stage, Stage::Unknown);
    assert_eq!(parse_reply(&http(502, ""), consume()).unwrap_err().stage, Stage::Unknown);
    assert_eq!(parse_reply(&http(404, "no"), consume()).unwrap_err().stage, Stage::Rejected);
    let long = "x".repeat(5000);
    assert!(parse_reply(&http(200, &long), consume()).unwrap_err().detail.chars().count() < 300);
}

#[test]
fn an_undefined_megabyte_field_is_not_journaled() {
    let huge = "x".repeat(1 << 20);
    let body = format!(
        r#"{{"status":"00","message":"成功","serialNo":"S1","pointBalance":"1.00","avaiablePointBalance":"1.00","usePoint":"1.00","persentPoint":0,"transTime":1,"junk":"{huge}","more":{{"a":[1,2,3]}},"cardNo":"{CARD}"}}"#
    );
    let r = parse_reply(&http(200, &body), consume()).unwrap();
    assert_eq!(r.verdict, Verdict::Approved);
    let kept: Vec<&str> = r.fields.keys().map(String::as_str).collect();
    assert_eq!(kept, ["avaiablePointBalance", "persentPoint", "pointBalance", "serialNo", "transTime", "usePoint"]);
    let journaled = serde_json::to_string(&r.fields).unwrap();
    assert!(journaled.len() < 300 && !journaled.contains("xxxx") && !journaled.contains(CARD), "{journaled}");
    assert_eq!(r.reference.as_deref(), Some("S1"));
    // A reversal's answer keeps only its code and message.
    let rev = parse_reply(&http(200, &body), wire::REVERSAL_ANSWER).unwrap();
    assert!(rev.fields.is_empty(), "{:?}", rev.fields);
}

#[test]
fn an_overlong_advertisement_and_message_are_truncated_with_the_marker() {
    let ad = "欢".repeat(10_000);
    let body = format!(
        r#"{{"status":"00","message":"ok","transTime":1,"serialNo":"S0","pointBalance":0,"avaiablePointBalance":0,"usePoint":0,"persentPoint":0,"message":"{ad}","serialNo":"S1","advertisement":"{ad}"}}"#
    );
    let r = parse_reply(&http(200, &body), consume()).unwrap();
    let got = r.fields["advertisement"].as_str().unwrap();
    assert!(got.ends_with(wire::TRUNCATED), "{got}");
    assert_eq!(got.chars().count(), wire::MAX_TEXT_CHARS + wire::TRUNCATED.chars().count());
    assert!(got.starts_with(&"欢".repeat(wire::MAX_TEXT_CHARS)));
    assert!(r.message.ends_with(wire::TRUNCATED) && r.message.chars().count() < 300);
    // An approval without a field the document marks required is not the document's answer: unknown.
    let e = parse_reply(&http(200, r#"{"status":"00","message":"ok","serialNo":"S1"}"#), consume()).unwrap_err();
    assert!(e.stage == Stage::Unknown && e.detail.contains("transTime"), "{e}");
    // A decline carries none of them.
    assert_eq!(parse_reply(&http(200, r#"{"status":"51"}"#), consume()).unwrap().verdict, Verdict::Declined);
    // A short one is kept as it is.
    let r = parse_reply(&http(200, r#"{"status":"00","message":"ok","transTime":1,"serialNo":"S0","pointBalance":0,"avaiablePointBalance":0,"usePoint":0,"persentPoint":0,"advertisement":"欢迎参加 xxx 活动"}"#), consume()).unwrap();
    assert_eq!(r.fields["advertisement"], json!("欢迎参加 xxx 活动"));
}

#[test]
fn answer_table_fields_survive_within_their_bounds() {
    let table = |op: &str| wire::op(op).unwrap().answer;
    let long_name = "名".repeat(wire::MAX_NAME_CHARS + 1);
    let items: Vec<String> = (0..150).map(|i| format!(r#"{{"id":{i},"amount":"2.50","num":1,"name":"v{i}","secret":"zzz"}}"#)).collect();
    let body = format!(
        r#"{{"status":"00","message":"ok","transTime":1415125804472,"pointBalance":1,"avaiablePointBalance":0,"vaucher":[{}],"idType":"01","idNo":"0123456789012345678","name":"张三","gender":"01","mobileNo":"13800000000","grade":"0","address":"{long_name}","email":"a@b.c","workingKey":"{WORKING_KEY}"}}"#,
        items.join(",")
    );
    let r = parse_reply(&http(200, &body), table("card-query")).unwrap();
    for k in ["transTime", "pointBalance", "avaiablePointBalance", "vaucher", "idType", "idNo", "name", "gender", "mobileNo", "grade", "email"] {
        assert!(r.fields.contains_key(k), "{k} kept: {:?}", r.fields.keys());
    }
    // Over its bound: an address is dropped, a list cut; undefined item keys and key material dropped.
    assert!(!r.fields.contains_key("address") && !r.fields.contains_key("workingKey"));
    let v = r.fields["vaucher"].as_array().unwrap();
    assert_eq!(v.len(), wire::MAX_LIST_ITEMS);
    assert_eq!(v[3], json!({"id": 3, "amount": 250, "num": 1, "name": "v3"}));
    assert_eq!(r.fields["idNo"], json!("012345*********5678"));
    // An identifier over its bound is dropped rather than cut into another one.
    let long_serial = "9".repeat(wire::MAX_CODE_CHARS + 1);
    let r = parse_reply(&http(200, &format!(r#"{{"status":"00","message":"ok","transTime":1,"serialNo":"S0","pointBalance":0,"avaiablePointBalance":0,"usePoint":0,"persentPoint":0,"serialNo":"{long_serial}"}}"#)), consume()).unwrap();
    assert!(!r.fields.contains_key("serialNo") && r.reference.is_none());
    // Every table: the code and message come first; settlement keeps its flag; checkin its batch and store.
    for o in wire::OPS {
        assert_eq!(o.answer.iter().take(2).map(|f| f.name).collect::<Vec<_>>(), ["status", "message"], "{}", o.spec.name);
    }
    let s = parse_reply(&http(200, r#"{"status":"00","message":"ok","settleFlag":"ss","x":"y"}"#), table("settle")).unwrap();
    assert_eq!(s.fields, serde_json::from_str::<Map<String, Value>>(r#"{"settleFlag":"ss"}"#).unwrap());
    let c = parse_reply(
        &http(200, &format!(r#"{{"status":"00","message":"ok","transTime":1,"batchNo":"000001","storeName":"店","workingKey":"{WORKING_KEY}"}}"#)),
        table("checkin"),
    )
    .unwrap();
    assert_eq!(c.fields, serde_json::from_str::<Map<String, Value>>(r#"{"transTime":1,"batchNo":"000001","storeName":"店"}"#).unwrap());
}

#[test]
fn scrub_hides_cards_and_hex() {
    let s = scrub("card 6222021234567890123 block 5B1C6693FCEA1913ABCD end");
    assert!(!s.contains("6222021234567890123") && !s.contains("5B1C6693FCEA1913"), "{s}");
    assert!(s.contains("622202*********0123"));
}

#[test]
fn operations_are_the_spec_list() {
    let b = backend();
    let names: Vec<&str> = b.operations().iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "checkin",
            "card-query",
            "consume",
            "cancel",
            "refund",
            "refund-cancel",
            "ticket-query",
            "ticket-consume",
            "send-verify-code",
            "card-activate",
            "settle"
        ]
    );
    let spec = |n: &str| b.operations().iter().find(|s| s.name == n).copied().unwrap();
    assert_eq!(spec("refund").class, OpClass::Financial(Recovery::Manual));
    assert_eq!(spec("cancel").class, OpClass::Financial(Recovery::Reverse));
    assert!(spec("refund-cancel").needs_original && !spec("consume").needs_original);
}
