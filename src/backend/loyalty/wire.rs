//! The loyalty wire vocabulary: each operation's path, reversal path, request and answer fields (the spec's 接口报文), and form encoding.
//!
//! The table is shared by the backend (which fields to accept from the POS, which to fill, what to send)
//! and by the simulator (which fields to require), so the two cannot drift apart.
use crate::backend::{OpClass, OpSpec, Recovery};

pub use crate::backend::common::{Field, Kind, Owner, TRUNCATED};

const fn d(name: &'static str, required: bool) -> Field {
    Field::daemon(name, required)
}
const fn p(name: &'static str, required: bool, kind: Kind) -> Field {
    Field::pos(name, required, kind)
}
const fn t(name: &'static str) -> Field {
    Field::total(name)
}

/// One loyalty interface.
#[derive(Debug, Clone, Copy)]
pub struct WireOp {
    pub spec: OpSpec,
    /// Path after `{base_url}/{protocol_prefix}/`.
    pub path: &'static str,
    /// The reversal interface, for operations the spec gives one.
    pub reversal: Option<&'static str>,
    /// Request fields in the spec's order.
    pub fields: &'static [Field],
    /// The operation the original record must be (cancel: consume, refund: consume, refund-cancel: refund).
    pub original_op: Option<&'static str>,
    /// The answer's fields in the spec's order (its 响应 table): the only ones journaled.
    pub answer: &'static [AnswerField],
}

/// How an answer field is typed, and so how it is bounded before it reaches the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A short code or identifier (`status`, `serialNo`, `batchNo`, `idType`, `settleFlag`, ...):
    /// text or a number, at most [`MAX_CODE_CHARS`]; longer is dropped (a cut identifier is a wrong one).
    Code,
    /// A name, address or e-mail: text, at most [`MAX_NAME_CHARS`]; longer is dropped.
    Name,
    /// Free text for people (`message`, `advertisement`): cut to [`MAX_TEXT_CHARS`] with [`TRUNCATED`].
    Text,
    /// A yuan amount with 2 decimals: journaled as integer fen.
    Amount,
    /// A time (`long`, the spec's `time`): a number or text, at most [`MAX_CODE_CHARS`].
    Time,
    /// A list of objects with these fields; at most [`MAX_LIST_ITEMS`] items, other keys dropped.
    List(&'static [AnswerField]),
    /// Key material (`workingKey`): read by the check-in itself, never journaled.
    Secret,
}

/// One row of an answer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerField {
    pub name: &'static str,
    pub kind: AnswerKind,
    /// The spec's `!` column (documentation: a decline carries none of them).
    pub required: bool,
}

/// Bound of a code, identifier or time, in characters.
pub const MAX_CODE_CHARS: usize = 64;
/// Bound of a name, address or e-mail, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Free text is cut to this many characters (then [`TRUNCATED`] is appended).
pub const MAX_TEXT_CHARS: usize = 256;
/// Items kept of a list; the rest are dropped.
pub const MAX_LIST_ITEMS: usize = 100;

const fn a(name: &'static str, kind: AnswerKind, required: bool) -> AnswerField {
    AnswerField { name, kind, required }
}

const STATUS: AnswerField = a("status", AnswerKind::Code, true);
const MESSAGE: AnswerField = a("message", AnswerKind::Text, true);
const TRANS_TIME: AnswerField = a("transTime", AnswerKind::Time, true);
const SERIAL: AnswerField = a("serialNo", AnswerKind::Code, true);
const BALANCE: [AnswerField; 2] = [a("pointBalance", AnswerKind::Amount, true), a("avaiablePointBalance", AnswerKind::Amount, true)];

const VAUCHER_ITEM: &[AnswerField] =
    &[a("id", AnswerKind::Code, false), a("amount", AnswerKind::Amount, false), a("num", AnswerKind::Code, false), a("name", AnswerKind::Name, false)];
