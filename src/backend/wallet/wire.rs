//! The wallet wire vocabulary (stored-value-account.txt): each interface's path, envelope, request fields, orderMD5 list and answer table.
//!
//! Shared by the backend (what to take from the POS, what to send) and the simulator (what to require),
//! so the two cannot drift apart.
use crate::backend::{OpClass, OpSpec, Recovery};

/// Which object of the envelope carries the request fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// `{app, order, tsig}`.
    Order,
    /// `{app, query}` (no tsig: the document's example has none).
    Query,
    /// `{app, download}`.
    Download,
    /// `{app, appOrderId}`: the fields sit beside `app`.
    Bare,
    /// `{app, order: [..], tsig}`: delivery.
    OrderList,
}

impl Envelope {
    pub fn key(self) -> &'static str {
        match self {
            Envelope::Order | Envelope::OrderList => "order",
            Envelope::Query => "query",
            Envelope::Download => "download",
            Envelope::Bare => "",
        }
    }
    pub fn signed(self) -> bool {
        matches!(self, Envelope::Order | Envelope::OrderList)
    }
}

/// Who supplies a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Pos,
    /// Identity, batch, trace, the original's `orderId`, `sellerId` from the profile.
    Daemon,
}

/// How a field is typed on the wire and where it may live in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain text, journaled.
    Text,
    /// Integer fen, a JSON number on the wire.
    Money,
    /// A personal field sent 3DES-encrypted (`ID`, `name`, `mobileNum`): kept only sealed.
    Des3,
    /// The clear payment code from the POS, sent 3DES-encrypted; used once, never stored.
    PayCode,
    /// consumerId: a card number or mobile number, checked locally, masked in the journal.
    Consumer,
    /// An account or card number: journaled masked, kept sealed for resends.
    Account,
    /// A password digest (`paymentCodeMD5`): used once, never stored.
    Secret,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The wire name.
    pub name: &'static str,
    /// The name the POS uses, when not the wire name (`paymentCode` for `paymentCodeDES`).
    pub pos_name: &'static str,
    pub required: bool,
    pub owner: Owner,
    pub kind: Kind,
}

const fn d(name: &'static str) -> Field {
    Field { name, pos_name: name, required: true, owner: Owner::Daemon, kind: Kind::Text }
}
const fn p(name: &'static str, required: bool, kind: Kind) -> Field {
    Field { name, pos_name: name, required, owner: Owner::Pos, kind }
}

/// How an answer field is typed, and so bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AKind {
    /// An identifier or short code: text or integer, at most [`MAX_CODE_CHARS`].
    Code,
    /// An account/card number or consumerId: journaled masked.
    Account,
    /// Integer fen (or an integer count).
    Int,
    /// A time `YYYY-MM-DD HH:MM:SS` (hour 24 allowed, as the document's endTime).
    Time,
    /// Text for people: cut to [`MAX_TEXT_CHARS`].
    Text,
    /// The product list of the download.
    Products,
}

/// One answer field: its path in the answer (`order.orderId`, `card.balance`), its journal name, type
/// and whether an approval must carry it.
#[derive(Debug, Clone, Copy)]
pub struct AnswerField {
    pub path: &'static str,
    pub name: &'static str,
    pub kind: AKind,
    pub required: bool,
}

const fn a(path: &'static str, name: &'static str, kind: AKind, required: bool) -> AnswerField {
    AnswerField { path, name, kind, required }
}

pub const MAX_CODE_CHARS: usize = 128;
pub const MAX_TEXT_CHARS: usize = 256;
pub const TRUNCATED: &str = "…[truncated]";
/// Products kept of a download; more is refused as not the document's answer.
pub const MAX_PRODUCTS: usize = 1000;
/// The document's limit of orders in one delivery request.
pub const MAX_DELIVERY: usize = 2000;
/// `appOrderId`: "最大支持128个字符".
pub const MAX_APP_ORDER_ID: usize = 128;
/// Any other POS text field.
pub const MAX_FIELD_CHARS: usize = 256;

/// One wallet interface.
#[derive(Debug, Clone, Copy)]
pub struct WireOp {
    pub spec: OpSpec,
    pub path: &'static str,
    pub envelope: Envelope,
    pub fields: &'static [Field],
    /// orderMD5's fields, in the document's order (empty: no tsig).
    pub md5: &'static [&'static str],
    pub answer: &'static [AnswerField],
}

