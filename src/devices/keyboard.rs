//! Keyboard-mode scanners, the pure part: Linux key codes → text under an explicit layout, the grab rule, and framing.
//!
//! A scanner in keyboard ("HID keyboard wedge") mode types its data as key presses. The host's keymap
//! (X11, Wayland, the console) is never consulted: each device names the layout its scanner was set
//! up for (`us`, `de`, `fr`), so the same key codes always give the same text, on a headless POS host
//! too. Nothing here does I/O: the Linux reader (`evdev.rs`) feeds `EV_KEY` events (code, value) into
//! a [`KeyboardSession`] and acts on what it answers (take the grab, decode a frame, report an error).
//!
//! - [`Translator`]: modifiers (Shift, Caps Lock, AltGr, Ctrl, Alt), dead keys, Alt+keypad codes.
//!   Enter and keypad Enter give CR, Tab gives TAB; the device's `FramingConfig` decides which of
//!   them end a frame (by default CR, so Enter). A key the layout does not have is an error, never a guess.
//! - [`GrabGate`]: take the exclusive grab only while no key is held, so a key pressed before the
//!   grab is not left stuck down in the desktop; release it on shutdown and on error.
//! - [`KeyboardSession`]: both, plus the shared [`Framer`]; a frame that held an untranslatable key
//!   is dropped whole rather than published with a character missing.
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::framer::{FrameEvent, Framer, FramingConfig};

/// Whether this build can read keyboard-mode scanners (Linux with the `evdev` cargo feature).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", feature = "evdev"));

/// Why a `kind = "keyboard"` device cannot run in this build.
pub const UNSUPPORTED: &str = "keyboard-mode scanners need a Linux build with the `evdev` cargo feature";

/// Linux input key codes (`linux/input-event-codes.h`) that the translator treats specially.
pub mod code {
    pub const KEY_TAB: u16 = 15;
    pub const KEY_ENTER: u16 = 28;
    pub const KEY_LEFTCTRL: u16 = 29;
    pub const KEY_LEFTSHIFT: u16 = 42;
    pub const KEY_RIGHTSHIFT: u16 = 54;
    pub const KEY_LEFTALT: u16 = 56;
    pub const KEY_SPACE: u16 = 57;
    pub const KEY_CAPSLOCK: u16 = 58;
    pub const KEY_NUMLOCK: u16 = 69;
    pub const KEY_SCROLLLOCK: u16 = 70;
    pub const KEY_KP7: u16 = 71;
    pub const KEY_KP8: u16 = 72;
    pub const KEY_KP9: u16 = 73;
    pub const KEY_KP4: u16 = 75;
    pub const KEY_KP5: u16 = 76;
    pub const KEY_KP6: u16 = 77;
    pub const KEY_KP1: u16 = 79;
    pub const KEY_KP2: u16 = 80;
    pub const KEY_KP3: u16 = 81;
    pub const KEY_KP0: u16 = 82;
    pub const KEY_KPDOT: u16 = 83;
    pub const KEY_KPENTER: u16 = 96;
    pub const KEY_RIGHTCTRL: u16 = 97;
    pub const KEY_RIGHTALT: u16 = 100;
    pub const KEY_LEFTMETA: u16 = 125;
    pub const KEY_RIGHTMETA: u16 = 126;
}
use code::*;

