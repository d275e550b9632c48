//! The lottery wire vocabulary: operation table (paths, business fields), the signed envelope, bodies, answers.
//!
//! Shared by the backend (what to accept from the POS, what to send) and the simulator (what to require),
//! so the two cannot drift apart.
use serde_json::{Map, Value};

use super::sign::{self, SignMethod};
use crate::backend::{OpClass, OpSpec, Recovery};

pub use crate::backend::common::{bound, json_kind, scalar_text as text_of, Field, Kind, Owner, Ty, TRUNCATED};

const fn p(name: &'static str, required: bool, kind: Kind) -> Field {
    Field::pos(name, required, kind)
}
const fn pd(name: &'static str, default: &'static str) -> Field {
    Field::pos_or(name, default)
}
const fn d(name: &'static str) -> Field {
    Field::daemon(name, true)
}

/// One lottery interface.
#[derive(Debug, Clone, Copy)]
pub struct WireOp {
    pub spec: OpSpec,
    /// Path after `{base_url}/`; empty for `reconcile`, which uses [`AWARD_SUMMARY`] and [`AWARD_DETAIL`].
    pub path: &'static str,
    /// Business fields (`param_json`) in the spec's order.
    pub fields: &'static [Field],
}

/// The body key a POS may add to pick the station an inquiry runs on (not sent to the backend).
pub const STATION_KEY: &str = "stationId";

/// Fields the POS may never send.
pub const DAEMON_OWNED: &[&str] = &["transacId", "type", "access_token", "app_key", "sign", "sign_method", "timestamp", "clerkId", "serialNo"];

const LOGIN: &[Field] = &[d("stationId"), d("clerkId"), d("password"), d("type"), d("version"), d("serialNo")];
const PASSWORD: &[Field] = &[p("old", false, Kind::Password), p("new", true, Kind::Password)];
const REDEEM: &[Field] = &[p("userId", true, Kind::Text), p("userRealIp", true, Kind::Text), d("transacId"), d("type"), p("barCode", true, Kind::BarCode)];
const NONE: &[Field] = &[];
const PRIZE: &[Field] = &[p("barCode", true, Kind::BarCode)];
const SALES: &[Field] = &[
    pd("gameNo", "00000"),
    pd("batchNo", "00000"),
    p("beginDate", true, Kind::Date),
    p("endDate", true, Kind::Date),
    pd("isAllOperator", "1"),
    pd("operatorNo", "$clerk"),
];
const BALANCE: &[Field] = &[p("beginDate", true, Kind::Date), p("endDate", true, Kind::Date)];
const TRACE: &[Field] = &[p("barCode", true, Kind::Text)];
/// 8.7.4: since v1.0 it cannot query all batches, so game and batch come from the caller (no `00000`).
const AWARD: &[Field] = &[
    p("gameNo", true, Kind::Text),
    p("batchNo", true, Kind::Text),
    p("beginTime", true, Kind::Date),
    p("endTime", true, Kind::Date),
    pd("isAllOperator", "1"),
    pd("operatorNo", "$clerk"),
];
/// awardSummary / awardDetail: filled by the daemon for the reconciled day.
pub const ACCOUNT: &[Field] = &[d("gameNo"), d("batchNo"), d("beginTime"), d("endTime")];

const fn spec(name: &'static str, class: OpClass) -> OpSpec {
    OpSpec { name, class, needs_original: false }
}

pub const LOGIN_PATH: &str = "proxy/station/login";
pub const REDEEM_PATH: &str = "proxy/validate/thirdAward";
pub const AWARD_SUMMARY: &str = "migt/account/awardSummary";
pub const AWARD_DETAIL: &str = "migt/account/awardDetail";
/// The thirdAward `type` for station machine-read redemption (1704, manual, is "暂不支持").
pub const REDEEM_TYPE: i64 = 1701;