const ORDER_PAY_ANSWER: &[AnswerField] = &[
    a("order.orderId", "orderId", AKind::Code, true),
    a("order.consumerId", "consumerId", AKind::Account, true),
    a("order.sum", "sum", AKind::Int, true),
    a("order.payTime", "payTime", AKind::Time, true),
    a("order.status", "status", AKind::Text, true),
    a("order.sellerId", "sellerId", AKind::Code, true),
    a("order.storeId", "storeId", AKind::Code, true),
    a("order.terminalId", "terminalId", AKind::Code, true),
    a("order.operatorId", "operatorId", AKind::Code, true),
    a("order.batchNo", "batchNo", AKind::Code, true),
    a("order.terminalOrderId", "terminalOrderId", AKind::Code, true),
    a("order.productName", "productName", AKind::Text, false),
    a("order.productPrice", "productPrice", AKind::Int, false),
    a("order.productQuantity", "productQuantity", AKind::Code, false),
    a("order.remark", "remark", AKind::Text, false),
    a("account.accountId", "accountId", AKind::Account, true),
    a("account.balance", "balance", AKind::Int, true),
    a("account.status", "accountStatus", AKind::Text, true),
];

/// pay_cancel and pay_undo answer alike (the undo adds product fields and `appOrderId`); the table's
/// `sum` is not in the cancel example, so it is not required.
pub const UNDO_ANSWER: &[AnswerField] = &[
    a("order.orderId", "orderId", AKind::Code, true),
    a("order.consumerId", "consumerId", AKind::Account, true),
    a("order.sum", "sum", AKind::Int, false),
    a("order.payTime", "payTime", AKind::Time, true),
    a("order.status", "status", AKind::Text, true),
    a("order.sellerId", "sellerId", AKind::Code, true),
    a("order.storeId", "storeId", AKind::Code, true),
    a("order.terminalId", "terminalId", AKind::Code, true),
    a("order.operatorId", "operatorId", AKind::Code, true),
    a("order.batchNo", "batchNo", AKind::Code, true),
    a("order.terminalOrderId", "terminalOrderId", AKind::Code, true),
    a("order.remark", "remark", AKind::Text, false),
    a("order.appOrderId", "appOrderId", AKind::Code, false),
    a("card.accountId", "accountId", AKind::Account, true),
    a("card.balance", "balance", AKind::Int, true),
    a("card.status", "accountStatus", AKind::Text, true),
];

const BALANCE_ANSWER: &[AnswerField] = &[
    a("card.accountId", "accountId", AKind::Account, true),
    a("card.balance", "balance", AKind::Int, true),
    // The table requires endTime; the example has none: kept when sent.
    a("card.endTime", "endTime", AKind::Time, false),
    a("card.status", "accountStatus", AKind::Text, true),
];

const OPEN_CARD_ANSWER: &[AnswerField] = &[
    a("order.orderId", "orderId", AKind::Code, true),
    a("order.sellerId", "sellerId", AKind::Code, true),
    a("order.storeId", "storeId", AKind::Code, true),
    a("order.terminalId", "terminalId", AKind::Code, true),
    a("order.batchNo", "batchNo", AKind::Code, true),
    a("order.terminalOrderId", "terminalOrderId", AKind::Code, true),
    a("card.accountId", "accountId", AKind::Account, true),
    a("card.amount", "amount", AKind::Int, true),
    a("card.startTime", "startTime", AKind::Time, true),
    a("card.endTime", "endTime", AKind::Time, true),
    a("card.status", "accountStatus", AKind::Text, true),
];

/// The instalment card of open_online, oilcard/get and transfer.
const STAGED_CARD: [AnswerField; 10] = [
    a("card.accountId", "accountId", AKind::Account, true),
    a("card.amount", "amount", AKind::Int, true),
    a("card.restAmount", "restAmount", AKind::Int, true),
    a("card.balance", "balance", AKind::Int, true),
    a("card.totalStages", "totalStages", AKind::Int, true),
    a("card.restStages", "restStages", AKind::Int, true),
    a("card.returnSum", "returnSum", AKind::Int, true),
    a("card.startTime", "startTime", AKind::Time, true),
    a("card.endTime", "endTime", AKind::Time, true),
    a("card.status", "accountStatus", AKind::Text, true),
];

