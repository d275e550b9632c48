//! Parses ISO 7813 magnetic stripe tracks 1, 2 and 3 from a card reader's frame, with per-track errors.
//!
//! A swipe carries up to three tracks in one frame. Each is checked on its own (sentinels, length,
//! character set, PAN, separators) so that a smudged track 1 does not lose a good track 2. Card
//! numbers and track data live in types whose `Debug` masks or redacts them, so a stray `{:?}` in a
//! log line cannot leak a card.
use std::fmt;

use serde::Serialize;
use thiserror::Error;

use crate::backend::mask_card;

/// Longest track 1 in characters, sentinels included (ISO 7813).
pub const TRACK1_MAX: usize = 79;
/// Longest track 2 in characters, sentinels included.
pub const TRACK2_MAX: usize = 40;
/// Longest track 3 in characters, sentinels included (ISO 4909).
pub const TRACK3_MAX: usize = 107;
const PAN_MAX: usize = 19;
const NAME_MAX: usize = 26;

/// Text that must never be printed: track data, discretionary data, cardholder name.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TrackData(String);

impl TrackData {
    pub fn new(s: impl Into<String>) -> Self {
        TrackData(s.into())
    }
    /// The clear value, for the one place that sends it to a backend.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TrackData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} chars>", self.0.len())
    }
}

impl Drop for TrackData {
    /// Overwrite the bytes before the allocation is freed, so they do not linger in the heap.
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// A primary account number. `Debug` and `Display` show it masked (first 6, last 4).
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(TrackData);

impl Pan {
    pub fn new(digits: impl Into<String>) -> Self {
        Pan(TrackData::new(digits))
    }
    /// The clear number, for the one place that sends it to a backend or matches a BIN rule.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
    pub fn masked(&self) -> String {
        mask_card(self.expose())
    }
    /// The Luhn check digit is right. Informational: some store and gift cards do not use Luhn.
    pub fn luhn_ok(&self) -> bool {
        luhn(self.expose())
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Expiry date as carried on the stripe (YYMM). Redacted in `Debug`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub yy: u8,
    pub mm: u8,
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Expiry(<redacted>)")
    }
}

/// Why one track was rejected. Carries positions and lengths only, never the data.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum TrackError {
    #[error("bad start sentinel")]
    BadStartSentinel,
    #[error("bad end sentinel (no `?`)")]
    BadEndSentinel,
    #[error("bad length: {len} characters, at most {max}")]
    BadLength { len: usize, max: usize },
    #[error("character not allowed on this track at position {pos}")]
    BadCharacter { pos: usize },
    #[error("bad format code (track 1 must be format B)")]
    BadFormatCode,
    #[error("bad PAN: {why}")]
    BadPan { why: &'static str },
    #[error("bad or missing field separator")]
    BadSeparator,
    #[error("bad cardholder name: {why}")]
    BadName { why: &'static str },
    #[error("the reader could not read this track")]
    ReadError,
}

/// Track 1 (IATA, alphanumeric): `%B<PAN>^<NAME>^<YYMM><SSS><discretionary>?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track1 {
    pub pan: Pan,
    pub name: TrackData,
    pub expiry: Option<Expiry>,
    pub service_code: Option<String>,
    pub discretionary: TrackData,
    /// The whole track, sentinels included.
    pub raw: TrackData,
}

/// Track 2 (ABA, numeric): `;<PAN>=<YYMM><SSS><discretionary>?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track2 {
    pub pan: Pan,
    pub expiry: Option<Expiry>,
    pub service_code: Option<String>,
    pub discretionary: TrackData,
    pub raw: TrackData,
}

/// Track 3 (THRIFT, numeric, ISO 4909): `;<FC 2 digits><PAN>=...?`; the PAN is extracted when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track3 {
    pub pan: Option<Pan>,
    pub raw: TrackData,
}

/// Everything one swipe carried: each track present in the frame, parsed or with its error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Swipe {
    pub track1: Option<Result<Track1, TrackError>>,
    pub track2: Option<Result<Track2, TrackError>>,
    pub track3: Option<Result<Track3, TrackError>>,
    /// Track-like segments beyond the three (a second `%` track, a fourth segment): ignored.
    pub extra_segments: usize,
}

