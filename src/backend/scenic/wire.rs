//! The scenic document's wire: the code table, the signed envelope, the exact `params` text, and the local checks of POS values.
use serde_json::{Map, Value};

use crate::backend::common::sign::md5_hex;
use crate::secret::Secret;

/// The create-order interface (下单接口, after payment).
pub const CREATE_PATH: &str = "public/createOrder";
/// The cancel-order interface (取消订单).
pub const CANCEL_PATH: &str = "public/cancelOrder";

/// The document's success code.
pub const OK: &str = "1000";

/// The document's error code table (三、错误代码): `(code, message, English)`.
pub static CODES: &[(&str, &str, &str)] = &[
    ("1000", "成功", "approved"),
    ("3000", "创建订单失败", "the order could not be created"),
    ("3001", "必要参数验证为空", "a required parameter is empty"),
    ("3002", "产品不存在或已下架", "no such product, or withdrawn from sale"),
    ("3003", "购买日期无效", "invalid visit date"),
    ("3004", "取票人手机格式错误", "the ticket holder's mobile number is malformed"),
    ("3005", "价格格式错误", "the price is malformed"),
    ("3006", "产品购票数量无效", "invalid ticket count"),
    ("3007", "单次购买数量不符合规则", "the ticket count breaks the product's rules"),
    ("3008", "库存不足", "sold out"),
    ("3009", "账户余额不足，请联系管理员", "the channel's account balance is too low"),
    ("3010", "此票不需要实名制", "this ticket takes no resident IDs"),
    ("3011", "身份证数量与购票数量不匹配", "the number of resident IDs does not match the ticket count"),
    ("3012", "身份证号无效", "invalid resident ID number"),
    ("4000", "此订单取消失败", "the order could not be cancelled"),
    ("4001", "此订单不存在", "no such order"),
    ("4002", "此订单已取消", "the order is already cancelled"),
    ("4003", "此订单已检票", "the order's tickets are already checked"),
    ("9001", "缺少参数", "a parameter is missing"),
    ("9002", "分销渠道app_key无效", "invalid app_key"),
    ("9003", "签名错误", "bad signature"),
    ("9004", "发送短信失败", "the SMS could not be sent"),
];

/// Create refusals that depend only on the request's own text, so a resend of the very same params
/// would have been refused the same way the first time: nothing was created. Every other refusal of a
/// resend (stock, balance, date, product withdrawn, signature, the generic 3000) may come from the state
/// the first send left behind, and says nothing about whether the first one created the order.
pub const CREATE_REFUSALS_OF_THE_TEXT: &[&str] = &["3001", "3004", "3005", "3006", "3007", "3010", "3011", "3012", "9001"];

/// The longest order number accepted from the platform.
pub const MAX_ORDER_NUM: usize = 64;
/// Bounds of POS text fields.
pub const MAX_PRODUCT_CODE: usize = 64;
pub const MAX_NAME_CHARS: usize = 32;
pub const MAX_TOURISTS: usize = 200;
pub const MAX_COUNT: i64 = 9999;

/// `upper(MD5(app_secret + params + time_stamp))` over the exact `params` text sent.
pub fn sign(app_secret: &Secret, params: &str, time_stamp: &str) -> String {
    let mut data = app_secret.expose().to_vec();
    data.extend_from_slice(params.as_bytes());
    data.extend_from_slice(time_stamp.as_bytes());
    md5_hex(&data).to_uppercase()
}

/// The request body: `{"app_key","params":<json text>,"time_stamp","sign"}`, `time_stamp` a JSON number
/// (the document's type is `long`, Unix milliseconds in its example).
pub fn envelope(app_key: &str, app_secret: &Secret, params: &str, time_stamp_ms: i64) -> Vec<u8> {
    let ts = time_stamp_ms.to_string();
    let mut body = String::from("{\"app_key\":");
    body.push_str(&Value::String(app_key.to_string()).to_string());
    body.push_str(",\"params\":");
    body.push_str(&Value::String(params.to_string()).to_string());
    body.push_str(",\"time_stamp\":");
    body.push_str(&ts);
    body.push_str(",\"sign\":\"");
    body.push_str(&sign(app_secret, params, &ts));
    body.push_str("\"}");
    body.into_bytes()
}

