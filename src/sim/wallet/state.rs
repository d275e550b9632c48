//! The wallet simulator's state: accounts, pays, cancels, undos, card orders, deliveries, and the ledger tests read.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value};

/// An answer body, and the pay/order id whose approval it tells (counted only when it reaches the client).
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Value,
    pub told: Option<String>,
}

impl Answer {
    pub fn ok(body: Value, told: Option<String>) -> Answer {
        Answer { body, told }
    }
    pub fn fail(code: i64, msg: impl Into<String>) -> Answer {
        Answer { body: json!({"errcode": code, "errmsg": msg.into()}), told: None }
    }
}

/// A stored-value account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimAccount {
    pub account_id: String,
    pub mobile: Option<String>,
    pub payment_code: String,
    pub balance: i64,
}

impl SimAccount {
    pub fn new(account_id: &str, mobile: Option<&str>, code: &str, balance: i64) -> Self {
        SimAccount { account_id: account_id.into(), mobile: mobile.map(str::to_string), payment_code: code.into(), balance }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PayState {
    Applied,
    Undone,
    Cancelled,
}

#[derive(Debug, Clone)]
struct Pay {
    order_id: String,
    app_order_id: String,
    account: String,
    consumer: String,
    sum: i64,
    state: PayState,
    order: Map<String, Value>,
    pay_time: String,
}

type Triple = (String, String, String);

/// One pay the platform applied, as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPay {
    pub order_id: String,
    /// The POS's `appOrderId`, empty when it sent none.
    pub app_order_id: String,
    pub account: String,
    pub sum: i64,
    /// `applied` (standing), `undone` (pay_undo) or `cancelled` (pay_cancel).
    pub state: &'static str,
}

/// What the platform holds, for tests.
#[derive(Debug, Clone, Default)]
pub struct WalletLedger {
    pub balances: BTreeMap<String, i64>,
    /// Pays applied and still standing (not undone, not cancelled): orderId → sum.
    pub pays_standing: BTreeMap<String, i64>,
    /// orderIds whose approval reached the client.
    pub told_approved: HashSet<String>,
    pub undone: u64,
    pub cancelled: u64,
    /// Undos of a pay the platform never had.
    pub undo_unknown: u64,
    /// orderId → how many delivery requests carried it and were taken.
    pub delivered: BTreeMap<String, u32>,
    pub delivery_requests: u64,
    pub largest_delivery: usize,
    /// Card orders opened (offline), merges included.
    pub opened: u64,
    pub requests: u64,
    pub refused: u64,
    pub nonce_reuses: u64,
    pub by_path: BTreeMap<String, u64>,
    /// Every pay applied, in no particular order.
    pub pays: Vec<SimPay>,
    /// Offline card orders opened (not merges) per `appOrderId`.
    pub opened_by_app: BTreeMap<String, u32>,
    /// Pays refused because their terminalId + batchNo + terminalOrderId came before (a pay sent twice,
    /// or after its undo): a client that never repeats a pay has none.
    pub repeated_pays: u64,
}

#[derive(Default)]
pub struct State {
    accounts: Vec<super::SimAccount>,
    pays: HashMap<Triple, Pay>,
    by_order: HashMap<String, Triple>,
    undone_unknown: HashSet<Triple>,
    cancels: HashMap<Triple, Value>,
    /// Offline card orders: orderId → (accountType delivered, or None).
    cards: HashMap<String, Option<String>>,
    open_by_triple: HashMap<Triple, Value>,
    online: HashMap<String, Value>,
    pub busy: Vec<String>,
    pub nonces: HashSet<String>,
    pub told_approved: HashSet<String>,
    delivered: BTreeMap<String, u32>,
    delivery_requests: u64,
    largest_delivery: usize,
    undone: u64,
    cancelled: u64,
    undo_unknown: u64,
    opened: u64,
    opened_by_app: BTreeMap<String, u32>,
    repeated_pays: u64,
    pub requests: u64,
    pub refused: u64,
    pub nonce_reuses: u64,
    pub by_path: BTreeMap<String, u64>,
    serial: u64,
}

fn s(o: &Map<String, Value>, k: &str) -> String {
    o.get(k).map(crate::backend::wallet::crypto::value_text).unwrap_or_default()
}

fn triple(o: &Map<String, Value>) -> Triple {
    (s(o, "terminalId"), s(o, "batchNo"), s(o, "terminalOrderId"))
}

#[allow(clippy::disallowed_methods)] // the platform's own clock
fn now_text() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

const FAR_END: &str = "2030-12-31 24:00:00";

impl State {
    pub fn new(accounts: &[SimAccount]) -> State {
        State { accounts: accounts.to_vec(), ..Default::default() }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}{:018}", self.serial)
    }

