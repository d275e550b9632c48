//! The card consignment platform simulator: card-consignment.txt over plain HTTP, strict checks, delayed results and callbacks.
//!
//! Every request is checked as the platform would: customerId, a fresh timestamp (±5 minutes), the
//! fixed-order sign, every card secret decrypted (hex → base64 → AES; garbage is refused), required
//! fields, sizes (orderId ≤ 50, at most [`ConsignSimConfig::max_batch`] cards a batchno), and a reused
//! orderId is refused (-1 订单号重复). A refusal changes nothing. An accepted card is processing; after
//! `finish_after` it succeeds (a secret starting with `bad` fails), and its result is posted to its
//! notifyUrl, signed, retried twice `retry_base` and `2 × retry_base` apart until answered `success`.
//! Faults: [`Fault`]s per path as in the other simulators; [`ConsignSim::lose_callbacks`] loses the next
//! callback attempts.
pub mod notify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use crate::backend::consign::crypto::{self, NOTIFY_SIGN, QUERY_SIGN, SUBMIT_SIGN};
use crate::backend::mask_card;
use crate::secret::Secret;

use super::faults::{Fault, FaultPlan};
use super::server::DropConnection;

/// The demo merchant (also in the demo profile): test values, not secrets.
pub const DEMO_CUSTOMER_ID: &str = "10001";
pub const DEMO_SIGN_KEY: &str = "demo-consign-sign-key";
pub const DEMO_AES_KEY: &str = "demo-aes-key-016";

const SUBMIT: &str = "api/consignmentOrders";
const QUERY: &str = "api/searchOrders";
const MAX_SKEW_S: i64 = 300;
const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct ConsignSimConfig {
    pub customer_id: String,
    pub sign_key: String,
    pub aes_key: String,
    /// How long an accepted card stays processing; `None`: until [`ConsignSim::finish`].
    pub finish_after: Option<Duration>,
    /// The first retry interval of a callback (10 s on the platform).
    pub retry_base: Duration,
    pub max_batch: usize,
}

impl ConsignSimConfig {
    pub fn demo() -> Self {
        ConsignSimConfig {
            customer_id: DEMO_CUSTOMER_ID.into(),
            sign_key: DEMO_SIGN_KEY.into(),
            aes_key: DEMO_AES_KEY.into(),
            finish_after: Some(Duration::from_secs(2)),
            retry_base: Duration::from_secs(10),
            max_batch: 2000,
        }
    }
}

#[derive(Debug, Clone)]
struct Order {
    sys: String,
    order_id: String,
    face_yuan: i64,
    status: u8,
    fails: bool,
    notify_url: String,
    custom: String,
    success_time: i64,
}

/// What the platform holds, for tests.
#[derive(Debug, Clone, Default)]
pub struct ConsignLedger {
    /// orderId → masked card number of every card accepted.
    pub accepted: BTreeMap<String, String>,
    /// orderIds whose acceptance reached the client.
    pub told_accepted: HashSet<String>,
    /// orderId → the card secret as decrypted (the simulator's proof the daemon encrypted it right).
    pub secrets: BTreeMap<String, String>,
    /// orderId → final status (2 success, 3 failure).
    pub finished: BTreeMap<String, u8>,
    /// orderId → callback attempts made (sent or lost).
    pub callback_attempts: BTreeMap<String, u32>,
    /// orderIds whose callback was answered `success`.
    pub callback_confirmed: HashSet<String>,
    pub callbacks_lost: u64,
    pub requests: u64,
    pub refused: u64,
    pub reused_order_ids: u64,
    pub by_path: BTreeMap<String, u64>,
}

#[derive(Default)]
struct State {
    orders: BTreeMap<String, Order>,
    secrets: BTreeMap<String, String>,
    batches: HashMap<String, usize>,
    ledger: ConsignLedger,
    next_sys: u64,
    lose_callbacks: u32,
}

/// An answer and the orderId whose acceptance it tells.
struct Answer {
    body: Value,
    told: Option<String>,
}

fn fail(code: i64, msg: &str) -> Answer {
    Answer { body: json!({"code": code, "msg": msg}), told: None }
}

/// The simulated platform.
pub struct ConsignSim {
    cfg: ConsignSimConfig,
    state: Mutex<State>,
    faults: FaultPlan,
}

impl std::fmt::Debug for ConsignSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsignSim").field("customer_id", &self.cfg.customer_id).finish_non_exhaustive()
    }
}

impl ConsignSim {
    pub fn new(cfg: ConsignSimConfig) -> Self {
        ConsignSim { cfg, state: Mutex::new(State::default()), faults: FaultPlan::default() }
    }

