//! Cuts the byte stream of a scanner or card reader into frames (pure, incremental, no I/O).
//!
//! Real scanners end a read with CR, LF, CRLF, TAB or ETX, or with nothing at all (the frame ends
//! when the line goes quiet), some open it with STX, and a serial read may hold half a frame or
//! several. The framer keeps its state between `push` calls so that the same bytes give the same
//! frames however the reads split them.
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Start of text: opens a frame when `stx` framing is on.
pub const STX: u8 = 0x02;
/// End of text: one of the terminators.
pub const ETX: u8 = 0x03;
/// GS1 group separator: data, never a terminator.
pub const GS: u8 = 0x1D;
const CR: u8 = b'\r';
const LF: u8 = b'\n';
const TAB: u8 = b'\t';

/// A byte sequence that ends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Terminator {
    Cr,
    Lf,
    /// CR immediately followed by LF; a lone CR stays data unless `Cr` is also configured.
    Crlf,
    Tab,
    Etx,
}

/// How one device frames its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FramingConfig {
    /// Any of these ends a frame. Empty frames (as between CR and LF) are skipped.
    pub terminators: Vec<Terminator>,
    /// Frames start with STX; bytes outside STX..terminator are noise.
    pub stx: bool,
    /// Longest frame payload kept, in bytes; a longer one is dropped whole and reported.
    pub max_len: usize,
    /// A pause this long after the last byte ends the frame (for scanners that send no terminator).
    #[serde(rename = "idle_gap_ms", deserialize_with = "de_millis", serialize_with = "ser_millis")]
    pub idle_gap: Option<Duration>,
}

impl Default for FramingConfig {
    fn default() -> Self {
        FramingConfig { terminators: vec![Terminator::Cr, Terminator::Lf, Terminator::Crlf], stx: false, max_len: 4096, idle_gap: None }
    }
}

fn de_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
}

fn ser_millis<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    v.map(|d| d.as_millis() as u64).serialize(s)
}

/// What the framer found in the bytes pushed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete frame's payload (without STX or terminator); never empty.
    Frame(Vec<u8>),
    /// A frame longer than `max_len` was dropped; `len` is its full payload length.
    Overlong { len: usize },
    /// Bytes outside a frame (before STX, or a partial frame cut short by a new STX) were dropped.
    Noise { len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting payload bytes into `buf`.
    InFrame,
    /// Waiting for STX; counts dropped bytes in `noise`.
    Hunting,
    /// The frame passed `max_len`: discard until its end, counting in `overlong`.
    Discarding,
}

/// The incremental framer. One per device connection; `reset` it when the port closes.
#[derive(Debug, Clone)]
pub struct Framer {
    cfg: FramingConfig,
    cr: bool,
    lf: bool,
    crlf: bool,
    tab: bool,
    etx: bool,
    state: State,
    buf: Vec<u8>,
    noise: usize,
    overlong: usize,
    /// A CR seen at the end of a push that may be the first half of CRLF.
    pending_cr: bool,
}

impl Framer {
    pub fn new(cfg: FramingConfig) -> Self {
        let has = |t| cfg.terminators.contains(&t);
        let (cr, lf, crlf, tab, etx) = (has(Terminator::Cr), has(Terminator::Lf), has(Terminator::Crlf), has(Terminator::Tab), has(Terminator::Etx));
        let state = if cfg.stx { State::Hunting } else { State::InFrame };
        Framer { cfg, cr, lf, crlf, tab, etx, state, buf: Vec::new(), noise: 0, overlong: 0, pending_cr: false }
    }

    pub fn config(&self) -> &FramingConfig {
        &self.cfg
    }

    /// Whether bytes are held that only a terminator or `flush_idle` will release.
    pub fn is_pending(&self) -> bool {
        self.pending_cr || !self.buf.is_empty() || self.noise > 0 || self.overlong > 0
    }

