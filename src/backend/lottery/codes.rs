//! The lottery return-code tables of lottery-redemption.txt section 5 (即开票, 系统, 业务) as data, Chinese and English.
//!
//! The Chinese text is the vendor's, verbatim; the English is ours. The three tables do not overlap
//! (即开票 1001..8007, 系统 1..32, 业务 10000..10039), so a `ret` names its table by itself.

/// Which of the document's three tables a code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// 5.1 即开票错误码: passed through from the instant-lottery system.
    Lottery,
    /// 5.2 系统错误码: the gateway's protocol errors.
    System,
    /// 5.3 业务错误码: the gateway's business errors (and the local risk refusals, which use them).
    Business,
    /// Not in the document.
    Unknown,
}

/// 5.1 即开票错误码 `(ret, 中文, English)`.
pub static LOTTERY: &[(&str, &str, &str)] = &[
    ("1001", "服务器内部错误", "server internal error"),
    ("1002", "通信错误(连接交易服务器失败)", "communication error (cannot reach the transaction server)"),
    ("1003", "数据格式错误", "data format error"),
    ("1004", "协议错误", "protocol error"),
    ("1005", "稍后再试", "try again later"),
    ("1006", "没有此操作员", "no such operator"),
    ("1007", "操作员口令错误", "wrong operator password"),
    ("1008", "暂停交易", "trading suspended"),
    ("1009", "超过交易时间", "outside trading hours"),
    ("1010", "操作员没有此权限", "operator lacks this permission"),
    ("1011", "错误的硬件序列号", "wrong hardware serial number"),
    ("1012", "错误的软件版本号", "wrong software version"),
    ("1013", "没有此终端", "no such terminal"),
    ("1014", "终端已经登录", "terminal already logged in"),
    ("1015", "错误的终端类型", "wrong terminal type"),
    ("1016", "必须先登录认证", "log in first"),
    ("1017", "此硬件序列号已经被绑定了", "this hardware serial number is already bound"),
    ("1018", "错误的终端状态", "wrong terminal state"),
    ("1019", "终端被停止了", "terminal stopped"),
    ("1020", "投注机 IP 地址错误", "wrong terminal IP address"),
    ("1021", "不允许一号多机", "station logged in elsewhere (one id, one machine)"),
    ("1022", "站点编号与终端物理编号不匹配", "station id does not match the terminal's physical id"),
    ("1023", "创建目录失败", "cannot create directory"),
    ("1024", "打开文件失败", "cannot open file"),
    ("1025", "更新彩票状态失败", "cannot update ticket state"),
    ("1026", "文件异常", "file error"),
    ("1027", "未知彩票状态", "unknown ticket state"),
    ("1028", "系统没有该玩法信息", "unknown game"),
    ("1029", "系统没有对该玩法授权", "game not authorised"),
    ("1030", "系统没有该站点的信息", "unknown station"),
    ("1031", "系统没有政策参数", "no policy parameters"),
    ("1032", "错误包装类型", "wrong packaging type"),
    ("1033", "获得站点余额失败", "cannot read the station balance"),
    ("1034", "禁止彩票入站", "ticket check-in to station forbidden"),
    ("1035", "禁止彩票出站", "ticket check-out from station forbidden"),
    ("1036", "禁止扫描销售", "scan sale forbidden"),
    ("1037", "禁止顾客退票", "customer returns forbidden"),
    ("1038", "禁止库存盘点", "stock-take forbidden"),
    ("1039", "禁止兑奖", "redemption forbidden"),
    ("1040", "超过销售期限", "sales period over"),
    ("1041", "超过兑奖期限", "redemption period over"),
    ("1042", "异常彩票,禁止操作", "abnormal ticket, operation forbidden"),
    ("1043", "连接数据库失败", "cannot connect to the database"),
    ("1044", "操作数据库失败", "database operation failed"),
    ("1104", "认证失败, 用户名或密码错误", "authentication failed: wrong user name or password"),
    ("1301", "兑奖成功,并返回该票的中奖等级和中奖金额", "redeemed; prize level and amount returned"),
    ("1302", "兑奖成功,但该票尚未经过扫描销售", "redeemed, but the ticket was never scan-sold"),
    ("1303", "兑奖失败, 该票尚未经过入站或为外省票", "not redeemed: ticket not checked in to a station, or from another province"),
    ("1304", "兑奖失败,超过兑奖上限", "not redeemed: prize above the station's redemption limit"),
    ("1305", "兑奖失败, 此票未中奖", "not redeemed: the ticket did not win"),
    ("1306", "兑奖失败,中奖信息不正确", "not redeemed: wrong prize information"),
    ("1307", "兑奖失败,该票已经兑过奖", "not redeemed: the ticket was already redeemed"),
    ("1308", "兑奖失败,没有此奖级的中奖金额", "not redeemed: no prize amount for this level"),
    ("1309", "兑奖失败,没有中奖数据", "not redeemed: no prize data"),
    ("1310", "兑奖失败, 此票还未兑奖", "not redeemed: the ticket has not been redeemed yet"),
    ("1311", "兑奖失败,该票尚未经过扫描销售", "not redeemed: the ticket was never scan-sold"),
    ("1312", "兑奖失败,不同分销商下的站点不能通兑", "not redeemed: stations of different distributors cannot redeem each other's tickets"),
    ("1313", "兑奖失败, 请到中心兑奖", "not redeemed: redeem at the lottery centre"),
    ("1314", "兑奖失败,该奖组已暂停兑奖", "not redeemed: redemption suspended for this prize group"),
    ("1315", "兑奖失败, 未开奖", "not redeemed: not drawn yet"),
    ("1316", "兑奖失败, 非本省票", "not redeemed: ticket from another province"),
    ("8001", "兑奖失败,无法查询彩票所属省份", "not redeemed: cannot find the ticket's province"),
    ("8002", "兑奖失败,没有 MIS 服务器信息", "not redeemed: no MIS server information"),
    ("8003", "兑奖失败,系统现在仅支持站点跨省兑奖", "not redeemed: only station cross-province redemption is supported"),
    ("8004", "兑奖失败(跨省兑奖)", "not redeemed (cross-province)"),
    ("8005", "兑奖失败,没有建立结算关系", "not redeemed: no settlement relationship"),
    ("8006", "兑奖失败,此票已兑过奖(本省)", "not redeemed: already redeemed (this province)"),
    ("8007", "兑奖失败,此票已兑过奖(他省)", "not redeemed: already redeemed (another province)"),
];