    fn account_mut(&mut self, consumer: &str) -> Option<&mut SimAccount> {
        self.accounts.iter_mut().find(|a| a.account_id == consumer || a.mobile.as_deref() == Some(consumer))
    }

    fn account_json(a: &SimAccount) -> Value {
        json!({"accountId": a.account_id, "balance": a.balance, "status": "正常"})
    }

    pub fn seed_orders(&mut self, n: usize) -> Vec<String> {
        let start = self.cards.len();
        (0..n)
            .map(|i| {
                let id = format!("D{:09}", start + i + 1);
                self.cards.insert(id.clone(), None);
                id
            })
            .collect()
    }

    pub fn pay(&mut self, o: &Map<String, Value>) -> Answer {
        let t = triple(o);
        if self.pays.contains_key(&t) {
            self.repeated_pays += 1;
            return Answer::fail(42004, "终端订单重复");
        }
        if self.undone_unknown.contains(&t) {
            self.repeated_pays += 1;
            return Answer::fail(42004, "终端订单已冲正");
        }
        let Some(sum) = o.get("sum").and_then(Value::as_i64).filter(|v| *v > 0) else { return Answer::fail(40007, "sum错误") };
        let consumer = s(o, "consumerId");
        let code = s(o, "paymentCodeDES");
        let Some(acct) = self.account_mut(&consumer) else { return Answer::fail(42002, "账户不存在") };
        if acct.payment_code != code {
            return Answer::fail(42003, "支付密码错误");
        }
        if acct.balance < sum {
            return Answer::fail(42001, "余额不足");
        }
        acct.balance -= sum;
        let account = Self::account_json(acct);
        let account_id = acct.account_id.clone();
        let order_id = self.next_id("ud");
        let pay_time = now_text();
        let mut order = o.clone();
        order.remove("paymentCodeDES");
        order.insert("orderId".into(), json!(order_id));
        order.insert("payTime".into(), json!(pay_time));
        order.insert("status".into(), json!("支付成功"));
        order.entry("remark").or_insert(json!(""));
        self.by_order.insert(order_id.clone(), t.clone());
        let app_order_id = s(o, "appOrderId");
        self.pays.insert(
            t,
            Pay { order_id: order_id.clone(), app_order_id, account: account_id, consumer, sum, state: PayState::Applied, order: order.clone(), pay_time },
        );
        Answer::ok(json!({"errcode": 0, "errmsg": "线下支付成功", "order": order, "account": account}), Some(order_id))
    }

    fn undo_answer(&self, p: &Pay, status: &str, extra: &Map<String, Value>) -> Value {
        let acct = self.accounts.iter().find(|a| a.account_id == p.account).map(Self::account_json).unwrap_or(Value::Null);
        let mut order = p.order.clone();
        order.insert("status".into(), json!(status));
        for (k, v) in extra {
            order.insert(k.clone(), v.clone());
        }
        order.insert("consumerId".into(), json!(p.consumer));
        order.insert("payTime".into(), json!(p.pay_time));
        order.entry("appOrderId").or_insert(json!(""));
        json!({"errcode": 0, "errmsg": "交易撤销成功", "order": order, "card": acct})
    }

    pub fn undo(&mut self, o: &Map<String, Value>) -> Answer {
        let t = triple(o);
        let Some(p) = self.pays.get(&t).cloned() else {
            self.undone_unknown.insert(t);
            self.undo_unknown += 1;
            return Answer::fail(43001, "原交易不存在");
        };
        match p.state {
            PayState::Applied => {
                if let Some(a) = self.account_mut(&p.consumer) {
                    a.balance += p.sum;
                }
                self.undone += 1;
                if let Some(x) = self.pays.get_mut(&t) {
                    x.state = PayState::Undone;
                }
            }
            PayState::Undone => {}
            PayState::Cancelled => return Answer::fail(43002, "原交易已撤销"),
        }
        Answer::ok(self.undo_answer(&p, "支付失败，冲正成功", &Map::new()), None)
    }

