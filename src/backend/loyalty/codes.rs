//! The loyalty response-code table (附 1 of loyalty-pos.txt) as data, with Chinese and English messages.
//!
//! The Chinese text is the vendor's, verbatim; the English is ours, following the ISO 8583 meaning of
//! each code where the vendor's text is only "contact the issuer".

/// `(code, vendor message, English message)`, in the order of the vendor document.
pub static CODES: &[(&str, &str, &str)] = &[
    ("00", "交易成功", "approved"),
    ("01", "请联系发卡行", "refer to the card issuer"),
    ("02", "请联系发卡行", "refer to the card issuer (special condition)"),
    ("03", "商户未登记", "merchant not registered"),
    ("04", "没收卡, 请联系收单行", "pick up card, contact the acquirer"),
    ("05", "请联系发卡行", "do not honour, contact the card issuer"),
    ("06", "请联系发卡行", "error, contact the card issuer"),
    ("07", "没收卡, 请联系收单行", "pick up card (special condition), contact the acquirer"),
    ("09", "请重试", "request in progress, retry"),
    ("12", "请重试", "invalid transaction, retry"),
    ("13", "交易金额超限 请重试", "invalid amount, retry"),
    ("14", "无效卡号, 请联系发卡行", "invalid card number, contact the card issuer"),
    ("15", "此卡不能受理", "card not accepted"),
    ("19", "请联系发卡行", "re-enter transaction, contact the card issuer"),
    ("20", "请联系发卡行", "invalid response, contact the card issuer"),
    ("21", "请联系发卡行", "no action taken, contact the card issuer"),
    ("22", "操作有误, 请重试", "suspected malfunction or wrong operation, retry"),
    ("23", "请联系发卡行", "unacceptable transaction fee, contact the card issuer"),
    ("25", "请联系发卡行", "original transaction not found, contact the card issuer"),
    ("30", "请重试", "format error, retry"),
    ("31", "此卡不能受理", "card not accepted (issuer not supported)"),
    ("33", "过期卡, 请联系发卡行", "expired card, contact the card issuer"),
    ("34", "没收卡, 请联系收单行", "suspected fraud, pick up card, contact the acquirer"),
    ("35", "没收卡, 请联系收单行", "pick up card, contact the acquirer"),
    ("36", "此卡有误, 请换卡重试", "restricted card, try another card"),
    ("37", "没收卡, 请联系收单行", "pick up card, call acquirer security"),
    ("38", "密码错误次数超限", "allowable PIN tries exceeded"),
    ("39", "请联系发卡行", "no credit account, contact the card issuer"),
    ("40", "请联系发卡行", "function not supported, contact the card issuer"),
    ("41", "没收卡, 请联系收单行", "lost card, pick up, contact the acquirer"),
    ("42", "请联系发卡方", "no universal account, contact the card issuer"),
    ("43", "没收卡, 请联系收单行", "stolen card, pick up, contact the acquirer"),
    ("44", "请联系发卡行", "no investment account, contact the card issuer"),
    ("51", "余额不足, 请查询", "insufficient balance, please query"),
    ("52", "请联系发卡行", "no cheque account, contact the card issuer"),
    ("53", "请联系发卡行", "no savings account, contact the card issuer"),
    ("54", "过期卡, 请联系发卡行", "expired card, contact the card issuer"),
    ("55", "密码错, 请重试", "incorrect PIN, retry"),
    ("56", "请联系发卡行", "no card record, contact the card issuer"),
    ("57", "请联系发卡行", "transaction not permitted to cardholder, contact the card issuer"),
    ("58", "终端无效, 请联系收单行或银联", "terminal not permitted, contact the acquirer or UnionPay"),
    ("59", "请联系发卡行", "suspected fraud, contact the card issuer"),
    ("60", "请联系发卡行", "contact the card issuer"),
    ("61", "金额太大", "amount too large"),
    ("62", "请联系发卡行", "restricted card, contact the card issuer"),
    ("63", "请联系发卡行", "security violation, contact the card issuer"),
    ("64", "请联系发卡行", "original amount incorrect, contact the card issuer"),
    ("65", "超出取款次数限制", "frequency limit exceeded"),
    ("66", "请联系收单行或银联", "contact the acquirer or UnionPay"),
    ("67", "没收卡", "pick up card"),
    ("68", "交易超时, 请重试", "answer received too late, retry"),
    ("75", "密码错误次数超限", "allowable PIN tries exceeded"),
    ("77", "请向网络中心签到", "sign on to the network centre (check in)"),
    ("79", "POS 终端重传脱机数据", "POS terminal must resend offline data"),
    ("90", "请稍后重试", "cut-off in progress, retry later"),
    ("91", "请稍后重试", "issuer unavailable, retry later"),
    ("92", "请稍后重试", "routing unavailable, retry later"),
    ("93", "请联系发卡行", "transaction cannot be completed, contact the card issuer"),
    ("94", "请稍后重试", "duplicate transmission, retry later"),
    ("95", "请稍后重试", "reconciliation error, retry later"),
    ("96", "请稍后重试", "system malfunction, retry later"),
    ("97", "终端未登记, 请联系收单行或银联", "terminal not registered, contact the acquirer or UnionPay"),
    ("98", "交易超时, 请重试", "timeout, retry"),
    ("99", "校验错, 请重新签到", "check error, sign on again"),
    ("A0", "校验错, 请重新签到", "MAC check error, sign on again"),
];

