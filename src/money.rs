//! Money is integer fen inside the daemon; this converts to and from the vendors' decimal yuan text.
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("amount {0:?} is not a decimal yuan amount with at most 2 decimals")]
    BadYuan(String),
    #[error("amount {0} fen is out of range")]
    OutOfRange(i64),
}

/// Render fen as yuan with exactly two decimals: 12345 -> "123.45", -5 -> "-0.05".
pub fn fen_to_yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let a = fen.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// Parse a yuan amount as text ("12", "12.3", "12.30", "-0.05") into fen, refusing more than 2 decimals.
pub fn yuan_to_fen(s: &str) -> Result<i64, MoneyError> {
    let bad = || MoneyError::BadYuan(s.to_string());
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = int.parse().map_err(|_| bad())?;
    let mut cents: i64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
    if frac.len() == 1 {
        cents *= 10;
    }
    let v = whole.checked_mul(100).and_then(|w| w.checked_add(cents)).ok_or_else(bad)?;
    Ok(if neg { -v } else { v })
}

/// Read a yuan amount from a JSON value a vendor sent: a string or a number. Numbers are read from their
/// decimal text, never through a float.
pub fn json_yuan_to_fen(v: &serde_json::Value) -> Result<i64, MoneyError> {
    match v {
        serde_json::Value::String(s) => yuan_to_fen(s),
        serde_json::Value::Number(n) => yuan_to_fen(&n.to_string()),
        other => Err(MoneyError::BadYuan(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_fractions_of_a_fen() {
        assert_eq!(fen_to_yuan(12345), "123.45");
        assert_eq!(fen_to_yuan(5), "0.05");
        assert_eq!(fen_to_yuan(-5), "-0.05");
        assert_eq!(yuan_to_fen("123.45"), Ok(12345));
        assert_eq!(yuan_to_fen("1.5"), Ok(150));
        assert_eq!(yuan_to_fen("7"), Ok(700));
        assert_eq!(yuan_to_fen("-0.05"), Ok(-5));
        assert!(yuan_to_fen("1.234").is_err());
        assert!(yuan_to_fen("1e3").is_err());
        assert!(yuan_to_fen("").is_err());
        assert!(yuan_to_fen(".5").is_err());
        assert_eq!(json_yuan_to_fen(&serde_json::json!(1234.5)), Ok(123450));
    }
}