/// 5.2 系统错误码 `(ret, 中文, English)`.
pub static SYSTEM: &[(&str, &str, &str)] = &[
    ("1", "服务不可用", "service unavailable"),
    ("2", "限制时间内调用失败次数", "too many failed calls in the time window; try tomorrow"),
    ("3", "请求被禁止", "request forbidden"),
    ("4", "缺少版本参数", "missing `v`"),
    ("5", "不支持的版本号", "unsupported version"),
    ("6", "非法的版本参数", "malformed version"),
    ("7", "缺少时间戳参数", "missing `timestamp`"),
    ("8", "非法的时间戳参数", "bad `timestamp` (more than 30 minutes off)"),
    ("9", "缺少应用 Id 参数", "missing application id"),
    ("10", "无效的应用 Id 参数", "invalid application id"),
    ("11", "缺少签名参数", "missing `sign`"),
    ("12", "无效签名", "invalid signature"),
    ("13", "无效数据格式", "invalid data format"),
    ("14", "缺少流水号参数", "missing serial number"),
    ("15", "流水号已经存在", "serial number already exists"),
    ("16", "缺少 access_token 参数", "missing `access_token`"),
    ("17", "无效 access_token", "invalid `access_token`"),
    ("18", "缺少 app_key 参数", "missing `app_key`"),
    ("19", "无效 app_key", "invalid `app_key`"),
    ("20", "app_key 不正确", "wrong `app_key`"),
    ("21", "app_secret 不正确", "wrong app secret"),
    ("22", "app_key 不能为空", "`app_key` must not be empty"),
    ("23", "app_secret 不能为空", "app secret must not be empty"),
    ("24", "用户名密码错误", "wrong user name or password"),
    ("25", "password 值为空", "empty password"),
    ("26", "username 值为空", "empty user name"),
    ("27", "token 过期", "token expired"),
    ("28", "token 不存在", "token unknown"),
    ("29", "该 API 已经停用", "API disabled (system upgrade)"),
    ("30", "无权调用 API", "not allowed to call this API"),
    ("31", "此应用不是上线状态", "application is not live"),
    ("32", "系统处理错误", "system processing error"),
];

