//! Fuzz targets: every parser of bytes from outside the process, each a pure call with its invariant.
//!
//! [`targets`] is the one list the stable runner (`examples/posgate-fuzz.rs`), the CI short run
//! (`tests/it/fuzz.rs`) and the cargo-fuzz crate (`fuzz/`) all use. A target must not panic on any
//! input; where it is cheap it also checks what the parser promises (the framer gives the same frames
//! however the reads split; strict JSON reads as serde_json does; a log entry re-encodes to its
//! bytes; an answer naming another request is never booked). A broken invariant panics, so the
//! runner reports it like a crash. Seeds are in `fuzz/corpus/<target>/`.
pub mod runner;
mod vendors;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::Method;
use serde_json::Value;

use crate::devices::keyboard::{KeyboardSession, Layout};
use crate::devices::{aim, track, Classifier, FrameEvent, Framer, FramingConfig, ReaderKind, ScanKind, Terminator};

/// A fuzz target: a name (its corpus folder) and the function the runner feeds.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order the runner goes through them.
pub fn targets() -> &'static [Target] {
    &[
        ("serial_framer", serial_framer),
        ("symbology", symbology),
        ("track", track_decoder),
        ("keyboard_wedge", keyboard_wedge),
        ("api_headers", api_headers),
        ("api_body", api_body),
        ("callback_scenic", vendors::callback_scenic),
        ("callback_consign", vendors::callback_consign),
        ("answer_loyalty", vendors::answer_loyalty),
        ("answer_lottery", vendors::answer_lottery),
        ("answer_wallet", vendors::answer_wallet),
        ("answer_scenic", vendors::answer_scenic),
        ("answer_consign", vendors::answer_consign),
        ("profile", profile),
        ("daemon_config", daemon_config),
        ("journal_record", journal_record),
        ("journal_log_entry", journal_log_entry),
    ]
}

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    targets().iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A framer config chosen by one byte: the terminator set, STX framing and a small or the default `max_len`.
fn framing_of(b: u8) -> FramingConfig {
    let all = [Terminator::Cr, Terminator::Lf, Terminator::Crlf, Terminator::Tab, Terminator::Etx];
    let terminators = all.iter().enumerate().filter(|(i, _)| b & (1 << i) != 0).map(|(_, t)| *t).collect();
    FramingConfig { terminators, stx: b & 0x20 != 0, max_len: if b & 0x40 != 0 { 8 } else { 4096 }, idle_gap: None }
}

/// Serial framer: byte 0 picks the config, byte 1 the read size; the frames must not depend on how
/// the reads split the stream, and no frame is empty or longer than `max_len`.
fn serial_framer(data: &[u8]) {
    let [cfg, split, rest @ ..] = data else { return };
    let cfg = framing_of(*cfg);
    let max_len = cfg.max_len;
    let mut whole = Framer::new(cfg.clone());
    let mut a = whole.push(rest);
    a.extend(whole.flush_idle());
    let mut pieces = Framer::new(cfg);
    let mut b = Vec::new();
    for chunk in rest.chunks(usize::from(*split % 7) + 1) {
        b.extend(pieces.push(chunk));
    }
    b.extend(pieces.flush_idle());
    assert_eq!(a, b, "frames depend on how the reads split");
    for ev in &a {
        if let FrameEvent::Frame(f) = ev {
            assert!(!f.is_empty() && f.len() <= max_len, "a frame of {} bytes (max {max_len})", f.len());
        }
    }
    assert!(!whole.is_pending() || whole.reset().is_some());
}

/// Symbology identifiers and the frame decoder (serial and injected scans), and the technician page's mask.
/// A frame decoded as a card never shows a full card number.
fn symbology(data: &[u8]) {
    let (sym, rest) = aim::strip(data);
    assert!(sym.is_none() || rest.len() + 3 == data.len());
    let classifier = Classifier::default();
    for reader in [ReaderKind::Auto, ReaderKind::Card] {
        if let Ok(d) = crate::devices::decode("fuzz", data, reader, &classifier, chrono::DateTime::UNIX_EPOCH) {
            if d.event.kind == ScanKind::Card {
                assert!(!has_digit_run(d.event.text.as_bytes(), 13), "a card scan's text shows a card number");
            }
        }
    }
    let masked = crate::api::page::raw::mask(data);
    assert_eq!(masked.len(), data.len());
}