const TICKET_ITEM: &[AnswerField] = &[
    a("id", AnswerKind::Code, false),
    a("type", AnswerKind::Code, false),
    a("amount", AnswerKind::Amount, false),
    a("name", AnswerKind::Name, false),
    a("num", AnswerKind::Code, false),
];

const CHECKIN_ANSWER: &[AnswerField] =
    &[STATUS, MESSAGE, TRANS_TIME, a("batchNo", AnswerKind::Code, true), a("storeName", AnswerKind::Name, true), a("workingKey", AnswerKind::Secret, true)];
const CARD_QUERY_ANSWER: &[AnswerField] = &[
    STATUS,
    MESSAGE,
    TRANS_TIME,
    BALANCE[0],
    BALANCE[1],
    a("vaucher", AnswerKind::List(VAUCHER_ITEM), false),
    a("idType", AnswerKind::Code, true),
    // Masked like a card number before it is kept.
    a("idNo", AnswerKind::Code, true),
    a("name", AnswerKind::Name, true),
    a("gender", AnswerKind::Code, true),
    a("mobileNo", AnswerKind::Code, true),
    a("grade", AnswerKind::Code, false),
    a("address", AnswerKind::Name, true),
    a("email", AnswerKind::Name, true),
];
const CONSUME_ANSWER: &[AnswerField] = &[
    // The spec types this `status` as datetime, a slip: it is the two-character code of every answer.
    STATUS,
    MESSAGE,
    TRANS_TIME,
    SERIAL,
    BALANCE[0],
    BALANCE[1],
    a("usePoint", AnswerKind::Amount, true),
    a("persentPoint", AnswerKind::Amount, true),
    a("advertisement", AnswerKind::Text, false),
];
/// Cancel and refund-cancel answer alike (the spec lists cancel's `serialNo` twice).
const CANCEL_ANSWER: &[AnswerField] =
    &[STATUS, MESSAGE, TRANS_TIME, SERIAL, BALANCE[0], BALANCE[1], a("usePoint", AnswerKind::Amount, true), a("persentPoint", AnswerKind::Amount, true)];
const REFUND_ANSWER: &[AnswerField] = &[
    STATUS,
    MESSAGE,
    TRANS_TIME,
    SERIAL,
    BALANCE[0],
    BALANCE[1],
    a("returnPoint", AnswerKind::Amount, true),
    a("returnPersentPoint", AnswerKind::Amount, true),
    a("returnCash", AnswerKind::Amount, true),
    a("supplyCash", AnswerKind::Amount, true),
];
/// The table names no `transTime`, but the spec's example (and the simulator) carry one: kept.
const TICKET_QUERY_ANSWER: &[AnswerField] =
    &[STATUS, MESSAGE, a("transTime", AnswerKind::Time, false), BALANCE[0], BALANCE[1], a("ticket", AnswerKind::List(TICKET_ITEM), false)];
const TICKET_CONSUME_ANSWER: &[AnswerField] = &[STATUS, MESSAGE, SERIAL, a("advertisement", AnswerKind::Text, false), TRANS_TIME];
const STATUS_ONLY: &[AnswerField] = &[STATUS, MESSAGE];
const CARD_ACTIVATE_ANSWER: &[AnswerField] = &[STATUS, MESSAGE, SERIAL, TRANS_TIME];
const SETTLE_ANSWER: &[AnswerField] = &[STATUS, MESSAGE, a("settleFlag", AnswerKind::Code, true)];
/// The answer of every reversal (冲正交易): a code and a message.
pub const REVERSAL_ANSWER: &[AnswerField] = STATUS_ONLY;

/// Fields the POS may never send: the daemon fills them from its identity and journal.
pub const DAEMON_OWNED: &[&str] = &[
    "storeNo",
    "terminalNo",
    "operatorNo",
    "traceNo",
    "batchNo",
    "oriBatchNo",
    "oriTraceNo",
    "oriTransTime",
    "oriSerialNo",
    "oriTransDate",
    "oriRegisterTraceNo",
];

