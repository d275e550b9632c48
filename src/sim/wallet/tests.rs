//! Unit tests of the wallet simulator's strictness: signatures, nonces, 3DES fields, the 2,000 limit.
use serde_json::{json, Value};

use super::*;
use crate::backend::common::sign::{RsaHash, RsaSigner};

fn signed(sim: &WalletSim, nonce: &str, order: Value, path: &str) -> Value {
    let key = Secret::new(DEMO_APP_KEY.as_bytes().to_vec());
    let ts = WalletSim::now_s().to_string();
    let w = wire::op_by_path(path).expect("path");
    let md5 = match &order {
        Value::Array(items) => crypto::list_md5(items, w.md5),
        Value::Object(o) => crypto::order_md5(o, w.md5),
        _ => String::new(),
    };
    let signer = RsaSigner::from_pem(&Secret::new(TEST_PRIVATE_KEY.as_bytes().to_vec())).expect("key");
    let tnonce = format!("t{nonce}");
    let tsig = signer.sign_b64(RsaHash::Sha1, crypto::tsig_input(&md5, &sim.cfg.app_id, &ts, &tnonce).as_bytes()).expect("sign");
    json!({"app": {"appId": DEMO_APP_ID, "timeStamp": ts, "nonce": nonce, "signature": crypto::app_signature(DEMO_APP_ID, &key, nonce, &ts)},
        "order": order, "tsig": {"orderMD5": md5, "signature": tsig, "timeStamp": ts, "nonce": tnonce}})
}

fn pay_order(code_field: &str) -> Value {
    json!({"consumerId": "13912345678", "paymentCodeDES": code_field, "sum": 100, "sellerId": "S", "storeId": "ST", "terminalId": "T1",
        "operatorId": "o", "batchNo": "000001", "terminalOrderId": "000001"})
}

fn code(sim: &WalletSim, path: &str, body: &Value) -> i64 {
    let w = wire::op_by_path(path).expect("path");
    sim.process(w, body.to_string().as_bytes()).body["errcode"].as_i64().unwrap_or(-1)
}

#[test]
fn refuses_reused_nonces_garbage_3des_tampered_orders_and_big_deliveries() {
    let sim = WalletSim::demo();
    let key = Secret::new(DEMO_APP_KEY.as_bytes().to_vec());
    let good = crypto::des3_field(&key, "123456").expect("3des");
    let body = signed(&sim, "n1", pay_order(&good), "gw/offline/pay");
    assert_eq!(code(&sim, "gw/offline/pay", &body), 0);
    // The very same request again: its nonce was used.
    assert_eq!(code(&sim, "gw/offline/pay", &body), 40004);
    let garbage = signed(&sim, "n2", pay_order("bm90IDNERVM="), "gw/offline/pay");
    assert_eq!(code(&sim, "gw/offline/pay", &garbage), 40006);
    let mut tampered = signed(&sim, "n3", pay_order(&good), "gw/offline/pay");
    tampered["order"]["sum"] = json!(1);
    assert_eq!(code(&sim, "gw/offline/pay", &tampered), 40002);
    let items: Vec<Value> = (0..2001).map(|i| json!({"orderId": format!("X{i}"), "accountType": "OAC"})).collect();
    let big = signed(&sim, "n4", Value::Array(items), "gw/oilcard/open_offline_delivery");
    assert_eq!(code(&sim, "gw/oilcard/open_offline_delivery", &big), 45001);
    assert_eq!(sim.ledger().pays_standing.len(), 1);
}
