//! Counter devices: from bytes on a serial line (or an injected scan) to `scan` and `device` events.
//!
//! `framer` cuts the byte stream, `aim` and `track` decode a frame, `classify` suggests what to do
//! with it, `scans` holds swiped cards for operations, and `serial` runs one port with hot-plug.
//! `keyboard` (pure) and `evdev` (Linux) do the same for scanners that type as a USB keyboard.
//! `decode` is shared by the serial path and by scans injected through the local API, so both give
//! the same events.
pub mod aim;
pub mod classify;
#[cfg(all(target_os = "linux", feature = "evdev"))]
pub mod evdev;
pub mod framer;
pub mod hub;
pub mod keyboard;
pub mod scans;
pub mod serial;
pub mod track;

#[cfg(all(test, unix))]
mod tests_pty;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::clock::Clock;

pub use classify::{Classifier, ScanRule, Suggestion};
pub use framer::{FrameEvent, Framer, FramingConfig, Terminator};
pub use scans::{CardSummary, HeldCard, ScanError, ScanEvent, ScanKind, ScanStore};
pub use serial::{discover, run_port, DeviceConfig, DeviceKind, Discovered, UsbMatch};

/// What a device sends: `auto` tells swipes from barcodes by their sentinels; `card` treats every
/// frame as a swipe (so a swipe with a lost sentinel is still masked, never shown as a barcode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReaderKind {
    #[default]
    Auto,
    Card,
}

/// Symbology name reported for magnetic stripe swipes.
pub const MAGSTRIPE: &str = "Magnetic stripe";

/// A decoded frame: the event for subscribers and, for a swipe with a PAN, the card to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub event: ScanEvent,
    pub card: Option<HeldCard>,
}

/// Why a frame gave no scan. Carries sizes and positions only, never the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes is not UTF-8 (invalid byte at offset {offset}); dropped")]
    NotUtf8 { len: usize, offset: usize },
    #[error("frame holds only a symbology identifier; dropped")]
    Empty,
}

/// What a device task needs besides its config: the rules to classify with and the clock to stamp
/// events with (the team's injected clock, so tests control time).
#[derive(Clone)]
pub struct DeviceContext {
    pub classifier: Arc<Classifier>,
    pub clock: Arc<dyn Clock>,
}

impl DeviceContext {
    pub fn new(classifier: Classifier, clock: Arc<dyn Clock>) -> Self {
        DeviceContext { classifier: Arc::new(classifier), clock }
    }
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.clock.now_ms()).unwrap_or_default()
    }
}

impl std::fmt::Debug for DeviceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceContext").field("classifier", &self.classifier).finish_non_exhaustive()
    }
}

/// Decode one frame from `device`, seen at `at`, into a scan event (and held card).
pub fn decode(device: &str, frame: &[u8], reader: ReaderKind, classifier: &Classifier, at: DateTime<Utc>) -> Result<Decoded, DecodeError> {
    let r = decode_frame(device, frame, reader, classifier, at);
    // The technician page's live raw view (masked there; nothing is kept when no page is watching).
    crate::api::page::raw::frame(device, frame, &r.as_ref().map_or_else(|e| e.to_string(), |d| format!("{:?}", d.event.kind)));
    r
}

fn decode_frame(device: &str, frame: &[u8], reader: ReaderKind, classifier: &Classifier, at: DateTime<Utc>) -> Result<Decoded, DecodeError> {
    let (symbology, body) = aim::strip(frame);
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::NotUtf8 { len: frame.len(), offset: e.valid_up_to() + (frame.len() - body.len()) })?;
    if text.is_empty() {
        return Err(DecodeError::Empty);
    }
    let id = scans::new_scan_id();
    // Track data is a card whatever the reader or symbology says: it must never go out as a barcode.
    if reader == ReaderKind::Card || (symbology.is_none() && track::looks_like_swipe(text)) || track::has_track_data(text) {
        let swipe = track::parse_swipe(text);
        let summary = CardSummary::of(&swipe);
        let suggested = swipe.pan().and_then(|pan| classifier.classify(classify::ScanInput { kind: ScanKind::Card, symbology: None, text: pan.expose() }));
        let event = ScanEvent {
            id,
            device: device.to_string(),
            kind: ScanKind::Card,
            symbology: Some(MAGSTRIPE.to_string()),
            aim: None,
            text: summary.masked_pan.clone().unwrap_or_default(),
            suggested,
            at,
            card: Some(summary),
        };
        let card = swipe.pan().is_some().then(|| HeldCard { device: device.to_string(), swipe });
        return Ok(Decoded { event, card });
    }
    let suggested = classifier.classify(classify::ScanInput { kind: ScanKind::Barcode, symbology: symbology.as_ref(), text });
    let event = ScanEvent {
        id,
        device: device.to_string(),
        kind: ScanKind::Barcode,
        symbology: symbology.as_ref().map(|s| s.name.to_string()),
        aim: symbology.map(|s| s.aim),
        text: text.to_string(),
        suggested,
        at,
        card: None,
    };
    Ok(Decoded { event, card: None })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// The port is open and being read.
    Attached,
    /// The port went away (unplugged, EOF, read error); it is being reopened with backoff.
    Detached,
    /// Something went wrong that did not close the port (a bad frame), or the port cannot be opened.
    Error,
}