/// Fen as a JSON number of yuan with two decimals (`600` → `6.00`): the document's `double`, written
/// from the integer, never through a float.
pub fn yuan_number(fen: i64) -> String {
    crate::money::fen_to_yuan(fen)
}

/// One tourist of `tourist_info`: an ID number and the name on it.
pub type Tourist = (String, String);

/// The create-order params text, fields in the document's order.
#[allow(clippy::too_many_arguments)]
pub fn create_params(
    channel_order_num: &str,
    product_code: &str,
    take_phone: &str,
    tourists: &[Tourist],
    date: &str,
    price_fen: i64,
    amount_fen: i64,
    count: i64,
) -> String {
    let s = |t: &str| Value::String(t.to_string()).to_string();
    let mut p = format!("{{\"channel_order_num\":{},\"product_code\":{},\"take_phone\":{}", s(channel_order_num), s(product_code), s(take_phone));
    if !tourists.is_empty() {
        p.push_str(",\"tourist_info\":{");
        for (i, (id, name)) in tourists.iter().enumerate() {
            if i > 0 {
                p.push(',');
            }
            p.push_str(&s(id));
            p.push(':');
            p.push_str(&s(name));
        }
        p.push('}');
    }
    p.push_str(&format!(",\"date\":{},\"price\":{},\"amount\":{},\"count\":{count}}}", s(date), yuan_number(price_fen), yuan_number(amount_fen)));
    p
}

/// The cancel-order params text.
pub fn cancel_params(order_num: &str) -> String {
    format!("{{\"order_num\":{}}}", Value::String(order_num.to_string()))
}

/// ISO 7064 MOD 11-2 check character of the first 17 digits of a resident ID.
fn check_char(first17: &[u8]) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: &[u8; 11] = b"10X98765432";
    let sum: u32 = first17.iter().zip(W).map(|(d, w)| u32::from(d - b'0') * w).sum();
    char::from(C[(sum % 11) as usize])
}

/// Whether `id` looks like an 18-digit resident ID (17 digits then a digit or X), the kind checked here.
pub fn is_resident_id_shape(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 18 && b[..17].iter().all(u8::is_ascii_digit) && (b[17].is_ascii_digit() || b[17] == b'X' || b[17] == b'x')
}

/// Check an 18-digit resident ID: its check digit (ISO 7064 MOD 11-2) and its date of birth.
pub fn check_resident_id(id: &str) -> Result<(), String> {
    if !is_resident_id_shape(id) {
        return Err("is not 17 digits followed by a digit or X".into());
    }
    let b = id.as_bytes();
    let want = check_char(&b[..17]);
    if b[17].to_ascii_uppercase() != want as u8 {
        return Err("its check digit (ISO 7064 MOD 11-2) is wrong".into());
    }
    if chrono::NaiveDate::parse_from_str(&id[6..14], "%Y%m%d").is_err() {
        return Err("its date of birth is not a date".into());
    }
    Ok(())
}

/// Check one `tourist_info` key: an 18-character resident ID is checked fully; any other document number
/// (passport, travel permit) must be 5 to 20 letters and digits.
pub fn check_tourist_id(id: &str) -> Result<(), String> {
    if id.len() == 18 && id.as_bytes()[..17].iter().all(u8::is_ascii_digit) {
        return check_resident_id(id);
    }
    if !(5..=20).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("is neither an 18-digit resident ID nor a document number of 5 to 20 letters and digits".into());
    }
    Ok(())
}

/// A mobile number as journaled: the first 3 and last 4 digits.
pub fn mask_phone(phone: &str) -> String {
    let n = phone.chars().count();
    if n < 8 {
        return "*".repeat(n);
    }
    let head: String = phone.chars().take(3).collect();
    let tail: String = phone.chars().skip(n - 4).collect();
    format!("{head}{}{tail}", "*".repeat(n - 7))
}

