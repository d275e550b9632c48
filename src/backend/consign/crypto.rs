//! The consignment document's two pieces of cryptography: the fixed-order MD5 sign and the AES card secret.
//!
//! Sign (document 4.1.3 and each interface's 固定签名排序): `k=v` in the document's order joined by `&`,
//! `&key=<sign secret>` last, MD5 of the UTF-8 text, upper-case hex. Absent optional fields take part
//! with an empty value. Card secret (4.1.4, the Java sample): AES-128-ECB, PKCS#5, key = the 16-byte
//! merchant key; the ciphertext to base64, then that base64 TEXT to lower-case hex.
use crate::backend::common::sign::{aes128_ecb_decrypt, aes128_ecb_encrypt, b64, eq_hex, md5_hex, unb64, SignError};
use crate::secret::Secret;

/// The submit's sign order (`/api/consignmentOrders`).
pub const SUBMIT_SIGN: &[&str] = &["customerId", "timestamp", "orderId", "batchno", "productCode", "cardNumber", "cardPassword", "faceMoney", "notifyUrl"];
/// The query's sign order (`/api/searchOrders`).
pub const QUERY_SIGN: &[&str] = &["customerId", "timestamp", "orderId"];
/// The async notification's sign order.
pub const NOTIFY_SIGN: &[&str] = &["customerId", "sysOrderId", "orderId", "status", "faceMoney", "realMoney", "amount", "successTime"];

/// The text signed: `k=v&…&key=<secret>` in `order`, a missing field as an empty value. The secret is in
/// it, so the text is never logged.
pub fn sign_text(order: &[&str], get: &dyn Fn(&str) -> Option<String>, key: &Secret) -> Result<String, SignError> {
    let key = key.expose_str().map_err(|_| SignError::Key("the sign key is not UTF-8".into()))?;
    let mut s = String::new();
    for name in order {
        s.push_str(name);
        s.push('=');
        s.push_str(&get(name).unwrap_or_default());
        s.push('&');
    }
    s.push_str("key=");
    s.push_str(key);
    Ok(s)
}

/// The sign: upper-case MD5 of [`sign_text`].
pub fn sign(order: &[&str], get: &dyn Fn(&str) -> Option<String>, key: &Secret) -> Result<String, SignError> {
    Ok(md5_hex(sign_text(order, get, key)?.as_bytes()))
}

/// Whether `received` is the sign of these fields (constant time, case-insensitive).
pub fn verify(order: &[&str], get: &dyn Fn(&str) -> Option<String>, key: &Secret, received: &str) -> bool {
    sign(order, get, key).is_ok_and(|s| eq_hex(&s, received))
}

/// The card secret as sent: AES-128-ECB/PKCS#5 under the merchant key, base64, the base64 text as lower hex.
pub fn seal_card_secret(key: &Secret, secret: &str) -> Result<String, SignError> {
    Ok(hex::encode(b64(&aes128_ecb_encrypt(key, secret.as_bytes())?)))
}

/// The inverse of [`seal_card_secret`] (the simulator's side): garbage at any layer is an error.
pub fn open_card_secret(key: &Secret, sent: &str) -> Result<String, SignError> {
    let text = hex::decode(sent).map_err(|e| SignError::Cipher(format!("not hex: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| SignError::Base64("not base64 text".into()))?;
    let plain = aes128_ecb_decrypt(key, &unb64(&text)?)?;
    String::from_utf8(plain).map_err(|_| SignError::Cipher("the secret is not UTF-8".into()))
}
