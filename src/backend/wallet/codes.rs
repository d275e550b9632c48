//! The wallet's answer codes as data: the document defines only `errcode 0`; the rest are recognised by rule.
//!
//! The document gives no code table: `errcode` 0 is success and every other integer is a refusal whose
//! `errmsg` says why (10000 and 4340 are its examples). What matters to the daemon is recognised here:
//! the open-card merge answer, an undo of a transaction that never arrived, and delivery reasons.

/// Success.
pub const OK: i64 = 0;
/// The document's example of a general failure ("其它错误").
pub const GENERAL: i64 = 10000;

/// Codes the simulator uses (ours: the document leaves them to the platform), with the English text.
pub static SIM_CODES: &[(i64, &str, &str)] = &[
    (0, "成功", "approved"),
    (10000, "其它错误", "refused, other error"),
    (40001, "app签名错误", "app.signature does not verify"),
    (40002, "orderMD5错误", "orderMD5 does not match the order"),
    (40003, "私钥签名错误", "tsig.signature does not verify"),
    (40004, "nonce重复", "nonce used before"),
    (40005, "时间戳过期", "timeStamp out of range"),
    (40006, "解密失败", "a 3DES field does not decrypt"),
    (40007, "缺少字段", "a required field is missing or malformed"),
    (42001, "余额不足", "insufficient balance"),
    (42002, "账户不存在", "no such account"),
    (42003, "支付密码错误", "wrong payment code"),
    (42004, "终端订单重复", "terminal order already used"),
    (43001, "原交易不存在", "original transaction not found"),
    (43002, "原交易状态不符", "original transaction in the wrong state"),
    (44001, "支付金额匹配不到现有产品价格，需要交割时合并订单处理", "sum matches no product price: merge at delivery"),
    (45001, "订单数量超过2000", "more than 2,000 orders in one delivery"),
];

/// English text for a code, "refused" when we know nothing better.
pub fn message_en(code: i64) -> &'static str {
    SIM_CODES.iter().find(|c| c.0 == code).map(|c| c.2).unwrap_or(if code == OK { "approved" } else { "refused" })
}

/// The document's words of the open-card answer that is not a failure (特别说明).
pub const MERGE_TEXT: &str = "匹配不到现有产品价格";

/// Whether an open_card answer is the "merge at delivery" one: by the profile's `merge_errcode` when
/// set, else by its errmsg (the document leaves the code undefined, `XXXXX`).
pub fn is_merge(errcode: i64, errmsg: &str, merge_errcode: Option<i64>) -> bool {
    match merge_errcode {
        Some(c) => errcode == c,
        None => errcode != OK && errmsg.contains(MERGE_TEXT),
    }
}

/// Whether an undo's answer says the pay never arrived ("原交易不存在"): nothing was applied.
pub fn never_arrived(errmsg: &str) -> bool {
    errmsg.contains("原交易不存在")
}

/// A delivery failure worth sending again (系统繁忙); 订单不存在 / 订单不一致 go to the report.
pub fn delivery_transient(errmsg: &str) -> bool {
    errmsg.contains("系统繁忙")
}
