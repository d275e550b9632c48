//! The scenic ticket platform simulator: scenic-tickets.txt over HTTPS with strict checks, real orders, faults and gate check-ins sent back.
//!
//! Every request is checked as the platform would: `app_key` (9002), the sign over the exact `params`
//! text received (9003), `time_stamp` within 5 minutes (9003), params that are a JSON object with every
//! required field (9001/3001), money with at most 2 decimals and `amount` = `price` × `count` (3005),
//! the product (3002), the mobile number (3004), resident IDs (3012) and their number on real-name
//! products (3011), stock (3008). A refusal changes nothing.
//!
//! A create naming a `channel_order_num` the platform already has is answered with that first order
//! again when its params are the same (no second order), and refused 3000 when they differ. A cancel
//! of a cancelled order is answered 4002, of a checked one 4003. [`ScenicSim::check_in`] checks tickets
//! at the gate and, through [`callback::Sender`], calls the channel back (retrying, with faults).
pub mod callback;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use crate::backend::scenic::wire;
use crate::secret::Secret;

use super::faults::{Fault, FaultPlan};
use super::server::{reply, serve_tls, DropConnection};

/// The demo app_key and app_secret (also in the demo profile): test values, not secrets.
pub const DEMO_APP_KEY: &str = "e346aca67b1b11eab1d45404a6b35c1e";
pub const DEMO_APP_SECRET: &str = "94d95bdd7ef111eaa2505404a6b35c1e";
/// How far a time_stamp may be off, in milliseconds.
const MAX_SKEW_MS: i64 = 300_000;

/// One product on sale.
#[derive(Debug, Clone)]
pub struct SimProduct {
    pub code: String,
    /// Whether each ticket needs a resident ID (实名制).
    pub real_name: bool,
    pub stock: i64,
}

#[derive(Debug, Clone)]
pub struct ScenicSimConfig {
    pub app_key: String,
    pub app_secret: String,
    pub products: Vec<SimProduct>,
}

impl ScenicSimConfig {
    /// The demo platform: `XXX` (no resident IDs, 10,000 tickets) and `REAL` (one resident ID a ticket).
    pub fn demo() -> Self {
        ScenicSimConfig {
            app_key: DEMO_APP_KEY.into(),
            app_secret: DEMO_APP_SECRET.into(),
            products: vec![
                SimProduct { code: "XXX".into(), real_name: false, stock: 10_000 },
                SimProduct { code: "REAL".into(), real_name: true, stock: 10_000 },
            ],
        }
    }
}

/// One order the platform holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOrder {
    pub order_num: String,
    pub channel_order_num: String,
    /// The params text it was created from (a resend must match it).
    pub params: String,
    pub amount_fen: i64,
    pub count: i64,
    pub checked: i64,
    pub cancelled: bool,
}

/// What the platform did, for tests to check the daemon against.
#[derive(Debug, Clone, Default)]
pub struct ScenicLedger {
    pub requests: u64,
    pub refused: u64,
    /// Orders by platform order_num.
    pub orders: BTreeMap<String, SimOrder>,
    /// Platform order_nums whose create answer was delivered (not lost).
    pub told_approved: BTreeSet<String>,
    /// Creates that named an existing channel_order_num and were answered with the first order.
    pub duplicate_creates: u64,
    pub cancelled: u64,
    /// Check-in notifications sent (every attempt) and acknowledged with the document's answer.
    pub callbacks_sent: u64,
    pub callbacks_acked: u64,
}

impl ScenicLedger {
    /// The orders created for one channel order number (never more than one).
    pub fn created_for(&self, channel_order_num: &str) -> usize {
        self.orders.values().filter(|o| o.channel_order_num == channel_order_num).count()
    }
}

/// An answer: the document's `{code, message, data}`, and the order it tells approved.
struct Answer {
    body: Value,
    told: Option<String>,
}

fn fail(code: &str, message: &str) -> Answer {
    Answer { body: json!({"code": code, "message": message, "data": ""}), told: None }
}

/// The simulated platform.
pub struct ScenicSim {
    cfg: ScenicSimConfig,
    state: Mutex<(ScenicLedger, BTreeMap<String, i64>)>,
    faults: FaultPlan,
    pub(crate) callbacks: callback::CallbackFaults,
    sender: Mutex<Option<callback::Sender>>,
}

impl std::fmt::Debug for ScenicSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScenicSim").field("app_key", &self.cfg.app_key).finish_non_exhaustive()
    }
}

const FINANCIAL: &[&str] = &[wire::CREATE_PATH, wire::CANCEL_PATH];

impl ScenicSim {
    pub fn new(cfg: ScenicSimConfig) -> Self {
        let stock = cfg.products.iter().map(|p| (p.code.clone(), p.stock)).collect();
        ScenicSim {
            cfg,
            state: Mutex::new((ScenicLedger::default(), stock)),
            faults: FaultPlan::default(),
            callbacks: callback::CallbackFaults::default(),
            sender: Mutex::new(None),
        }
    }