/// The keyboard layout a scanner types in, named per device in the config (`layout = "de"`).
///
/// The tables are the symbols that the Windows layout and the xkb `basic` variant of the same name
/// agree on (levels: plain, Shift, AltGr). Dead keys are as on both (`de`: ^ ´ `, `fr`: ^ ¨); AltGr
/// symbols are never dead (as in xkb). Caps Lock shifts letters only. Keypad keys always give their
/// digit or sign (a scanner that sends keypad digits means digits, whatever the host's Num Lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// US QWERTY. Right Alt is a plain Alt (no AltGr level).
    Us,
    /// German QWERTZ: Y and Z swapped, ß ü ö ä on their own keys, AltGr+Q = @, dead ^ ´ `.
    De,
    /// French AZERTY: digits need Shift, A/Q and Z/W swapped, M on the `;` key, dead ^ ¨.
    Fr,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Us => "us",
            Layout::De => "de",
            Layout::Fr => "fr",
        }
    }

    fn tables(self) -> &'static Tables {
        match self {
            Layout::Us => &US,
            Layout::De => &DE,
            Layout::Fr => &FR,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One layout. `keys` entries hold the symbols of a key as a string: plain, Shift, AltGr (fewer when
/// the key has fewer levels; `\0` for an empty level). A combining mark (U+0300..U+036F) is a dead key
/// for that accent. `letters` rows give a letter per key code from the row's first code on, with its
/// capital on Shift; `keys` is looked up first, so it can add an AltGr symbol to a letter key.
struct Tables {
    keys: &'static [(u16, &'static str)],
    letters: [(u16, &'static str); 3],
    /// Right Alt is AltGr (else it is a second Alt).
    altgr: bool,
    /// What keypad `.`/`Del` types.
    kp_decimal: char,
}

static US: Tables = Tables {
    keys: &[
        (2, "1!"),
        (3, "2@"),
        (4, "3#"),
        (5, "4$"),
        (6, "5%"),
        (7, "6^"),
        (8, "7&"),
        (9, "8*"),
        (10, "9("),
        (11, "0)"),
        (12, "-_"),
        (13, "=+"),
        (26, "[{"),
        (27, "]}"),
        (39, ";:"),
        (40, "'\""),
        (41, "`~"),
        (43, "\\|"),
        (51, ",<"),
        (52, ".>"),
        (53, "/?"),
        (86, "<>"),
    ],
    letters: [(16, "qwertyuiop"), (30, "asdfghjkl"), (44, "zxcvbnm")],
    altgr: false,
    kp_decimal: '.',
};

static DE: Tables = Tables {
    keys: &[
        (2, "1!"),
        (3, "2\"²"),
        (4, "3§³"),
        (5, "4$"),
        (6, "5%"),
        (7, "6&"),
        (8, "7/{"),
        (9, "8(["),
        (10, "9)]"),
        (11, "0=}"),
        (12, "ß?\\"),
        (13, "\u{301}\u{300}"),
        (16, "qQ@"),
        (18, "eE€"),
        (26, "üÜ"),
        (27, "+*~"),
        (39, "öÖ"),
        (40, "äÄ"),
        (41, "\u{302}°"),
        (43, "#'"),
        (50, "mMµ"),
        (51, ",;"),
        (52, ".:"),
        (53, "-_"),
        (86, "<>|"),
    ],
    letters: [(16, "qwertzuiop"), (30, "asdfghjkl"), (44, "yxcvbnm")],
    altgr: true,
    kp_decimal: ',',
};

static FR: Tables = Tables {
    keys: &[
        (2, "&1"),
        (3, "é2~"),
        (4, "\"3#"),
        (5, "'4{"),
        (6, "(5["),
        (7, "-6|"),
        (8, "è7`"),
        (9, "_8\\"),
        (10, "ç9^"),
        (11, "à0@"),
        (12, ")°]"),
        (13, "=+}"),
        (18, "eE€"),
        (26, "\u{302}\u{308}"),
        (27, "$£¤"),
        (40, "ù%"),
        (41, "²"),
        (43, "*µ"),
        (50, ",?"),
        (51, ";."),
        (52, ":/"),
        (53, "!§"),
        (86, "<>"),
    ],
    letters: [(16, "azertyuiop"), (30, "qsdfghjklm"), (44, "wxcvbn")],
    altgr: true,
    kp_decimal: '.',
};

/// Keypad keys, the same in every layout except the decimal key.
fn keypad(code: u16, decimal: char) -> Option<char> {
    Some(match code {
        KEY_KP7 => '7',
        KEY_KP8 => '8',
        KEY_KP9 => '9',
        KEY_KP4 => '4',
        KEY_KP5 => '5',
        KEY_KP6 => '6',
        KEY_KP1 => '1',
        KEY_KP2 => '2',
        KEY_KP3 => '3',
        KEY_KP0 => '0',
        KEY_KPDOT => decimal,
        55 => '*',  // KEY_KPASTERISK
        74 => '-',  // KEY_KPMINUS
        78 => '+',  // KEY_KPPLUS
        98 => '/',  // KEY_KPSLASH
        117 => '=', // KEY_KPEQUAL
        121 => ',', // KEY_KPCOMMA
        _ => return None,
    })
}

fn keypad_digit(code: u16) -> Option<u32> {
    keypad(code, '.').and_then(|c| c.to_digit(10))
}

/// What one level of a key produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    Char(char),
    /// A dead key, named by its combining mark.
    Dead(char),
}

fn is_combining(c: char) -> bool {
    ('\u{300}'..='\u{36f}').contains(&c)
}

/// The symbols of a key (plain, Shift, AltGr) and whether Caps Lock shifts it (letters only).
fn lookup(layout: Layout, code: u16) -> Option<([Option<Sym>; 3], bool)> {
    let t = layout.tables();
    if code == KEY_SPACE {
        return Some(([Some(Sym::Char(' ')), Some(Sym::Char(' ')), None], false));
    }
    let levels = |s: &str| {
        let mut it = s.chars().map(|c| match c {
            '\0' => None,
            c if is_combining(c) => Some(Sym::Dead(c)),
            c => Some(Sym::Char(c)),
        });
        [it.next().flatten(), it.next().flatten(), it.next().flatten()]
    };
    let letter = |l: [Option<Sym>; 3]| match l {
        [Some(Sym::Char(a)), Some(Sym::Char(b)), _] => a.is_alphabetic() && a.to_uppercase().eq(std::iter::once(b)),
        _ => false,
    };
    if let Some((_, s)) = t.keys.iter().find(|(c, _)| *c == code) {
        let l = levels(s);
        return Some((l, letter(l)));
    }
    for (first, row) in t.letters {
        if let Some(c) = code.checked_sub(first).and_then(|i| row.chars().nth(usize::from(i))) {
            let upper = c.to_ascii_uppercase();
            return Some(([Some(Sym::Char(c)), Some(Sym::Char(upper)), None], true));
        }
    }
    None
}

/// Dead key + base letter → the composed letter.
const COMPOSE: &[(char, &str)] =
    &[('\u{302}', "aâeêiîoôuûAÂEÊIÎOÔUÛ"), ('\u{308}', "aäeëiïoöuüyÿAÄEËIÏOÖUÜ"), ('\u{301}', "aáeéiíoóuúyýAÁEÉIÍOÓUÚYÝ"), ('\u{300}', "aàeèiìoòuùAÀEÈIÌOÒUÙ")];

fn compose(mark: char, base: char) -> Option<char> {
    let (_, pairs) = COMPOSE.iter().find(|(m, _)| *m == mark)?;
    let v: Vec<char> = pairs.chars().collect();
    v.chunks(2).find(|p| p[0] == base).and_then(|p| p.get(1).copied())
}

/// The accent a dead key types on its own (followed by space, by itself, or by a letter it does not compose with).
fn spacing(mark: char) -> char {
    match mark {
        '\u{302}' => '^',
        '\u{308}' => '¨',
        '\u{301}' => '´',
        '\u{300}' => '`',
        other => other,
    }
}

/// A key that cannot be turned into text. Names the key code and modifiers, never text typed around it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("key code {code}{with} has no mapping in layout {layout}")]
    Unmapped { code: u16, layout: Layout, with: Mods },
    #[error("Alt+keypad code {0} is not an ASCII character")]
    AltCode(u32),
}

/// The modifiers held with an unmapped key, for its error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mods {
    pub shift: bool,
    pub altgr: bool,
    pub ctrl: bool,
    pub alt: bool,
    pub meta: bool,
}

