//! Local risk rules of section 6 (彩民行为风险控制), enforced in `prepare` before a redeem is sent.
//!
//! Every rule is per customer (`userId`, the document's 微信账号) and per business day in the profile's
//! `timezone` (default +08:00, the backend's Beijing time), using the engine's clock (`now_ms`) and the
//! profile's recent journal records. Each refusal starts with the document's business code (5.3):
//!
//! | rule | option (`[options.risk]`) | default | code |
//! |---|---|---|---|
//! | service switched off (系统访问控制) | `enabled` | true | 10031 |
//! | blacklist (身份验证) | `blacklist` | [] | 10037 |
//! | service hours (兑奖服务时间) | `hours` | "01:00-23:00" | 10032 |
//! | minimum interval between requests (允许兑奖间隔周期) | `min_interval_s` | 15 | 10033 |
//! | daily abnormal attempts (单日异常兑奖上限) | `daily_abnormal` | 10 | 10034 |
//! | daily tickets (单日兑奖张数) | `daily_tickets` | 20 | 10035 |
//! | daily prize amount (单日兑奖金额) | `daily_amount_fen` | 1000000 (10,000 yuan) | 10036 |
//!
//! What counts: tickets = redeems approved or still pending (a pending one may have been paid);
//! amount = prizes of approved redeems (a prize is known only after redeeming, so the request that
//! crosses the limit is the last one let through); abnormal = declined redeems (not a winner, bad code,
//! over the limit, already redeemed...); interval = since the customer's last journaled redeem of any status
//! but `failed` (never sent). Two requests of one customer prepared at the same instant both pass: neither
//! is journaled yet when the other is checked.
//! Requests refused here are not journaled, so they count towards nothing.
use std::collections::HashSet;

use chrono::{FixedOffset, NaiveTime, TimeZone};

use super::codes::risk as code;
use crate::backend::{HistoryItem, PrepareError};

/// The rules of one profile.
#[derive(Debug, Clone)]
pub struct RiskRules {
    pub enabled: bool,
    pub blacklist: HashSet<String>,
    /// Service hours, start inclusive, end exclusive (may wrap past midnight).
    pub hours: (NaiveTime, NaiveTime),
    pub min_interval_ms: i64,
    pub daily_abnormal: u32,
    pub daily_tickets: u32,
    pub daily_amount_fen: i64,
    pub tz: FixedOffset,
}

impl RiskRules {
    /// The document's example values.
    pub fn defaults(tz: FixedOffset) -> Self {
        RiskRules {
            enabled: true,
            blacklist: HashSet::new(),
            hours: (NaiveTime::from_hms_opt(1, 0, 0).unwrap_or_default(), NaiveTime::from_hms_opt(23, 0, 0).unwrap_or_default()),
            min_interval_ms: 15_000,
            daily_abnormal: 10,
            daily_tickets: 20,
            daily_amount_fen: 1_000_000,
            tz,
        }
    }