    pub fn demo() -> Self {
        Self::new(ScenicSimConfig::demo())
    }

    fn st(&self) -> MutexGuard<'_, (ScenicLedger, BTreeMap<String, i64>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a fault for the next create or cancel.
    pub fn push_fault(&self, f: Fault) {
        self.faults.push(f);
    }
    /// Queue a fault for the next request to `path` (`public/createOrder`, `public/cancelOrder`).
    pub fn push_fault_on(&self, path: &str, f: Fault) {
        self.faults.push_on(path, f);
    }
    /// Lose the answers of a share of all requests (applied first).
    pub fn set_random_drops(&self, per_mille: u32, seed: u64) {
        self.faults.set_random_drops(per_mille, seed);
    }
    pub fn clear_faults(&self) {
        self.faults.clear();
        self.callbacks.clear();
    }
    /// Queue a fault for the next check-in callback attempt.
    pub fn push_callback_fault(&self, f: callback::CallbackFault) {
        self.callbacks.push(f);
    }
    /// Where (and how) to send check-in notifications: the channel's callback URL.
    pub fn set_callback(&self, sender: callback::Sender) {
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
    }
    pub fn ledger(&self) -> ScenicLedger {
        self.st().0.clone()
    }

    /// Check `tickets` more tickets of `order_num` at the gate; the notification the document sends.
    pub fn check_in(&self, order_num: &str, tickets: i64, check_time: &str) -> Option<Value> {
        let mut st = self.st();
        let o = st.0.orders.get_mut(order_num).filter(|o| !o.cancelled)?;
        o.checked = (o.checked + tickets.max(0)).min(o.count);
        let result = if o.checked == 0 {
            "0"
        } else if o.checked < o.count {
            "1"
        } else {
            "2"
        };
        Some(json!({
            "order_num": o.order_num, "check_time": check_time, "check_result": result,
            "total_count": o.count.to_string(), "no_check_count": (o.count - o.checked).to_string(), "check_count": o.checked.to_string()
        }))
    }

    /// Check tickets at the gate and call the channel back (if a callback is set), retrying as configured.
    /// Returns whether the channel acknowledged it with the document's answer.
    pub async fn check_in_and_notify(&self, order_num: &str, tickets: i64, check_time: &str) -> bool {
        let Some(n) = self.check_in(order_num, tickets, check_time) else { return false };
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(sender) = sender else { return false };
        let report = sender.deliver(&n, &self.callbacks).await;
        let mut st = self.st();
        st.0.callbacks_sent += report.attempts;
        st.0.callbacks_acked += u64::from(report.acked);
        report.acked
    }