impl fmt::Display for Mods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(self.ctrl, "Ctrl"), (self.alt, "Alt"), (self.altgr, "AltGr"), (self.meta, "Meta"), (self.shift, "Shift")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        write!(f, " (with {})", names.join("+"))
    }
}

const M_LSHIFT: u8 = 1;
const M_RSHIFT: u8 = 2;
const M_LCTRL: u8 = 4;
const M_RCTRL: u8 = 8;
const M_LALT: u8 = 16;
const M_RALT: u8 = 32;
const M_LMETA: u8 = 64;
const M_RMETA: u8 = 128;

fn modifier_bit(code: u16) -> Option<u8> {
    Some(match code {
        KEY_LEFTSHIFT => M_LSHIFT,
        KEY_RIGHTSHIFT => M_RSHIFT,
        KEY_LEFTCTRL => M_LCTRL,
        KEY_RIGHTCTRL => M_RCTRL,
        KEY_LEFTALT => M_LALT,
        KEY_RIGHTALT => M_RALT,
        KEY_LEFTMETA => M_LMETA,
        KEY_RIGHTMETA => M_RMETA,
        _ => return None,
    })
}

/// Key events → UTF-8 bytes for one device (pure; one per device session).
///
/// `key(code, value, out)` takes an `EV_KEY` event: value 1 press, 0 release, 2 auto-repeat (ignored:
/// a scanner never holds a key to repeat it). Enter and keypad Enter append CR, Tab appends TAB.
/// Ctrl+key gives the control character of the key's symbol (Ctrl+] = GS, as GS1 scanners send it);
/// Alt held while keypad digits are typed gives that ASCII code when Alt is released.
#[derive(Debug, Clone)]
pub struct Translator {
    layout: Layout,
    mods: u8,
    caps: bool,
    /// A dead key waiting for the next key (its combining mark).
    dead: Option<char>,
    /// Keypad digits typed while Alt is held.
    alt_code: Option<u32>,
}

impl Translator {
    pub fn new(layout: Layout) -> Self {
        Translator { layout, mods: 0, caps: false, dead: None, alt_code: None }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Forget every modifier, Caps Lock, a pending dead key and Alt code (after a grab, or a reopen).
    pub fn reset(&mut self) {
        *self = Translator::new(self.layout);
    }

    /// Whether a dead key waits for its next key.
    pub fn is_pending(&self) -> bool {
        self.dead.is_some()
    }

    fn held(&self, bits: u8) -> bool {
        self.mods & bits != 0
    }
    fn altgr(&self) -> bool {
        self.layout.tables().altgr && self.held(M_RALT)
    }
    fn alt(&self) -> bool {
        self.held(M_LALT) || (!self.layout.tables().altgr && self.held(M_RALT))
    }
    fn mods(&self) -> Mods {
        Mods {
            shift: self.held(M_LSHIFT | M_RSHIFT),
            altgr: self.altgr(),
            ctrl: self.held(M_LCTRL | M_RCTRL),
            alt: self.alt(),
            meta: self.held(M_LMETA | M_RMETA),
        }
    }

    /// A pending dead key types its accent on its own.
    pub fn flush_dead(&mut self, out: &mut Vec<u8>) {
        if let Some(mark) = self.dead.take() {
            push_char(out, spacing(mark));
        }
    }

    /// Translate one `EV_KEY` event, appending what it types to `out`. On error nothing is appended.
    pub fn key(&mut self, code: u16, value: i32, out: &mut Vec<u8>) -> Result<(), KeyError> {
        match value {
            1 => self.press(code, out),
            0 => self.release(code, out),
            _ => Ok(()),
        }
    }

    fn release(&mut self, code: u16, out: &mut Vec<u8>) -> Result<(), KeyError> {
        let Some(bit) = modifier_bit(code) else { return Ok(()) };
        let was_alt = self.alt();
        self.mods &= !bit;
        if was_alt && !self.alt() {
            if let Some(n) = self.alt_code.take() {
                let c = u8::try_from(n).ok().filter(u8::is_ascii).ok_or(KeyError::AltCode(n))?;
                self.flush_dead(out);
                out.push(c);
            }
        }
        Ok(())
    }

    fn press(&mut self, code: u16, out: &mut Vec<u8>) -> Result<(), KeyError> {
        if let Some(bit) = modifier_bit(code) {
            let was_alt = self.alt();
            self.mods |= bit;
            if !was_alt && self.alt() {
                self.alt_code = None;
            }
            return Ok(());
        }
        match code {
            KEY_CAPSLOCK => {
                self.caps = !self.caps;
                return Ok(());
            }
            KEY_NUMLOCK | KEY_SCROLLLOCK => return Ok(()),
            KEY_ENTER | KEY_KPENTER | KEY_TAB if !self.alt() && !self.held(M_LMETA | M_RMETA) => {
                self.flush_dead(out);
                out.push(if code == KEY_TAB { b'\t' } else { b'\r' });
                return Ok(());
            }
            _ => {}
        }
        let mods = self.mods();
        let unmapped = KeyError::Unmapped { code, layout: self.layout, with: mods };
        if mods.alt {
            let d = keypad_digit(code).ok_or(unmapped)?;
            let n = self.alt_code.unwrap_or(0).saturating_mul(10).saturating_add(d).min(99_999);
            self.alt_code = Some(n);
            return Ok(());
        }
        if mods.meta {
            return Err(unmapped);
        }
        let sym = match keypad(code, self.layout.tables().kp_decimal) {
            Some(c) if !mods.ctrl => Sym::Char(c),
            Some(_) => return Err(unmapped),
            None => {
                let (levels, letter) = lookup(self.layout, code).ok_or(unmapped.clone())?;
                let level = if mods.altgr {
                    2
                } else if mods.shift != (letter && self.caps) {
                    1
                } else {
                    0
                };
                levels[level].ok_or(unmapped.clone())?
            }
        };
        if mods.ctrl {
            let Sym::Char(c) = sym else { return Err(unmapped) };
            let c = c.to_ascii_uppercase();
            if !('@'..='_').contains(&c) {
                return Err(unmapped);
            }
            self.flush_dead(out);
            out.push(c as u8 & 0x1f);
            return Ok(());
        }
        match sym {
            Sym::Dead(mark) => match self.dead.take() {
                Some(prev) if prev == mark => push_char(out, spacing(mark)),
                Some(prev) => {
                    push_char(out, spacing(prev));
                    self.dead = Some(mark);
                }
                None => self.dead = Some(mark),
            },
            Sym::Char(c) => match self.dead.take() {
                None => push_char(out, c),
                Some(mark) => match compose(mark, c) {
                    Some(composed) => push_char(out, composed),
                    None if c == ' ' => push_char(out, spacing(mark)),
                    None => {
                        push_char(out, spacing(mark));
                        push_char(out, c);
                    }
                },
            },
        }
        Ok(())
    }
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut b = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
}

/// The exclusive-grab rule for one open device (pure).
///
/// Tracks which keys are down. The grab (EVIOCGRAB) is asked for only when none is: grabbing while a
/// key is down would hide its release from the desktop, which would then see it stuck down. Events
/// seen before the grab went to the desktop too, so they are not translated (see [`KeyboardSession`]).
#[derive(Debug, Clone, Default)]
pub struct GrabGate {
    held: BTreeSet<u16>,
    state: GrabState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GrabState {
    /// Open, not grabbed: waiting for every key to be up.
    #[default]
    Waiting,
    Grabbed,
    /// Shut down or failed; never grab again on this handle.
    Released,
}

impl GrabGate {
    /// The device was just opened with these keys down. True: grab now.
    pub fn opened(&mut self, held: impl IntoIterator<Item = u16>) -> bool {
        self.held = held.into_iter().collect();
        self.state = GrabState::Waiting;
        self.should_grab()
    }