impl Swipe {
    /// The card number, from track 2 first (the one backends use), then track 1, then track 3.
    pub fn pan(&self) -> Option<&Pan> {
        ok(&self.track2).map(|t| &t.pan).or_else(|| ok(&self.track1).map(|t| &t.pan)).or_else(|| ok(&self.track3).and_then(|t| t.pan.as_ref()))
    }
    pub fn expiry(&self) -> Option<Expiry> {
        ok(&self.track2).and_then(|t| t.expiry).or_else(|| ok(&self.track1).and_then(|t| t.expiry))
    }
    pub fn service_code(&self) -> Option<&str> {
        ok(&self.track2).and_then(|t| t.service_code.as_deref()).or_else(|| ok(&self.track1).and_then(|t| t.service_code.as_deref()))
    }
    pub fn name(&self) -> Option<&TrackData> {
        ok(&self.track1).map(|t| &t.name)
    }
    /// Track numbers that parsed.
    pub fn tracks_ok(&self) -> Vec<u8> {
        let mut v = Vec::new();
        if ok(&self.track1).is_some() {
            v.push(1);
        }
        if ok(&self.track2).is_some() {
            v.push(2);
        }
        if ok(&self.track3).is_some() {
            v.push(3);
        }
        v
    }
    /// Each failed track with its error.
    pub fn errors(&self) -> Vec<(u8, TrackError)> {
        let mut v = Vec::new();
        if let Some(Err(e)) = &self.track1 {
            v.push((1, e.clone()));
        }
        if let Some(Err(e)) = &self.track2 {
            v.push((2, e.clone()));
        }
        if let Some(Err(e)) = &self.track3 {
            v.push((3, e.clone()));
        }
        v
    }
}

fn ok<T>(t: &Option<Result<T, TrackError>>) -> Option<&T> {
    t.as_ref().and_then(|r| r.as_ref().ok())
}

