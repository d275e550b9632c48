//! Request bodies parsed as JSON that refuses duplicate object keys (serde_json keeps the last one silently).
//!
//! `{"pointAmount": 1, "pointAmount": 100000}` means two different things to two parsers; a proxy,
//! a log or the POS app's own audit may read the first while the daemon acted on the last. Refusing
//! the body is the only reading both sides agree on.
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrictError {
    /// The same key twice in one object; `path` is where the object sits (`$`, `$.ticket[0]`).
    DuplicateKey { key: String, path: String },
    /// Not JSON at all (or nested deeper than serde_json allows).
    Syntax { message: String, line: usize, column: usize },
}

/// Marker put into serde's error message so the duplicate can be told from a syntax error.
const DUP: &str = "\u{0}duplicate-key\u{0}";

/// Parse `bytes` as one JSON value, refusing any object that names a key twice.
pub fn from_slice(bytes: &[u8]) -> Result<Value, StrictError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Seed { path: "$".into() }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    v.map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix(DUP).and_then(|rest| rest.split_once(DUP)) {
            Some((path, tail)) => {
                // serde_json appends " at line L column C" to custom errors.
                let key = tail.rsplit_once(" at line ").map(|(k, _)| k).unwrap_or(tail);
                StrictError::DuplicateKey { key: key.to_string(), path: path.to_string() }
            }
            None => StrictError::Syntax { message: msg, line: e.line(), column: e.column() },
        }
    })
}

struct Seed {
    path: String,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed { path: format!("{}[{}]", self.path, out.len()) })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUP}{}{DUP}{key}", self.path)));
            }
            let v = map.next_value_seed(Seed { path: format!("{}.{key}", self.path) })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_keys_are_refused_by_name() {
        let e = from_slice(br#"{"pointAmount": 1, "cashAmount": 0, "pointAmount": 100000}"#).expect_err("duplicate");
        assert_eq!(e, StrictError::DuplicateKey { key: "pointAmount".into(), path: "$".into() });
        let e = from_slice(br#"{"ticket": [{"id": "a"}, {"id": "b", "amount": 1, "amount": 2}]}"#).expect_err("nested duplicate");
        assert_eq!(e, StrictError::DuplicateKey { key: "amount".into(), path: "$.ticket[1]".into() });
    }

    #[test]
    fn everything_else_reads_as_serde_json_does() {
        let text = br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": 18446744073709551615, "d": "\u00e9"}"#;
        assert_eq!(from_slice(text).expect("valid"), serde_json::from_slice::<Value>(text).expect("valid"));
        assert_eq!(from_slice(b"[]").expect("valid"), json!([]));
        assert!(matches!(from_slice(b"{\"a\": 1,}"), Err(StrictError::Syntax { line: 1, .. })));
        assert!(matches!(from_slice(b"{} x"), Err(StrictError::Syntax { .. })));
        assert!(matches!(from_slice(&vec![b'['; 10_000]), Err(StrictError::Syntax { .. })));
    }
}