    /// One `EV_KEY` event. True: grab now (the last key held went up).
    /// An auto-repeat (value 2) counts as held, in case the press was missed.
    pub fn key(&mut self, code: u16, value: i32) -> bool {
        match value {
            0 => {
                self.held.remove(&code);
            }
            _ => {
                self.held.insert(code);
            }
        }
        self.should_grab()
    }

    fn should_grab(&self) -> bool {
        self.state == GrabState::Waiting && self.held.is_empty()
    }

    /// The grab was taken.
    pub fn grabbed(&mut self) {
        if self.state == GrabState::Waiting {
            self.state = GrabState::Grabbed;
        }
    }

    pub fn state(&self) -> GrabState {
        self.state
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Shutting down, or the device failed. True: the grab is held and must be released now.
    pub fn release(&mut self) -> bool {
        let was = self.state == GrabState::Grabbed;
        self.state = GrabState::Released;
        was
    }
}

/// What a keyboard session found in the keys typed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Typed {
    /// From the framer: a frame to decode, or an overlong frame or noise that was dropped.
    Frame(FrameEvent),
    /// A key that could not be translated (reported once per frame); the frame it is in will be dropped.
    Unmapped(KeyError),
    /// A frame that held an untranslatable key was dropped whole; `len` is the bytes it had without it.
    Dropped { len: usize },
}

/// What the reader must do after one key event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Take the exclusive grab now, then call [`KeyboardSession::grabbed`].
    pub grab: bool,
    pub typed: Vec<Typed>,
}

/// One open keyboard device, pure: grab rule + translator + framer.
#[derive(Debug, Clone)]
pub struct KeyboardSession {
    gate: GrabGate,
    tr: Translator,
    framer: Framer,
    /// The frame being typed held a key that could not be translated.
    poisoned: bool,
}

/// Bytes the framer may treat as a terminator.
fn maybe_terminator(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b'\t' | 0x03)
}

impl KeyboardSession {
    pub fn new(layout: Layout, framing: FramingConfig) -> Self {
        KeyboardSession { gate: GrabGate::default(), tr: Translator::new(layout), framer: Framer::new(framing), poisoned: false }
    }

    pub fn gate(&self) -> &GrabGate {
        &self.gate
    }

    /// The device was (re)opened with these keys down. True: grab now.
    pub fn opened(&mut self, held: impl IntoIterator<Item = u16>) -> bool {
        self.gate.opened(held)
    }

    /// The grab was taken: translation starts from a clean keyboard state with the next press.
    pub fn grabbed(&mut self) {
        self.gate.grabbed();
        self.tr.reset();
    }