/// Whether the document's table (附 1) defines `code`. Only those are answers; any other code says
/// nothing about the request (unknown, never a decline).
pub fn defined(code: &str) -> bool {
    crate::backend::common::lookup_code(CODES, code).is_some()
}

/// The vendor's text for codes the table does not know ("--未知返回码").
pub const UNKNOWN_ZH: &str = "未知返回码";
pub const UNKNOWN_EN: &str = "unknown response code";

/// `(中文, English)` for a code; unknown codes get [`UNKNOWN_ZH`] / [`UNKNOWN_EN`]. Case-insensitive ("a0").
pub fn lookup(code: &str) -> (&'static str, &'static str) {
    crate::backend::common::lookup_code(CODES, code).unwrap_or((UNKNOWN_ZH, UNKNOWN_EN))
}

/// The codes that mean "reversed" in answer to a reversal (spec 冲正交易: 00, 25 or 12).
pub fn reversal_done(code: &str) -> bool {
    matches!(code.trim(), "00" | "25" | "12")
}

/// The codes that mean "refused, not applied: sign on (check in) again first": **77** (请向网络中心签到:
/// the terminal has not checked in, or the request is outside its current batch) and **99** / **A0**
/// (校验错, 请重新签到: the PIN block or MAC does not check under the host's current working keys).
pub fn sign_on_again(code: &str) -> bool {
    let c = code.trim();
    c == "77" || c == "99" || c.eq_ignore_ascii_case("A0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_unique() {
        assert_eq!(CODES.len(), 65);
        let mut seen = std::collections::HashSet::new();
        for (c, zh, en) in CODES {
            assert!(seen.insert(*c), "duplicate {c}");
            assert!(!zh.is_empty() && !en.is_empty());
        }
        assert_eq!(lookup("00"), ("交易成功", "approved"));
        assert_eq!(lookup("55").0, "密码错, 请重试");
        assert_eq!(lookup("77").0, "请向网络中心签到");
        assert_eq!(lookup("A0").0, "校验错, 请重新签到");
        assert_eq!(lookup("a0").0, "校验错, 请重新签到");
        assert_eq!(lookup("XY"), (UNKNOWN_ZH, UNKNOWN_EN));
        assert_eq!(lookup("08"), (UNKNOWN_ZH, UNKNOWN_EN));
        assert!(reversal_done("25") && reversal_done("12") && reversal_done("00") && !reversal_done("55"));
        assert!(sign_on_again("77") && sign_on_again("99") && sign_on_again("A0") && sign_on_again("a0"));
        assert!(!sign_on_again("00") && !sign_on_again("94") && !sign_on_again("55") && !reversal_done("77"));
    }
}