const ID: [Field; 2] = [d("storeNo", true), d("terminalNo", true)];
const TB: [Field; 2] = [d("traceNo", true), d("batchNo", true)];

const CHECKIN: &[Field] = &[ID[0], ID[1], d("operatorNo", true)];
const CARD_QUERY: &[Field] = &[ID[0], ID[1], p("cardNo", true, Kind::Card), TB[0], TB[1]];
const CONSUME: &[Field] = &[
    ID[0],
    ID[1],
    p("cardNo", true, Kind::Card),
    TB[0],
    TB[1],
    p("track2", false, Kind::Track),
    p("track3", false, Kind::Track),
    p("password", false, Kind::Pin),
    p("consumeType", true, Kind::Text),
    p("pointAmount", true, Kind::Money),
    p("cashAmount", true, Kind::Money),
    p("vaucher", false, Kind::List),
    p("registerTraceNo", false, Kind::Text),
];
const CANCEL: &[Field] = &[
    ID[0],
    ID[1],
    p("cardNo", true, Kind::Card),
    TB[0],
    TB[1],
    p("track2", false, Kind::Track),
    p("track3", false, Kind::Track),
    d("oriBatchNo", true),
    d("oriTraceNo", true),
    d("oriTransTime", true),
    d("oriRegisterTraceNo", false),
];
const REFUND: &[Field] = &[
    ID[0],
    ID[1],
    p("cardNo", true, Kind::Card),
    TB[0],
    TB[1],
    p("track2", false, Kind::Track),
    p("track3", false, Kind::Track),
    d("oriSerialNo", true),
    d("oriTransDate", true),
    d("oriRegisterTraceNo", true),
];
const REFUND_CANCEL: &[Field] = &[
    ID[0],
    ID[1],
    p("cardNo", true, Kind::Card),
    TB[0],
    TB[1],
    p("track2", false, Kind::Track),
    p("track3", false, Kind::Track),
    d("oriSerialNo", true),
    d("oriBatchNo", true),
    d("oriTraceNo", true),
    d("oriTransTime", true),
    d("oriRegisterTraceNo", true),
];
const TICKET_CONSUME: &[Field] = &[
    ID[0],
    ID[1],
    p("cardNo", true, Kind::Card),
    TB[0],
    TB[1],
    p("track2", false, Kind::Track),
    p("track3", false, Kind::Track),
    // The spec leaves the constraint column empty, but a ticket consume without tickets means nothing.
    p("ticket", true, Kind::List),
];
const SEND_VERIFY_CODE: &[Field] = &[ID[0], ID[1], p("mobileNo", true, Kind::Text), d("traceNo", false), d("batchNo", false)];
const CARD_ACTIVATE: &[Field] = &[
    ID[0],
    ID[1],
    p("cardNo", true, Kind::Card),
    TB[0],
    TB[1],
    p("track2", false, Kind::Track),
    p("track3", false, Kind::Track),
    p("mobileNo", true, Kind::Text),
    p("verifyCode", true, Kind::Text),
    p("idType", true, Kind::Text),
    p("idNo", false, Kind::Text),
];
/// `cardNo` is listed `!` for settlement; the daemon sends it empty (a settlement names no card).
const SETTLE: &[Field] = &[
    ID[0],
    ID[1],
    d("cardNo", true),
    TB[0],
    TB[1],
    t("pointDebitCount"),
    t("pointDebitAmount"),
    t("pointCeditCount"),
    t("pointCreditAmount"),
    t("ticketDebitCount"),
    t("ticketDebitAmount"),
    t("ticketCreditCount"),
    t("ticketCreditAmount"),
    t("totalTransCount"),
    t("cancelCount"),
    t("refundCount"),
    t("cardActiveCount"),
];