    /// One `EV_KEY` event. Before the grab it only moves the grab rule (the desktop got the key);
    /// after it, it is translated and framed.
    pub fn key(&mut self, code: u16, value: i32) -> Step {
        if self.gate.state() != GrabState::Grabbed {
            return Step { grab: self.gate.key(code, value), typed: Vec::new() };
        }
        self.gate.key(code, value);
        let mut bytes = Vec::new();
        let res = self.tr.key(code, value, &mut bytes);
        let mut typed = self.push(&bytes);
        if let Err(e) = res {
            if !self.poisoned {
                typed.push(Typed::Unmapped(e));
            }
            self.poisoned = true;
        }
        Step { grab: false, typed }
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<Typed> {
        let evs = self.framer.push(bytes);
        let mut out: Vec<Typed> = evs.into_iter().map(|ev| self.filter(ev)).collect();
        // A terminator that ended an empty frame (the bad key was all it had) ends the poisoned frame too.
        if self.poisoned && !self.framer.is_pending() && bytes.last().copied().is_some_and(maybe_terminator) {
            self.poisoned = false;
            out.push(Typed::Dropped { len: 0 });
        }
        out
    }

    fn filter(&mut self, ev: FrameEvent) -> Typed {
        match ev {
            FrameEvent::Frame(b) if self.poisoned => {
                self.poisoned = false;
                Typed::Dropped { len: b.len() }
            }
            FrameEvent::Overlong { .. } => {
                self.poisoned = false;
                Typed::Frame(ev)
            }
            ev => Typed::Frame(ev),
        }
    }

    /// Whether something is held that only a terminator or `flush_idle` will release.
    pub fn is_pending(&self) -> bool {
        self.framer.is_pending() || self.tr.is_pending() || self.poisoned
    }

    /// The device has been quiet for the idle gap: whatever is held ends here.
    pub fn flush_idle(&mut self) -> Vec<Typed> {
        let mut bytes = Vec::new();
        self.tr.flush_dead(&mut bytes);
        let mut out = self.push(&bytes);
        let evs = self.framer.flush_idle();
        out.extend(evs.into_iter().map(|ev| self.filter(ev)));
        if self.poisoned {
            self.poisoned = false;
            out.push(Typed::Dropped { len: 0 });
        }
        out
    }

    /// The device is closing (shutdown, unplug, error). True: the grab is held and must be released.
    pub fn release(&mut self) -> bool {
        self.gate.release()
    }

    /// The device went away: forget keyboard state; a partial frame is reported as noise.
    pub fn lost(&mut self) -> Option<FrameEvent> {
        self.tr.reset();
        self.poisoned = false;
        self.framer.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::framer::Terminator;

    const SHIFT: u16 = KEY_LEFTSHIFT;
    const ALTGR: u16 = KEY_RIGHTALT;

    /// Key codes for the keys of a US keyboard, by the character printed on them (lower case).
    fn us_key(c: char) -> u16 {
        let rows: [(u16, &str); 4] = [(2, "1234567890-="), (16, "qwertyuiop[]"), (30, "asdfghjkl;'`"), (44, "zxcvbnm,./")];
        if c == ' ' {
            return KEY_SPACE;
        }
        if c == '\\' {
            return 43;
        }
        for (first, row) in rows {
            if let Some(i) = row.chars().position(|r| r == c) {
                return first + i as u16;
            }
        }
        panic!("no US key for {c:?}")
    }

    /// One key pressed and released.
    fn tap(code: u16) -> Vec<(u16, i32)> {
        vec![(code, 1), (code, 0)]
    }

    /// A key pressed and released while `modifier` is held.
    fn with(modifier: u16, code: u16) -> Vec<(u16, i32)> {
        vec![(modifier, 1), (code, 1), (code, 0), (modifier, 0)]
    }

    /// Keys named by their US key caps (physical positions), each tapped.
    fn taps(us_caps: &str) -> Vec<(u16, i32)> {
        us_caps.chars().flat_map(|c| tap(us_key(c))).collect()
    }

    fn run(layout: Layout, events: &[(u16, i32)]) -> Result<String, KeyError> {
        let mut t = Translator::new(layout);
        let mut out = Vec::new();
        for &(c, v) in events {
            t.key(c, v, &mut out)?;
        }
        t.flush_dead(&mut out);
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    fn text(layout: Layout, events: &[(u16, i32)]) -> String {
        run(layout, events).expect("translates")
    }

    fn cat(parts: &[Vec<(u16, i32)>]) -> Vec<(u16, i32)> {
        parts.concat()
    }

    #[test]
    fn us_letters_digits_and_shift() {
        assert_eq!(text(Layout::Us, &taps("abc 1234567890")), "abc 1234567890");
        assert_eq!(text(Layout::Us, &[(30, 1), (30, 0)]), "a");
        let ev = cat(&[with(SHIFT, 30), tap(30), with(KEY_RIGHTSHIFT, us_key('2')), with(SHIFT, us_key('-')), tap(us_key('/')), with(SHIFT, us_key('/'))]);
        assert_eq!(text(Layout::Us, &ev), "Aa@_/?");
        assert_eq!(text(Layout::Us, &taps("[];'`\\,./-=")), "[];'`\\,./-=");
    }

    #[test]
    fn enter_keypad_enter_and_tab() {
        let ev = cat(&[tap(2), tap(KEY_ENTER), tap(3), tap(KEY_KPENTER), tap(4), tap(KEY_TAB)]);
        assert_eq!(text(Layout::Us, &ev), "1\r2\r3\t");
        // Shift does not change them.
        assert_eq!(text(Layout::De, &with(SHIFT, KEY_KPENTER)), "\r");
    }

    #[test]
    fn repeats_are_ignored() {
        let ev = [(30, 1), (30, 2), (30, 2), (30, 0), (KEY_KP1, 1), (KEY_KP1, 2), (KEY_KP1, 0)];
        assert_eq!(text(Layout::Us, &ev), "a1");
    }

    #[test]
    fn keypad_digits_and_signs() {
        let kp = [KEY_KP1, KEY_KP2, KEY_KP3, KEY_KP4, KEY_KP5, KEY_KP6, KEY_KP7, KEY_KP8, KEY_KP9, KEY_KP0, KEY_KPDOT, 55, 74, 78, 98];
        let ev: Vec<_> = kp.iter().flat_map(|&k| tap(k)).collect();
        assert_eq!(text(Layout::Us, &ev), "1234567890.*-+/");
        assert_eq!(text(Layout::De, &ev), "1234567890,*-+/");
        assert_eq!(text(Layout::Fr, &ev), "1234567890.*-+/");
        // Num Lock is ignored: keypad digits stay digits. Shift does not turn them into arrows.
        assert_eq!(text(Layout::Us, &cat(&[tap(KEY_NUMLOCK), tap(KEY_KP7), with(SHIFT, KEY_KP8)])), "78");
    }

    #[test]
    fn de_qwertz() {
        // Physical Y key (21) types z, physical Z key (44) types y.
        assert_eq!(text(Layout::De, &cat(&[tap(21), tap(44), with(SHIFT, 21), with(SHIFT, 44)])), "zyZY");
        // ß on the - key, umlauts on [ ; ' keys, and their capitals.
        assert_eq!(text(Layout::De, &taps("-[;'")), "ßüöä");
        assert_eq!(text(Layout::De, &cat(&[with(SHIFT, us_key('[')), with(SHIFT, us_key(';')), with(SHIFT, us_key('\''))])), "ÜÖÄ");
        // AltGr+Q is @, AltGr+E is €, AltGr+7..0 are { [ ] }, AltGr+ß is backslash, AltGr+< is |.
        let altgr: Vec<_> = "qe7890-".chars().flat_map(|c| with(ALTGR, us_key(c))).collect();
        assert_eq!(text(Layout::De, &altgr), "@€{[]}\\");
        assert_eq!(text(Layout::De, &with(ALTGR, 86)), "|");
        // Shifted digit row: ! " § $ % & / ( ) =
        let shifted: Vec<_> = "1234567890".chars().flat_map(|c| with(SHIFT, us_key(c))).collect();
        assert_eq!(text(Layout::De, &shifted), "!\"§$%&/()=");
        // The rest of the punctuation: + * # ' , ; . : - _ < >
        let ev = cat(&[
            tap(27),
            with(SHIFT, 27),
            tap(43),
            with(SHIFT, 43),
            tap(51),
            with(SHIFT, 51),
            tap(52),
            with(SHIFT, 52),
            tap(53),
            with(SHIFT, 53),
            tap(86),
            with(SHIFT, 86),
        ]);
        assert_eq!(text(Layout::De, &ev), "+*#',;.:-_<>");
        // A shop barcode with an e-mail address: max@example.de
        let ev = cat(&[taps("max"), with(ALTGR, us_key('q')), taps("example."), taps("de")]);
        assert_eq!(text(Layout::De, &ev), "max@example.de");
    }

    #[test]
    fn de_dead_keys() {
        let circ = us_key('`');
        let acute = us_key('=');
        // ^ then a vowel composes; ^ then space is a plain ^; ^ then a consonant gives both.
        assert_eq!(text(Layout::De, &cat(&[tap(circ), tap(us_key('e'))])), "ê");
        assert_eq!(text(Layout::De, &cat(&[tap(circ), tap(KEY_SPACE)])), "^");
        assert_eq!(text(Layout::De, &cat(&[tap(circ), tap(us_key('x'))])), "^x");
        assert_eq!(text(Layout::De, &cat(&[tap(acute), tap(us_key('e')), with(SHIFT, acute), tap(us_key('a'))])), "éà");
        assert_eq!(text(Layout::De, &cat(&[tap(acute), with(SHIFT, us_key('e'))])), "É");
        // Shift+^ key is the degree sign, not dead.
        assert_eq!(text(Layout::De, &with(SHIFT, circ)), "°");
        // The same dead key twice types its accent once; a dead key before Enter is typed before CR.
        assert_eq!(text(Layout::De, &cat(&[tap(circ), tap(circ)])), "^");
        assert_eq!(text(Layout::De, &cat(&[tap(circ), tap(KEY_ENTER)])), "^\r");
        // A dead key held over a grab boundary is forgotten on reset.
        let mut t = Translator::new(Layout::De);
        let mut out = Vec::new();
        t.key(circ, 1, &mut out).expect("ok");
        t.reset();
        t.key(us_key('e'), 1, &mut out).expect("ok");
        assert_eq!(out, "e".as_bytes());
    }

    #[test]
    fn fr_azerty() {
        // Unshifted digit row types & é " ' ( - è _ ç à; Shift gives the digits.
        assert_eq!(text(Layout::Fr, &taps("1234567890")), "&é\"'(-è_çà");
        let digits: Vec<_> = "1234567890".chars().flat_map(|c| with(SHIFT, us_key(c))).collect();
        assert_eq!(text(Layout::Fr, &digits), "1234567890");
        // A/Q and Z/W swapped, M on the ; key, comma on the M key.
        assert_eq!(text(Layout::Fr, &taps("qawz;m")), "aqzwm,");
        assert_eq!(text(Layout::Fr, &cat(&[with(SHIFT, us_key('q')), with(SHIFT, us_key(';')), with(SHIFT, us_key('m'))])), "AM?");
        // AltGr+à is @, AltGr+é is ~, AltGr+ç is ^, AltGr+E is €.
        let ev = cat(&[with(ALTGR, us_key('0')), with(ALTGR, us_key('2')), with(ALTGR, us_key('9')), with(ALTGR, us_key('e'))]);
        assert_eq!(text(Layout::Fr, &ev), "@~^€");
        // ; . : / ! § ù % $ £ * µ ) °
        let keys = [51u16, 52, 53, 40, 27, 43, 12];
        let ev: Vec<_> = keys.iter().flat_map(|&k| cat(&[tap(k), with(SHIFT, k)])).collect();
        assert_eq!(text(Layout::Fr, &ev), ";.:/!§ù%$£*µ)°");
        // Dead ^ and ¨ on the [ key.
        let dead = us_key('[');
        assert_eq!(text(Layout::Fr, &cat(&[tap(dead), tap(us_key('o')), with(SHIFT, dead), tap(us_key('i'))])), "ôï");
        assert_eq!(text(Layout::Fr, &cat(&[with(SHIFT, dead), tap(KEY_SPACE)])), "¨");
        // A serial number as a French-set scanner types it: shifted digits, letters, a dash.
        let ev = cat(&[with(SHIFT, us_key('a')), with(SHIFT, us_key('z')), tap(us_key('6')), with(SHIFT, us_key('4')), with(SHIFT, us_key('2'))]);
        assert_eq!(text(Layout::Fr, &ev), "QW-42");
    }

    #[test]
    fn caps_lock_shifts_letters_only() {
        let ev = cat(&[tap(KEY_CAPSLOCK), taps("ab1"), with(SHIFT, us_key('a')), tap(KEY_CAPSLOCK), taps("a")]);
        assert_eq!(text(Layout::Us, &ev), "AB1aa");
        assert_eq!(text(Layout::De, &cat(&[tap(KEY_CAPSLOCK), taps("[-")])), "Üß");
        assert_eq!(text(Layout::Fr, &cat(&[tap(KEY_CAPSLOCK), taps("2q")])), "éA");
    }

    #[test]
    fn ctrl_and_alt_codes() {
        // Ctrl+] is GS (GS1 separator), Ctrl+M is CR, Ctrl+Shift+2 (@) is NUL on us.
        assert_eq!(run(Layout::Us, &with(KEY_LEFTCTRL, us_key(']'))), Ok("\u{1d}".into()));
        assert_eq!(run(Layout::Us, &with(KEY_RIGHTCTRL, us_key('m'))), Ok("\r".into()));
        // Alt + keypad 0 2 9 is GS too, typed when Alt goes up.
        let ev = [(KEY_LEFTALT, 1), (KEY_KP0, 1), (KEY_KP0, 0), (KEY_KP2, 1), (KEY_KP2, 0), (KEY_KP9, 1), (KEY_KP9, 0), (KEY_LEFTALT, 0)];
        assert_eq!(text(Layout::De, &ev), "\u{1d}");
        // On us, right Alt is Alt too.
        let ev = [(KEY_RIGHTALT, 1), (KEY_KP6, 1), (KEY_KP6, 0), (KEY_KP5, 1), (KEY_KP5, 0), (KEY_RIGHTALT, 0)];
        assert_eq!(text(Layout::Us, &ev), "A");
        let ev = [(KEY_LEFTALT, 1), (KEY_KP2, 1), (KEY_KP5, 1), (KEY_KP5, 1), (KEY_LEFTALT, 0)];
        assert_eq!(run(Layout::Us, &ev), Err(KeyError::AltCode(255)));
        // Alt + a letter is not text.
        assert!(matches!(run(Layout::Us, &with(KEY_LEFTALT, 30)), Err(KeyError::Unmapped { code: 30, with: Mods { alt: true, .. }, .. })));
        // Ctrl + a dead key or a non-ASCII symbol is not text either.
        assert!(run(Layout::De, &with(KEY_LEFTCTRL, us_key('['))).is_err());
    }

    #[test]
    fn unknown_keys_are_errors_not_guesses() {
        // Esc, Backspace, F1, an arrow, Meta+A, AltGr on us (no such level), an empty AltGr level.
        for ev in [tap(1), tap(14), tap(59), tap(103), with(KEY_LEFTMETA, 30), with(ALTGR, 30)] {
            assert!(matches!(run(Layout::Us, &ev), Err(KeyError::Unmapped { .. })), "{ev:?}");
        }
        let e = run(Layout::De, &with(ALTGR, 30)).expect_err("AltGr+A has nothing on de");
        assert_eq!(e, KeyError::Unmapped { code: 30, layout: Layout::De, with: Mods { altgr: true, ..Mods::default() } });
        assert_eq!(e.to_string(), "key code 30 (with AltGr) has no mapping in layout de");
        assert_eq!(run(Layout::Fr, &with(SHIFT, 41)).map_err(|e| e.to_string()), Err("key code 41 (with Shift) has no mapping in layout fr".to_string()));
        // An error appends nothing; the translator goes on with the next key.
        let mut t = Translator::new(Layout::Us);
        let mut out = Vec::new();
        assert!(t.key(1, 1, &mut out).is_err());
        t.key(30, 1, &mut out).expect("a");
        assert_eq!(out, b"a");
    }

    #[test]
    fn tables_are_well_formed() {
        for layout in [Layout::Us, Layout::De, Layout::Fr] {
            let t = layout.tables();
            let mut seen = BTreeSet::new();
            for (code, s) in t.keys {
                assert!(seen.insert(*code), "{layout}: key {code} twice");
                let n = s.chars().count();
                assert!((1..=3).contains(&n), "{layout}: key {code} has {n} levels");
                assert!(keypad(*code, '.').is_none() && modifier_bit(*code).is_none() && ![KEY_ENTER, KEY_TAB, KEY_SPACE].contains(code));
            }
            // Every letter a-z is typed by exactly one key.
            let mut letters: Vec<char> = Vec::new();
            for code in 0..=255u16 {
                if let Some(([Some(Sym::Char(c)), _, _], _)) = lookup(layout, code) {
                    if c.is_ascii_lowercase() {
                        letters.push(c);
                    }
                }
            }
            letters.sort();
            assert_eq!(letters.iter().collect::<String>(), "abcdefghijklmnopqrstuvwxyz", "{layout}");
            // Every digit, through some key and level (so any numeric barcode can be typed).
            for d in '0'..='9' {
                let found = (0..=255u16).any(|code| keypad(code, '.').is_none() && lookup(layout, code).is_some_and(|(l, _)| l.contains(&Some(Sym::Char(d)))));
                assert!(found, "{layout}: no key types {d}");
            }
        }
    }

    #[test]
    fn layout_from_config_text() {
        #[derive(Deserialize)]
        struct L {
            layout: Layout,
        }
        let l: L = toml::from_str("layout = \"fr\"").expect("toml");
        assert_eq!(l.layout, Layout::Fr);
        assert!(toml::from_str::<L>("layout = \"uk\"").is_err());
    }

    #[test]
    fn grab_waits_until_no_key_is_held() {
        let mut g = GrabGate::default();
        // Opened while Shift and A are down (a scan already under way): not yet.
        assert!(!g.opened([SHIFT, 30]));
        assert!(!g.key(30, 0));
        assert!(!g.key(30, 2), "a repeat means the key is down");
        assert!(!g.key(30, 0));
        assert!(!g.key(31, 1));
        assert!(!g.key(31, 0), "Shift is still down");
        assert!(g.key(SHIFT, 0), "nothing held: grab now");
        g.grabbed();
        assert_eq!(g.state(), GrabState::Grabbed);
        assert!(!g.key(30, 1));
        assert!(!g.key(30, 0), "already grabbed: never asked twice");
        assert!(g.release(), "grabbed: release it");
        assert!(!g.release(), "released once only");
        assert_eq!(g.state(), GrabState::Released);
        assert!(!g.key(30, 1) && !g.key(30, 0), "never grab again after release");
        // Opened with nothing down: grab at once. Closing before the grab: nothing to release.
        let mut g = GrabGate::default();
        assert!(g.opened([]));
        assert!(!g.release());
    }

    fn session(layout: Layout) -> KeyboardSession {
        let mut s = KeyboardSession::new(layout, FramingConfig::default());
        assert!(s.opened([]));
        s.grabbed();
        s
    }

    fn feed(s: &mut KeyboardSession, events: &[(u16, i32)]) -> Vec<Typed> {
        events.iter().flat_map(|&(c, v)| s.key(c, v).typed).collect()
    }

    fn frame(text: &str) -> Typed {
        Typed::Frame(FrameEvent::Frame(text.as_bytes().to_vec()))
    }

    #[test]
    fn session_frames_on_enter_and_keypad_enter() {
        let mut s = session(Layout::De);
        let ev = cat(&[taps("4006381333931"), tap(KEY_ENTER), with(SHIFT, 21), taps("12"), tap(KEY_KPENTER)]);
        assert_eq!(feed(&mut s, &ev), [frame("4006381333931"), frame("Z12")]);
        assert!(!s.is_pending());
        // Tab is data by default, a terminator when configured.
        assert_eq!(feed(&mut s, &cat(&[taps("1"), tap(KEY_TAB), taps("2"), tap(KEY_ENTER)])), [frame("1\t2")]);
        let mut s = KeyboardSession::new(Layout::Us, FramingConfig { terminators: vec![Terminator::Tab], ..FramingConfig::default() });
        assert!(s.opened([]));
        s.grabbed();
        assert_eq!(feed(&mut s, &cat(&[taps("ab"), tap(KEY_TAB)])), [frame("ab")]);
    }

    #[test]
    fn session_ignores_keys_before_the_grab() {
        let mut s = KeyboardSession::new(Layout::Us, FramingConfig::default());
        // Opened in the middle of a scan: Shift down. The rest of that scan went to the desktop.
        assert!(!s.opened([SHIFT]));
        let step = s.key(30, 1);
        assert_eq!(step, Step::default());
        assert_eq!(s.key(30, 0), Step::default());
        assert_eq!(s.key(KEY_ENTER, 1), Step::default());
        assert_eq!(s.key(KEY_ENTER, 0), Step::default());
        let step = s.key(SHIFT, 0);
        assert!(step.grab && step.typed.is_empty());
        s.grabbed();
        // Shift's release was before the grab; translation starts clean: lower case.
        assert_eq!(feed(&mut s, &cat(&[taps("ab"), tap(KEY_ENTER)])), [frame("ab")]);
        assert!(s.release());
        assert!(!s.release());
    }

    #[test]
    fn session_drops_a_frame_with_an_unknown_key() {
        let mut s = session(Layout::Us);
        let out = feed(&mut s, &cat(&[taps("12"), tap(1), tap(59), taps("3"), tap(KEY_ENTER)]));
        let [Typed::Unmapped(KeyError::Unmapped { code: 1, .. }), Typed::Dropped { len: 3 }] = &out[..] else { panic!("{out:?}") };
        // The next scan is fine.
        assert_eq!(feed(&mut s, &cat(&[taps("45"), tap(KEY_ENTER)])), [frame("45")]);
        // A frame that is only an unknown key: dropped at its Enter, and the next frame is not poisoned.
        let out = feed(&mut s, &cat(&[tap(1), tap(KEY_ENTER), taps("6"), tap(KEY_ENTER)]));
        assert!(matches!(&out[..], [Typed::Unmapped(_), Typed::Dropped { len: 0 }, Typed::Frame(FrameEvent::Frame(f))] if f == b"6"), "{out:?}");
    }

    #[test]
    fn session_idle_gap_and_loss() {
        let framing = FramingConfig { terminators: vec![], idle_gap: Some(std::time::Duration::from_millis(50)), ..FramingConfig::default() };
        let mut s = KeyboardSession::new(Layout::De, framing);
        assert!(s.opened([]));
        s.grabbed();
        assert!(feed(&mut s, &cat(&[taps("ab"), tap(us_key('`'))])).is_empty());
        assert!(s.is_pending());
        assert_eq!(s.flush_idle(), [frame("ab^")]);
        assert!(!s.is_pending());
        // An unknown key then silence: the frame is dropped at the gap, the next one is clean.
        assert!(matches!(&feed(&mut s, &cat(&[taps("1"), tap(1)]))[..], [Typed::Unmapped(_)]));
        assert!(s.is_pending());
        assert_eq!(s.flush_idle(), [Typed::Dropped { len: 1 }]);
        assert!(feed(&mut s, &taps("2")).is_empty());
        assert_eq!(s.flush_idle(), [frame("2")]);
        // Unplugged mid-frame: the partial frame is reported, state is clean after.
        feed(&mut s, &cat(&[vec![(SHIFT, 1)], taps("12")]));
        assert_eq!(s.lost(), Some(FrameEvent::Noise { len: 2 }));
        assert!(s.release());
        assert!(s.opened([]));
        s.grabbed();
        assert!(feed(&mut s, &taps("a")).is_empty());
        assert_eq!(s.flush_idle(), [frame("a")]);
    }

    #[test]
    fn session_overlong() {
        let mut s = KeyboardSession::new(Layout::Us, FramingConfig { max_len: 4, ..FramingConfig::default() });
        assert!(s.opened([]));
        s.grabbed();
        assert_eq!(feed(&mut s, &cat(&[taps("123456"), tap(KEY_ENTER)])), [Typed::Frame(FrameEvent::Overlong { len: 6 })]);
    }
}
