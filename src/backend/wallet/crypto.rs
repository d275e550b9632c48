//! The wallet's signatures and field encryption (specs/README.md, wallet): app.signature, orderMD5, tsig, 3DES fields.
//!
//! Shared by the backend (signing) and the simulator (verifying), so both read the document alike.
use serde_json::{Map, Value};

use crate::backend::common::sign::{self, RsaHash, RsaSigner, RsaVerifier, SignError};
use crate::secret::Secret;

/// The `tsig` mode (profile option `tsig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigMode {
    RsaSha1,
    RsaSha256,
    /// MD5 of the sorted-values string followed by appKey.
    Md5Key,
}

impl TsigMode {
    pub fn parse(s: &str) -> Option<TsigMode> {
        match s {
            "rsa-sha1" => Some(TsigMode::RsaSha1),
            "rsa-sha256" => Some(TsigMode::RsaSha256),
            "md5-key" => Some(TsigMode::Md5Key),
            _ => None,
        }
    }
}

/// The bytes of the 3DES key (24) an appKey fills.
pub const DES_KEY_BYTES: usize = 24;

/// How many bytes of the 3DES key `app_key` leaves as zero padding (0: none, the key is whole).
pub fn des_key_padding(app_key: &Secret) -> usize {
    DES_KEY_BYTES.saturating_sub(app_key.expose_str().unwrap_or_default().len())
}

/// The 3DES key: the first 24 bytes of appKey (UTF-8), zero-padded when shorter.
pub fn des_key(app_key: &Secret) -> Secret {
    let mut k = app_key.expose_str().unwrap_or_default().as_bytes().to_vec();
    k.resize(DES_KEY_BYTES, 0);
    Secret::new(k)
}

/// A field value as the document signs it: text as is, numbers in their decimal form.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// `app.signature` = MD5(sorted values of appId, appKey, nonce, timeStamp).
pub fn app_signature(app_id: &str, app_key: &Secret, nonce: &str, ts: &str) -> String {
    let key = app_key.expose_str().unwrap_or_default();
    sign::md5_hex(super::wire::sorted_values([app_id, key, nonce, ts]).as_bytes())
}

/// `orderMD5` over the named fields of `order` (absent ones contribute nothing).
pub fn order_md5(order: &Map<String, Value>, fields: &[&str]) -> String {
    let texts: Vec<String> = fields.iter().filter_map(|f| order.get(*f)).map(value_text).collect();
    sign::md5_hex(super::wire::sorted_values(texts.iter().map(String::as_str)).as_bytes())
}

/// delivery's `orderMD5`: the values of every order's `orderId` and `accountType`, sorted together.
pub fn list_md5(orders: &[Value], fields: &[&str]) -> String {
    let texts: Vec<String> = orders.iter().flat_map(|o| fields.iter().filter_map(move |f| o.get(*f)).map(value_text)).collect();
    sign::md5_hex(super::wire::sorted_values(texts.iter().map(String::as_str)).as_bytes())
}

/// The tsig input: sorted values of (orderMD5, appId, tsig.timeStamp, tsig.nonce).
pub fn tsig_input(order_md5: &str, app_id: &str, ts: &str, nonce: &str) -> String {
    super::wire::sorted_values([order_md5, app_id, ts, nonce])
}

/// What signs the tsig.
#[derive(Debug, Clone)]
pub enum TsigKey {
    Rsa(Box<RsaSigner>, RsaHash),
    Md5(Secret),
}

impl TsigKey {
    pub fn sign(&self, input: &str) -> Result<String, SignError> {
        match self {
            TsigKey::Rsa(k, h) => k.sign_b64(*h, input.as_bytes()),
            TsigKey::Md5(app_key) => Ok(sign::md5_hex(format!("{input}{}", app_key.expose_str().unwrap_or_default()).as_bytes())),
        }
    }
}

/// What checks the tsig (the simulator's side).
#[derive(Debug, Clone)]
pub enum TsigCheck {
    Rsa(RsaVerifier, RsaHash),
    Md5(Secret),
}