/// Every lottery operation, in the order of the spec's section 8.
pub static OPS: &[WireOp] = &[
    WireOp { spec: spec("login", OpClass::SignOn), path: LOGIN_PATH, fields: LOGIN },
    WireOp { spec: spec("password", OpClass::Inquiry), path: "proxy/station/password", fields: PASSWORD },
    WireOp { spec: spec("redeem", OpClass::Financial(Recovery::Resend)), path: REDEEM_PATH, fields: REDEEM },
    WireOp { spec: spec("count", OpClass::Inquiry), path: "proxy/validate/getCount", fields: NONE },
    WireOp { spec: spec("reset-count", OpClass::Inquiry), path: "proxy/validate/resetCount", fields: NONE },
    WireOp { spec: spec("report-sales", OpClass::Inquiry), path: "migt/report/sales", fields: SALES },
    WireOp { spec: spec("report-balance", OpClass::Inquiry), path: "migt/report/balance", fields: BALANCE },
    WireOp { spec: spec("report-trace", OpClass::Inquiry), path: "migt/report/trace", fields: TRACE },
    WireOp { spec: spec("report-award", OpClass::Inquiry), path: "migt/report/award", fields: AWARD },
    WireOp { spec: spec("reconcile", OpClass::Report), path: "", fields: NONE },
    WireOp { spec: spec("prize", OpClass::Inquiry), path: "proxy/validate/getPrize", fields: PRIZE },
];

/// The same list as the engine sees it.
pub static OP_SPECS: &[OpSpec] =
    &[OPS[0].spec, OPS[1].spec, OPS[2].spec, OPS[3].spec, OPS[4].spec, OPS[5].spec, OPS[6].spec, OPS[7].spec, OPS[8].spec, OPS[9].spec, OPS[10].spec];

pub fn op(name: &str) -> Option<&'static WireOp> {
    OPS.iter().find(|o| o.spec.name == name)
}

/// The operation served at a path (the simulator's side); the two account paths are not operations.
pub fn op_by_path(path: &str) -> Option<&'static WireOp> {
    OPS.iter().find(|o| !o.path.is_empty() && o.path == path)
}

/// Request body encoding (profile option `body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`, one form field per envelope parameter (the spec).
    Form,
    /// The same parameters as one JSON object of strings.
    Json,
}

pub const FORM_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
pub const JSON_TYPE: &str = "application/json; charset=utf-8";

/// `param_json` text with the fields in the given order (serde_json's map would sort them).
pub fn param_json(fields: &[(&str, Value)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&Value::String((*k).to_string()).to_string());
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push('}');
    s
}

/// The public parameters of one request, before signing.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub app_key: &'a str,
    /// Absent for login (an optional parameter left out of the signature).
    pub access_token: Option<&'a str>,
    pub timestamp: String,
    pub sign_method: SignMethod,
    pub param_json: String,
}

impl Envelope<'_> {
    /// The parameters to send, `sign` last. The pairs hold the token: never log them.
    pub fn signed_pairs(&self, app_secret: &str) -> Vec<(&'static str, String)> {
        let mut pairs: Vec<(&'static str, String)> = vec![("app_key", self.app_key.to_string())];
        if let Some(t) = self.access_token {
            pairs.push(("access_token", t.to_string()));
        }
        pairs.extend([
            ("timestamp", self.timestamp.clone()),
            ("format", "json".to_string()),
            ("v", "1.0".to_string()),
            ("sign_method", self.sign_method.wire().to_string()),
            ("param_json", self.param_json.clone()),
        ]);
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sig = sign::sign(&refs, app_secret, self.sign_method);
        pairs.push(("sign", sig));
        pairs
    }
}

