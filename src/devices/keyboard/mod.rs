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
#[cfg(test)]
use code::*;

use std::collections::BTreeSet;

mod layout;
mod translate;

pub use layout::Layout;
pub use translate::{KeyError, Mods, Translator};

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
pub(super) fn maybe_terminator(b: u8) -> bool {
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
mod tests;