/// Luhn (mod 10) check over a digit string; false for empty or non-digit input.
pub fn luhn(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Whether a frame is a magnetic swipe rather than a barcode: it opens with a track start
/// sentinel, or ends with `?` and has a track separator (a swipe whose start sentinel was lost),
/// or carries anything shaped like track data ([`has_track_data`]).
pub fn looks_like_swipe(text: &str) -> bool {
    let t = text.trim_end_matches(['\r', '\n']);
    t.starts_with(['%', ';', '+']) && t.contains('?') || t.ends_with('?') && (t.contains('^') || t.contains('=')) || has_track_data(t)
}

/// A PAN (12 to 19 digits), then a track 2 separator (`=`, or `D` as in EMV track 2 equivalent data)
/// or a track 1 name field (`^NAME^`), then four digits (the expiry). Anywhere in the text: with or
/// without sentinels, after an AIM identifier, inside a URL. Such text is card data whatever else it
/// looks like, so it is never published as a barcode. The shape is the regular expression
/// `[0-9]{12,19}(?:[=D]|\^[^^]{0,26}\^)[0-9]{4}` (the test `track_shape_matches_its_regular_expression`
/// holds the two equal), scanned by hand: it runs on every frame from every reader, and regex-lite's
/// PikeVM took 1.5 µs per byte on it (68 ms for a 44 KB fuzz input); this is one pass.
pub fn has_track_data(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |from: usize, n: usize| b.get(from..from + n).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A maximal run of digits: the PAN is its last 12 to 19, so only its length ≥ 12 matters, and
        // what follows it (a digit cannot, so the run's end is the PAN's end).
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i - start < 12 {
            continue;
        }
        match b.get(i) {
            Some(b'=' | b'D') if digits(i + 1, 4) => return true,
            Some(b'^') => {
                // The name: up to 26 characters (not bytes) other than `^`, then `^` and the expiry.
                let rest = &text[i + 1..];
                if let Some(close) = rest.char_indices().take(NAME_MAX + 1).find(|(_, c)| *c == '^').map(|(at, _)| at) {
                    if digits(i + 1 + close + 1, 4) {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// A whole segment that is one track with its sentinels lost (readers set to send "data only"):
/// track 2 `PAN=YYMM...` / `PAN D YYMM...F` (EMV), or track 1 `BPAN^NAME^YYMM...`, each perhaps with
/// one of its sentinels. Returns the track rebuilt with both sentinels (`D` as `=`, padding `F`
/// dropped), or `None` when the segment is not shaped like that.
fn repair_bare_track(seg: &str) -> Option<String> {
    static T2: std::sync::LazyLock<regex_lite::Regex> =
        std::sync::LazyLock::new(|| regex_lite::Regex::new(r"^;?([0-9]{12,19})[=D]([0-9]{4}[0-9=]*)F?\??$").unwrap_or_else(|e| panic!("T2: {e}")));
    static T1: std::sync::LazyLock<regex_lite::Regex> =
        std::sync::LazyLock::new(|| regex_lite::Regex::new(r"^%?(B[0-9]{12,19}\^[^^?%]{0,26}\^[0-9]{4}[^?%]*)\??$").unwrap_or_else(|e| panic!("T1: {e}")));
    // No track is longer than 107 characters (ISO 4909); a longer segment is not one, and the
    // expressions below cost about a microsecond per byte.
    if seg.len() > 2 * TRACK3_MAX {
        return None;
    }
    if let Some(c) = T2.captures(seg) {
        return Some(format!(";{}={}?", &c[1], &c[2]));
    }
    T1.captures(seg).map(|c| format!("%{}?", &c[1]))
}

/// Split a frame into its tracks and parse each.
///
/// Tracks are told apart by sentinel and order: `%` is track 1, the first `;` track 2, the second
/// `;` (or a `+`) track 3. A segment ends at `?`; one that runs into the next start sentinel or the
/// end of the frame has a bad end sentinel. Text before the first sentinel is a track whose start
/// sentinel was lost (track 1 if it has `^`, else track 2).
pub fn parse_swipe(text: &str) -> Swipe {
    let mut swipe = Swipe::default();
    let mut semis = 0usize;
    let full = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let mut rest = full;
    // The first `?` at or after where `rest` starts, as an offset into `full`: searched again only once
    // `rest` has passed it, so a frame of thousands of start sentinels and no `?` stays linear.
    let mut question = full.find('?');
    while !rest.is_empty() {
        let at = full.len() - rest.len();
        if question.is_some_and(|q| q < at) {
            question = rest.find('?').map(|i| i + at);
        }
        // Cut one segment: up to and including `?`, or up to the next start sentinel.
        let next_start = rest.char_indices().skip(1).find(|(_, c)| matches!(c, '%' | ';' | '+')).map(|(i, _)| i);
        let end = question.map(|q| q - at + 1);
        let cut = match (end, next_start) {
            (Some(e), Some(s)) if s < e => s,
            (Some(e), _) => e,
            (None, Some(s)) => s,
            (None, None) => rest.len(),
        };
        let (seg, tail) = rest.split_at(cut);
        // Bytes between tracks (whitespace, an LRC character) are not a track.
        rest = tail.trim_start_matches(|c: char| !matches!(c, '%' | ';' | '+'));
        // A track that lost its sentinels (and is the frame's last) is still the card's track.
        let repaired = if !seg.ends_with('?') || !seg.starts_with(['%', ';', '+']) {
            if rest.is_empty() || !seg.starts_with(['%', ';', '+']) {
                repair_bare_track(seg)
            } else {
                None
            }
        } else {
            None
        };
        let seg = repaired.as_deref().unwrap_or(seg);
        let slot = match seg.chars().next() {
            Some('%') => 1,
            Some('+') => 3,
            Some(';') => {
                semis += 1;
                if semis == 1 {
                    2
                } else {
                    3
                }
            }
            _ => {
                if seg.contains('^') {
                    1
                } else {
                    2
                }
            }
        };
        match slot {
            1 if swipe.track1.is_none() => swipe.track1 = Some(parse_track1(seg)),
            2 if swipe.track2.is_none() => swipe.track2 = Some(parse_track2(seg)),
            3 if swipe.track3.is_none() => swipe.track3 = Some(parse_track3(seg)),
            _ => swipe.extra_segments += 1,
        }
    }
    swipe
}

/// Check sentinels, length and reader error marks; return the content between the sentinels.
fn body<'a>(track: &'a str, starts: &[char], max: usize) -> Result<&'a str, TrackError> {
    let Some(inner) = track.strip_prefix(|c| starts.contains(&c)) else {
        return Err(TrackError::BadStartSentinel);
    };
    let Some(inner) = inner.strip_suffix('?') else {
        return Err(TrackError::BadEndSentinel);
    };
    let len = track.chars().count();
    if len > max {
        return Err(TrackError::BadLength { len, max });
    }
    if inner == "E" {
        return Err(TrackError::ReadError);
    }
    Ok(inner)
}

/// Parse `YYMM` and `SSS` after the PAN separator; each may be absent (a separator in its place).
fn expiry_service(after: &str, sep: char) -> (Option<Expiry>, Option<String>, &str) {
    let mut rest = after;
    let expiry = match rest.get(..4) {
        Some(d) if d.bytes().all(|b| b.is_ascii_digit()) => {
            rest = &rest[4..];
            let n = |s: &str| s.parse::<u8>().ok();
            match (n(&d[..2]), n(&d[2..])) {
                (Some(yy), Some(mm)) => Some(Expiry { yy, mm }),
                _ => None,
            }
        }
        _ => {
            rest = rest.strip_prefix(sep).unwrap_or(rest);
            None
        }
    };
    let service = match rest.get(..3) {
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
            rest = &rest[3..];
            Some(s.to_string())
        }
        _ => {
            rest = rest.strip_prefix(sep).unwrap_or(rest);
            None
        }
    };
    (expiry, service, rest)
}

fn check_pan(pan: &str) -> Result<Pan, TrackError> {
    if pan.is_empty() {
        return Err(TrackError::BadPan { why: "empty" });
    }
    if pan.len() > PAN_MAX {
        return Err(TrackError::BadPan { why: "longer than 19 digits" });
    }
    if !pan.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TrackError::BadPan { why: "not all digits" });
    }
    Ok(Pan::new(pan))
}

/// Parse one track 1 (`%B...^NAME^...?`).
pub fn parse_track1(track: &str) -> Result<Track1, TrackError> {
    let inner = body(track, &['%'], TRACK1_MAX)?;
    // ISO 7811 track 1 alphabet: ASCII 0x20..=0x5F, with `%` and `?` reserved for sentinels.
    if let Some(pos) = inner.bytes().position(|b| !(0x20..=0x5F).contains(&b) || b == b'%' || b == b'?') {
        return Err(TrackError::BadCharacter { pos: pos + 1 });
    }
    let Some(after_fc) = inner.strip_prefix('B') else {
        return Err(TrackError::BadFormatCode);
    };
    let mut parts = after_fc.splitn(3, '^');
    let pan = parts.next().unwrap_or_default();
    let (Some(name), Some(rest)) = (parts.next(), parts.next()) else {
        return Err(TrackError::BadSeparator);
    };
    let pan = check_pan(pan)?;
    if name.len() > NAME_MAX {
        return Err(TrackError::BadName { why: "longer than 26 characters" });
    }
    let (expiry, service_code, disc) = expiry_service(rest, '^');
    Ok(Track1 { pan, name: TrackData::new(name.trim_end()), expiry, service_code, discretionary: TrackData::new(disc), raw: TrackData::new(track) })
}

/// Parse one track 2 (`;PAN=YYMMSSS...?`).
pub fn parse_track2(track: &str) -> Result<Track2, TrackError> {
    let inner = body(track, &[';'], TRACK2_MAX)?;
    if let Some(pos) = inner.bytes().position(|b| !(b.is_ascii_digit() || b == b'=')) {
        return Err(TrackError::BadCharacter { pos: pos + 1 });
    }
    let Some((pan, rest)) = inner.split_once('=') else {
        return Err(TrackError::BadSeparator);
    };
    let pan = check_pan(pan)?;
    let (expiry, service_code, disc) = expiry_service(rest, '=');
    Ok(Track2 { pan, expiry, service_code, discretionary: TrackData::new(disc), raw: TrackData::new(track) })
}

/// Parse one track 3 (`;...?` or `+...?`).
pub fn parse_track3(track: &str) -> Result<Track3, TrackError> {
    let inner = body(track, &[';', '+'], TRACK3_MAX)?;
    if let Some(pos) = inner.bytes().position(|b| !(b.is_ascii_digit() || b == b'=')) {
        return Err(TrackError::BadCharacter { pos: pos + 1 });
    }
    // ISO 4909: two-digit format code, PAN, `=`.
    let pan = inner.get(2..).and_then(|r| r.split_once('=')).and_then(|(p, _)| check_pan(p).ok());
    Ok(Track3 { pan, raw: TrackData::new(track) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzzer (`track`): 61 KB of `%` took seconds (a MiB, minutes): every segment searched the whole rest
    /// of the frame for `?`. An injected scan (`POST /v1/scans`, up to the body limit) reaches it.
    #[test]
    fn many_start_sentinels_without_an_end_sentinel_parse_in_linear_time() {
        for text in ["%".repeat(1 << 20), ";".repeat(1 << 20), format!("622{}", "%+;".repeat(350_000))] {
            #[allow(clippy::disallowed_methods)] // a test timing the parser, not engine time
            let t = std::time::Instant::now();
            let s = parse_swipe(&text);
            assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?} for {} bytes", t.elapsed(), text.len());
            assert!(s.extra_segments > 1000);
        }
    }
    use proptest::prelude::*;

    const T1: &str = "%B4111111111111111^DOE/JOHN^2512101000000000000000123000000?";
    const T2: &str = ";4111111111111111=25121010000012300000?";
    const T3: &str = ";014111111111111111=724724100000000000030300000000000000000000000000000000000000000000?";

    #[test]
    fn parses_three_tracks() {
        let s = parse_swipe(&format!("{T1}{T2}{T3}"));
        let t1 = s.track1.clone().expect("t1").expect("ok");
        assert_eq!(t1.pan.expose(), "4111111111111111");
        assert_eq!(t1.name.expose(), "DOE/JOHN");
        assert_eq!(t1.expiry, Some(Expiry { yy: 25, mm: 12 }));
        assert_eq!(t1.service_code.as_deref(), Some("101"));
        let t2 = s.track2.clone().expect("t2").expect("ok");
        assert_eq!((t2.pan.expose(), t2.service_code.as_deref()), ("4111111111111111", Some("101")));
        assert_eq!(t2.raw.expose(), T2);
        let t3 = s.track3.clone().expect("t3").expect("ok");
        assert_eq!(t3.pan.as_ref().map(Pan::expose), Some("4111111111111111"));
        assert_eq!(s.tracks_ok(), [1, 2, 3]);
        assert!(s.pan().is_some_and(Pan::luhn_ok));
        assert!(s.errors().is_empty());
    }

    #[test]
    fn per_track_errors() {
        // Track 1 lost its end sentinel; track 2 is still good.
        let s = parse_swipe(&format!("%B4111111111111111^DOE/JOHN^2512101{T2}"));
        assert_eq!(s.track1, Some(Err(TrackError::BadEndSentinel)));
        assert!(matches!(s.track2, Some(Ok(_))));
        assert_eq!(s.errors(), [(1, TrackError::BadEndSentinel)]);

        let long2 = format!(";{}=2512101{}?", "4".repeat(19), "0".repeat(20));
        assert_eq!(parse_track2(&long2), Err(TrackError::BadLength { len: 49, max: 40 }));
        assert_eq!(parse_track1(&format!("%B4111^N^{}?", "0".repeat(80))).map(|_| ()), Err(TrackError::BadLength { len: 90, max: 79 }));
        assert_eq!(parse_track2("4111=2512?").map(|_| ()), Err(TrackError::BadStartSentinel));
        assert_eq!(parse_track2(";41A1=2512?").map(|_| ()), Err(TrackError::BadCharacter { pos: 3 }));
        assert_eq!(parse_track2(";41112512?").map(|_| ()), Err(TrackError::BadSeparator));
        assert_eq!(parse_track2(";=2512?").map(|_| ()), Err(TrackError::BadPan { why: "empty" }));
        assert_eq!(parse_track1("%B4111^NO SECOND SEP?").map(|_| ()), Err(TrackError::BadSeparator));
        assert_eq!(parse_track1("%A4111^N^2512?").map(|_| ()), Err(TrackError::BadFormatCode));
        assert_eq!(parse_track2(";E?").map(|_| ()), Err(TrackError::ReadError));
        assert_eq!(parse_track1(&format!("%B4111^{}^2512?", "N".repeat(27))).map(|_| ()), Err(TrackError::BadName { why: "longer than 26 characters" }));
        // Missing start sentinel on the only track: rebuilt and read (readers set to "data only").
        let s = parse_swipe("4111111111111111=2512101?");
        assert_eq!(s.pan().map(Pan::expose), Some("4111111111111111"));
        // Text before the first sentinel that is no track shape is still reported as a bad track 2.
        let s = parse_swipe("4111=2512?");
        assert_eq!(s.track2, Some(Err(TrackError::BadStartSentinel)));
    }

    #[test]
    fn absent_fields_and_luhn() {
        let t2 = parse_track2(";6274000000000001==?").expect("ok");
        assert_eq!((t2.expiry, t2.service_code), (None, None));
        assert!(!t2.pan.luhn_ok());
        assert!(luhn("79927398713"));
        assert!(!luhn(""));
    }

    #[test]
    fn debug_masks_pan_and_redacts_tracks() {
        let s = parse_swipe(&format!("{T1}{T2}{T3}"));
        let dbg = format!("{s:?} {:#?}", s);
        assert!(!dbg.contains("4111111111111111"), "{dbg}");
        assert!(!dbg.contains("DOE"), "{dbg}");
        assert!(!dbg.contains("2512"), "{dbg}");
        assert!(dbg.contains("411111******1111"), "{dbg}");
    }

    /// Regression: `6222021234567890123=29121010000000000` (no sentinels) was a barcode, shown in clear.
    #[test]
    fn bare_tracks_are_rebuilt() {
        let s = parse_swipe("6222021234567890123=29121010000000000");
        let t2 = s.track2.clone().expect("t2").expect("ok");
        assert_eq!(
            (t2.pan.expose(), t2.expiry, t2.raw.expose()),
            ("6222021234567890123", Some(Expiry { yy: 29, mm: 12 }), ";6222021234567890123=29121010000000000?")
        );
        let s = parse_swipe("6222021234567890123D2912101000000F");
        assert_eq!(s.track2.and_then(Result::ok).map(|t| t.raw.expose().to_string()).as_deref(), Some(";6222021234567890123=2912101000000?"));
        let s = parse_swipe("B6222021234567890123^ZHANG/SAN^2912101000000000;6222021234567890123=29121010000000000?");
        assert_eq!(s.tracks_ok(), [1, 2]);
        let s = parse_swipe(";6222021234567890123=2912101");
        assert_eq!(s.pan().map(Pan::expose), Some("6222021234567890123"));
        for bare in ["6222021234567890123=2912", "6222021234567890123D2912", "x 411111111111=2912 y", "%B4111111111111^A B^2912", "]C0411111111111111=2912"] {
            assert!(has_track_data(bare) && looks_like_swipe(bare), "{bare}");
        }
        for code in ["4006381333931", "12345678901=2912", "TK-123456", "9123456789012345678", "https://example.com/?a=1"] {
            assert!(!has_track_data(code), "{code}");
        }
    }

    #[test]
    fn swipe_detection() {
        assert!(looks_like_swipe(T2));
        assert!(looks_like_swipe(T1));
        assert!(looks_like_swipe("4111111111111111=2512?"));
        assert!(!looks_like_swipe("4006381333931"));
        assert!(!looks_like_swipe("https://example.com/?a"));
    }

    /// The hand-written scan of `has_track_data` against the expression it stands for.
    fn track_shape_by_regex(text: &str) -> bool {
        let re = regex_lite::Regex::new(r"[0-9]{12,19}(?:[=D]|\^[^^]{0,26}\^)[0-9]{4}").expect("the expression compiles");
        re.is_match(text)
    }

    #[test]
    fn track_shape_edges_agree_with_the_regex() {
        let name26 = "N".repeat(26);
        let name27 = "N".repeat(27);
        let wide26 = "名".repeat(26);
        for t in [
            "411111111111=2912".to_string(),
            "41111111111=2912".to_string(),
            "4111111111111111111111=2912".to_string(),
            "411111111111D291".to_string(),
            format!("411111111111^{name26}^2912"),
            format!("411111111111^{name27}^2912"),
            format!("411111111111^{wide26}^2912"),
            "411111111111^^2912".to_string(),
            "411111111111^A^291x 411111111111=2912".to_string(),
            "x411111111111=2912".to_string(),
            "".to_string(),
        ] {
            assert_eq!(has_track_data(&t), track_shape_by_regex(&t), "{t}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_swipe(&s);
            let _ = parse_swipe(&String::from_utf8_lossy(&bytes));
            let _ = (parse_track1(&s), parse_track2(&s), parse_track3(&s));
        }

        #[test]
        fn track_shape_matches_its_regular_expression(s in "(?:[0-9]{10,20}|[=D^]|[A名 ]{1,14}|[0-9]{1,4}){0,8}", t in "\\PC{0,60}") {
            prop_assert_eq!(has_track_data(&s), track_shape_by_regex(&s), "{}", s);
            prop_assert_eq!(has_track_data(&t), track_shape_by_regex(&t), "{}", t);
            let joined = format!("{t}{s}");
            prop_assert_eq!(has_track_data(&joined), track_shape_by_regex(&joined));
        }

        #[test]
        fn track_like_text_never_panics(s in "[%;+?^=0-9A-Z/ ]{0,150}") {
            let sw = parse_swipe(&s);
            let _ = (sw.pan(), sw.expiry(), sw.errors(), format!("{sw:?}"));
        }

        #[test]
        fn generated_tracks_round_trip(
            pan in "[0-9]{12,19}",
            name in "[A-Z][A-Z/ .]{0,24}[A-Z]",
            yy in 0u8..100, mm in 1u8..13,
            svc in "[0-9]{3}",
            disc1 in "[0-9]{0,20}",
            disc2 in "[0-9]{0,8}",
            with1 in any::<bool>(),
        ) {
            let t1 = format!("%B{pan}^{name}^{yy:02}{mm:02}{svc}{disc1}?");
            let t2 = format!(";{pan}={yy:02}{mm:02}{svc}{disc2}?");
            let frame = if with1 { format!("{t1}{t2}") } else { t2.clone() };
            let s = parse_swipe(&frame);
            prop_assert!(s.errors().is_empty(), "{:?}", s.errors());
            prop_assert_eq!(s.pan().map(Pan::expose), Some(pan.as_str()));
            prop_assert_eq!(s.expiry(), Some(Expiry { yy, mm }));
            prop_assert_eq!(s.service_code(), Some(svc.as_str()));
            let got2 = s.track2.clone().and_then(Result::ok);
            prop_assert_eq!(got2.as_ref().map(|t| t.raw.expose()), Some(t2.as_str()));
            prop_assert_eq!(got2.as_ref().map(|t| t.discretionary.expose()), Some(disc2.as_str()));
            if with1 {
                let t = s.track1.clone().and_then(Result::ok);
                prop_assert_eq!(t.as_ref().map(|t| t.name.expose()), Some(name.trim_end()));
                prop_assert_eq!(t.as_ref().map(|t| t.discretionary.expose()), Some(disc1.as_str()));
            } else {
                prop_assert!(s.track1.is_none());
            }
        }
    }
}
