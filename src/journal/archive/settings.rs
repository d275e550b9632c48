//! `[journal]` in the daemon config: how long settled batches stay in the hot journal.
use serde::Deserialize;

/// The longest retention the config accepts (100 years): bounds the age arithmetic.
pub const MAX_RETAIN_DAYS: u32 = 36_500;

/// `[journal]`: `retain_days` (default 400). A settled batch whose settlement is older moves to the
/// day files under `DATA/archive/`; `0` moves settled batches at the next run (tests, or a shop that
/// keeps its hot journal minimal).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSettings {
    pub retain_days: u32,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings { retain_days: 400 }
    }
}

impl JournalSettings {
    /// Why these settings cannot be used, naming the field (for the config error).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.retain_days > MAX_RETAIN_DAYS {
            return Err(("journal.retain_days", format!("must be from 0 to {MAX_RETAIN_DAYS} (days)")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_days_defaults_to_400_and_is_bounded() {
        let s: JournalSettings = toml::from_str("").unwrap();
        assert_eq!(s.retain_days, 400);
        assert!(s.validate().is_ok());
        let s: JournalSettings = toml::from_str("retain_days = 0").unwrap();
        assert!(s.validate().is_ok(), "0: move settled batches at once");
        let (field, why) = JournalSettings { retain_days: MAX_RETAIN_DAYS + 1 }.validate().unwrap_err();
        assert_eq!(field, "journal.retain_days");
        assert!(why.contains("36500"), "{why}");
        assert!(toml::from_str::<JournalSettings>("retain_days = -1").is_err());
        assert!(toml::from_str::<JournalSettings>("retain = 3").is_err(), "unknown keys are refused");
    }
}