const fn spec(name: &'static str, class: OpClass, needs_original: bool) -> OpSpec {
    OpSpec { name, class, needs_original }
}

/// Every loyalty operation, in the order of the spec's 接口列表.
pub static OPS: &[WireOp] = &[
    WireOp {
        spec: spec("checkin", OpClass::SignOn, false),
        path: "jpos/terminal/checkin",
        reversal: None,
        fields: CHECKIN,
        original_op: None,
        answer: CHECKIN_ANSWER,
    },
    WireOp {
        spec: spec("card-query", OpClass::Inquiry, false),
        path: "jpos/cards",
        reversal: None,
        fields: CARD_QUERY,
        original_op: None,
        answer: CARD_QUERY_ANSWER,
    },
    WireOp {
        spec: spec("consume", OpClass::Financial(Recovery::Reverse), false),
        path: "jpos/trans/consume",
        reversal: Some("jpos/trans/consumeReversal"),
        fields: CONSUME,
        original_op: None,
        answer: CONSUME_ANSWER,
    },
    WireOp {
        spec: spec("cancel", OpClass::Financial(Recovery::Reverse), true),
        path: "jpos/trans/cancel",
        reversal: Some("jpos/trans/cancelReversal"),
        fields: CANCEL,
        original_op: Some("consume"),
        answer: CANCEL_ANSWER,
    },
    WireOp {
        spec: spec("refund", OpClass::Financial(Recovery::Manual), true),
        path: "jpos/refunds",
        reversal: None,
        fields: REFUND,
        original_op: Some("consume"),
        answer: REFUND_ANSWER,
    },
    WireOp {
        spec: spec("refund-cancel", OpClass::Financial(Recovery::Manual), true),
        path: "jpos/refunds/cancel",
        reversal: None,
        fields: REFUND_CANCEL,
        original_op: Some("refund"),
        answer: CANCEL_ANSWER,
    },
    WireOp {
        spec: spec("ticket-query", OpClass::Inquiry, false),
        path: "jpos/tickets",
        reversal: None,
        fields: CARD_QUERY,
        original_op: None,
        answer: TICKET_QUERY_ANSWER,
    },
    WireOp {
        spec: spec("ticket-consume", OpClass::Financial(Recovery::Reverse), false),
        path: "jpos/tickets/consume",
        reversal: Some("jpos/tickets/consumeReversal"),
        fields: TICKET_CONSUME,
        original_op: None,
        answer: TICKET_CONSUME_ANSWER,
    },
    WireOp {
        spec: spec("send-verify-code", OpClass::Inquiry, false),
        path: "jpos/mobile/sendVerifyCode",
        reversal: None,
        fields: SEND_VERIFY_CODE,
        original_op: None,
        answer: STATUS_ONLY,
    },
    WireOp {
        spec: spec("card-activate", OpClass::Financial(Recovery::Manual), false),
        path: "jpos/card/active",
        reversal: None,
        fields: CARD_ACTIVATE,
        original_op: None,
        answer: CARD_ACTIVATE_ANSWER,
    },
    WireOp {
        spec: spec("settle", OpClass::Settle, false),
        path: "jpos/trans/settle",
        reversal: None,
        fields: SETTLE,
        original_op: None,
        answer: SETTLE_ANSWER,
    },
];

/// The same list as the engine sees it.
pub static OP_SPECS: &[OpSpec] =
    &[OPS[0].spec, OPS[1].spec, OPS[2].spec, OPS[3].spec, OPS[4].spec, OPS[5].spec, OPS[6].spec, OPS[7].spec, OPS[8].spec, OPS[9].spec, OPS[10].spec];

/// Default path of the settlement upload (after the protocol prefix).
pub const UPLOAD_PATH: &str = "jpos/trans/upload";

pub fn op(name: &str) -> Option<&'static WireOp> {
    OPS.iter().find(|o| o.spec.name == name)
}