/// The tourists of a POS `tourist_info` object, checked and in key order.
pub fn tourists(v: &Value) -> Result<Vec<Tourist>, String> {
    let o: &Map<String, Value> = v.as_object().ok_or("must be an object of ID number → name")?;
    if o.len() > MAX_TOURISTS {
        return Err(format!("at most {MAX_TOURISTS} tourists"));
    }
    let mut out = Vec::with_capacity(o.len());
    for (id, name) in o {
        check_tourist_id(id).map_err(|why| format!("ID {}: {why}", crate::backend::mask_card(id)))?;
        let name = name.as_str().ok_or_else(|| format!("ID {}: the name must be text", crate::backend::mask_card(id)))?;
        if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(format!("ID {}: the name must be 1 to {MAX_NAME_CHARS} characters", crate::backend::mask_card(id)));
        }
        out.push((id.to_uppercase(), name.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_ids_follow_iso_7064_mod_11_2_as_python_computes_it() {
        // Vectors from python: C = "10X98765432"[sum(d*w) % 11].
        for ok in ["11010519491231002X", "440524188001010014", "11010119900307803X", "310115198008081239", "11010519491231002x"] {
            assert_eq!(check_resident_id(ok), Ok(()), "{ok}");
        }
        for bad in ["110105194912310021", "440524188001010015", "410102195431547812", "41010219543154781", "4101021954315478AB"] {
            assert!(check_resident_id(bad).is_err(), "{bad}");
        }
        // A valid check digit but no such birth date.
        let mut id = String::from("11010519491331002");
        id.push(check_char(id.as_bytes()));
        assert!(check_resident_id(&id).unwrap_err().contains("date of birth"));
        // The check digit python gives the document's example 41010219543154781 (month 31: no date).
        assert!(check_resident_id("410102195431547815").unwrap_err().contains("date of birth"));
        assert_eq!(check_tourist_id("E12345678"), Ok(()));
        assert!(check_tourist_id("410102195431547812").is_err());
    }

    #[test]
    fn the_sign_is_upper_md5_of_secret_params_and_time_stamp_as_the_document_builds_it() {
        let secret = Secret::new(b"94d95bdd7ef111eaa2505404a6b35c1e".to_vec());
        let params = "{\"order_num\":\"84d95bdc7ef911eaa2505404a6b35c1e\",\"date\":\"2020-04-01\"}";
        let want = md5_hex(format!("94d95bdd7ef111eaa2505404a6b35c1e{params}1586936588379").as_bytes()).to_uppercase();
        assert_eq!(sign(&secret, params, "1586936588379"), want);
        assert_eq!(want.len(), 32);
        let body: Value = serde_json::from_slice(&envelope("e346", &secret, params, 1586936588379)).expect("json");
        assert_eq!(body["params"], Value::String(params.into()));
        assert_eq!(body["time_stamp"], serde_json::json!(1586936588379_i64));
        assert_eq!(body["sign"], Value::String(want));
    }

    #[test]
    fn money_goes_out_as_yuan_decimals_written_from_fen() {
        let p = create_params("C1", "XXX", "13456451211", &[("11010519491231002X".into(), "张三".into())], "2020-04-01", 600, 3000, 5);
        assert_eq!(
            p,
            "{\"channel_order_num\":\"C1\",\"product_code\":\"XXX\",\"take_phone\":\"13456451211\",\"tourist_info\":{\"11010519491231002X\":\"张三\"},\"date\":\"2020-04-01\",\"price\":6.00,\"amount\":30.00,\"count\":5}"
        );
        let v: Value = serde_json::from_str(&p).expect("valid JSON");
        assert_eq!(crate::money::json_yuan_to_fen(&v["amount"]), Ok(3000));
        assert_eq!(yuan_number(1), "0.01");
        assert_eq!(yuan_number(123_456_789_012), "1234567890.12");
        assert_eq!(mask_phone("13456451211"), "134****1211");
    }
}
