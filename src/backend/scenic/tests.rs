//! Unit tests of the scenic backend's POS checks: what is refused locally, naming the field, and what is journaled.
use serde_json::{json, Map, Value};

use super::ScenicBackend;
use crate::backend::{Backend, PrepareContext, PrepareError};
use crate::net::client::{HttpOptions, HttpsClient};

fn backend() -> (tempfile::TempDir, ScenicBackend) {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::fsmode::write_private(dir.path().join("secret.txt"), "s3cret").expect("secret");
    let text = "name = \"scenic\"\nbackend = \"scenic\"\nbase_url = \"https://127.0.0.1:1\"\nstore = \"S1\"\nterminal = \"T-1\"\n\
        [secrets]\napp_secret = \"secret.txt\"\n[options]\napp_key = \"k\"\n";
    let p = crate::config::Profile::parse(&dir.path().join("scenic.toml"), text).expect("profile");
    let http = HttpsClient::new(&HttpOptions::default()).expect("client");
    (dir, ScenicBackend::new(&p, http).expect("backend"))
}

fn create(edit: &dyn Fn(&mut Map<String, Value>)) -> Result<crate::backend::Prepared, PrepareError> {
    let (_d, b) = backend();
    let mut body = json!({"product_code": "XXX", "take_phone": "13456451211", "date": "2020-04-01", "price": 600, "amount": 1200, "count": 2,
        "tourist_info": {"11010519491231002X": "张三", "440524188001010014": "李四"}})
    .as_object()
    .cloned()
    .unwrap_or_default();
    edit(&mut body);
    b.prepare("create-order", &body, None, &PrepareContext { now_ms: 1_586_936_588_379, recent: &[], card: None })
}

#[test]
fn a_create_journals_no_phone_or_resident_id_in_clear_and_names_its_own_order() {
    let p = create(&|_| {}).expect("valid");
    let public = Value::Object(p.public.clone()).to_string();
    assert!(!public.contains("13456451211") && !public.contains("11010519491231002X") && !public.contains("张三"), "{public}");
    assert!(Value::Object(p.vault.clone()).to_string().contains("11010519491231002X"));
    let num = p.public["channel_order_num"].as_str().expect("made here");
    assert!(num.starts_with("T1") && num.len() <= 40, "{num}");
    assert_eq!((p.amount_fen, p.unit.as_deref()), (1200, Some(format!("order:{num}").as_str())));
}

#[test]
fn a_bad_resident_id_a_float_price_or_a_wrong_amount_is_refused_naming_the_field() {
    let field = |e: PrepareError| match e {
        PrepareError::Invalid { field, .. } | PrepareError::Missing(field) | PrepareError::DaemonOwned(field) => field,
    };
    let bad_id = create(&|b| {
        b.insert("tourist_info".into(), json!({"410102195431547812": "张三"}));
    })
    .expect_err("check digit");
    assert!(bad_id.to_string().contains("check digit") && !bad_id.to_string().contains("410102195431547812"), "{bad_id}");
    assert_eq!(field(bad_id), "tourist_info");
    assert_eq!(field(create(&|b| drop(b.insert("price".into(), json!(6.0)))).expect_err("float")), "price");
    assert_eq!(field(create(&|b| drop(b.insert("amount".into(), json!(1100)))).expect_err("sum")), "amount");
    assert_eq!(field(create(&|b| drop(b.insert("take_phone".into(), json!("1234")))).expect_err("phone")), "take_phone");
    assert_eq!(field(create(&|b| drop(b.insert("channel_order_num".into(), json!("x")))).expect_err("ours")), "channel_order_num");
    assert_eq!(field(create(&|b| drop(b.insert("count".into(), json!(1)))).expect_err("3 > 1")), "amount");
}