    pub fn cancel(&mut self, o: &Map<String, Value>) -> Answer {
        let own = triple(o);
        if let Some(first) = self.cancels.get(&own) {
            if first["order"]["orderId"].as_str() == Some(s(o, "orderId").as_str()) {
                return Answer::ok(first.clone(), None);
            }
            return Answer::fail(42004, "终端订单重复");
        }
        let Some(t) = self.by_order.get(&s(o, "orderId")).cloned() else { return Answer::fail(43001, "原交易不存在") };
        let Some(p) = self.pays.get(&t).cloned() else { return Answer::fail(43001, "原交易不存在") };
        if p.state != PayState::Applied {
            return Answer::fail(43002, "原交易状态不符");
        }
        if let Some(a) = self.account_mut(&p.consumer) {
            a.balance += p.sum;
        }
        if let Some(x) = self.pays.get_mut(&t) {
            x.state = PayState::Cancelled;
        }
        self.cancelled += 1;
        let mut extra = Map::new();
        for k in ["sellerId", "storeId", "terminalId", "operatorId", "batchNo", "terminalOrderId", "remark"] {
            extra.insert(k.into(), json!(s(o, k)));
        }
        let body = self.undo_answer(&p, "消费撤销成功", &extra);
        let mut body = body;
        body["errmsg"] = json!("交易撤销成功");
        self.cancels.insert(own, body.clone());
        Answer::ok(body, Some(format!("cancel:{}", p.order_id)))
    }

    pub fn balance(&mut self, o: &Map<String, Value>) -> Answer {
        let Some(a) = self.account_mut(&s(o, "consumerId")) else { return Answer::fail(42002, "账户不存在") };
        Answer::ok(
            json!({"errcode": 0, "errmsg": "查询余额成功", "card": {"accountId": a.account_id, "balance": a.balance, "endTime": FAR_END, "status": "正常", "remark": ""}}),
            None,
        )
    }

    pub fn open_card(&mut self, o: &Map<String, Value>, products: &[(String, String, i64)], request: Value) -> Answer {
        let t = triple(o);
        if let Some(first) = self.open_by_triple.get(&t) {
            return Answer::ok(first.clone(), None);
        }
        let product = s(o, "productId");
        let Some((_, _, price)) = products.iter().find(|p| p.0 == product) else { return Answer::fail(10000, "产品不存在") };
        if let Some(sum) = o.get("paySum").and_then(Value::as_i64) {
            if sum != *price {
                let body = json!({"errcode": 44001, "errmsg": "支付金额匹配不到现有产品价格，需要交割时合并订单处理", "request": request});
                self.open_by_triple.insert(t, body.clone());
                return Answer::ok(body, None);
            }
        }
        let order_id = self.next_id("oc");
        self.cards.insert(order_id.clone(), None);
        self.opened += 1;
        *self.opened_by_app.entry(s(o, "appOrderId")).or_default() += 1;
        let account = format!("2001755{:09}", self.serial);
        let mut order = Map::new();
        order.insert("orderId".into(), json!(order_id));
        order.insert("mobileNum".into(), json!(s(o, "mobileNum")));
        for k in ["sellerId", "storeId", "terminalId", "batchNo", "terminalOrderId"] {
            order.insert(k.into(), json!(s(o, k)));
        }
        order.insert("operatorId".into(), json!("001"));
        order.insert("remark".into(), json!(""));
        let body = json!({"errcode": 0, "errmsg": "线下开卡成功", "order": order,
            "card": {"accountId": account, "amount": price, "startTime": now_text(), "endTime": FAR_END, "status": "正常"}});
        self.open_by_triple.insert(t, body.clone());
        Answer::ok(body, Some(order_id))
    }

    fn staged(account: &str, price: i64) -> Value {
        json!({"accountId": account, "amount": price, "restAmount": price, "balance": price / 3, "totalStages": 3, "restStages": 3,
            "returnSum": price / 3, "startTime": now_text(), "endTime": FAR_END, "status": "正常"})
    }

    pub fn open_online(&mut self, o: &Map<String, Value>, products: &[(String, String, i64)]) -> Answer {
        let app = s(o, "appOrderId");
        if let Some(first) = self.online.get(&app) {
            return Answer::ok(first.clone(), None);
        }
        let Some((_, _, price)) = products.iter().find(|p| p.0 == s(o, "productId")) else { return Answer::fail(10000, "产品不存在") };
        let order_id = self.next_id("on");
        let account = format!("2001020{:09}", self.serial);
        self.accounts.push(SimAccount::new(&account, None, "", price / 3));
        let body = json!({"errcode": 0, "errmsg": "用户开卡成功", "orderId": order_id, "card": Self::staged(&account, *price)});
        self.online.insert(app, body.clone());
        Answer::ok(body, Some(order_id))
    }