/// The operation served at a path (after the prefix), and whether the path is its reversal.
pub fn op_by_path(path: &str) -> Option<(&'static WireOp, bool)> {
    OPS.iter().find_map(|o| {
        if o.path == path {
            Some((o, false))
        } else if o.reversal == Some(path) {
            Some((o, true))
        } else {
            None
        }
    })
}

/// The settlement total fields: (wire name, engine total key, is an amount).
/// The spec's 名称字典 spells the credit count `pointCeditCount`; the engine key is `pointCreditCount`.
pub const TOTALS: &[(&str, &str, bool)] = &[
    ("pointDebitCount", "pointDebitCount", false),
    ("pointDebitAmount", "pointDebitAmount", true),
    ("pointCeditCount", "pointCreditCount", false),
    ("pointCreditAmount", "pointCreditAmount", true),
    ("ticketDebitCount", "ticketDebitCount", false),
    ("ticketDebitAmount", "ticketDebitAmount", true),
    ("ticketCreditCount", "ticketCreditCount", false),
    ("ticketCreditAmount", "ticketCreditAmount", true),
    ("totalTransCount", "totalTransCount", false),
    ("cancelCount", "cancelCount", false),
    ("refundCount", "refundCount", false),
    ("cardActiveCount", "cardActiveCount", false),
];

/// `application/x-www-form-urlencoded` body from ordered pairs (WHATWG encoding: space as `+`).
pub fn encode_form(pairs: &[(&str, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Parse a form body into ordered pairs (the simulator's side).
pub fn decode_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_interface_once() {
        assert_eq!(OPS.len(), 11);
        for (o, s) in OPS.iter().zip(OP_SPECS) {
            assert_eq!(o.spec.name, s.name);
            assert_eq!(o.spec.needs_original, o.original_op.is_some(), "{}", o.spec.name);
            // The kinds this backend handles, and no default (the kit's field carries one for other vendors).
            for f in o.fields {
                assert!(
                    matches!(f.kind, Kind::Text | Kind::Card | Kind::Money | Kind::List | Kind::Track | Kind::Pin | Kind::Total),
                    "{}.{}",
                    o.spec.name,
                    f.name
                );
                assert_eq!(f.default, None, "{}.{}", o.spec.name, f.name);
            }
        }
        crate::backend::common::check_tables(OPS.iter().map(|o| (o.spec.name, o.fields)), DAEMON_OWNED).unwrap();
        assert_eq!(op_by_path("jpos/trans/cancelReversal").map(|(o, r)| (o.spec.name, r)), Some(("cancel", true)));
        assert_eq!(op_by_path("jpos/refunds").map(|(o, r)| (o.spec.name, r)), Some(("refund", false)));
        assert!(op("refund").is_some_and(|o| o.reversal.is_none()));
    }

    #[test]
    fn form_encoding_matches_python_urlencode() {
        // Expected text from python3: urllib.parse.urlencode([...]) (quote_plus), same pairs.
        let body = encode_form(&[
            ("storeNo", "100000000000001".into()),
            ("consumeType", "01".into()),
            ("pointAmount", "10.50".into()),
            ("vaucher", r#"[{"id":1,"num":2}]"#.into()),
            ("registerTraceNo", "R 20141103/001&x=1".into()),
            ("name", "张三".into()),
        ]);
        assert_eq!(
            body,
            "storeNo=100000000000001&consumeType=01&pointAmount=10.50&vaucher=%5B%7B%22id%22%3A1%2C%22num%22%3A2%7D%5D&registerTraceNo=R+20141103%2F001%26x%3D1&name=%E5%BC%A0%E4%B8%89"
        );
        let back = decode_form(body.as_bytes());
        assert_eq!(back[3], ("vaucher".to_string(), r#"[{"id":1,"num":2}]"#.to_string()));
        assert_eq!(back[5].1, "张三");
    }
}