    /// Feed the bytes of one read; returns every frame (and problem) they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<FrameEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.pending_cr {
                self.pending_cr = false;
                if b == LF {
                    self.end_frame(&mut out);
                    continue;
                }
                // A lone CR where only CRLF terminates: it was data.
                self.data(CR);
            }
            self.byte(b, &mut out);
        }
        out
    }

    /// The line has been quiet for the idle gap: whatever is held ends here.
    pub fn flush_idle(&mut self) -> Vec<FrameEvent> {
        let mut out = Vec::new();
        if self.pending_cr {
            self.pending_cr = false;
            self.data(CR);
        }
        match self.state {
            State::InFrame | State::Discarding => self.end_frame(&mut out),
            State::Hunting => self.take_noise(&mut out),
        }
        out
    }

    /// Forget a partial frame (the port closed); reports it as noise if there was one.
    pub fn reset(&mut self) -> Option<FrameEvent> {
        let dropped = self.buf.len() + self.noise + self.overlong + usize::from(self.pending_cr);
        self.buf.clear();
        self.noise = 0;
        self.overlong = 0;
        self.pending_cr = false;
        self.state = if self.cfg.stx { State::Hunting } else { State::InFrame };
        (dropped > 0).then_some(FrameEvent::Noise { len: dropped })
    }

    fn is_terminator(&self, b: u8) -> bool {
        match b {
            CR => self.cr,
            LF => self.lf,
            TAB => self.tab,
            ETX => self.etx,
            _ => false,
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<FrameEvent>) {
        if self.cfg.stx && b == STX {
            match self.state {
                State::Hunting => self.take_noise(out),
                // A new STX inside a frame: the unfinished one is lost.
                State::InFrame => {
                    if !self.buf.is_empty() {
                        out.push(FrameEvent::Noise { len: self.buf.len() });
                        self.buf.clear();
                    }
                }
                State::Discarding => self.end_frame(out),
            }
            self.state = State::InFrame;
            return;
        }
        if b == CR && self.crlf && !self.cr {
            self.pending_cr = true;
            return;
        }
        if self.is_terminator(b) {
            match self.state {
                // Terminators between frames (a CR LF after ETX) are not noise.
                State::Hunting => {}
                State::InFrame | State::Discarding => self.end_frame(out),
            }
            return;
        }
        self.data(b);
    }

    fn data(&mut self, b: u8) {
        match self.state {
            State::Hunting => self.noise += 1,
            State::Discarding => self.overlong += 1,
            State::InFrame => {
                if self.buf.len() >= self.cfg.max_len {
                    self.overlong = self.buf.len() + 1;
                    self.buf.clear();
                    self.state = State::Discarding;
                } else {
                    self.buf.push(b);
                }
            }
        }
    }

    fn take_noise(&mut self, out: &mut Vec<FrameEvent>) {
        if self.noise > 0 {
            out.push(FrameEvent::Noise { len: self.noise });
            self.noise = 0;
        }
    }

    fn end_frame(&mut self, out: &mut Vec<FrameEvent>) {
        match self.state {
            State::Discarding => out.push(FrameEvent::Overlong { len: self.overlong }),
            State::InFrame if !self.buf.is_empty() => out.push(FrameEvent::Frame(std::mem::take(&mut self.buf))),
            _ => {}
        }
        self.overlong = 0;
        self.buf.clear();
        self.state = if self.cfg.stx { State::Hunting } else { State::InFrame };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(terms: &[Terminator]) -> FramingConfig {
        FramingConfig { terminators: terms.to_vec(), stx: false, max_len: 64, idle_gap: None }
    }
    fn frames(evs: Vec<FrameEvent>) -> Vec<String> {
        evs.into_iter()
            .map(|e| match e {
                FrameEvent::Frame(f) => String::from_utf8_lossy(&f).into_owned(),
                FrameEvent::Overlong { len } => format!("<overlong {len}>"),
                FrameEvent::Noise { len } => format!("<noise {len}>"),
            })
            .collect()
    }

    #[test]
    fn each_terminator_ends_a_frame() {
        let mut f = Framer::new(cfg(&[Terminator::Cr, Terminator::Lf, Terminator::Tab, Terminator::Etx]));
        assert_eq!(frames(f.push(b"a\rb\nc\td\x03")), ["a", "b", "c", "d"]);
    }

    #[test]
    fn crlf_is_one_terminator_even_split() {
        let mut f = Framer::new(cfg(&[Terminator::Crlf]));
        assert_eq!(frames(f.push(b"abc\r")), Vec::<String>::new());
        assert_eq!(frames(f.push(b"\ndef\r\n")), ["abc", "def"]);
        // A lone CR is data when only CRLF terminates.
        assert_eq!(frames(f.push(b"x\ry\r\n")), ["x\ry"]);
        let mut f = Framer::new(cfg(&[Terminator::Cr, Terminator::Lf, Terminator::Crlf]));
        assert_eq!(frames(f.push(b"abc\r\ndef\r\n")), ["abc", "def"]);
    }

    #[test]
    fn several_frames_in_one_push_and_one_frame_in_many() {
        let mut f = Framer::new(cfg(&[Terminator::Lf]));
        assert_eq!(frames(f.push(b"one\ntwo\nthr")), ["one", "two"]);
        assert!(f.is_pending());
        assert_eq!(frames(f.push(b"e")), Vec::<String>::new());
        assert_eq!(frames(f.push(b"e\n")), ["three"]);
        assert!(!f.is_pending());
    }

    #[test]
    fn gs_is_kept() {
        let mut f = Framer::new(cfg(&[Terminator::Cr]));
        assert_eq!(
            f.push(b"]C101095011010209171719050810ABCD1234\x1d2110\r"),
            vec![FrameEvent::Frame(b"]C101095011010209171719050810ABCD1234\x1d2110".to_vec())]
        );
    }

    #[test]
    fn overlong_is_dropped_and_next_frame_is_read() {
        let mut f = Framer::new(FramingConfig { max_len: 4, ..cfg(&[Terminator::Cr]) });
        assert_eq!(frames(f.push(b"1234\r12345")), ["1234"]);
        assert_eq!(frames(f.push(b"6789\rok\r")), ["<overlong 9>", "ok"]);
    }

    #[test]
    fn stx_drops_noise_before_and_after() {
        let mut f = Framer::new(FramingConfig { stx: true, ..cfg(&[Terminator::Etx, Terminator::Cr, Terminator::Lf]) });
        assert_eq!(frames(f.push(b"zz\x02abc\x03\r\n")), ["<noise 2>", "abc"]);
        assert_eq!(frames(f.push(b"\x02par\x02whole\x03")), ["<noise 3>", "whole"]);
        assert_eq!(frames(f.push(b"junk")), Vec::<String>::new());
        assert_eq!(frames(f.flush_idle()), ["<noise 4>"]);
    }

    #[test]
    fn idle_gap_ends_unterminated_frame() {
        let mut f = Framer::new(FramingConfig { idle_gap: Some(Duration::from_millis(50)), ..cfg(&[]) });
        assert!(f.push(b"4006381333931").is_empty());
        assert_eq!(frames(f.flush_idle()), ["4006381333931"]);
        assert!(f.flush_idle().is_empty());
    }

    #[test]
    fn config_from_toml() {
        let c: FramingConfig = toml::from_str("terminators = [\"crlf\", \"etx\"]\nstx = true\nmax_len = 100\nidle_gap_ms = 30").expect("parses");
        assert_eq!(
            c,
            FramingConfig { terminators: vec![Terminator::Crlf, Terminator::Etx], stx: true, max_len: 100, idle_gap: Some(Duration::from_millis(30)) }
        );
    }

    fn all_terms() -> FramingConfig {
        FramingConfig {
            terminators: vec![Terminator::Cr, Terminator::Lf, Terminator::Crlf, Terminator::Tab, Terminator::Etx],
            stx: false,
            max_len: 32,
            idle_gap: None,
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), stx in any::<bool>(), max_len in 0usize..40, cut in 0usize..512) {
            let mut f = Framer::new(FramingConfig { stx, max_len, ..all_terms() });
            let cut = cut.min(bytes.len());
            let mut evs = f.push(&bytes[..cut]);
            evs.extend(f.push(&bytes[cut..]));
            evs.extend(f.flush_idle());
            for e in evs {
                if let FrameEvent::Frame(p) = e {
                    prop_assert!(!p.is_empty() && p.len() <= max_len);
                }
            }
        }

        #[test]
        fn split_anywhere_gives_the_same_frames(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("not framing", |b| ![CR, LF, TAB, ETX, STX].contains(b)), 1..40), 1..6),
            term in prop_oneof![Just(&b"\r"[..]), Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\t"[..]), Just(&b"\x03"[..])],
            stx in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let cfg = FramingConfig { stx, ..all_terms() };
            let mut stream = Vec::new();
            for p in &payloads {
                if stx { stream.push(STX); }
                stream.extend_from_slice(p);
                stream.extend_from_slice(term);
            }
            let whole = Framer::new(cfg.clone()).push(&stream);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut f = Framer::new(cfg);
            let mut split = Vec::new();
            let mut at = 0;
            for p in points.into_iter().chain(std::iter::once(stream.len())) {
                split.extend(f.push(&stream[at..p]));
                at = p;
            }
            prop_assert_eq!(&split, &whole);
            let expected: Vec<FrameEvent> = payloads.iter().map(|p| if p.len() > 32 { FrameEvent::Overlong { len: p.len() } } else { FrameEvent::Frame(p.clone()) }).collect();
            prop_assert_eq!(whole, expected);
        }
    }
}
