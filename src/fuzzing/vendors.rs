//! Fuzz targets for the vendors' bytes: every answer parser, the callback bodies, and POS body checks.
//!
//! The invariant they share is the one the backends promise: an answer (or a query row) that names
//! another request than ours never comes back as an outcome, approved or declined.
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::backend::callback::CallbackRequest;
use crate::backend::{common, consign, lottery, loyalty, scenic, wallet, Verdict};
use crate::net::client::HttpReply;
use crate::secret::Secret;

fn reply_of(data: &[u8]) -> HttpReply {
    HttpReply { status: 200, content_type: Some("application/json".into()), body: Bytes::copy_from_slice(data) }
}

/// The text of an echoed identifier as the backends compare it: a string as is, anything else as JSON text.
fn echo_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Loyalty: every operation's answer table and the reversal's, for a request with known identifiers.
pub(super) fn answer_loyalty(data: &[u8]) {
    let sent = [("storeNo", "100000000000001"), ("terminalNo", "10000001"), ("traceNo", "000123"), ("batchNo", "000001")];
    let reply = reply_of(data);
    let raw: Option<Map<String, Value>> = serde_json::from_slice(data).ok();
    let tables = loyalty::wire::OPS.iter().map(|o| o.answer).chain([loyalty::wire::REVERSAL_ANSWER]);
    for table in tables {
        let Ok(r) = loyalty::parse_reply_to(&reply, table, &sent) else { continue };
        let Some(raw) = &raw else { continue };
        for (k, ours) in sent {
            if let Some(theirs) = raw.get(k).and_then(echo_text) {
                assert_eq!(theirs.trim_matches('"'), ours, "a {:?} was booked on an answer naming {k} {theirs}", r.verdict);
            }
        }
    }
    let _ = loyalty::parse_reply(&reply, loyalty::wire::REVERSAL_ANSWER);
}

/// Lottery: the envelope, every interface's plain reply, and the redeem reply (whose `transacId` must be ours).
pub(super) fn answer_lottery(data: &[u8]) {
    let Ok(a) = lottery::wire::parse_answer(data) else { return };
    for op in lottery::wire::OPS {
        let _ = lottery::answer::plain_reply(&a, op.path, "S1");
    }
    for path in [lottery::wire::AWARD_SUMMARY, lottery::wire::AWARD_DETAIL] {
        let _ = lottery::answer::plain_reply(&a, path, "S1");
    }
    if let Ok(r) = lottery::answer::redeem_reply(&a, "T0001", "S1", &|s| s == "S1") {
        if let Some(theirs) = a.content.get("transacId") {
            assert_eq!(theirs.as_str(), Some("T0001"), "a redeem {:?} was booked on an answer naming another transacId", r.verdict);
        }
    }
}

/// Wallet: the envelope with its request and order echoes, then every operation's answer table.
pub(super) fn answer_wallet(data: &[u8]) {
    let sent_body = json!({"terminalId": "T1", "terminalOrderId": "O1", "sum": 100});
    let mut sent_order = Map::new();
    for (k, v) in [("terminalId", "T1"), ("batchNo", "000001"), ("terminalOrderId", "O1")] {
        sent_order.insert(k.into(), Value::from(v));
    }
    let Ok(a) = wallet::answer::read(&reply_of(data), &sent_body, Some(&sent_order)) else { return };
    if let Some(Value::Object(order)) = a.raw.get("order") {
        for (k, ours) in &sent_order {
            if let Some(theirs) = order.get(k) {
                assert_eq!(wallet::crypto::value_text(theirs), wallet::crypto::value_text(ours), "an answer naming {k} {theirs} was believed");
            }
        }
    }
    for op in wallet::wire::OPS {
        let _ = wallet::answer::fields(&a.raw, op.answer, true);
    }
    let _ = wallet::answer::fields(&a.raw, wallet::wire::UNDO_ANSWER, false);
}

