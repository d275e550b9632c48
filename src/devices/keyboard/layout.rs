//! Keyboard layouts as data: the symbols each key code types under `us`, `de` and `fr`, dead keys and composition.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::code::*;

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

    pub(super) fn tables(self) -> &'static Tables {
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
pub(super) struct Tables {
    pub(super) keys: &'static [(u16, &'static str)],
    pub(super) letters: [(u16, &'static str); 3],
    /// Right Alt is AltGr (else it is a second Alt).
    pub(super) altgr: bool,
    /// What keypad `.`/`Del` types.
    pub(super) kp_decimal: char,
}

pub(super) static US: Tables = Tables {
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

pub(super) static DE: Tables = Tables {
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

pub(super) static FR: Tables = Tables {
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
pub(super) fn keypad(code: u16, decimal: char) -> Option<char> {
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

pub(super) fn keypad_digit(code: u16) -> Option<u32> {
    keypad(code, '.').and_then(|c| c.to_digit(10))
}

/// What one level of a key produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sym {
    Char(char),
    /// A dead key, named by its combining mark.
    Dead(char),
}

pub(super) fn is_combining(c: char) -> bool {
    ('\u{300}'..='\u{36f}').contains(&c)
}

/// The symbols of a key (plain, Shift, AltGr) and whether Caps Lock shifts it (letters only).
pub(super) fn lookup(layout: Layout, code: u16) -> Option<([Option<Sym>; 3], bool)> {
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
pub(super) const COMPOSE: &[(char, &str)] =
    &[('\u{302}', "aâeêiîoôuûAÂEÊIÎOÔUÛ"), ('\u{308}', "aäeëiïoöuüyÿAÄEËIÏOÖUÜ"), ('\u{301}', "aáeéiíoóuúyýAÁEÉIÍOÓUÚYÝ"), ('\u{300}', "aàeèiìoòuùAÀEÈIÌOÒUÙ")];

pub(super) fn compose(mark: char, base: char) -> Option<char> {
    let (_, pairs) = COMPOSE.iter().find(|(m, _)| *m == mark)?;
    let v: Vec<char> = pairs.chars().collect();
    v.chunks(2).find(|p| p[0] == base).and_then(|p| p.get(1).copied())
}

/// The accent a dead key types on its own (followed by space, by itself, or by a letter it does not compose with).
pub(super) fn spacing(mark: char) -> char {
    match mark {
        '\u{302}' => '^',
        '\u{308}' => '¨',
        '\u{301}' => '´',
        '\u{300}' => '`',
        other => other,
    }
}