/// 5.3 业务错误码 `(ret, 中文, English)`, plus `3202` which section 8.9 (getPrize) names without listing.
pub static BUSINESS: &[(&str, &str, &str)] = &[
    ("10000", "成功", "success"),
    ("10008", "修改密码失败", "password change failed"),
    ("10023", "只有非 G 开头的条码才有手工兑奖功能", "manual redemption only for bar codes not starting with G"),
    ("10024", "手工兑奖需要输入验证码", "manual redemption needs the verification code"),
    ("10025", "站点兑奖(手工),验证码长度有误", "station redemption (manual): wrong verification code length"),
    ("10026", "站点兑奖(二次开奖手工),验证码长度有误", "station redemption (second draw, manual): wrong verification code length"),
    ("10027", "手工兑奖验证码需为 13 或 14 位数字", "manual verification code must be 13 or 14 digits"),
    ("10028", "手工兑奖验证码验证不通过", "manual verification code rejected"),
    ("10029", "交易流水号不匹配", "transaction serial does not match"),
    ("10030", "交易流水号重复", "duplicate transaction serial"),
    ("10031", "兑奖服务不可用", "redemption service unavailable"),
    ("10032", "兑奖不在服务时间段", "outside redemption service hours"),
    ("10033", "兑奖操作过于频繁", "redemption requests too frequent"),
    ("10034", "当日异常兑奖次数超限", "daily limit of abnormal redemption attempts reached"),
    ("10035", "当日允许兑奖张数超限", "daily ticket count limit reached"),
    ("10036", "当日允许兑奖金额超限", "daily prize amount limit reached"),
    ("10037", "该用户处于系统黑名单中,请联系管理员", "customer is blacklisted; contact the administrator"),
    ("10038", "兑奖统计查询失败", "award summary query failed"),
    ("10039", "兑奖明细查询失败", "award detail query failed"),
    ("3202", "无兑奖记录", "no redemption record for this ticket"),
];

pub const UNKNOWN_ZH: &str = "未知返回码";
pub const UNKNOWN_EN: &str = "unknown return code";

/// `(中文, English, table)` for a `ret`; unknown codes get [`UNKNOWN_ZH`] / [`UNKNOWN_EN`].
pub fn lookup(ret: &str) -> (&'static str, &'static str, Table) {
    for (table, rows) in [(Table::Lottery, LOTTERY), (Table::System, SYSTEM), (Table::Business, BUSINESS)] {
        if let Some((zh, en)) = crate::backend::common::lookup_code(rows, ret) {
            return (zh, en, table);
        }
    }
    (UNKNOWN_ZH, UNKNOWN_EN, Table::Unknown)
}

/// Whether one of the document's tables (section 5, and 3202 of 8.9) defines `ret`, exactly as written.
/// Only those are answers; any other code says nothing about the request (unknown, never a decline).
pub fn defined(ret: &str) -> bool {
    LOTTERY.iter().chain(SYSTEM).chain(BUSINESS).any(|(c, _, _)| *c == ret)
}

/// The codes that decline a redeem (`success=false`): the ticket's own fate, or a refusal of the request
/// that the host did not carry out. Every other code the document defines is no decline of a redeem:
/// success (10000 / 1301 / 1302), already redeemed (1307, matched by `transacIdOrg`), the ambiguous ones
/// (server errors, "try later", database failures: 1, 32, 1001, 1002, 1005, 1023..1026, 1043, 1044), the
/// session codes (1021, 27, 28: logged in again and retried), and the answers of other interfaces
/// (10008, 10038, 10039, 3202).
pub static REDEEM_DECLINES: &[&str] = &[
    // 5.1 即开票: request and terminal refusals.
    "1003", "1004", "1006", "1007", "1008", "1009", "1010", "1011", "1012", "1013", "1014", "1015", "1016", "1017", "1018", "1019", "1020", "1022",
    // 5.1 即开票: the ticket's fate.
    "1027", "1028", "1029", "1030", "1031", "1032", "1033", "1034", "1035", "1036", "1037", "1038", "1039", "1040", "1041", "1042", "1104", "1303", "1304",
    "1305", "1306", "1308", "1309", "1310", "1311", "1312", "1313", "1314", "1315", "1316", "8001", "8002", "8003", "8004", "8005", "8006", "8007",
    // 5.2 系统: protocol refusals (15 on a resend: the transacId reached the host before, settled by query).
    "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "29", "30",
    "31", // 5.3 业务: manual-redemption, transacId and risk refusals (10030 on a resend: as 15).
    "10023", "10024", "10025", "10026", "10027", "10028", "10029", "10030", "10031", "10032", "10033", "10034", "10035", "10036", "10037",
];