    /// Serve over TLS until `shutdown`.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, tls: tokio_rustls::TlsAcceptor, shutdown: impl Future<Output = ()>) {
        let sim = self;
        let handler = Arc::new(move |req: Request<Incoming>| {
            let sim = sim.clone();
            async move { sim.handle(req).await }
        });
        serve_tls(listener, tls, shutdown, handler).await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, DropConnection> {
        if req.method() != hyper::Method::POST {
            return Ok(reply(405, "text/plain", "only POST".into()));
        }
        let path = req.uri().path().trim_start_matches('/').to_string();
        let body = req.into_body().collect().await.map_err(|_| DropConnection)?.to_bytes();
        if !FINANCIAL.contains(&path.as_str()) {
            return Ok(reply(404, "text/plain", format!("no such path /{path}")));
        }
        let fault = self.faults.take(&path, true);
        match fault {
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Reset) => return Err(DropConnection),
            Some(Fault::Http500) => return Ok(reply(500, "text/plain", "simulated internal error".into())),
            _ => {}
        }
        let answer = self.process(&path, &body);
        let json_ct = "application/json;charset=UTF-8";
        match fault {
            Some(Fault::DropAfterCommit) => Err(DropConnection),
            Some(Fault::Garbage) => Ok(reply(200, "text/html", "<html>502 Bad Gateway (simulated garbage)</html>".into())),
            Some(Fault::AnswerWith(b)) => Ok(reply(200, json_ct, b.to_string())),
            Some(Fault::Huge(n)) => {
                let mut v = answer.body;
                v["advertisement"] = Value::String("x".repeat(n));
                Ok(reply(200, json_ct, v.to_string()))
            }
            _ => {
                if let Some(n) = answer.told.filter(|_| Fault::delivers(fault)) {
                    self.st().0.told_approved.insert(n);
                }
                Ok(super::server::bend(fault, reply(200, json_ct, answer.body.to_string())).await)
            }
        }
    }

    #[allow(clippy::disallowed_methods)] // the platform's own clock, not the engine's
    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// The params text of a signed envelope, or the refusal.
    fn open(&self, body: &[u8]) -> Result<String, Answer> {
        let v: Value = serde_json::from_slice(body).map_err(|_| fail("9001", "缺少参数"))?;
        let o = v.as_object().ok_or_else(|| fail("9001", "缺少参数"))?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(key), Some(params), Some(sign)) = (s("app_key"), s("params"), s("sign")) else { return Err(fail("9001", "缺少参数")) };
        let ts = match o.get("time_stamp") {
            Some(Value::Number(n)) if n.is_i64() => n.to_string(),
            Some(Value::String(t)) if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() => t.clone(),
            _ => return Err(fail("9001", "缺少参数")),
        };
        if key != self.cfg.app_key {
            return Err(fail("9002", "分销渠道app_key无效"));
        }
        let want = wire::sign(&Secret::new(self.cfg.app_secret.as_bytes().to_vec()), &params, &ts);
        if sign != want {
            return Err(fail("9003", "签名错误"));
        }
        let t: i64 = ts.parse().map_err(|_| fail("9003", "签名错误"))?;
        if (Self::now_ms() - t).abs() > MAX_SKEW_MS {
            return Err(fail("9003", "签名错误(时间戳过期)"));
        }
        Ok(params)
    }

    fn process(&self, path: &str, body: &[u8]) -> Answer {
        let mut st = self.st();
        st.0.requests += 1;
        let params = match self.open(body) {
            Ok(p) => p,
            Err(a) => {
                st.0.refused += 1;
                return a;
            }
        };
        let Ok(Value::Object(p)) = serde_json::from_str::<Value>(&params) else {
            st.0.refused += 1;
            return fail("3001", "必要参数验证为空");
        };
        let (ledger, stock) = &mut *st;
        let a = if path == wire::CREATE_PATH { self.create(ledger, stock, &p, &params) } else { Self::cancel(ledger, &p) };
        if a.told.is_none() && a.body["code"] != "1000" {
            ledger.refused += 1;
        }
        a
    }

    fn create(&self, ledger: &mut ScenicLedger, stock: &mut BTreeMap<String, i64>, p: &Map<String, Value>, params: &str) -> Answer {
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let (Some(channel), Some(code), Some(phone), Some(date)) = (text("channel_order_num"), text("product_code"), text("take_phone"), text("date")) else {
            return fail("3001", "必要参数验证为空");
        };
        if let Some(first) = ledger.orders.values().find(|o| o.channel_order_num == channel) {
            if first.params != params {
                return fail("3000", "创建订单失败");
            }
            ledger.duplicate_creates += 1;
            let n = first.order_num.clone();
            return Answer { body: json!({"code": "1000", "message": "成功", "data": {"order_num": n}}), told: Some(n) };
        }
        let Some(product) = self.cfg.products.iter().find(|x| x.code == code) else { return fail("3002", "产品不存在或已下架") };
        if chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_err() {
            return fail("3003", "购买日期无效");
        }
        if phone.len() != 11 || !phone.starts_with('1') || !phone.bytes().all(|b| b.is_ascii_digit()) {
            return fail("3004", "取票人手机格式错误");
        }
        let money = |k: &str| p.get(k).filter(|v| v.is_number()).and_then(|v| crate::money::json_yuan_to_fen(v).ok());
        let (Some(price), Some(amount)) = (money("price"), money("amount")) else { return fail("3005", "价格格式错误") };
        let Some(count) = p.get("count").and_then(Value::as_i64).filter(|c| (1..=9999).contains(c)) else { return fail("3006", "产品购票数量无效") };
        if price.checked_mul(count) != Some(amount) {
            return fail("3005", "价格格式错误");
        }
        let ids: Vec<&String> = match p.get("tourist_info") {
            None => Vec::new(),
            Some(Value::Object(o)) => o.keys().collect(),
            Some(_) => return fail("3012", "身份证号无效"),
        };
        if !product.real_name && !ids.is_empty() {
            return fail("3010", "此票不需要实名制");
        }
        if product.real_name && ids.len() as i64 != count {
            return fail("3011", "身份证数量与购票数量不匹配");
        }
        if ids.iter().any(|id| wire::check_resident_id(id).is_err()) {
            return fail("3012", "身份证号无效");
        }
        let left = stock.entry(code.to_string()).or_default();
        if *left < count {
            return fail("3008", "库存不足");
        }
        *left -= count;
        let n = format!("{:032x}", rand::random::<u128>());
        ledger.orders.insert(
            n.clone(),
            SimOrder {
                order_num: n.clone(),
                channel_order_num: channel.into(),
                params: params.into(),
                amount_fen: amount,
                count,
                checked: 0,
                cancelled: false,
            },
        );
        Answer { body: json!({"code": "1000", "message": "成功", "data": {"order_num": n}}), told: Some(n) }
    }

    fn cancel(ledger: &mut ScenicLedger, p: &Map<String, Value>) -> Answer {
        let Some(n) = p.get("order_num").and_then(Value::as_str) else { return fail("9001", "缺少参数") };
        let Some(o) = ledger.orders.get_mut(n) else { return fail("4001", "此订单不存在") };
        if o.cancelled {
            return fail("4002", "此订单已取消");
        }
        if o.checked > 0 {
            return fail("4003", "此订单已检票");
        }
        o.cancelled = true;
        ledger.cancelled += 1;
        Answer { body: json!({"code": "1000", "message": "成功", "data": ""}), told: None }
    }
}
