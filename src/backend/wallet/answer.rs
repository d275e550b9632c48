//! Reading a wallet answer: believed only with the document's types and naming this request; anything else is unknown.
use serde_json::{Map, Value};

use super::wire::{self, AKind, AnswerField};
use super::{err, scrub};
use crate::backend::{mask_card, BackendError, Stage};
use crate::net::client::HttpReply;

/// An answer with a well-typed `errcode` (absent only where the document's success example has none).
#[derive(Debug, Clone)]
pub struct Answer {
    pub errcode: Option<i64>,
    pub errmsg: String,
    pub raw: Map<String, Value>,
}

/// Identifiers an answer's `order` may echo; each one present must equal what was sent.
const ECHOED: &[&str] = &["terminalId", "batchNo", "terminalOrderId"];

fn cut(s: &str) -> String {
    match s.char_indices().nth(wire::MAX_TEXT_CHARS) {
        Some((at, _)) => format!("{}{}", &s[..at], wire::TRUNCATED),
        None => s.to_string(),
    }
}

/// The HTTP layer and the envelope: 5xx/garbage/wrong types are unknown, 4xx rejected; the `request`
/// echo, when present, must equal `sent_body`; `order` echoes must equal `sent_order`.
pub fn read(http: &HttpReply, sent_body: &Value, sent_order: Option<&Map<String, Value>>) -> Result<Answer, BackendError> {
    let body = String::from_utf8_lossy(&http.body);
    if http.status >= 500 || !(200..500).contains(&http.status) {
        return Err(err(Stage::Unknown, format!("HTTP {}: {}", http.status, scrub(&body))));
    }
    if http.status >= 400 {
        return Err(err(Stage::Rejected, format!("HTTP {}: {}", http.status, scrub(&body))));
    }
    let raw: Map<String, Value> =
        serde_json::from_str(&body).map_err(|e| err(Stage::Unknown, format!("answer is not a JSON object ({e}): {}", scrub(&body))))?;
    let errcode = match raw.get("errcode") {
        None => None,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
        Some(other) => return Err(err(Stage::Unknown, format!("the answer's `errcode` is {}, not an integer", scrub(&other.to_string())))),
    };
    let errmsg = match raw.get("errmsg") {
        None => String::new(),
        Some(Value::String(s)) => cut(s),
        Some(other) => return Err(err(Stage::Unknown, format!("the answer's `errmsg` is {}, not text", scrub(&other.to_string())))),
    };
    if let Some(echo) = raw.get("request") {
        let same = match echo {
            Value::String(s) => serde_json::from_str::<Value>(s).map(|v| v == *sent_body).unwrap_or(false),
            v => v == sent_body,
        };
        if !same {
            tracing::warn!("wallet host fault: the answer's `request` echo is not what was sent");
            return Err(err(Stage::Unknown, "the answer's `request` echo is not the request sent: another request's answer"));
        }
    }
    if let (Some(Value::Object(order)), Some(sent)) = (raw.get("order"), sent_order) {
        for k in ECHOED {
            let (Some(theirs), Some(ours)) = (order.get(*k), sent.get(*k)) else { continue };
            if super::crypto::value_text(theirs) != super::crypto::value_text(ours) {
                tracing::warn!(field = k, "wallet host fault: the answer names another request");
                return Err(err(
                    Stage::Unknown,
                    format!("the answer names {k} {} but the request was {}", scrub(&theirs.to_string()), scrub(&ours.to_string())),
                ));
            }
        }
    }
    Ok(Answer { errcode, errmsg, raw })
}

/// The value at `path`, reading `card.` and `account.` alike, and `restStage` for `restStages`.
fn at<'a>(raw: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let (head, tail) = match path.split_once('.') {
        Some((h, t)) => (Some(h), t),
        None => (None, path),
    };
    let obj = match head {
        None => raw,
        Some(h) => {
            let other = match h {
                "card" => "account",
                "account" => "card",
                x => x,
            };
            match raw.get(h).or_else(|| raw.get(other)) {
                Some(Value::Object(o)) => o,
                _ => return None,
            }
        }
    };
    obj.get(tail).or_else(|| if tail == "restStages" { obj.get("restStage") } else { None }).filter(|v| !v.is_null())
}

