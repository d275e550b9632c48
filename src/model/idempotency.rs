//! The one rule for `Idempotency-Key` values, shared by the HTTP layer, the engine and the OpenAPI document.
//!
//! A test reads `openapi.json` and checks its `pattern`, `minLength` and `maxLength` against these
//! constants, so the document and the server cannot drift apart again (the document once allowed 255
//! characters while the engine refused more than 200).

/// Longest key, in characters (= bytes: the alphabet is ASCII).
pub const IDEMPOTENCY_KEY_MAX: usize = 200;

/// The key's alphabet and length as a regular expression (ECMA 262, Rust `regex` and `regex-lite` alike): 1 to
/// [`IDEMPOTENCY_KEY_MAX`] visible ASCII characters, no spaces (`!` 0x21 to `~` 0x7E).
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,200}$";

/// Why a key is refused, for the problem's detail.
pub const IDEMPOTENCY_KEY_RULE: &str = "must be 1 to 200 visible ASCII characters (no spaces)";

/// Whether `key` follows [`IDEMPOTENCY_KEY_PATTERN`].
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=IDEMPOTENCY_KEY_MAX).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_is_the_pattern() {
        let re = regex_lite::Regex::new(IDEMPOTENCY_KEY_PATTERN).expect("pattern");
        let max = "k".repeat(IDEMPOTENCY_KEY_MAX);
        let over = "k".repeat(IDEMPOTENCY_KEY_MAX + 1);
        for k in ["a", "order-42/1", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}", max.as_str(), "", " ", "a b", "tab\t", "é", "x\u{7f}", over.as_str()] {
            assert_eq!(valid_idempotency_key(k), re.is_match(k), "{k:?}");
        }
        assert!(IDEMPOTENCY_KEY_PATTERN.contains(&format!(",{IDEMPOTENCY_KEY_MAX}}}")));
        assert!(IDEMPOTENCY_KEY_RULE.contains(&IDEMPOTENCY_KEY_MAX.to_string()));
    }
}