/// Whether `ret` (exactly as written) declines a redeem; see [`REDEEM_DECLINES`].
pub fn redeem_declined(ret: &str) -> bool {
    REDEEM_DECLINES.contains(&ret)
}

/// The codes after which the session is gone and the station must log in again (section 8: 1021, 27, 28).
pub fn session_lost(ret: &str) -> bool {
    matches!(ret.trim(), "1021" | "27" | "28")
}

/// A successful redemption (`success=true` with one of these; specs/README.md).
pub fn redeem_success(ret: &str) -> bool {
    matches!(ret.trim(), "10000" | "1301" | "1302")
}

/// The business code of each local risk rule (section 6 rules, 5.3 codes).
pub mod risk {
    pub const SERVICE_OFF: &str = "10031";
    pub const HOURS: &str = "10032";
    pub const INTERVAL: &str = "10033";
    pub const ABNORMAL: &str = "10034";
    pub const DAILY_TICKETS: &str = "10035";
    pub const DAILY_AMOUNT: &str = "10036";
    pub const BLACKLIST: &str = "10037";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_complete_unique_and_disjoint() {
        assert_eq!(LOTTERY.len(), 68);
        assert_eq!(SYSTEM.len(), 32);
        assert_eq!(BUSINESS.len(), 20);
        let mut seen = std::collections::HashSet::new();
        for (c, zh, en) in LOTTERY.iter().chain(SYSTEM).chain(BUSINESS) {
            assert!(seen.insert(*c), "duplicate {c}");
            assert!(!zh.is_empty() && !en.is_empty());
        }
        assert_eq!(lookup("1307").2, Table::Lottery);
        assert_eq!(lookup("1307").0, "兑奖失败,该票已经兑过奖");
        assert_eq!(lookup("27"), ("token 过期", "token expired", Table::System));
        assert_eq!(lookup("10035").2, Table::Business);
        assert_eq!(lookup("9999"), (UNKNOWN_ZH, UNKNOWN_EN, Table::Unknown));
        assert!(session_lost("1021") && session_lost("27") && session_lost("28") && !session_lost("12"));
        assert!(redeem_success("1301") && redeem_success("1302") && redeem_success("10000") && !redeem_success("1307"));
        assert!(defined("1305") && defined("3202") && defined("27") && !defined("9999") && !defined(" 1305") && !defined(""));
        for c in [risk::SERVICE_OFF, risk::HOURS, risk::INTERVAL, risk::ABNORMAL, risk::DAILY_TICKETS, risk::DAILY_AMOUNT, risk::BLACKLIST] {
            assert_eq!(lookup(c).2, Table::Business, "{c}");
        }
    }

    #[test]
    fn the_redeem_declines_are_defined_and_never_success_ambiguous_or_session_codes() {
        let mut seen = std::collections::HashSet::new();
        for c in REDEEM_DECLINES {
            assert!(seen.insert(*c), "duplicate {c}");
            assert!(defined(c), "{c} is not in the document");
            assert!(!redeem_success(c) && !session_lost(c) && *c != "1307", "{c}");
            assert!(!super::super::AMBIGUOUS.contains(c), "{c} is ambiguous");
        }
        for c in ["1303", "1304", "1305", "15", "10030", "12", "10035"] {
            assert!(redeem_declined(c), "{c}");
        }
        for c in ["1301", "1307", "1005", "1021", "27", "3202", "10038", "9999", " 1305"] {
            assert!(!redeem_declined(c), "{c}");
        }
    }
}