/// Body text and content type for the signed pairs.
pub fn encode_body(pairs: &[(&'static str, String)], format: BodyFormat) -> (&'static str, String) {
    match format {
        BodyFormat::Form => {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                s.append_pair(k, v);
            }
            (FORM_TYPE, s.finish())
        }
        BodyFormat::Json => {
            let m: Map<String, Value> = pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect();
            (JSON_TYPE, Value::Object(m).to_string())
        }
    }
}

/// Parse a request body, form or JSON by its content type (the simulator's side). JSON scalars become text.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Vec<(String, String)>, String> {
    if content_type.to_ascii_lowercase().contains("json") {
        let m: Map<String, Value> = serde_json::from_slice(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
        Ok(m.into_iter().map(|(k, v)| (k, text_of(&v).unwrap_or_default())).collect())
    } else {
        Ok(form_urlencoded::parse(body).into_owned().collect())
    }
}

/// The common answer of every interface.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub success: bool,
    pub ret: String,
    pub msg: String,
    /// `content` as JSON: an object (or for awardDetail a list); JSON text is parsed; absent is `{}`.
    pub content: Value,
}

/// The longest text kept of one answer field (and of `msg`) in [`crate::backend::Reply`] (so the journal).
pub const FIELD_MAX_CHARS: usize = 256;
/// The longest report HTML (and its text) kept: the reports of 8.7 are whole pages, already bounded by the
/// profile's `max_answer_bytes`.
pub const REPORT_MAX_CHARS: usize = 256 * 1024;

/// Parse an answer body against the document's types (3.1): `success` a boolean, `ret` a code string one
/// of the code tables defines, `msg` text, `content` an object, JSON text, or (awardDetail) a list. Anything
/// else is `Err` with a short reason: the answer says nothing the caller may act on (for a redeem: the
/// outcome is unknown, never a decline). `msg` is bounded to [`FIELD_MAX_CHARS`].
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let m: Map<String, Value> = serde_json::from_slice(body).map_err(|e| format!("answer is not a JSON object ({e})"))?;
    let success = match m.get("success") {
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("answer's `success` is {}, not a boolean", json_kind(other))),
        None => return Err("answer has no `success`".into()),
    };
    let ret = match m.get("ret") {
        Some(Value::String(s)) if super::codes::defined(s) => s.clone(),
        Some(Value::String(s)) => return Err(format!("answer's `ret` {:?} is not a code the document defines", bound(s, 32))),
        Some(other) => return Err(format!("answer's `ret` is {}, not a code string", json_kind(other))),
        None => return Err("answer has no `ret`".into()),
    };
    let msg = match m.get("msg") {
        Some(Value::String(s)) => bound(s, FIELD_MAX_CHARS),
        None | Some(Value::Null) => String::new(),
        Some(other) => return Err(format!("answer's `msg` is {}, not text", json_kind(other))),
    };
    let content = match m.get("content") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Some(v @ (Value::Object(_) | Value::Array(_))) => v.clone(),
        Some(other) => return Err(format!("answer's `content` is {}, not an object", json_kind(other))),
    };
    if matches!(content, Value::Bool(_) | Value::Number(_)) {
        return Err(format!("answer's `content` is {}, not an object", json_kind(&content)));
    }
    Ok(Answer { success, ret, msg, content })
}

/// A required field of an answer's `content` (every field of 8.4's answer tables is 必须).
pub type AnswerField = (&'static str, Ty);

/// 8.4 兑奖成功 (success=true, ret 10000 / 1301 / 1302).
pub const REDEEM_PAID: &[AnswerField] = &[
    ("transacId", Ty::Str),
    ("ticketNo", Ty::Str),
    ("gameName", Ty::Str),
    ("price", Ty::Int),
    ("level", Ty::Int),
    ("prize", Ty::Int),
    ("balance", Ty::Num),
    ("soldCity", Ty::Str),
    ("amountTicket", Ty::Int),
    ("amountPrize", Ty::Int),
];
/// 8.4 重复兑奖 (success=true, ret 1307), the document's spelling (`Amoutticket`, `AmountPrize`).
pub const REDEEM_AGAIN: &[AnswerField] = &[
    ("transacId", Ty::Str),
    ("transacIdOrg", Ty::Str),
    ("ticketNo", Ty::Str),
    ("gameName", Ty::Str),
    ("price", Ty::Int),
    ("level", Ty::Int),
    ("prize", Ty::Int),
    ("balance", Ty::Num),
    ("awardStation", Ty::Str),
    ("awardTime", Ty::Str),
    ("soldCity", Ty::Str),
    ("Amoutticket", Ty::Int),
    ("AmountPrize", Ty::Int),
];
/// 8.4 未中奖 / 超过兑奖上限 (success=false, ret 1304 / 1305).
pub const REDEEM_REFUSED: &[AnswerField] = &[("transacId", Ty::Str), ("ticketNo", Ty::Str), ("gameName", Ty::Str), ("price", Ty::Int)];

/// The required `content` fields of a redeem answer with this `ret` (none for the other codes).
pub fn redeem_required(ret: &str) -> &'static [AnswerField] {
    match ret {
        "10000" | "1301" | "1302" => REDEEM_PAID,
        "1307" => REDEEM_AGAIN,
        "1304" | "1305" => REDEEM_REFUSED,
        _ => &[],
    }
}

