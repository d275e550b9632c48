//! Classification rules: which profile and operation a scan suggests, from its prefix, length, regex, symbology and kind.
//!
//! Profiles carry `[[scan_rules]]` so that the technician who drops in a lottery profile also
//! teaches posgate what a lottery ticket looks like. Rules are tried in order; the first match wins.
//! The suggestion is only a hint to the POS app: nothing runs by itself.
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use super::aim::Symbology;
use super::scans::ScanKind;

/// One rule, as written in a profile's `[[scan_rules]]` or the daemon's config.
///
/// Every condition given must hold; a rule with none matches everything (useful last).
/// ```toml
/// [[scan_rules]]
/// operation = "ticket-query"
/// prefix = ["LT", "LX"]          # or prefix = "LT"
/// length = { min = 18, max = 20 } # or length = 13, or length = [8, 13] (exact lengths)
/// regex = "^LT[0-9]+$"
/// symbology = ["QR Code", "]C1"]  # name, AIM id, or AIM family like "]Q"
/// kind = "barcode"                # or "card" (matched against the clear PAN, in memory)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanRule {
    /// The profile the scan is for; implied (and filled in) when the rule lives in a profile file.
    #[serde(default)]
    pub profile: Option<String>,
    pub operation: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub prefix: Option<Vec<String>>,
    #[serde(default)]
    pub length: Option<LengthRule>,
    /// Matched with `regex-lite` (the `regex` syntax without Unicode classes: `\d`, `\w`, `\s` and
    /// `[[:alpha:]]` are ASCII, `\p{..}` is refused at load); scans are ASCII barcodes and PANs, and the
    /// Unicode tables cost the shipped binary about 0.7 MB.
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub symbology: Option<Vec<String>>,
    #[serde(default)]
    pub kind: Option<ScanKind>,
}

impl ScanRule {
    /// Fill in the profile for a rule read from that profile's file.
    pub fn in_profile(mut self, profile: &str) -> Self {
        if self.profile.is_none() {
            self.profile = Some(profile.to_string());
        }
        self
    }
}

/// Allowed text lengths, in characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LengthRule {
    Exact(usize),
    OneOf(Vec<usize>),
    Range {
        #[serde(default)]
        min: Option<usize>,
        #[serde(default)]
        max: Option<usize>,
    },
}

impl LengthRule {
    fn accepts(&self, n: usize) -> bool {
        match self {
            LengthRule::Exact(e) => n == *e,
            LengthRule::OneOf(v) => v.contains(&n),
            LengthRule::Range { min, max } => min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m),
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// The profile and operation a scan suggests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    pub profile: String,
    pub operation: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("scan rule {index} (operation {operation:?}): no profile")]
    NoProfile { index: usize, operation: String },
    #[error("scan rule {index} (operation {operation:?}): bad regex: {why}")]
    BadRegex { index: usize, operation: String, why: String },
}

/// What a rule looks at. For cards `text` is the clear PAN: it stays in this process.
#[derive(Debug, Clone, Copy)]
pub struct ScanInput<'a> {
    pub kind: ScanKind,
    pub symbology: Option<&'a Symbology>,
    pub text: &'a str,
}

#[derive(Debug, Clone)]
struct Compiled {
    rule: ScanRule,
    regex: Option<regex_lite::Regex>,
}

/// Rules compiled once (regexes checked at load time), evaluated per scan.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    rules: Vec<Compiled>,
}

