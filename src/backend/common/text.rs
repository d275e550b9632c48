//! Text from outside made safe and short: scrubbing for logs and the journal, bounds, JSON scalars as text.
use serde_json::Value;

use crate::backend::mask_card;

/// Appended to text that was cut.
pub const TRUNCATED: &str = "…[truncated]";

/// The longest error detail [`scrub`] returns, in characters (then `…`).
pub const SCRUB_MAX_CHARS: usize = 200;

/// Shorten text from outside for an error detail or a log line: at most [`SCRUB_MAX_CHARS`] characters,
/// long digit runs (card numbers) masked 6+4 and long hex runs (PIN blocks, keys, MACs) hidden. A vendor's
/// answer may echo what it was sent, so every vendor's error texts go through this.
pub fn scrub(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 12 && run.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&mask_card(run));
        } else if run.len() >= 16 {
            out.push_str("<hex>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            // A run is judged whole, but bounded: a megabyte of digits is no card number either.
            if run.len() > 4 * SCRUB_MAX_CHARS {
                out.push_str("<hex>");
                run.clear();
                break;
            }
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
        if out.chars().count() > SCRUB_MAX_CHARS {
            break;
        }
    }
    flush(&mut run, &mut out);
    if out.chars().count() > SCRUB_MAX_CHARS {
        let cut: String = out.chars().take(SCRUB_MAX_CHARS).collect();
        format!("{cut}…")
    } else {
        out
    }
}

/// `text` cut to at most `max` characters in all, the cut marked with [`TRUNCATED`] (which counts).
pub fn bound(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => {
            let keep = text[..at].char_indices().nth(max.saturating_sub(TRUNCATED.chars().count())).map_or(at, |(i, _)| i);
            format!("{}{TRUNCATED}", &text[..keep])
        }
    }
}

/// `text` cut after `max` characters, with [`TRUNCATED`] appended when cut (so up to `max` + the marker).
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}{TRUNCATED}", &text[..at]),
        None => text.to_string(),
    }
}

/// A JSON string or number as text (numbers as written); anything else is `None`.
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A JSON scalar as text (strings as they are, numbers and booleans as written).
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        other => text_of(other),
    }
}

/// The JSON type of a value, for an error detail (never the value itself).
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The type of an answer field in a vendor document's tables, for checking an answer before believing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `String`.
    Str,
    /// `int` / `long`.
    Int,
    /// `double` (any JSON number).
    Num,
}

impl Ty {
    /// Whether `v` is of this type (no coercion: `"5"` is not an `Int`).
    pub fn admits(self, v: &Value) -> bool {
        match self {
            Ty::Str => v.is_string(),
            Ty::Int => v.is_i64() || v.is_u64(),
            Ty::Num => v.is_number(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scrub_masks_cards_hides_hex_and_bounds_length() {
        let s = scrub("card 6222021234567890123 block 5B1C6693FCEA1913ABCD end");
        assert_eq!(s, "card 622202*********0123 block <hex> end");
        let long = "x".repeat(1000);
        assert_eq!(scrub(&long).chars().count(), SCRUB_MAX_CHARS + 1);
        // A megabyte of digits is neither kept nor walked whole.
        let digits = "1".repeat(1_000_000);
        let s = scrub(&digits);
        assert!(!s.contains("1111111111111") && s.chars().count() <= SCRUB_MAX_CHARS + 1, "{s}");
    }

    #[test]
    fn bound_counts_the_marker_and_cut_appends_it() {
        assert_eq!(bound("abc", 3), "abc");
        let b = bound(&"兑".repeat(300), 256);
        assert_eq!(b.chars().count(), 256);
        assert!(b.ends_with(TRUNCATED));
        let c = cut(&"a".repeat(300), 256);
        assert_eq!(c.chars().count(), 256 + TRUNCATED.chars().count());
        assert_eq!(cut("short", 256), "short");
    }

    #[test]
    fn scalars_as_text_and_types() {
        assert_eq!(text_of(&json!(12.50)), Some("12.5".into()));
        assert_eq!(text_of(&json!(true)), None);
        assert_eq!(scalar_text(&json!(true)), Some("true".into()));
        assert_eq!(json_kind(&json!([1])), "a list");
        assert!(Ty::Int.admits(&json!(5)) && !Ty::Int.admits(&json!("5")) && Ty::Num.admits(&json!(1.5)) && !Ty::Str.admits(&json!(1)));
    }
}