/// `YYYY-MM-DD HH:MM:SS`, hour up to 24 (the document's endTime `24:00:00` is the end of that day).
pub fn valid_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit())).and_then(|t| t.parse::<u32>().ok());
    let (Some(_y), Some(mo), Some(d), Some(h), Some(mi), Some(se)) = (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19)) else {
        return false;
    };
    (1..=12).contains(&mo) && (1..=31).contains(&d) && (h < 24 || (h == 24 && mi == 0 && se == 0)) && mi < 60 && se < 60
}

/// One field as its table types it, for the journal; `Err` says why it is not the document's.
fn convert(f: &AnswerField, v: &Value) -> Result<Value, String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    };
    match f.kind {
        AKind::Code => text(v).filter(|s| s.chars().count() <= wire::MAX_CODE_CHARS).map(Value::String).ok_or_else(|| "not a short code".into()),
        AKind::Account => text(v).filter(|s| s.len() <= 32).map(|s| Value::String(mask_card(&s))).ok_or_else(|| "not an account number".into()),
        AKind::Int => match v {
            Value::Number(n) if n.is_i64() => Ok(v.clone()),
            _ => Err("not an integer".into()),
        },
        AKind::Time => match v {
            Value::String(s) if valid_time(s) => Ok(v.clone()),
            _ => Err("not a YYYY-MM-DD HH:MM:SS time".into()),
        },
        AKind::Text => match v {
            Value::String(s) => Ok(Value::String(cut(s))),
            _ => Err("not text".into()),
        },
        AKind::Products => {
            let Value::Array(items) = v else { return Err("not a list".into()) };
            if items.len() > wire::MAX_PRODUCTS {
                return Err(format!("{} products, more than {}", items.len(), wire::MAX_PRODUCTS));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Object(o) = item else { return Err(format!("product {i} is not an object")) };
                let id = o.get("productId").and_then(text).filter(|s| !s.is_empty() && s.len() <= 64).ok_or(format!("product {i}: productId"))?;
                let name = o.get("productName").and_then(Value::as_str).ok_or(format!("product {i}: productName"))?;
                let price = o.get("productPrice").and_then(Value::as_i64).filter(|p| *p >= 0).ok_or(format!("product {i}: productPrice is not integer fen"))?;
                let remark = o.get("remark").and_then(Value::as_str).unwrap_or_default();
                out.push(serde_json::json!({"productId": id, "productName": cut(name), "productPrice": price, "remark": cut(remark)}));
            }
            Ok(Value::Array(out))
        }
    }
}

/// The fields of `table` from an answer: each converted and bounded; a required one missing or any
/// one of the wrong type makes the answer not the document's (unknown). Nothing else is kept.
pub fn fields(raw: &Map<String, Value>, table: &[AnswerField], need_required: bool) -> Result<Map<String, Value>, BackendError> {
    let mut out = Map::new();
    for f in table {
        match at(raw, f.path) {
            Some(v) => {
                let c = convert(f, v).map_err(|why| err(Stage::Unknown, format!("the answer's `{}` is {why}", f.path)))?;
                out.insert(f.name.to_string(), c);
            }
            None if f.required && need_required => return Err(err(Stage::Unknown, format!("an approval without `{}`, which the document requires", f.path))),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_accept_the_documents_end_of_day() {
        assert!(valid_time("2015-05-31 24:00:00"));
        assert!(valid_time("2015-01-02 12:12:00"));
        assert!(!valid_time("2015-05-31 24:00:01"));
        assert!(!valid_time("2015-13-01 00:00:00"));
        assert!(!valid_time("20150101 000000"));
    }

    #[test]
    fn card_and_account_rest_stage_and_rest_stages_read_alike() {
        let raw = json!({"account": {"accountId": "2001755000000001", "restStage": 3}});
        let raw = raw.as_object().cloned().unwrap_or_default();
        assert_eq!(at(&raw, "card.restStages"), Some(&json!(3)));
        assert_eq!(at(&raw, "card.accountId"), Some(&json!("2001755000000001")));
        let table = [AnswerField { path: "card.accountId", name: "accountId", kind: AKind::Account, required: true }];
        let f = fields(&raw, &table, true).unwrap_or_default();
        assert_eq!(f["accountId"], json!("200175******0001"));
        let wrong = json!({"card": {"accountId": ["x"]}});
        assert!(fields(wrong.as_object().unwrap_or(&Map::new()), &table, true).is_err());
    }
}
