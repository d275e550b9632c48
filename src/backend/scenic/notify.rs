//! The gate check-in notification (状态变更通知接口): its fields checked per the document's table, and the answers it demands.
//!
//! The document defines no signature for this notification (its table has no `sign`, no `app_key`, no
//! time stamp), so nothing here can prove who sent it: the listener's source-address allowlist and the
//! engine's matching of `order_num` to an order this terminal created are what guard it. Its `order_num`
//! is read as the platform's order number (the one the create answer returned and cancel sends): the
//! document's example notification carries the very number of its cancel example.
use serde_json::{Map, Value};

use crate::backend::callback::{CallbackAnswer, CallbackRefusal, CallbackRequest, Effect, Notification};

/// The path served under `/callbacks/<profile>/`.
pub const PATH: &str = "check-in";

/// Counts above this are not a ticket order.
const MAX_COUNT: u64 = 100_000;
const MAX_TIME_CHARS: usize = 32;

fn malformed(why: impl Into<String>) -> CallbackRefusal {
    CallbackRefusal::Malformed(why.into())
}

/// A count the document types `String`; a JSON integer is taken too.
fn count(o: &Map<String, Value>, key: &str) -> Result<u64, CallbackRefusal> {
    let v = o.get(key).ok_or_else(|| malformed(format!("missing `{key}`")))?;
    let n = match v {
        Value::String(s) if !s.trim().is_empty() && s.trim().len() <= 6 && s.trim().bytes().all(|b| b.is_ascii_digit()) => s.trim().parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    n.filter(|n| *n <= MAX_COUNT).ok_or_else(|| malformed(format!("`{key}` must be a count (digits, at most {MAX_COUNT})")))
}

/// The check state word for `check_result` (0: 未检, 1: 已检未检完, 2: 已检完).
pub fn state_word(check_result: u64) -> &'static str {
    match check_result {
        0 => "unchecked",
        1 => "partly-checked",
        _ => "all-checked",
    }
}

/// Verify a check-in notification and say what it does to the order.
pub fn verify(req: &CallbackRequest<'_>) -> Result<Notification, CallbackRefusal> {
    if req.path.trim_matches('/') != PATH {
        return Err(CallbackRefusal::NoSuchPath(crate::backend::common::cut(req.path, 64)));
    }
    if let Some(ct) = req.content_type {
        let ct = ct.to_ascii_lowercase();
        if !ct.starts_with("application/json") && !ct.starts_with("text/json") && !ct.starts_with("text/plain") {
            return Err(malformed("the body must be JSON (content type)"));
        }
    }
    let v: Value = serde_json::from_slice(req.body).map_err(|_| malformed("the body is not JSON"))?;
    let o = v.as_object().ok_or_else(|| malformed("the body is not a JSON object"))?;
    let order_num = o.get("order_num").and_then(Value::as_str).map(str::trim).unwrap_or_default();
    if order_num.is_empty() || order_num.len() > super::wire::MAX_ORDER_NUM || !order_num.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(malformed("`order_num` must be 1 to 64 letters, digits, - or _"));
    }
    let time = o.get("check_time").and_then(Value::as_str).map(str::trim).unwrap_or_default();
    if time.chars().count() > MAX_TIME_CHARS || chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S").is_err() {
        return Err(malformed("`check_time` must be a time `YYYY-MM-DD HH:MM:SS`"));
    }
    let result = count(o, "check_result")?;
    if result > 2 {
        return Err(malformed("`check_result` must be 0, 1 or 2"));
    }
    let (total, unchecked, checked) = (count(o, "total_count")?, count(o, "no_check_count")?, count(o, "check_count")?);
    if checked + unchecked > total {
        return Err(malformed("`check_count` + `no_check_count` exceed `total_count`"));
    }
    match result {
        0 if checked > 0 => return Err(malformed("`check_result` 0 (unchecked) with a `check_count` above 0")),
        1 if checked == 0 => return Err(malformed("`check_result` 1 (partly checked) with a `check_count` of 0")),
        2 if unchecked > 0 => return Err(malformed("`check_result` 2 (all checked) with tickets still unchecked")),
        _ => {}
    }
    let mut progress = Map::new();
    progress.insert("check_state".into(), Value::from(state_word(result)));
    progress.insert("check_result".into(), Value::from(result));
    progress.insert("check_time".into(), Value::from(time));
    progress.insert("total_count".into(), Value::from(total));
    progress.insert("check_count".into(), Value::from(checked));
    progress.insert("no_check_count".into(), Value::from(unchecked));
    let mut fields = progress.clone();
    fields.insert("order_num".into(), Value::from(order_num));
    Ok(Notification {
        key: format!("check-in:{order_num}:{time}:{result}:{checked}:{unchecked}:{total}"),
        reference: order_num.to_string(),
        fields,
        effect: Effect::Progress(progress),
    })
}