impl TsigCheck {
    pub fn verify(&self, input: &str, sig: &str) -> bool {
        match self {
            TsigCheck::Rsa(v, h) => v.verify_b64(*h, input.as_bytes(), sig).is_ok(),
            TsigCheck::Md5(app_key) => sign::eq_hex(&sign::md5_hex(format!("{input}{}", app_key.expose_str().unwrap_or_default()).as_bytes()), sig),
        }
    }
}

/// A 3DES field: DES-EDE3-ECB-PKCS#5 under [`des_key`], base64.
pub fn des3_field(app_key: &Secret, plain: &str) -> Result<String, SignError> {
    Ok(sign::b64(&sign::des3_ecb_encrypt(&des_key(app_key), plain.as_bytes())?))
}

/// The inverse of [`des3_field`]; garbage is an error.
pub fn des3_open(app_key: &Secret, field: &str) -> Result<String, SignError> {
    let raw = sign::des3_ecb_decrypt(&des_key(app_key), &sign::unb64(field)?)?;
    String::from_utf8(raw).map_err(|_| SignError::Cipher("not UTF-8 text".into()))
}

/// consumerId (specs/README.md): 16 digits whose first two are 95, 97, 20 or 26, or an 11-digit mobile
/// number starting with 1 (the document's "1X…12位" contradicts its own 11-digit example).
pub fn valid_consumer_id(s: &str) -> Result<(), &'static str> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be digits only");
    }
    match s.len() {
        11 if s.starts_with('1') => Ok(()),
        16 if ["95", "97", "20", "26"].iter().any(|p| s.starts_with(p)) => Ok(()),
        11 => Err("an 11-digit consumerId is a mobile number and must start with 1"),
        16 => Err("a 16-digit account number must start with 95, 97, 20 or 26"),
        _ => Err("must be a 16-digit account number or an 11-digit mobile number"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Vectors from python3:
    /// `hashlib.md5(''.join(sorted(['zjhtwallet','test-app-key','n0nce','1420070400'])).encode()).hexdigest().upper()`
    #[test]
    fn signatures_sort_values_like_python() {
        let key = Secret::new(b"test-app-key".to_vec());
        assert_eq!(app_signature("zjhtwallet", &key, "n0nce", "1420070400"), PY_APP_SIG);
        let order = json!({"consumerId": "13912345678", "sum": 5000, "sellerId": "SH12345", "remark": ""});
        let order = order.as_object().cloned().unwrap_or_default();
        // python3: md5(''.join(sorted(['13912345678','5000','SH12345']))).upper()
        assert_eq!(order_md5(&order, &["consumerId", "sum", "sellerId", "remark", "absent"]), PY_ORDER_MD5);
        assert_eq!(tsig_input("B", "a", "2", "1"), "12Ba");
        let md5key = TsigKey::Md5(key.clone());
        let sig = md5key.sign("12Ba").unwrap_or_default();
        assert!(TsigCheck::Md5(key).verify("12Ba", &sig.to_ascii_lowercase()));
    }

    #[test]
    fn des3_fields_round_trip_and_refuse_garbage() {
        let key = Secret::new(b"zjhtwallet-test-appkey-0123456789".to_vec());
        let f = des3_field(&key, "13912345678").unwrap_or_default();
        // openssl enc -des-ede3 -K 7a6a…30 -nosalt | base64 (the key's first 24 bytes), see sign.rs
        assert_eq!(f, "O5xlTxm3GY1I/iiJ885JWg==");
        assert_eq!(des3_open(&key, &f).unwrap_or_default(), "13912345678");
        assert!(des3_open(&key, "garbage!").is_err());
        assert!(des3_open(&key, "AAAAAAAAAAA=").is_err());
    }

    #[test]
    fn consumer_ids_follow_the_encoding_rule() {
        assert!(valid_consumer_id("13912345678").is_ok());
        assert!(valid_consumer_id("2001755000000001").is_ok());
        assert!(valid_consumer_id("9501020000000001").is_ok());
        assert!(valid_consumer_id("3001755000000001").is_err());
        assert!(valid_consumer_id("23912345678").is_err());
        assert!(valid_consumer_id("1391234567x").is_err());
        assert!(valid_consumer_id("139123456789").is_err());
    }

    const PY_APP_SIG: &str = "BA281BEA09A2FFD1D562F76EA528D414";
    const PY_ORDER_MD5: &str = "ED4BCEF7710E4EF74F553843D79F2E83";
}
