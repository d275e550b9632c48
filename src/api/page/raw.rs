//! Raw device bytes for the technician page's live view: a tap the device decoder feeds, masked before it is kept.
//!
//! Only the page subscribes; POS apps never see these frames. Every frame is masked here, before it
//! goes anywhere: a run of 13 or more digits (a card number) keeps its first 6 and last 4 digits, and in a
//! frame holding track data everything after the first field separator (`=` or `^`: expiry, service
//! code, discretionary data, name) is starred out, so no secret reaches the browser.
use std::sync::LazyLock;

use serde_json::{json, Value};
use tokio::sync::broadcast;

/// A frame is cut at this many bytes in the view.
pub const FRAME_MAX: usize = 256;

static TAP: LazyLock<broadcast::Sender<Value>> = LazyLock::new(|| broadcast::channel(256).0);

/// One frame read from `device`; `decoded`: the scan kind it gave, or why it gave none.
pub fn frame(device: &str, bytes: &[u8], decoded: &str) {
    if TAP.receiver_count() == 0 {
        return;
    }
    let masked = mask(&bytes[..bytes.len().min(FRAME_MAX)]);
    let hex: Vec<String> = masked.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = masked.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
    let _ = TAP.send(json!({ "device": device, "len": bytes.len(), "hex": hex.join(" "), "text": text, "decoded": decoded }));
}

pub fn subscribe() -> broadcast::Receiver<Value> {
    TAP.subscribe()
}

/// The frame with card numbers cut to 6+4 and track fields after the first separator starred.
pub fn mask(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    if let Some(sep) = out.iter().position(|b| *b == b'=' || *b == b'^') {
        for b in out.iter_mut().skip(sep + 1) {
            if *b != b'?' && *b != b'\r' && *b != b'\n' {
                *b = b'*';
            }
        }
    }
    let mut i = 0;
    while i < out.len() {
        if out[i].is_ascii_digit() {
            let start = i;
            while i < out.len() && out[i].is_ascii_digit() {
                i += 1;
            }
            let len = i - start;
            if len >= 13 {
                for b in &mut out[start + 6..i - 4] {
                    *b = b'*';
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_and_track_data_are_masked_barcodes_kept() {
        let t2 = b";6222020000000000008=25121011234567890?\r";
        assert_eq!(String::from_utf8(mask(t2)).unwrap_or_default(), ";622202*********0008=*****************?\r");
        let t1 = b"%B6222020000000000008^ZHANG/SAN^2512101123?";
        let m = String::from_utf8(mask(t1)).unwrap_or_default();
        assert!(m.starts_with("%B622202*********0008^") && !m.contains("ZHANG") && !m.contains("2512"), "{m}");
        // Shorter codes are kept; a 13-digit EAN looks like a card number and is masked too (safe side).
        assert_eq!(mask(b"]E012345670\r"), b"]E012345670\r".to_vec());
        assert_eq!(mask(b"4006381333931"), b"400638***3931".to_vec());
    }
}