/// The document's answers: `{"status":200,"message":"成功"}` once journaled; its failure form
/// `{"code":"401","message":"失败"}` otherwise (HTTP 403 for a foreign source, 404 for an unknown order or
/// path, 400 for the rest).
pub fn answer(outcome: Result<(), &CallbackRefusal>) -> CallbackAnswer {
    let json = "application/json; charset=utf-8";
    match outcome {
        Ok(()) => CallbackAnswer { status: 200, content_type: json, body: "{\"status\":200,\"message\":\"成功\"}".as_bytes().to_vec() },
        Err(e) => {
            let status = match e {
                CallbackRefusal::Source(_) => 403,
                CallbackRefusal::UnknownOrder(_) | CallbackRefusal::NoSuchPath(_) => 404,
                CallbackRefusal::BadSign | CallbackRefusal::Malformed(_) => 400,
            };
            CallbackAnswer { status, content_type: json, body: "{\"code\":\"401\",\"message\":\"失败\"}".as_bytes().to_vec() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &str) -> CallbackRequest<'_> {
        CallbackRequest { path: PATH, content_type: Some("application/json"), body: body.as_bytes() }
    }

    const DOC: &str = r#"{"order_num":"84d95bdc7ef911eaa2505404a6b35c1e","check_time":"2020-04-15 16:07:41 ","check_result":"1","total_count":"5","no_check_count":"1","check_count":"1"}"#;

    #[test]
    fn the_documents_example_is_progress_with_its_counts_and_the_same_key_twice() {
        let n = verify(&req(DOC)).expect("the document's own example");
        assert_eq!(n.reference, "84d95bdc7ef911eaa2505404a6b35c1e");
        let Effect::Progress(p) = &n.effect else { panic!("progress") };
        assert_eq!((p["check_state"].as_str(), p["check_count"].as_u64(), p["no_check_count"].as_u64()), (Some("partly-checked"), Some(1), Some(1)));
        assert_eq!(verify(&req(DOC)).expect("again").key, n.key);
        let all = DOC.replace("\"check_result\":\"1\"", "\"check_result\":\"2\"").replace("\"no_check_count\":\"1\"", "\"no_check_count\":\"0\"");
        assert_ne!(verify(&req(&all)).expect("all checked").key, n.key);
    }

    #[test]
    fn malformed_notifications_are_refused_naming_the_field() {
        for (edit, word) in [
            (DOC.replace("\"check_result\":\"1\"", "\"check_result\":\"7\""), "check_result"),
            (DOC.replace("\"total_count\":\"5\"", "\"total_count\":\"1\""), "exceed"),
            (DOC.replace("2020-04-15 16:07:41 ", "yesterday"), "check_time"),
            (DOC.replace("\"check_count\":\"1\"", "\"check_count\":\"-1\""), "check_count"),
            (DOC.replace("84d95bdc7ef911eaa2505404a6b35c1e", "a b"), "order_num"),
            ("[1]".to_string(), "object"),
            ("not json".to_string(), "not JSON"),
        ] {
            let e = verify(&req(&edit)).expect_err(word).to_string();
            assert!(e.contains(word), "{word}: {e}");
        }
        let wrong = CallbackRequest { path: "result", content_type: None, body: DOC.as_bytes() };
        assert!(matches!(verify(&wrong), Err(CallbackRefusal::NoSuchPath(_))));
    }

    #[test]
    fn answers_are_the_documents_forms() {
        let ok = answer(Ok(()));
        assert_eq!((ok.status, String::from_utf8_lossy(&ok.body).as_ref()), (200, "{\"status\":200,\"message\":\"成功\"}"));
        let no = answer(Err(&CallbackRefusal::Source("10.0.0.9".into())));
        assert_eq!((no.status, String::from_utf8_lossy(&no.body).as_ref()), (403, "{\"code\":\"401\",\"message\":\"失败\"}"));
    }
}