const OPEN_ONLINE_ANSWER: &[AnswerField] = &[
    a("orderId", "orderId", AKind::Code, true),
    STAGED_CARD[0],
    STAGED_CARD[1],
    STAGED_CARD[2],
    STAGED_CARD[3],
    STAGED_CARD[4],
    STAGED_CARD[5],
    STAGED_CARD[6],
    STAGED_CARD[7],
    STAGED_CARD[8],
    STAGED_CARD[9],
];

const TRANSFER_ANSWER: &[AnswerField] = &[
    a("orderId", "orderId", AKind::Code, false),
    a("account.accountId", "cashAccountId", AKind::Account, false),
    a("account.balance", "cashBalance", AKind::Int, false),
    STAGED_CARD[0],
    STAGED_CARD[1],
    STAGED_CARD[2],
    STAGED_CARD[3],
    STAGED_CARD[4],
    STAGED_CARD[5],
    STAGED_CARD[6],
    STAGED_CARD[7],
    STAGED_CARD[8],
    STAGED_CARD[9],
];

const PRODUCTS_ANSWER: &[AnswerField] = &[a("product", "product", AKind::Products, true)];
const DELIVERY_ANSWER: &[AnswerField] = &[];

const ID: Field = p("ID", true, Kind::Des3);
const SELLER: Field = d("sellerId");
const STORE: Field = d("storeId");
const TERMINAL: Field = d("terminalId");
const OPERATOR: Field = d("operatorId");
const BATCH: Field = d("batchNo");
const TORDER: Field = d("terminalOrderId");

pub static OPS: &[WireOp] = &[
    WireOp {
        spec: OpSpec { name: "pay", class: OpClass::Financial(Recovery::Reverse), needs_original: false },
        path: "gw/offline/pay",
        envelope: Envelope::Order,
        fields: &[
            p("consumerId", true, Kind::Consumer),
            Field { name: "paymentCodeDES", pos_name: "paymentCode", required: true, owner: Owner::Pos, kind: Kind::PayCode },
            p("sum", true, Kind::Money),
            SELLER,
            STORE,
            TERMINAL,
            OPERATOR,
            BATCH,
            TORDER,
            p("productName", false, Kind::Text),
            p("productPrice", false, Kind::Money),
            p("productQuantity", false, Kind::Text),
            p("remark", false, Kind::Text),
            p("appOrderId", false, Kind::Text),
        ],
        md5: &[
            "consumerId",
            "paymentCodeDES",
            "sum",
            "sellerId",
            "storeId",
            "terminalId",
            "operatorId",
            "batchNo",
            "terminalOrderId",
            "productName",
            "productPrice",
            "productQuantity",
            "remark",
            "appOrderId",
        ],
        answer: ORDER_PAY_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "pay-cancel", class: OpClass::Financial(Recovery::Resend), needs_original: true },
        path: "gw/offline/pay_cancel",
        envelope: Envelope::Order,
        fields: &[d("orderId"), SELLER, STORE, TERMINAL, OPERATOR, BATCH, TORDER, p("remark", false, Kind::Text), p("appOrderId", false, Kind::Text)],
        md5: &["orderId", "sellerId", "storeId", "terminalId", "operatorId", "remark", "terminalOrderId", "batchNo", "appOrderId"],
        answer: UNDO_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "balance", class: OpClass::Inquiry, needs_original: false },
        path: "gw/offline/get_account_info",
        envelope: Envelope::Query,
        fields: &[p("consumerId", true, Kind::Consumer), SELLER, STORE, TERMINAL, OPERATOR, TORDER, BATCH, p("remark", false, Kind::Text)],
        md5: &[],
        answer: BALANCE_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "open-card", class: OpClass::Financial(Recovery::Resend), needs_original: false },
        path: "gw/offline/open_card",
        envelope: Envelope::Order,
        fields: &[
            ID,
            p("name", false, Kind::Des3),
            p("mobileNum", true, Kind::Des3),
            p("appOrderId", true, Kind::Text),
            SELLER,
            STORE,
            TERMINAL,
            BATCH,
            TORDER,
            p("productId", true, Kind::Text),
            p("paySum", false, Kind::Money),
            p("remark", true, Kind::Text),
        ],
        md5: &["ID", "name", "mobileNum", "appOrderId", "sellerId", "storeId", "terminalId", "batchNo", "terminalOrderId", "productId", "remark"],
        answer: OPEN_CARD_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "products", class: OpClass::Inquiry, needs_original: false },
        path: "front/offline/download_product",
        envelope: Envelope::Download,
        fields: &[SELLER, STORE, TERMINAL, BATCH, TORDER],
        md5: &[],
        answer: PRODUCTS_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "open-online", class: OpClass::Financial(Recovery::Query), needs_original: false },
        path: "gw/oilcard/open_online",
        envelope: Envelope::Order,
        fields: &[
            ID,
            p("name", true, Kind::Des3),
            p("mobileNum", true, Kind::Des3),
            p("smsCode", true, Kind::Secret),
            p("channelOrderId", true, Kind::Text),
            p("channelNo", true, Kind::Text),
            p("appOrderId", true, Kind::Text),
            p("productId", true, Kind::Text),
            p("remark", true, Kind::Text),
        ],
        md5: &["channelNo", "ID", "name", "mobileNum", "channelOrderId", "remark", "appOrderId", "productId"],
        answer: OPEN_ONLINE_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "open-online-result", class: OpClass::Inquiry, needs_original: false },
        path: "front/oilcard/get",
        envelope: Envelope::Bare,
        fields: &[p("appOrderId", true, Kind::Text)],
        md5: &[],
        answer: OPEN_ONLINE_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "transfer", class: OpClass::Financial(Recovery::Manual), needs_original: false },
        path: "gw/oilcard/transfer_to_cashAccount",
        envelope: Envelope::Order,
        fields: &[
            // Plain text here: its table, unlike open_card's, says nothing of 3DES (specs/README.md).
            p("mobileNum", true, Kind::Text),
            p("accountId", true, Kind::Account),
            p("sum", true, Kind::Money),
            p("remark", true, Kind::Text),
            p("appOrderId", true, Kind::Text),
            p("accountCode", false, Kind::Secret),
            p("paymentCodeMD5", false, Kind::Secret),
        ],
        md5: &["mobileNum", "accountId", "remark", "appOrderId", "sum", "accountCode", "paymentCodeMD5"],
        answer: TRANSFER_ANSWER,
    },
    WireOp {
        spec: OpSpec { name: "delivery", class: OpClass::Report, needs_original: false },
        path: "gw/oilcard/open_offline_delivery",
        envelope: Envelope::OrderList,
        fields: &[],
        md5: &["orderId", "accountType"],
        answer: DELIVERY_ANSWER,
    },
];

