//! Sealing of the few fields recovery must replay (card numbers): AES-256-GCM under a data key on disk.
//!
//! The journal never holds them in clear; the key file (mode 0600) lives beside the journal so a
//! copied journal alone reveals nothing.
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore;
use serde_json::{Map, Value};

use super::JournalError;

pub struct Sealer {
    cipher: Aes256Gcm,
    /// Keys request fingerprints, derived from the data key: a plain hash of a body holding a card
    /// number could be brute-forced from the masked card and the journaled public fields.
    fingerprint_key: ring::hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

impl Sealer {
    /// Load the data key from `path`. A missing key is made (0600) only when `may_create` says the
    /// journal has nothing sealed under an earlier key (a new data directory): a new key never opens
    /// the old sealed fields, so making one silently would only hide that recovery cannot replay them.
    pub fn open(path: &Path, may_create: bool) -> Result<Sealer, JournalError> {
        let err = |e: std::io::Error| JournalError::Seal(format!("{}: {e}", path.display()));
        let key = match std::fs::read(path) {
            Ok(k) if k.len() == 32 => k,
            Ok(k) => return Err(JournalError::Seal(format!("{}: data key is {} bytes, want 32", path.display(), k.len()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !may_create => {
                return Err(JournalError::Seal(format!(
                    "the journal data key {} is missing, but the journal holds fields sealed with it (card numbers recovery must replay). posgate does not make a new key for a used journal: it would never open them. Restore journal.key from the backup made with this journal (same data directory), then start again",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut k);
                use std::io::Write;
                let mut f = crate::platform::private(std::fs::OpenOptions::new().write(true).create_new(true)).open(path).map_err(err)?;
                f.write_all(&k).map_err(err)?;
                f.sync_all().map_err(err)?;
                // The folder too, so the key's name survives a power cut along with the records it seals.
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::platform::sync_dir(dir).map_err(err)?;
                }
                k
            }
            Err(e) => return Err(err(e)),
        };
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|e| JournalError::Seal(format!("data key: {e}")))?;
        let derived = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), b"posgate/request-fingerprint/v1");
        Ok(Sealer { cipher, fingerprint_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()) })
    }

    /// What an idempotent request asked for, as HMAC-SHA-256 (hex) of its operation and its body in
    /// canonical form (object keys sorted at every depth, no spaces): equal exactly when the
    /// operation and the body's JSON value are equal, whatever the key order or whitespace sent.
    pub fn fingerprint(&self, operation: &str, body: &Map<String, Value>) -> String {
        let mut text = String::with_capacity(256);
        text.push_str(operation);
        text.push('\n');
        canonical(&mut text, &Value::Object(body.clone()));
        hex::encode(ring::hmac::sign(&self.fingerprint_key, text.as_bytes()).as_ref())
    }

    pub fn seal(&self, fields: &Map<String, Value>) -> Result<Option<String>, JournalError> {
        if fields.is_empty() {
            return Ok(None);
        }
        let plain = serde_json::to_vec(fields).map_err(|e| JournalError::Seal(e.to_string()))?;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self.cipher.encrypt(Nonce::from_slice(&nonce), plain.as_slice()).map_err(|_| JournalError::Seal("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(Some(base64::engine::general_purpose::STANDARD.encode(out)))
    }

    pub fn unseal(&self, sealed: Option<&str>) -> Result<Map<String, Value>, JournalError> {
        let Some(s) = sealed else { return Ok(Map::new()) };
        let bad = || JournalError::Seal("a sealed journal field does not open with this data key".into());
        let raw = base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad())?;
        if raw.len() < 12 {
            return Err(bad());
        }
        let plain = self.cipher.decrypt(Nonce::from_slice(&raw[..12]), &raw[12..]).map_err(|_| bad())?;
        serde_json::from_slice(&plain).map_err(|_| bad())
    }
}

/// JSON text with object keys sorted at every depth (strings and numbers as serde_json writes them).
fn canonical(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    canonical(out, x);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(out, x);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn fingerprints_tell_bodies_apart_not_key_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Sealer::open(&dir.path().join("k"), true).expect("sealer");
        let a = s.fingerprint("consume", &obj(json!({"pointAmount": 11, "cardNo": "6222021234567890123", "x": {"b": 1, "a": [2, {"d": 1, "c": 2}]}})));
        let b = s.fingerprint("consume", &obj(json!({"x": {"a": [2, {"c": 2, "d": 1}], "b": 1}, "cardNo": "6222021234567890123", "pointAmount": 11})));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(a, s.fingerprint("consume", &obj(json!({"pointAmount": 15, "cardNo": "6222021234567890123", "x": {"b": 1, "a": [2, {"d": 1, "c": 2}]}}))));
        assert_ne!(a, s.fingerprint("refund", &obj(json!({"pointAmount": 11, "cardNo": "6222021234567890123", "x": {"b": 1, "a": [2, {"d": 1, "c": 2}]}}))));
        // Keyed: another journal's data key gives another fingerprint for the same request.
        let other = Sealer::open(&dir.path().join("k2"), true).expect("sealer");
        assert_ne!(
            a,
            other.fingerprint("consume", &obj(json!({"pointAmount": 11, "cardNo": "6222021234567890123", "x": {"b": 1, "a": [2, {"d": 1, "c": 2}]}})))
        );
        // The same key after a restart gives the same fingerprint.
        let again = Sealer::open(&dir.path().join("k"), true).expect("sealer");
        assert_eq!(
            a,
            again.fingerprint("consume", &obj(json!({"pointAmount": 11, "cardNo": "6222021234567890123", "x": {"b": 1, "a": [2, {"d": 1, "c": 2}]}})))
        );
    }

    /// `Sealer::open` used to make a new key whenever the file was missing, so a deleted key went
    /// unnoticed until recovery failed to open a sealed card number.
    #[test]
    fn a_missing_key_is_made_only_when_allowed() {
        let d = std::env::temp_dir().join(format!("posgate-seal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("journal.key");
        let e = Sealer::open(&path, false).unwrap_err().to_string();
        assert!(e.contains("journal.key is missing") && e.contains("Restore"), "{e}");
        assert!(!path.exists());
        let s = Sealer::open(&path, true).unwrap();
        let mut m = Map::new();
        m.insert("cardNo".into(), Value::String("6222020000000000008".into()));
        let sealed = s.seal(&m).unwrap();
        // An existing key is loaded whatever `may_create` says, and opens what it sealed.
        assert_eq!(Sealer::open(&path, false).unwrap().unseal(sealed.as_deref()).unwrap(), m);
        let _ = std::fs::remove_dir_all(&d);
    }
}