/// The `content` fields the document's answer table of the interface at `path` defines: the only ones
/// kept in a reply (and so the journal). `token` is in login's, and dropped separately.
pub fn answer_fields(path: &str) -> &'static [&'static str] {
    match path {
        LOGIN_PATH => &["token", "serverTime"],
        REDEEM_PATH => &[
            "transacId",
            "transacIdOrg",
            "ticketNo",
            "gameName",
            "price",
            "level",
            "prize",
            "balance",
            "awardStation",
            "awardTime",
            "soldCity",
            "amountTicket",
            "amountPrize",
            "Amoutticket",
            "AmountPrize",
        ],
        "proxy/validate/getCount" => &["tickets", "amount"],
        "migt/report/sales" | "migt/report/balance" | "migt/report/trace" | "migt/report/award" => &["report"],
        AWARD_SUMMARY => &["gameNo", "batchNo", "tickets", "amount"],
        AWARD_DETAIL => &["gameNo", "batchNo", "packNo", "ticketNo", "transacId", "time"],
        "proxy/validate/getPrize" => &["level", "prize", "stationId", "awardTime"],
        _ => &[],
    }
}

/// The HTML of a report as plain text for the CLI: rows on lines, cells separated by tabs, entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[i + 1..i + j].trim().to_ascii_lowercase();
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        match name.as_str() {
            "br" | "tr" | "p" | "div" | "h1" | "h2" | "h3" | "h4" | "li" | "table" | "caption" if tag.starts_with('/') || name == "br" => out.push('\n'),
            "td" | "th" if tag.starts_with('/') => out.push('\t'),
            _ => {}
        }
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    let decoded = out.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&");
    decoded.lines().map(|l| l.trim_end_matches(['\t', ' ']).trim_start()).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_section_8() {
        let names: Vec<&str> = OP_SPECS.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["login", "password", "redeem", "count", "reset-count", "report-sales", "report-balance", "report-trace", "report-award", "reconcile", "prize"]
        );
        assert_eq!(op("redeem").map(|o| o.spec.class), Some(OpClass::Financial(Recovery::Resend)));
        assert_eq!(op_by_path(REDEEM_PATH).map(|o| o.spec.name), Some("redeem"));
        assert!(op_by_path("").is_none());
        for o in OPS {
            for f in o.fields {
                assert!(matches!(f.kind, Kind::Text | Kind::BarCode | Kind::Password | Kind::Date), "{}.{}", o.spec.name, f.name);
            }
        }
        crate::backend::common::check_tables(OPS.iter().map(|o| (o.spec.name, o.fields)), DAEMON_OWNED).unwrap();
    }

    #[test]
    fn envelope_is_signed_and_encoded_both_ways() {
        let pj = param_json(&[("stationId", Value::from("21010001")), ("type", Value::from(1701))]);
        assert_eq!(pj, r#"{"stationId":"21010001","type":1701}"#);
        let e = Envelope { app_key: "k", access_token: None, timestamp: "2018-05-07 10:23:44".into(), sign_method: SignMethod::Md5, param_json: pj.clone() };
        let pairs = e.signed_pairs("s");
        assert!(pairs.iter().all(|(k, _)| *k != "access_token"));
        assert_eq!(pairs.last().map(|p| p.0), Some("sign"));
        let (ct, body) = encode_body(&pairs, BodyFormat::Form);
        let back = decode_body(ct, body.as_bytes()).unwrap();
        assert_eq!(back.iter().find(|(k, _)| k == "param_json").map(|p| p.1.as_str()), Some(pj.as_str()));
        assert_eq!(back.iter().find(|(k, _)| k == "timestamp").map(|p| p.1.as_str()), Some("2018-05-07 10:23:44"));
        let (ct, body) = encode_body(&pairs, BodyFormat::Json);
        assert_eq!(decode_body(ct, body.as_bytes()).unwrap().len(), pairs.len());
    }

    #[test]
    fn answers_accept_content_as_object_or_text() {
        let a = parse_answer(br#"{"success":true,"ret":"10000","msg":"ok","content":"{\"token\":\"t\"}"}"#).unwrap();
        assert_eq!(a.content["token"], "t");
        let a = parse_answer(br#"{"success":false,"ret":"1305","msg":"x","content":{"ticketNo":"1"}}"#).unwrap();
        assert_eq!((a.success, a.ret.as_str()), (false, "1305"));
        let a = parse_answer(br#"{"success":true,"ret":"10000","msg":"ok","content":[{"transacId":"t"}]}"#).unwrap();
        assert_eq!(a.content[0]["transacId"], "t");
        assert!(parse_answer(b"<html>").is_err());
        assert!(parse_answer(br#"{"ret":"1"}"#).is_err());
    }

    /// Issue 16: `"success":"true"`, `"ret":1305` and the like were read as answers (a string `true` as
    /// success, a number as a code): only the document's types are.
    #[test]
    fn answers_of_the_wrong_type_or_an_undefined_code_are_refused() {
        for body in [
            r#"{"success":"true","ret":"1305","msg":"x"}"#,
            r#"{"success":"false","ret":"1305","msg":"x"}"#,
            r#"{"success":1,"ret":"1305","msg":"x"}"#,
            r#"{"success":null,"ret":"1305","msg":"x"}"#,
            r#"{"ret":"1305","msg":"x"}"#,
            r#"{"success":false,"ret":1305,"msg":"x"}"#,
            r#"{"success":false,"ret":["1305"],"msg":"x"}"#,
            r#"{"success":false,"ret":null,"msg":"x"}"#,
            r#"{"success":false,"ret":"","msg":"x"}"#,
            r#"{"success":false,"ret":"1399","msg":"x"}"#,
            r#"{"success":false,"ret":" 1305","msg":"x"}"#,
            r#"{"success":false,"ret":"1305","msg":{"zh":"x"}}"#,
            r#"{"success":false,"ret":"1305","msg":"x","content":5}"#,
            r#"{"success":false,"ret":"1305","msg":"x","content":true}"#,
            r#"{"success":false,"ret":"1305","msg":"x","content":"7"}"#,
            r#"["success",true]"#,
        ] {
            assert!(parse_answer(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn msg_and_fields_are_bounded_with_a_marker() {
        let long = "兑".repeat(5000);
        let a = parse_answer(format!(r#"{{"success":false,"ret":"1305","msg":"{long}"}}"#).as_bytes()).unwrap();
        assert_eq!(a.msg.chars().count(), FIELD_MAX_CHARS);
        assert!(a.msg.ends_with(TRUNCATED) && a.msg.starts_with("兑兑"));
        assert_eq!(bound("short", 256), "short");
        assert_eq!(bound(&"x".repeat(256), 256), "x".repeat(256));
        assert_eq!(bound(&"x".repeat(257), 256).chars().count(), 256);
    }

    #[test]
    fn html_reports_render_as_text() {
        let t = html_to_text("<html><body><h3>进销存</h3><table><tr><th>游戏</th><th>张数</th></tr><tr><td>A&amp;B</td><td>3</td></tr></table></body></html>");
        assert_eq!(t, "进销存\n游戏\t张数\nA&B\t3");
    }
}