fn has_digit_run(b: &[u8], n: usize) -> bool {
    let mut run = 0;
    for &c in b {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= n {
            return true;
        }
    }
    false
}

/// Track decoders: the whole swipe and each track alone; nothing they print shows the card number.
fn track_decoder(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = track::looks_like_swipe(&text);
    let _ = track::has_track_data(&text);
    let swipe = track::parse_swipe(&text);
    let _ = (swipe.expiry(), swipe.service_code(), swipe.tracks_ok(), swipe.errors());
    if let Some(pan) = swipe.pan() {
        let shown = format!("{swipe:?} {pan} {}", pan.masked());
        if pan.expose().len() >= 13 {
            assert!(!shown.contains(pan.expose()), "the swipe's Debug or the masked PAN shows the card number");
        }
    }
    for t in text.split(['?', '\n']) {
        let _ = track::parse_track1(t);
        let _ = track::parse_track2(t);
        let _ = track::parse_track3(t);
    }
}

/// Keyboard wedge: byte 0 the layout and framing, then 3 bytes per key event (code, code, value).
fn keyboard_wedge(data: &[u8]) {
    let [cfg, events @ ..] = data else { return };
    let layout = [Layout::Us, Layout::De, Layout::Fr][usize::from(cfg % 3)];
    let mut s = KeyboardSession::new(layout, framing_of(cfg >> 2));
    let held: Vec<u16> = events.iter().take(2).map(|&b| u16::from(b)).collect();
    if s.opened(held) {
        s.grabbed();
    }
    for e in events.chunks(3) {
        let code = u16::from_le_bytes([e[0], e.get(1).copied().unwrap_or(0) & 0x01]);
        let value = i32::from(e.get(2).copied().unwrap_or(1) % 3);
        if s.key(code, value).grab {
            s.grabbed();
        }
    }
    let _ = s.flush_idle();
    let _ = s.release();
    let _ = s.lost();
}

/// The local API's request line and headers: line 1 the path and query, then `Name: value` lines.
fn api_headers(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let target = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut headers = HeaderMap::new();
    for l in lines {
        let Some(colon) = l.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&l[..colon]), HeaderValue::from_bytes(l[colon + 1..].trim_ascii())) else { continue };
        headers.append(name, value);
    }
    let (path, query) = target.split_once('?').map_or((target.as_str(), None), |(p, q)| (p, Some(q)));
    for r in crate::api::ROUTES {
        let _ = crate::api::server::match_pattern(r.pattern, path);
    }
    let _ = crate::api::parse::parse_journal_query(query);
    let _ = crate::api::parse::journal_id(path.trim_start_matches('/'));
    if let Ok(Some(key)) = crate::api::parse::idempotency_key(&headers) {
        assert!(crate::api::valid_idempotency_key(&key));
    }
    if let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let _ = crate::api::parse::is_json(ct);
    }
    let expected = crate::api::server::digest(b"fuzz-token");
    if crate::api::server::check_bearer(Some(&expected), &headers).is_ok() {
        let auth = headers.get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        assert!(auth.windows(10).any(|w| w == b"fuzz-token"), "a bearer check passed without the token");
    }
    let id = crate::api::server::request_id(&headers);
    assert!(!id.is_empty() && id.len() <= 64);
    let cors = crate::api::cors::Policy::new(vec!["http://localhost:3000".into()]);
    for m in [Method::POST, Method::OPTIONS, Method::GET] {
        let _ = cors.check(&m, &headers);
    }
    let _ = crate::api::server::log_value(&target);
}

/// The local API's request bodies: strict JSON (duplicate keys refused, otherwise as serde_json reads),
/// then the checks a body meets before an operation is prepared: its keys against every operation's
/// table, and money fields in yuan.
fn api_body(data: &[u8]) {
    let strict = crate::api::strict_json::from_slice(data);
    if let Ok(v) = &strict {
        let plain: Value = serde_json::from_slice(data).unwrap_or_else(|e| panic!("strict JSON took a body serde_json refuses: {e}"));
        assert_eq!(*v, plain, "strict JSON reads a body differently from serde_json");
    }
    let Ok(Value::Object(body)) = strict else { return };
    vendors::body_checks(&body);
    for v in body.values() {
        let _ = crate::money::json_yuan_to_fen(v);
    }
}