    /// Read `[options.risk]`; `Err((field, why))` names the bad option.
    pub fn from_table(t: Option<&toml::Value>, tz: FixedOffset) -> Result<Self, (String, String)> {
        let mut r = Self::defaults(tz);
        let Some(t) = t else { return Ok(r) };
        let t = t.as_table().ok_or_else(|| ("options.risk".to_string(), "must be a table".to_string()))?;
        let bad = |k: &str, why: &str| (format!("options.risk.{k}"), why.to_string());
        let int = |k: &str| -> Result<Option<i64>, (String, String)> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(*i)),
                Some(_) => Err(bad(k, "must be a non-negative integer")),
            }
        };
        for k in t.keys() {
            if !["enabled", "blacklist", "hours", "min_interval_s", "daily_abnormal", "daily_tickets", "daily_amount_fen"].contains(&k.as_str()) {
                return Err(bad(k, "unknown risk option"));
            }
        }
        match t.get("enabled") {
            None => {}
            Some(toml::Value::Boolean(b)) => r.enabled = *b,
            Some(_) => return Err(bad("enabled", "must be true or false")),
        }
        if let Some(v) = t.get("blacklist") {
            let a = v.as_array().ok_or_else(|| bad("blacklist", "must be a list of customer ids"))?;
            for x in a {
                r.blacklist.insert(x.as_str().ok_or_else(|| bad("blacklist", "must be a list of customer ids"))?.to_string());
            }
        }
        if let Some(v) = t.get("hours") {
            let s = v.as_str().ok_or_else(|| bad("hours", "must be \"HH:MM-HH:MM\""))?;
            r.hours = parse_hours(s).ok_or_else(|| bad("hours", "must be \"HH:MM-HH:MM\""))?;
        }
        if let Some(v) = int("min_interval_s")? {
            r.min_interval_ms = v.saturating_mul(1000);
        }
        if let Some(v) = int("daily_abnormal")? {
            r.daily_abnormal = u32::try_from(v).map_err(|_| bad("daily_abnormal", "too large"))?;
        }
        if let Some(v) = int("daily_tickets")? {
            r.daily_tickets = u32::try_from(v).map_err(|_| bad("daily_tickets", "too large"))?;
        }
        if let Some(v) = int("daily_amount_fen")? {
            r.daily_amount_fen = v;
        }
        Ok(r)
    }

    /// Refuse a redeem for `user` at `now_ms`, or let it through. `recent` is the profile's history.
    pub fn check(&self, user: &str, now_ms: i64, recent: &[HistoryItem]) -> Result<(), PrepareError> {
        let refuse = |field: &str, c: &str, why: String| Err(PrepareError::Invalid { field: field.into(), why: format!("{c}: {why}") });
        if !self.enabled {
            return refuse("operation", code::SERVICE_OFF, "redemption service switched off in this profile".into());
        }
        if self.blacklist.contains(user) {
            return refuse("userId", code::BLACKLIST, "customer is on the blacklist".into());
        }
        let Some(now) = self.tz.timestamp_millis_opt(now_ms).single() else {
            return refuse("operation", code::HOURS, "clock out of range".into());
        };
        let t = now.time();
        let (start, end) = self.hours;
        // Equal ends ("00:00-00:00") mean around the clock; start > end wraps past midnight.
        let open = if start == end {
            true
        } else if start < end {
            t >= start && t < end
        } else {
            t >= start || t < end
        };
        if !open {
            return refuse("operation", code::HOURS, format!("outside service hours {}-{}", start.format("%H:%M"), end.format("%H:%M")));
        }
        let today = now.date_naive();
        let mine: Vec<&HistoryItem> = recent
            .iter()
            .filter(|h| h.operation == "redeem" && h.public.get("userId").and_then(|v| v.as_str()) == Some(user) && h.status != "failed")
            .collect();
        if let Some(last) = mine.iter().map(|h| h.created_at_ms).max() {
            let since = now_ms - last;
            if since >= 0 && since < self.min_interval_ms {
                return refuse(
                    "userId",
                    code::INTERVAL,
                    format!("at least {} s between two requests ({} s since the last)", self.min_interval_ms / 1000, since / 1000),
                );
            }
        }
        let on_day = |h: &&&HistoryItem| self.tz.timestamp_millis_opt(h.created_at_ms).single().is_some_and(|d| d.date_naive() == today);
        let day: Vec<&&HistoryItem> = mine.iter().filter(on_day).collect();
        let abnormal = day.iter().filter(|h| h.status == "declined").count();
        if abnormal as u64 >= u64::from(self.daily_abnormal) {
            return refuse("userId", code::ABNORMAL, format!("daily limit of abnormal attempts reached ({})", self.daily_abnormal));
        }
        let tickets = day.iter().filter(|h| h.status == "approved" || h.status == "pending").count();
        if tickets as u64 >= u64::from(self.daily_tickets) {
            return refuse("userId", code::DAILY_TICKETS, format!("per-customer daily ticket limit reached ({})", self.daily_tickets));
        }
        let amount: i64 = day.iter().filter(|h| h.status == "approved").map(|h| prize_fen(h)).sum();
        if amount >= self.daily_amount_fen {
            return refuse("userId", code::DAILY_AMOUNT, format!("per-customer daily amount limit reached ({} fen)", self.daily_amount_fen));
        }
        Ok(())
    }
}

/// The prize of a journaled redeem, in fen (`result.prize`, else the record's amount).
fn prize_fen(h: &HistoryItem) -> i64 {
    h.result.get("prize").and_then(|v| v.as_i64()).unwrap_or(h.amount_fen)
}