impl Classifier {
    pub fn new(rules: impl IntoIterator<Item = ScanRule>) -> Result<Self, RuleError> {
        let mut out = Vec::new();
        for (index, rule) in rules.into_iter().enumerate() {
            if rule.profile.is_none() {
                return Err(RuleError::NoProfile { index, operation: rule.operation });
            }
            let regex = match &rule.regex {
                Some(r) => Some(regex_lite::Regex::new(r).map_err(|e| RuleError::BadRegex { index, operation: rule.operation.clone(), why: e.to_string() })?),
                None => None,
            };
            out.push(Compiled { rule, regex });
        }
        Ok(Classifier { rules: out })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that matches, as a suggestion.
    pub fn classify(&self, scan: ScanInput<'_>) -> Option<Suggestion> {
        self.rules.iter().find(|c| c.matches(&scan)).and_then(|c| Some(Suggestion { profile: c.rule.profile.clone()?, operation: c.rule.operation.clone() }))
    }
}

impl Compiled {
    fn matches(&self, scan: &ScanInput<'_>) -> bool {
        let r = &self.rule;
        if r.kind.is_some_and(|k| k != scan.kind) {
            return false;
        }
        if let Some(prefixes) = &r.prefix {
            if !prefixes.iter().any(|p| scan.text.starts_with(p.as_str())) {
                return false;
            }
        }
        if let Some(len) = &r.length {
            if !len.accepts(scan.text.chars().count()) {
                return false;
            }
        }
        if let Some(re) = &self.regex {
            if !re.is_match(scan.text) {
                return false;
            }
        }
        if let Some(wanted) = &r.symbology {
            let Some(sym) = scan.symbology else { return false };
            let hit = wanted
                .iter()
                .any(|w| w.eq_ignore_ascii_case(sym.name) || w == &sym.aim || (w.len() == 2 && w.starts_with(']') && sym.aim.starts_with(w.as_str())));
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::aim;

    #[derive(Deserialize)]
    struct ProfileLike {
        scan_rules: Vec<ScanRule>,
    }

    fn rules() -> Classifier {
        let p: ProfileLike = toml::from_str(
            r#"
            [[scan_rules]]
            operation = "card-query"
            kind = "card"
            prefix = "622202"

            [[scan_rules]]
            operation = "ticket-consume"
            symbology = ["]Q"]
            regex = "^TK-[0-9]{6}$"

            [[scan_rules]]
            profile = "lottery"
            operation = "redeem"
            kind = "barcode"
            length = [18, 20]
            prefix = ["9", "8"]

            [[scan_rules]]
            operation = "checkin"
            symbology = "EAN-13"
            length = { min = 13, max = 13 }
            "#,
        )
        .expect("toml");
        Classifier::new(p.scan_rules.into_iter().map(|r| r.in_profile("loyalty"))).expect("compiles")
    }

    fn sugg(p: &str, o: &str) -> Option<Suggestion> {
        Some(Suggestion { profile: p.into(), operation: o.into() })
    }

    #[test]
    fn first_match_wins() {
        let c = rules();
        let qr = aim::strip(b"]Q1x").0;
        let ean = aim::strip(b"]E0x").0;
        let card = |t| ScanInput { kind: ScanKind::Card, symbology: None, text: t };
        fn code<'a>(t: &'a str, s: Option<&'a Symbology>) -> ScanInput<'a> {
            ScanInput { kind: ScanKind::Barcode, symbology: s, text: t }
        }
        assert_eq!(c.classify(card("6222021234567890123")), sugg("loyalty", "card-query"));
        assert_eq!(c.classify(card("4111111111111111")), None);
        assert_eq!(c.classify(code("TK-123456", qr.as_ref())), sugg("loyalty", "ticket-consume"));
        assert_eq!(c.classify(code("TK-123456", ean.as_ref())), None);
        assert_eq!(c.classify(code("912345678901234567", None)), sugg("lottery", "redeem"));
        assert_eq!(c.classify(code("9123456789012345678", None)), None);
        assert_eq!(c.classify(code("4006381333931", ean.as_ref())), sugg("loyalty", "checkin"));
        assert_eq!(c.classify(code("4006381333931", None)), None);
    }

    #[test]
    fn load_errors() {
        let r = ScanRule { profile: None, operation: "x".into(), prefix: None, length: None, regex: None, symbology: None, kind: None };
        assert!(matches!(Classifier::new([r.clone()]), Err(RuleError::NoProfile { index: 0, .. })));
        let bad = ScanRule { regex: Some("(".into()), ..r.in_profile("p") };
        assert!(matches!(Classifier::new([bad]), Err(RuleError::BadRegex { index: 0, .. })));
        assert!(toml::from_str::<ScanRule>("operation = \"x\"\nprefx = \"1\"").is_err());
    }

    /// The patterns are `regex-lite`: the `regex` syntax profiles use (classes, repeats, anchors,
    /// groups, `\d`) works as before; Unicode classes are refused at load with the rule named, and
    /// `\d` is ASCII (a full-width digit is not a digit in a barcode).
    #[test]
    fn scan_rule_regex_is_regex_lite_syntax() {
        let rule = |re: &str| ScanRule {
            profile: Some("p".into()),
            operation: "op".into(),
            prefix: None,
            length: None,
            regex: Some(re.into()),
            symbology: None,
            kind: None,
        };
        let code = |t| ScanInput { kind: ScanKind::Barcode, symbology: None, text: t };
        let c = Classifier::new([rule(r"^(?:TK|TX)-\d{6}(?i:[a-f])?$")]).expect("rule");
        for (text, hit) in [("TK-123456", true), ("TX-123456F", true), ("TK-12345", false), ("TK-１２３４５６", false), ("xTK-123456", false)] {
            assert_eq!(c.classify(code(text)).is_some(), hit, "{text:?}");
        }
        let err = Classifier::new([rule(r"^\p{Han}+$")]).expect_err("Unicode class");
        assert!(matches!(&err, RuleError::BadRegex { index: 0, operation, .. } if operation == "op"), "{err:?}");
        assert!(err.to_string().starts_with("scan rule 0 (operation \"op\"): bad regex: "), "{err}");
    }
}
