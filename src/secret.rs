//! A wrapper for keys and passwords whose `Debug` and `Display` print nothing of the value.
use std::fmt;

/// Secret bytes (terminal master keys, app secrets, tokens). Never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    /// The raw bytes, for the one place that must use them (a cipher, a signer).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The value as text with surrounding whitespace trimmed (secret files often end in a newline).
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0).map(str::trim)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_print_nothing_of_the_value() {
        let s = Secret::new(b"0123456789ABCDEFFEDCBA9876543210".to_vec());
        let shown = format!("{s:?} {s} {:?}", Some(&s));
        assert!(!shown.contains("0123"), "{shown}");
        assert!(!shown.contains("ABCDEF"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