/// `"HH:MM-HH:MM"`.
pub fn parse_hours(s: &str) -> Option<(NaiveTime, NaiveTime)> {
    let (a, b) = s.split_once('-')?;
    let t = |x: &str| NaiveTime::parse_from_str(x.trim(), "%H:%M").ok();
    Some((t(a)?, t(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn tz() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).unwrap()
    }
    /// Unix ms of a Beijing wall-clock time on 2026-03-10.
    fn at(h: u32, m: u32, s: u32) -> i64 {
        tz().with_ymd_and_hms(2026, 3, 10, h, m, s).unwrap().timestamp_millis()
    }
    fn item(id: u64, user: &str, status: &'static str, ms: i64, prize_fen: i64) -> HistoryItem {
        let public: Map<String, Value> = json!({"userId": user}).as_object().cloned().unwrap();
        let result: Map<String, Value> = if status == "approved" { json!({"prize": prize_fen}).as_object().cloned().unwrap() } else { Map::new() };
        HistoryItem { id, operation: "redeem".into(), status, code: None, amount_fen: 0, created_at_ms: ms, public, result }
    }
    fn code_of(r: Result<(), PrepareError>) -> String {
        match r {
            Err(PrepareError::Invalid { why, .. }) => why.split(':').next().unwrap_or_default().to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn service_hours_default_0100_to_2300_in_beijing_time() {
        let r = RiskRules::defaults(tz());
        assert_eq!(code_of(r.check("u", at(0, 59, 59), &[])), "10032");
        assert!(r.check("u", at(1, 0, 0), &[]).is_ok());
        assert!(r.check("u", at(22, 59, 59), &[]).is_ok());
        assert_eq!(code_of(r.check("u", at(23, 0, 0), &[])), "10032");
        let mut night = RiskRules::defaults(tz());
        night.hours = parse_hours("22:00-02:00").unwrap();
        assert!(night.check("u", at(23, 30, 0), &[]).is_ok() && night.check("u", at(1, 0, 0), &[]).is_ok());
        assert_eq!(code_of(night.check("u", at(12, 0, 0), &[])), "10032");
    }

    #[test]
    fn minimum_interval_per_customer() {
        let r = RiskRules::defaults(tz());
        let h = [item(1, "u", "approved", at(10, 0, 0), 500)];
        assert_eq!(code_of(r.check("u", at(10, 0, 14), &h)), "10033");
        assert!(r.check("u", at(10, 0, 15), &h).is_ok());
        assert!(r.check("other", at(10, 0, 1), &h).is_ok());
    }

    #[test]
    fn daily_ticket_count_counts_approved_and_pending_of_today_only() {
        let mut r = RiskRules::defaults(tz());
        r.daily_tickets = 3;
        let mut h = vec![item(1, "u", "approved", at(9, 0, 0) - 86_400_000, 100)];
        h.push(item(2, "u", "approved", at(9, 0, 0), 100));
        h.push(item(3, "u", "pending", at(9, 1, 0), 0));
        h.push(item(4, "u", "failed", at(9, 2, 0), 0));
        assert!(r.check("u", at(12, 0, 0), &h).is_ok());
        h.push(item(5, "u", "approved", at(9, 3, 0), 100));
        let e = r.check("u", at(12, 0, 0), &h).unwrap_err().to_string();
        assert!(e.contains("10035: per-customer daily ticket limit reached (3)"), "{e}");
        // The next business day starts at Beijing midnight.
        assert!(r.check("u", at(12, 0, 0) + 86_400_000, &h).is_ok());
    }

    #[test]
    fn daily_amount_limit() {
        let mut r = RiskRules::defaults(tz());
        r.daily_amount_fen = 100_000;
        let mut h = vec![item(1, "u", "approved", at(9, 0, 0), 60_000)];
        assert!(r.check("u", at(12, 0, 0), &h).is_ok());
        h.push(item(2, "u", "approved", at(9, 5, 0), 40_000));
        assert_eq!(code_of(r.check("u", at(12, 0, 0), &h)), "10036");
        assert!(r.check("v", at(12, 0, 0), &h).is_ok());
    }

    #[test]
    fn daily_abnormal_attempts() {
        let mut r = RiskRules::defaults(tz());
        r.daily_abnormal = 2;
        let mut h = vec![item(1, "u", "declined", at(9, 0, 0), 0)];
        assert!(r.check("u", at(12, 0, 0), &h).is_ok());
        h.push(item(2, "u", "declined", at(9, 1, 0), 0));
        assert_eq!(code_of(r.check("u", at(12, 0, 0), &h)), "10034");
    }

    #[test]
    fn blacklist_and_switch_off() {
        let t: toml::Value = toml::from_str("blacklist = [\"bad\"]\nenabled = true\nhours = \"00:00-23:59\"\nmin_interval_s = 0").unwrap();
        let r = RiskRules::from_table(Some(&t), tz()).unwrap();
        assert_eq!(code_of(r.check("bad", at(12, 0, 0), &[])), "10037");
        assert!(r.check("good", at(0, 30, 0), &[]).is_ok());
        let off: toml::Value = toml::from_str("enabled = false").unwrap();
        assert_eq!(code_of(RiskRules::from_table(Some(&off), tz()).unwrap().check("good", at(12, 0, 0), &[])), "10031");
        let wrong: toml::Value = toml::from_str("hours = \"1-2\"").unwrap();
        assert_eq!(RiskRules::from_table(Some(&wrong), tz()).unwrap_err().0, "options.risk.hours");
        let unknown: toml::Value = toml::from_str("colour = 1").unwrap();
        assert!(RiskRules::from_table(Some(&unknown), tz()).is_err());
    }
}