/// A folder with what the example profiles name (CA file, secrets, token): profiles and the daemon
/// config are parsed as if they were in it, so the parser gets past the file checks to the rest.
fn fixture_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("posgate-fuzz-fixture-{}", std::process::id()));
        let secret = |name: &str, body: &str| -> std::io::Result<()> {
            use std::io::Write;
            let p = dir.join(name);
            let mut o = std::fs::OpenOptions::new();
            crate::platform::private(o.write(true).create(true).truncate(true)).open(&p)?.write_all(body.as_bytes())
        };
        let make = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir.join("terminal-profiles"))?;
            std::fs::create_dir_all(dir.join("pki"))?;
            std::fs::create_dir_all(dir.join("secrets"))?;
            std::fs::write(dir.join("pki/test-ca.pem"), "not a certificate\n")?;
            for name in [
                "consign-sign-key.txt",
                "consign-aes-key.txt",
                "lottery-app-secret.txt",
                "lottery-station-password.txt",
                "scenic-app-secret.txt",
                "wallet-app-key.txt",
                "wallet-tsig-key.pem",
            ] {
                secret(&format!("secrets/{name}"), "fuzz-secret")?;
            }
            secret("secrets/loyalty-tmk.hex", "0123456789abcdeffedcba9876543210")?;
            secret("api-token", "fuzz-token")
        };
        make().ok().map(|()| dir)
    })
    .as_deref()
}

/// Remove the fixture folder of [`fixture_dir`] (call once the targets have run).
pub fn remove_fixture() {
    if let Some(dir) = fixture_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Paths a fuzzed file must not name: reading a device or a pipe is no parser's bug.
fn names_special_files(text: &str) -> bool {
    ["/dev", "/proc", "/sys", "\\\\.\\"].iter().any(|p| text.contains(p))
}

/// A terminal profile file, as loaded at start (`registry::load_profile`: parse, then the kind check).
fn profile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(dir) = fixture_dir() else { return };
    if names_special_files(text) {
        return;
    }
    if let Ok(p) = crate::config::Profile::parse(&dir.join("terminal-profiles/fuzz.toml"), text) {
        let _ = crate::backend::registry::check(&p);
        let _ = crate::backend::registry::warnings(&p);
        let _ = Classifier::new(p.scan_rules.clone());
    }
}

/// The daemon config (`posgate.toml`). Inputs that move the profiles folder or the token file
/// elsewhere are skipped: the target parses, it does not walk the disk.
fn daemon_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(dir) = fixture_dir() else { return };
    if names_special_files(text) {
        return;
    }
    if let Ok(t) = toml::from_str::<toml::Table>(text) {
        let at = |k: &str, ok: &str| t.get(k).is_some_and(|v| v.as_str() != Some(ok));
        if at("profiles_dir", "terminal-profiles") || at("token_file", "api-token") {
            return;
        }
    }
    let _ = crate::config::DaemonConfig::parse(&dir.join("posgate.toml"), text);
}

/// The journal's record decoder (sled `records` values). Kept to one call: the binary record encoding
/// replaces it with `decode_record(&[u8])`.
fn journal_record(data: &[u8]) {
    let _ = crate::journal::sled_store::decode(b"fuzz", data);
}

/// The redo log's entry decoder: what decodes re-encodes to the same bytes.
fn journal_log_entry(data: &[u8]) {
    use crate::journal::log::entry::Entry;
    if let Ok(e) = Entry::decode(data) {
        let again = e.encode().unwrap_or_else(|err| panic!("a decoded entry does not encode: {err}"));
        assert_eq!(again, data, "a decoded entry re-encodes to other bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_empty_and_junk_input() {
        for (name, f) in targets() {
            for input in [&b""[..], b"\x00", b"{}", b"\xff\xfe\xfd", &[b'['; 4096]] {
                let r = std::panic::catch_unwind(|| f(input));
                assert!(r.is_ok(), "{name} panicked on {input:?}");
            }
        }
    }

    #[test]
    fn target_names_are_unique_folder_names() {
        let mut names: Vec<_> = targets().iter().map(|(n, _)| *n).collect();
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), targets().len());
    }
}