/// The `device` event sent to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceEvent {
    pub device: String,
    pub path: String,
    pub state: DeviceState,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a device task sends to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMsg {
    /// A scan; its `card` is to be put in the `ScanStore` under `event.id` before the event is published.
    Scan(Box<Decoded>),
    Device(DeviceEvent),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barcode_with_aim() {
        let d = decode("dev", b"]E04006381333931", ReaderKind::Auto, &Classifier::default(), DateTime::default()).expect("decodes");
        assert_eq!(d.event.kind, ScanKind::Barcode);
        assert_eq!(d.event.symbology.as_deref(), Some("EAN-13"));
        assert_eq!(d.event.aim.as_deref(), Some("]E0"));
        assert_eq!(d.event.text, "4006381333931");
        assert!(d.card.is_none());
    }

    #[test]
    fn not_utf8_is_an_error() {
        assert_eq!(decode("dev", b"]C1ab\xff", ReaderKind::Auto, &Classifier::default(), DateTime::default()), Err(DecodeError::NotUtf8 { len: 6, offset: 5 }));
        assert_eq!(decode("dev", b"]C1", ReaderKind::Auto, &Classifier::default(), DateTime::default()), Err(DecodeError::Empty));
    }

    #[test]
    fn card_reader_masks_even_without_sentinel() {
        let d = decode("msr", b"6222021234567890123=2512101?", ReaderKind::Card, &Classifier::default(), DateTime::default()).expect("decodes");
        assert_eq!(d.event.kind, ScanKind::Card);
        assert_eq!(d.event.text, "622202*********0123");
        let json = serde_json::to_string(&d.event).expect("json");
        assert!(!json.contains("6222021234567890123"), "{json}");
        assert!(d.card.is_some());
        // A reader's garbage that is no track at all is still masked, with its track error.
        let d = decode("msr", b"62220212=25?", ReaderKind::Card, &Classifier::default(), DateTime::default()).expect("decodes");
        let json = serde_json::to_string(&d.event).expect("json");
        assert!(json.contains("bad_start_sentinel") && d.card.is_none() && d.event.text.is_empty(), "{json}");
    }

    /// Regression: a track 2 without sentinels (readers set to "data only") was classed as a barcode and
    /// its full text, PAN and discretionary data, went to every event subscriber.
    #[test]
    fn track_data_without_sentinels_is_a_held_card_never_a_barcode() {
        let frames: &[(&[u8], &str)] = &[
            (b"6222021234567890123=29121010000000000", "6222021234567890123"),
            (b"6222021234567890123D29121010000000000F", "6222021234567890123"),
            (b";6222021234567890123=29121010000000000", "6222021234567890123"),
            (b"6222021234567890123=29121010000000000?", "6222021234567890123"),
            (b"B6222021234567890123^ZHANG/SAN^2912101000000000", "6222021234567890123"),
            (b"%B6222021234567890123^ZHANG/SAN^2912101000000000", "6222021234567890123"),
            (b"]C06222021234567890123=29121010000000000", "6222021234567890123"),
            (b"]Q1;4111111111111111=2912101000?", "4111111111111111"),
            (b"411111111111=2912", "411111111111"),
        ];
        for (frame, pan) in frames {
            let shown = String::from_utf8_lossy(frame);
            let d = decode("dev", frame, ReaderKind::Auto, &Classifier::default(), DateTime::default()).expect("decodes");
            assert_eq!(d.event.kind, ScanKind::Card, "{shown}");
            let json = serde_json::to_string(&d.event).expect("json");
            assert!(!json.contains(pan) && !json.contains("2912"), "{shown}: {json}");
            let held = d.card.unwrap_or_else(|| panic!("{shown}: not held"));
            assert_eq!(held.swipe.pan().map(|p| p.expose()), Some(*pan), "{shown}");
            assert_eq!(d.event.text, held.swipe.pan().map(|p| p.masked()).unwrap_or_default(), "{shown}");
        }
        // Track-shaped text inside something else is still not shown, even if no PAN can be held.
        let d = decode("dev", b"]Q1https://x.invalid/p?c=6222021234567890123=2912101", ReaderKind::Auto, &Classifier::default(), DateTime::default())
            .expect("decodes");
        assert_eq!(d.event.kind, ScanKind::Card);
        assert!(!serde_json::to_string(&d.event).expect("json").contains("6222021234567890123"));
        // Ordinary barcodes stay barcodes.
        for code in [&b"4006381333931"[..], b"]C1012345678901234567", b"TK-123456", b"9123456789012345678"] {
            let d = decode("dev", code, ReaderKind::Auto, &Classifier::default(), DateTime::default()).expect("decodes");
            assert_eq!(d.event.kind, ScanKind::Barcode, "{}", String::from_utf8_lossy(code));
        }
    }
}