    pub fn demo() -> Self {
        Self::new(ConsignSimConfig::demo())
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sign_key(&self) -> Secret {
        Secret::new(self.cfg.sign_key.as_bytes().to_vec())
    }

    /// Queue a fault for the next submit.
    pub fn push_fault(&self, f: Fault) {
        self.faults.push(f);
    }
    /// Queue a fault for the next request to `path` (`api/consignmentOrders`, `api/searchOrders`).
    pub fn push_fault_on(&self, path: &str, f: Fault) {
        self.faults.push_on(path, f);
    }
    pub fn set_random_drops(&self, per_mille: u32, seed: u64) {
        self.faults.set_random_drops(per_mille, seed);
    }
    pub fn clear_faults(&self) {
        self.faults.clear();
    }
    /// Lose the next `n` callback attempts (never sent).
    pub fn lose_callbacks(&self, n: u32) {
        self.st().lose_callbacks = n;
    }
    pub fn ledger(&self) -> ConsignLedger {
        self.st().ledger.clone()
    }

    /// Serve plain HTTP (the document's endpoints are http://) until `shutdown`.
    pub async fn serve_plain(self: Arc<Self>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
        let sim = self;
        let handler = Arc::new(move |req: Request<Incoming>| {
            let sim = sim.clone();
            async move { sim.handle(req).await }
        });
        super::server::serve_plain(listener, shutdown, handler).await;
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, DropConnection> {
        if req.method() != hyper::Method::POST {
            return Ok(super::server::reply(405, "text/plain", "only POST".into()));
        }
        let path = req.uri().path().trim_start_matches('/').to_string();
        if path != SUBMIT && path != QUERY {
            return Ok(super::server::reply(404, "text/plain", format!("no such path /{path}")));
        }
        let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
            return Ok(super::server::reply(413, "text/plain", "body too large".into()));
        };
        let body = body.to_bytes();
        let fault = self.faults.take(&path, path == SUBMIT);
        match fault {
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Reset) => return Err(DropConnection),
            Some(Fault::Http500) => return Ok(super::server::reply(500, "text/plain", "simulated internal error".into())),
            _ => {}
        }
        let answer = self.process(&path, &body);
        if let (Some(id), Some(after)) = (answer.told.clone(), self.cfg.finish_after) {
            let sim = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                sim.finish(&id).await;
            });
        }
        match fault {
            Some(Fault::DropAfterCommit) => Err(DropConnection),
            Some(Fault::Garbage) => Ok(super::server::reply(200, "text/html", "<html>502 Bad Gateway (simulated garbage)</html>".into())),
            Some(Fault::AnswerWith(b)) => Ok(super::server::reply(200, "application/json;charset=UTF-8", b.to_string())),
            _ => {
                if let Some(id) = answer.told.filter(|_| Fault::delivers(fault)) {
                    self.st().ledger.told_accepted.insert(id);
                }
                Ok(super::server::bend(fault, super::server::reply(200, "application/json;charset=UTF-8", answer.body.to_string())).await)
            }
        }
    }

    #[allow(clippy::disallowed_methods)] // the platform's own clock, not the engine's
    fn now_s() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn process(&self, path: &str, body: &[u8]) -> Answer {
        let mut st = self.st();
        st.ledger.requests += 1;
        *st.ledger.by_path.entry(path.to_string()).or_default() += 1;
        let a = self.check(&mut st, path, body);
        if a.body["code"] != json!(1) && path == SUBMIT {
            st.ledger.refused += 1;
        }
        a
    }

    fn check(&self, st: &mut State, path: &str, body: &[u8]) -> Answer {
        let mut form = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            if form.insert(k.to_string(), v.into_owned()).is_some() {
                return fail(-1, "参数重复");
            }
        }
        let get = |k: &str| form.get(k).cloned();
        let order = if path == SUBMIT { SUBMIT_SIGN } else { QUERY_SIGN };
        if get("customerId").as_deref() != Some(self.cfg.customer_id.as_str()) {
            return fail(-1, "商户号不存在");
        }
        let fresh = get("timestamp").and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| (Self::now_s() - t).abs() <= MAX_SKEW_S);
        if !fresh {
            return fail(-1, "时间戳过期");
        }
        if !crypto::verify(order, &get, &self.sign_key(), &get("sign").unwrap_or_default()) {
            return fail(-1, "签名错误");
        }
        let order_id = get("orderId").unwrap_or_default();
        if order_id.is_empty() || order_id.chars().count() > 50 {
            return fail(-1, "商户订单号错误");
        }
        if path == QUERY {
            let found = st.orders.get(&order_id).or_else(|| st.orders.values().find(|o| o.sys == order_id));
            return match found {
                None => fail(2, "订单不存在"),
                Some(o) => Answer { body: json!({"code": "1", "msg": "查询成功", "data": [self.row(o)]}), told: None },
            };
        }
        for k in ["productType", "batchno", "productCode", "cardPassword", "faceMoney"] {
            if get(k).is_none_or(|v| v.is_empty()) {
                return fail(-1, &format!("缺少{k}"));
            }
        }
        if !matches!(get("productType").as_deref(), Some("0" | "1" | "2")) {
            return fail(-1, "提交类型错误");
        }
        let Some(face) = get("faceMoney").and_then(|f| f.parse::<i64>().ok()).filter(|f| *f > 0) else { return fail(-1, "卡面值错误") };
        let key = Secret::new(self.cfg.aes_key.as_bytes().to_vec());
        let Ok(secret) = crypto::open_card_secret(&key, &get("cardPassword").unwrap_or_default()) else { return fail(-1, "卡密解密失败") };
        if st.orders.contains_key(&order_id) {
            st.ledger.reused_order_ids += 1;
            return fail(-1, "订单号重复");
        }
        let batch = get("batchno").unwrap_or_default();
        if st.batches.get(&batch).copied().unwrap_or(0) >= self.cfg.max_batch {
            return fail(-1, "批次超过2000张卡");
        }
        *st.batches.entry(batch).or_default() += 1;
        st.next_sys += 1;
        let sys = format!("S{:012}", st.next_sys);
        let card = get("cardNumber").unwrap_or_default();
        st.ledger.accepted.insert(order_id.clone(), mask_card(&card));
        st.ledger.secrets.insert(order_id.clone(), secret.clone());
        st.secrets.insert(order_id.clone(), secret.clone());
        let o = Order {
            sys: sys.clone(),
            order_id: order_id.clone(),
            face_yuan: face,
            status: 1,
            fails: secret.starts_with("bad"),
            notify_url: get("notifyUrl").unwrap_or_default(),
            custom: get("custom").unwrap_or_default(),
            success_time: 0,
        };
        st.orders.insert(order_id.clone(), o);
        Answer { body: json!({"code": 1, "msg": "寄售成功", "sysOrderId": sys}), told: Some(order_id) }
    }

    /// An order as the query and the notification show it (the settled amount: 98.5 % of the face).
    fn row(&self, o: &Order) -> Map<String, Value> {
        let done = o.status == 2;
        let amount_fen = if done { o.face_yuan * 100 * 985 / 1000 } else { 0 };
        let mut m = Map::new();
        m.insert("customerId".into(), json!(self.cfg.customer_id));
        m.insert("sysOrderId".into(), json!(o.sys));
        m.insert("orderId".into(), json!(o.order_id));
        m.insert("status".into(), json!(o.status.to_string()));
        m.insert(
            "message".into(),
            json!(match o.status {
                1 => "处理中",
                2 => "寄售成功",
                _ => "卡密错误",
            }),
        );
        m.insert("faceMoney".into(), json!(o.face_yuan.to_string()));
        m.insert("realMoney".into(), json!(if done { o.face_yuan.to_string() } else { "0".into() }));
        m.insert("amount".into(), json!(crate::money::fen_to_yuan(amount_fen)));
        m.insert("successTime".into(), json!(if done { o.success_time.to_string() } else { String::new() }));
        m.insert("custom".into(), json!(o.custom));
        m
    }

    /// The signed notification form of an order.
    fn notification(&self, o: &Order) -> String {
        let row = self.row(o);
        let get = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_string);
        let sign = crypto::sign(NOTIFY_SIGN, &get, &self.sign_key()).unwrap_or_default();
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &row {
            s.append_pair(k, v.as_str().unwrap_or_default());
        }
        s.append_pair("sign", &sign);
        s.finish()
    }

    /// Finish an order (success, or failure for a `bad…` secret) and call the merchant back, retrying.
    pub async fn finish(&self, order_id: &str) {
        let o = {
            let mut st = self.st();
            let Some(o) = st.orders.get_mut(order_id) else { return };
            if o.status != 1 {
                return;
            }
            o.status = if o.fails { 3 } else { 2 };
            o.success_time = Self::now_s();
            let o = o.clone();
            st.ledger.finished.insert(order_id.to_string(), o.status);
            o
        };
        if !o.notify_url.is_empty() {
            self.call_back(&o).await;
        }
    }

    /// Post the notification: the first attempt and two retries, until answered `success`.
    async fn call_back(&self, o: &Order) {
        let form = self.notification(o);
        for n in 0..notify::ATTEMPTS {
            tokio::time::sleep(notify::backoff(self.cfg.retry_base, n)).await;
            let lost = {
                let mut st = self.st();
                *st.ledger.callback_attempts.entry(o.order_id.clone()).or_default() += 1;
                let lost = st.lose_callbacks > 0;
                if lost {
                    st.lose_callbacks -= 1;
                    st.ledger.callbacks_lost += 1;
                }
                lost
            };
            if lost {
                continue;
            }
            if let Ok((status, body)) = notify::post_form(&o.notify_url, &form, Duration::from_secs(5)).await {
                if notify::confirmed(status, &body) {
                    self.st().ledger.callback_confirmed.insert(o.order_id.clone());
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
