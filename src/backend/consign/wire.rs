//! The consignment interfaces as data: paths, answer reading, and the order fields of a query answer or notification.
use serde_json::{Map, Value};

use crate::backend::callback::{CallbackRefusal, Effect, Notification};
use crate::backend::common::{bound, scalar_text};
use crate::backend::{BackendError, Stage};

use super::err;

pub const SUBMIT_PATH: &str = "api/consignmentOrders";
pub const QUERY_PATH: &str = "api/searchOrders";

/// The submit's answer code: "single accepted" (寄售成功，单据已被接收); its result comes later.
pub const ACCEPTED: i64 = 1;
/// The submit's "not accepted" code (单据接收失败).
pub const REFUSED: i64 = -1;
/// The query's "order does not exist" (订单不存在).
pub const NOT_FOUND: i64 = 2;

/// Longest merchant orderId the document allows (不大于50位).
pub const MAX_ORDER_ID: usize = 50;
/// Longest free text (message, custom) kept from an answer or notification.
pub const MAX_TEXT: usize = 200;
/// Longest id (sysOrderId, customerId) believed.
pub const MAX_ID: usize = 64;

/// One answer of the platform: `code`, `msg`, and the rest.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: i64,
    pub msg: String,
    pub raw: Map<String, Value>,
}

/// Read an answer body: a JSON object whose `code` is an integer (or integer text); anything else is
/// not the document's answer, so the outcome is unknown.
pub fn read_answer(body: &[u8]) -> Result<Answer, BackendError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| err(Stage::Unknown, "the answer is not JSON"))?;
    let Value::Object(raw) = v else { return Err(err(Stage::Unknown, "the answer is not a JSON object")) };
    let code = match raw.get("code") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| err(Stage::Unknown, "the answer has no integer `code`"))?;
    let msg = raw.get("msg").and_then(scalar_text).map(|m| bound(&m, MAX_TEXT)).unwrap_or_default();
    Ok(Answer { code, msg, raw })
}

/// A field of an order (query answer row or notification) as the text it arrived as.
fn text(o: &Map<String, Value>, k: &str) -> Option<String> {
    o.get(k).and_then(scalar_text)
}

/// Order status: 1 processing, 2 success, 3 failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Processing,
    Success,
    Failure,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        match s.trim() {
            "1" => Some(Status::Processing),
            "2" => Some(Status::Success),
            "3" => Some(Status::Failure),
            _ => None,
        }
    }
    pub fn word(self) -> &'static str {
        match self {
            Status::Processing => "processing",
            Status::Success => "success",
            Status::Failure => "failure",
        }
    }
}

/// Why an order's fields were not believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOrder(pub String);

/// The defined fields of an order (a query row or a notification), checked and scrubbed, money in fen:
/// what is journaled and published. Returns the fields, the status and the sysOrderId.
pub fn order_fields(o: &Map<String, Value>, expect_customer: &str) -> Result<(Map<String, Value>, Status, String), BadOrder> {
    let bad = |why: String| BadOrder(why);
    let id = |k: &str, max: usize| -> Result<String, BadOrder> {
        let v = text(o, k).ok_or_else(|| bad(format!("`{k}` is missing")))?;
        if v.is_empty() || v.chars().count() > max || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            return Err(bad(format!("`{k}` is not an id")));
        }
        Ok(v)
    };
    let customer = id("customerId", MAX_ID)?;
    if customer != expect_customer {
        return Err(bad("`customerId` is not this merchant".into()));
    }
    let sys = id("sysOrderId", MAX_ID)?;
    let order_id = id("orderId", MAX_ORDER_ID)?;
    let status_text = text(o, "status").ok_or_else(|| bad("`status` is missing".into()))?;
    let status = Status::parse(&status_text).ok_or_else(|| bad("`status` is not 1, 2 or 3".into()))?;
    let mut f = Map::new();
    f.insert("orderId".into(), Value::String(order_id));
    f.insert("sysOrderId".into(), Value::String(sys.clone()));
    f.insert("status".into(), Value::String(status.word().into()));
    for k in ["faceMoney", "realMoney", "amount"] {
        match o.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => {
                let fen = crate::money::json_yuan_to_fen(v).map_err(|_| bad(format!("`{k}` is not a yuan amount")))?;
                if !(0..=1_000_000_000).contains(&fen) {
                    return Err(bad(format!("`{k}` is out of range")));
                }
                f.insert(format!("{k}Fen"), Value::from(fen));
            }
        }
    }
    if let Some(t) = text(o, "successTime").filter(|t| !t.is_empty()) {
        let n: i64 = t.parse().map_err(|_| bad("`successTime` is not a Unix timestamp".into()))?;
        f.insert("successTime".into(), Value::from(n));
    }
    for k in ["message", "custom"] {
        if let Some(t) = text(o, k).filter(|t| !t.is_empty()) {
            f.insert(k.into(), Value::String(crate::backend::common::scrub(&bound(&t, MAX_TEXT))));
        }
    }
    Ok((f, status, sys))
}

/// What an order's fields mean as a notification: key sysOrderId + status (the platform's retries and a
/// poll that finds the same state deduplicate on it); reference our orderId (the submit's `Reply::reference`).
pub fn notification(fields: Map<String, Value>, status: Status, sys: &str) -> Notification {
    let reference = fields.get("orderId").and_then(Value::as_str).unwrap_or_default().to_string();
    let key = format!("{sys}:{}", status.word());
    let effect = match status {
        Status::Processing => Effect::Progress(fields.clone()),
        s => Effect::Final { success: s == Status::Success, fields: fields.clone() },
    };
    Notification { key, reference, fields, effect }
}

/// A notification body (form) as a map of text; a duplicate key or a body that is not a form is refused.
pub fn parse_form(body: &[u8], max_fields: usize) -> Result<Map<String, Value>, CallbackRefusal> {
    std::str::from_utf8(body).map_err(|_| CallbackRefusal::Malformed("not UTF-8".into()))?;
    let mut m = Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        if m.len() >= max_fields {
            return Err(CallbackRefusal::Malformed("too many fields".into()));
        }
        if m.insert(k.to_string(), Value::String(v.into_owned())).is_some() {
            return Err(CallbackRefusal::Malformed(format!("field `{}` twice", bound(&k, 40))));
        }
    }
    Ok(m)
}

/// The first row of a query answer's `data` (an array per the document; an object is accepted too)
/// whose orderId or sysOrderId is `order_id`.
pub fn query_row<'a>(a: &'a Answer, order_id: &str) -> Option<&'a Map<String, Value>> {
    let is = |o: &&Map<String, Value>| text(o, "orderId").as_deref() == Some(order_id) || text(o, "sysOrderId").as_deref() == Some(order_id);
    match a.raw.get("data") {
        Some(Value::Array(rows)) => rows.iter().filter_map(Value::as_object).find(is),
        Some(Value::Object(o)) => Some(o).filter(is),
        _ => None,
    }
}
