//! Recognises and strips AIM symbology identifiers (`]E0`, `]C1`, `]Q1`, ...) at the start of a scan.
//!
//! Scanners configured to send AIM ids prefix each read with `]`, a symbology letter and a modifier
//! character. The id tells a GS1 code from a plain one and a QR code from a barcode, which
//! classification rules use, so it is reported as a name and removed from the text.
use serde::Serialize;

/// Exact `]` + letter + modifier identifiers, per the AIM / ISO/IEC 15424 tables. Data, not code.
const EXACT: &[(&str, &str)] = &[
    ("]E0", "EAN-13"),
    ("]E1", "EAN-13 + 2"),
    ("]E2", "EAN-13 + 5"),
    ("]E3", "EAN-13 + add-on"),
    ("]E4", "EAN-8"),
    ("]C0", "Code 128"),
    ("]C1", "GS1-128"),
    ("]C2", "Code 128 (AIM)"),
    ("]C4", "ISBT 128"),
    ("]Q0", "QR Code Model 1"),
    ("]Q1", "QR Code"),
    ("]Q2", "QR Code (ECI)"),
    ("]Q3", "GS1 QR Code"),
    ("]Q4", "GS1 QR Code (ECI)"),
    ("]Q5", "QR Code (AIM)"),
    ("]Q6", "QR Code (AIM, ECI)"),
    ("]d0", "Data Matrix (ECC 000-140)"),
    ("]d1", "Data Matrix"),
    ("]d2", "GS1 DataMatrix"),
    ("]d3", "Data Matrix (AIM)"),
    ("]d4", "Data Matrix (ECI)"),
    ("]d5", "GS1 DataMatrix (ECI)"),
    ("]d6", "Data Matrix (AIM, ECI)"),
    ("]A0", "Code 39"),
    ("]A1", "Code 39 (check digit)"),
    ("]A3", "Code 39 (check digit, transmitted)"),
    ("]A4", "Full ASCII Code 39"),
    ("]A5", "Full ASCII Code 39 (check digit)"),
    ("]A7", "Full ASCII Code 39 (check digit, transmitted)"),
    ("]I0", "ITF"),
    ("]I1", "ITF (check digit)"),
    ("]I3", "ITF (check digit, transmitted)"),
    ("]e0", "GS1 DataBar"),
    ("]L0", "PDF417"),
    ("]L1", "PDF417 (AIM)"),
    ("]L2", "PDF417"),
    ("]z0", "Aztec"),
    ("]z1", "Aztec (AIM)"),
    ("]z3", "Aztec (ECI)"),
    ("]F0", "Codabar"),
    ("]G0", "Code 93"),
    ("]H0", "Code 11"),
    ("]M0", "MSI"),
    ("]S0", "Code 2 of 5"),
    ("]X0", "Other"),
];

/// Fallback by symbology letter when the modifier is not in `EXACT`.
const FAMILY: &[(u8, &str)] = &[
    (b'E', "EAN/UPC"),
    (b'C', "Code 128"),
    (b'Q', "QR Code"),
    (b'd', "Data Matrix"),
    (b'A', "Code 39"),
    (b'I', "ITF"),
    (b'e', "GS1 DataBar"),
    (b'L', "PDF417"),
    (b'z', "Aztec"),
    (b'F', "Codabar"),
    (b'G', "Code 93"),
    (b'H', "Code 11"),
    (b'M', "MSI"),
    (b'S', "Code 2 of 5"),
    (b'R', "Straight 2 of 5"),
    (b'O', "Codablock"),
    (b'X', "Other"),
];

/// A recognised AIM symbology identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Symbology {
    /// The identifier as sent, e.g. `]Q1`.
    pub aim: String,
    /// The human name, e.g. `QR Code`.
    pub name: &'static str,
}

impl Symbology {
    /// GS1 data (FNC1 in first position): element strings separated by GS.
    pub fn is_gs1(&self) -> bool {
        matches!(self.aim.as_str(), "]C1" | "]Q3" | "]Q4" | "]d2" | "]d5" | "]e0")
    }
}

/// Split a leading AIM identifier off a frame. Frames without one come back unchanged with `None`.
pub fn strip(frame: &[u8]) -> (Option<Symbology>, &[u8]) {
    let [b']', letter, modifier, rest @ ..] = frame else {
        return (None, frame);
    };
    if !letter.is_ascii_alphabetic() || !modifier.is_ascii_alphanumeric() {
        return (None, frame);
    }
    let aim = [b']', *letter, *modifier];
    let Ok(aim) = std::str::from_utf8(&aim) else { return (None, frame) };
    let name = EXACT.iter().find(|(id, _)| *id == aim).map(|(_, n)| *n).or_else(|| FAMILY.iter().find(|(l, _)| l == letter).map(|(_, n)| *n));
    match name {
        Some(name) => (Some(Symbology { aim: aim.to_string(), name }), rest),
        None => (None, frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_known_ids() {
        for (input, aim, name, text) in [
            (&b"]E04006381333931"[..], "]E0", "EAN-13", &b"4006381333931"[..]),
            (b"]E496385074", "]E4", "EAN-8", b"96385074"),
            (b"]C10109501101020917\x1d10ABC", "]C1", "GS1-128", b"0109501101020917\x1d10ABC"),
            (b"]Q1https://x.example/t?1", "]Q1", "QR Code", b"https://x.example/t?1"),
            (b"]d2010950110102091717250101", "]d2", "GS1 DataMatrix", b"010950110102091717250101"),
            (b"]A0CODE39", "]A0", "Code 39", b"CODE39"),
            (b"]I01234567890", "]I0", "ITF", b"1234567890"),
            (b"]e00109501101020917", "]e0", "GS1 DataBar", b"0109501101020917"),
            (b"]L2pdf", "]L2", "PDF417", b"pdf"),
            (b"]Q9x", "]Q9", "QR Code", b"x"),
        ] {
            let (s, rest) = strip(input);
            let s = s.expect("recognised");
            assert_eq!((s.aim.as_str(), s.name, rest), (aim, name, text));
        }
        assert!(strip(b"]C1x").0.is_some_and(|s| s.is_gs1()));
    }

    #[test]
    fn leaves_others_alone() {
        for input in [&b"4006381333931"[..], b"]", b"]E", b"]#0abc", b"]K0abc", b"%B4111^X^?", b""] {
            assert_eq!(strip(input), (None, input));
        }
    }
}
