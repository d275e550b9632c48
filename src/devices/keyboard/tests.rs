//! Tests of the keyboard decoding: layouts, modifiers, dead keys, the grab rule and sessions.
use std::collections::BTreeSet;

use serde::Deserialize;

use super::layout::*;
use super::translate::*;
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