/// The reversal of `pay` (pay_undo): identified by terminalId + batchNo + terminalOrderId.
pub static PAY_UNDO: WireOp = WireOp {
    spec: OpSpec { name: "pay-undo", class: OpClass::Inquiry, needs_original: false },
    path: "gw/offline/pay_undo",
    envelope: Envelope::Order,
    fields: &[SELLER, STORE, TERMINAL, OPERATOR, TORDER, BATCH, p("remark", false, Kind::Text), p("appOrderId", false, Kind::Text)],
    md5: &["sellerId", "storeId", "terminalId", "operatorId", "remark", "terminalOrderId", "batchNo", "appOrderId"],
    answer: UNDO_ANSWER,
};

/// The local sign-on and settlement (the document has neither): never sent.
pub static LOCAL_OPS: &[OpSpec] =
    &[OpSpec { name: "checkin", class: OpClass::SignOn, needs_original: false }, OpSpec { name: "settle", class: OpClass::Settle, needs_original: false }];

pub fn op(name: &str) -> Option<&'static WireOp> {
    OPS.iter().find(|w| w.spec.name == name)
}

/// The interface at `path` (without the leading `/`), the undo included.
pub fn op_by_path(path: &str) -> Option<&'static WireOp> {
    OPS.iter().chain(std::iter::once(&PAY_UNDO)).find(|w| w.path == path)
}

/// The string the document signs: the values sorted (byte order = code point order) and concatenated,
/// empty or absent ones contributing nothing (specs/README.md, "按值的字典顺序排列组合成字符串").
pub fn sorted_values<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = values.into_iter().filter(|s| !s.is_empty()).collect();
    v.sort_unstable();
    v.concat()
}

/// Fields the POS may never send.
pub const DAEMON_OWNED: &[&str] = &["sellerId", "storeId", "terminalId", "operatorId", "batchNo", "terminalOrderId", "orderId", "paymentCodeDES"];