    pub fn online_result(&mut self, o: &Map<String, Value>) -> Answer {
        match self.online.get(&s(o, "appOrderId")) {
            Some(b) => Answer::ok(json!({"orderId": b["orderId"], "card": b["card"]}), None),
            None => Answer::fail(10000, "没有查找到对应的分期卡订单，其它错误"),
        }
    }

    pub fn transfer(&mut self, o: &Map<String, Value>) -> Answer {
        let Some(sum) = o.get("sum").and_then(Value::as_i64).filter(|v| *v > 0) else { return Answer::fail(40007, "sum错误") };
        let id = s(o, "accountId");
        let Some(a) = self.account_mut(&id) else { return Answer::fail(4340, "从分期卡账户转账到现金账户失败，账户不存在") };
        if a.balance < sum {
            return Answer::fail(4340, "从分期卡账户转账到现金账户失败，余额不足");
        }
        a.balance -= sum;
        let card = Self::staged(&id, a.balance);
        let order_id = self.next_id("tr");
        Answer::ok(
            json!({"errcode": 0, "errmsg": "从分期卡账户转账到现金账户成功", "orderId": order_id, "account": {"accountId": "9501020000000001", "balance": sum, "status": "正常"}, "card": card}),
            Some(order_id),
        )
    }

    pub fn deliver(&mut self, order: Option<&Value>) -> Answer {
        let Some(Value::Array(items)) = order else { return Answer::fail(40007, "缺少order") };
        if items.len() > crate::backend::wallet::wire::MAX_DELIVERY {
            return Answer::fail(45001, "订单数量超过2000");
        }
        self.delivery_requests += 1;
        self.largest_delivery = self.largest_delivery.max(items.len());
        let mut failed = Vec::new();
        for it in items {
            let id = it["orderId"].as_str().unwrap_or_default().to_string();
            let kind = it["accountType"].as_str().unwrap_or_default().to_string();
            if let Some(i) = self.busy.iter().position(|b| *b == id) {
                self.busy.remove(i);
                failed.push(json!({"orderId": id, "errmsg": "系统繁忙"}));
                continue;
            }
            match self.cards.get(&id) {
                None => failed.push(json!({"orderId": id, "errmsg": "订单不存在"})),
                Some(Some(k)) if *k != kind => failed.push(json!({"orderId": id, "errmsg": "订单不一致"})),
                _ => {
                    self.cards.insert(id.clone(), Some(kind));
                    *self.delivered.entry(id).or_default() += 1;
                }
            }
        }
        if failed.is_empty() {
            Answer::ok(json!({"errcode": 0, "errmsg": "接收线下开卡交割数据成功"}), None)
        } else {
            Answer::ok(json!({"errcode": 10000, "errmsg": "接收线下开卡交割数据失败，其它错误", "result": failed}), None)
        }
    }

    pub fn ledger(&self) -> WalletLedger {
        WalletLedger {
            balances: self.accounts.iter().map(|a| (a.account_id.clone(), a.balance)).collect(),
            pays_standing: self.pays.values().filter(|p| p.state == PayState::Applied).map(|p| (p.order_id.clone(), p.sum)).collect(),
            told_approved: self.told_approved.clone(),
            undone: self.undone,
            cancelled: self.cancelled,
            undo_unknown: self.undo_unknown,
            delivered: self.delivered.clone(),
            delivery_requests: self.delivery_requests,
            largest_delivery: self.largest_delivery,
            opened: self.opened,
            requests: self.requests,
            refused: self.refused,
            nonce_reuses: self.nonce_reuses,
            by_path: self.by_path.clone(),
            pays: self
                .pays
                .values()
                .map(|p| SimPay {
                    order_id: p.order_id.clone(),
                    app_order_id: p.app_order_id.clone(),
                    account: p.account.clone(),
                    sum: p.sum,
                    state: match p.state {
                        PayState::Applied => "applied",
                        PayState::Undone => "undone",
                        PayState::Cancelled => "cancelled",
                    },
                })
                .collect(),
            opened_by_app: self.opened_by_app.clone(),
            repeated_pays: self.repeated_pays,
        }
    }
}
