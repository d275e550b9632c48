//! The translator: key events under a layout and the held modifiers → text, or an error naming the key.
use std::fmt;

use thiserror::Error;

use super::code::*;
use super::layout::*;

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

pub(super) const M_LSHIFT: u8 = 1;
pub(super) const M_RSHIFT: u8 = 2;
pub(super) const M_LCTRL: u8 = 4;
pub(super) const M_RCTRL: u8 = 8;
pub(super) const M_LALT: u8 = 16;
pub(super) const M_RALT: u8 = 32;
pub(super) const M_LMETA: u8 = 64;
pub(super) const M_RMETA: u8 = 128;

pub(super) fn modifier_bit(code: u16) -> Option<u8> {
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

pub(super) fn push_char(out: &mut Vec<u8>, c: char) {
    let mut b = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
}