/// Scenic: the answer of both interfaces and the reply of both operations; an approved order has a sane number.
pub(super) fn answer_scenic(data: &[u8]) {
    for path in [scenic::wire::CREATE_PATH, scenic::wire::CANCEL_PATH] {
        for op in ["create-order", "cancel-order"] {
            let Ok(a) = scenic::read_answer(path, &reply_of(data)) else { continue };
            let Ok(r) = scenic::ScenicBackend::reply(op, a) else { continue };
            if op == "create-order" && r.verdict == Verdict::Approved {
                let num = r.reference.unwrap_or_default();
                assert!(!num.is_empty() && num.len() <= scenic::wire::MAX_ORDER_NUM, "approved without a well-formed order number");
            }
        }
    }
}

/// Consignment: the answer, the query row of our order (it must name it) and that row's fields.
pub(super) fn answer_consign(data: &[u8]) {
    let Ok(a) = consign::wire::read_answer(data) else { return };
    let Some(row) = consign::wire::query_row(&a, "O0001") else { return };
    let named = |k: &str| row.get(k).and_then(common::scalar_text).as_deref() == Some("O0001");
    assert!(named("orderId") || named("sysOrderId"), "a query row that does not name the order was taken");
    if let Ok((fields, status, sys)) = consign::wire::order_fields(row, "10001") {
        let _ = consign::wire::notification(fields, status, &sys);
    }
}

/// Scenic check-in callbacks; byte 0 picks the content type.
pub(super) fn callback_scenic(data: &[u8]) {
    let [ct, body @ ..] = data else { return };
    let content_type = [None, Some("application/json"), Some("text/plain; charset=utf-8"), Some("application/x-www-form-urlencoded")][usize::from(ct % 4)];
    let req = CallbackRequest { path: scenic::notify::PATH, content_type, body };
    let r = scenic::notify::verify(&req);
    let _ = scenic::notify::answer(r.as_ref().map(|_| ()));
}

/// Consignment result callbacks: the form, its signature (the real key refuses a forged one; a body
/// re-signed with it verifies), and the order fields behind the signature.
pub(super) fn callback_consign(data: &[u8]) {
    let Ok(form) = consign::wire::parse_form(data, 32) else { return };
    let key = Secret::new(b"fuzz-sign-key".to_vec());
    let get = |k: &str| form.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(sign) = get("sign") {
        let _ = consign::crypto::verify(consign::crypto::NOTIFY_SIGN, &get, &key, &sign);
    }
    if let Ok(good) = consign::crypto::sign(consign::crypto::NOTIFY_SIGN, &get, &key) {
        assert!(consign::crypto::verify(consign::crypto::NOTIFY_SIGN, &get, &key, &good), "a body signed with the key does not verify");
    }
    if let Ok((fields, status, sys)) = consign::wire::order_fields(&form, "10001") {
        let n = consign::wire::notification(fields, status, &sys);
        assert!(!n.key.is_empty() && !n.reference.is_empty());
    }
}

/// What a POS body meets before an operation is prepared: its keys against every table of the
/// vendors that have one, and scenic's tourist list.
pub(super) fn body_checks(body: &Map<String, Value>) {
    for op in loyalty::wire::OPS {
        let _ = common::check_body_keys(op.spec.name, body, op.fields, loyalty::wire::DAEMON_OWNED, &|_| false);
    }
    for op in lottery::wire::OPS {
        let _ = common::check_body_keys(op.spec.name, body, op.fields, lottery::wire::DAEMON_OWNED, &|_| false);
    }
    for op in wallet::wire::OPS {
        let _ = wallet::crypto::order_md5(body, op.md5);
    }
    if let Some(t) = body.get("tourists") {
        let _ = scenic::wire::tourists(t);
    }
    for v in body.values().filter_map(Value::as_str) {
        let _ = scenic::wire::check_resident_id(v);
        let _ = wallet::crypto::valid_consumer_id(v);
    }
}
