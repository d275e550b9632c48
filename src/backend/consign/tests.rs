//! Vectors from openssl and md5sum for the card secret and the fixed-order sign; notification checks.
use serde_json::{json, Map, Value};

use super::crypto::{self, NOTIFY_SIGN, SUBMIT_SIGN};
use super::wire;
use crate::backend::callback::{CallbackRefusal, Effect};
use crate::secret::Secret;

fn key() -> Secret {
    Secret::new(b"consign-key-0001".to_vec())
}

fn sign_key() -> Secret {
    Secret::new(b"consign-sign-secret".to_vec())
}

/// `printf '%s' 1234567890123456 | openssl enc -aes-128-ecb -K $(printf consign-key-0001 | xxd -p) -nosalt | base64 -w0 | xxd -p -c 1000`
#[test]
fn card_secret_is_aes_ecb_base64_then_lower_hex_as_the_java_sample() {
    let sent = crypto::seal_card_secret(&key(), "1234567890123456").expect("seal");
    assert_eq!(sent, "6f456c57397778472f6d6f7639787a766e58366c3753764948414836305a6f674c356241434c4d35696c513d");
    assert_eq!(crypto::seal_card_secret(&key(), "卡密ABC").expect("seal"), "6c4d6731374d39723330636d4546314f383279446d413d3d");
    assert_eq!(crypto::open_card_secret(&key(), &sent).expect("open"), "1234567890123456");
    assert!(crypto::open_card_secret(&key(), "zz").is_err(), "not hex");
    assert!(crypto::open_card_secret(&key(), &hex::encode("qJpTIT807NgOkLtiwU1Ehw==")).is_err(), "another key's ciphertext");
    assert!(crypto::seal_card_secret(&Secret::new(b"short".to_vec()), "x").is_err());
}

/// `printf '%s' 'customerId=10001&…&notifyUrl=&key=consign-sign-secret' | md5sum`: absent optional
/// fields (cardNumber, notifyUrl) take part with an empty value; cardPassword is signed encrypted.
#[test]
fn submit_sign_is_the_fixed_order_with_empty_absent_fields() {
    let sealed = crypto::seal_card_secret(&key(), "1234567890123456").expect("seal");
    let f: Map<String, Value> = json!({"customerId": "10001", "timestamp": "1700000000", "orderId": "ORD1", "batchno": "B1", "productCode": "JD100",
        "cardPassword": sealed, "faceMoney": "100", "custom": "not signed", "seCode": "999"})
    .as_object()
    .cloned()
    .unwrap_or_default();
    let get = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
    assert_eq!(crypto::sign(SUBMIT_SIGN, &get, &sign_key()).expect("sign"), "81943D9855AD4637EEC686FB364DE0CA");
}

fn notify_body(status: &str, sign: Option<&str>) -> String {
    let mut f = vec![
        ("customerId", "10001"),
        ("sysOrderId", "S20231114001"),
        ("orderId", "ORD1"),
        ("status", status),
        ("message", "ok"),
        ("faceMoney", "100"),
        ("realMoney", "100"),
        ("amount", "98.5"),
        ("successTime", "1700000100"),
        ("custom", "x"),
    ];
    let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    let s = sign.map(str::to_string).unwrap_or_else(|| crypto::sign(NOTIFY_SIGN, &get, &sign_key()).expect("sign"));
    f.push(("sign", &s));
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &f {
        ser.append_pair(k, v);
    }
    ser.finish()
}

/// `printf '%s' 'customerId=10001&sysOrderId=S20231114001&orderId=ORD1&status=2&faceMoney=100&realMoney=100&amount=98.5&successTime=1700000100&key=consign-sign-secret' | md5sum`
#[test]
fn a_notification_verifies_by_its_sign_and_says_what_it_means() {
    let body = notify_body("2", Some("743e437aea1908382b9729cebbeb7184"));
    let form = wire::parse_form(body.as_bytes(), 32).expect("form");
    let get = |k: &str| form.get(k).and_then(Value::as_str).map(str::to_string);
    assert!(crypto::verify(NOTIFY_SIGN, &get, &sign_key(), "743e437aea1908382b9729cebbeb7184"));
    let (fields, status, sys) = wire::order_fields(&form, "10001").expect("fields");
    let n = wire::notification(fields, status, &sys);
    assert_eq!((n.key.as_str(), n.reference.as_str()), ("S20231114001:success", "ORD1"));
    let Effect::Final { success, fields } = n.effect else { panic!("final") };
    assert!(success);
    assert_eq!((fields["faceMoneyFen"].as_i64(), fields["amountFen"].as_i64()), (Some(10_000), Some(9_850)));
    // Processing is progress, failure final and unsuccessful; a status outside 1..3 is refused.
    let f = wire::parse_form(notify_body("1", None).as_bytes(), 32).expect("form");
    let (fields, status, sys) = wire::order_fields(&f, "10001").expect("fields");
    assert!(matches!(wire::notification(fields, status, &sys).effect, Effect::Progress(_)));
    let f = wire::parse_form(notify_body("4", None).as_bytes(), 32).expect("form");
    assert!(wire::order_fields(&f, "10001").is_err());
    // Another merchant's notification is not ours.
    let f = wire::parse_form(notify_body("2", None).as_bytes(), 32).expect("form");
    assert!(wire::order_fields(&f, "10002").is_err());
    // A field twice is malformed.
    assert!(matches!(wire::parse_form(b"status=2&status=3", 32), Err(CallbackRefusal::Malformed(_))));
}

/// Regression (the consign soak): every submit of a terminal's batch went out under one `batchno`, and the
/// platform refused the 2,001st card ("批次超过2000张卡"). A batch's submits now spread over `batchno`s of at
/// most 2,000 trace numbers each.
#[test]
fn no_batchno_holds_more_than_2000_of_a_batchs_trace_numbers() {
    let mut per: std::collections::BTreeMap<String, u32> = Default::default();
    for t in 1..=999_999u32 {
        *per.entry(super::batch_no("000001", &format!("{t:06}"))).or_default() += 1;
    }
    assert!(per.values().all(|n| *n <= 2000), "{:?}", per.iter().find(|(_, n)| **n > 2000));
    assert_eq!(super::batch_no("000001", "002014"), "000001001");
    assert_eq!(super::batch_no("000001", "000001"), super::batch_no("000001", "000001"), "rebuilt from the record alone");
}
