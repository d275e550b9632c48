//! The wallet platform simulator: stored-value-account.txt over HTTPS (or plain HTTP) with real accounts, strict checks and faults.
//!
//! Every request is checked as the platform would: `app.signature`, reused nonces (app and tsig), stale
//! timeStamps (more than 5 minutes off), `orderMD5` recomputed from the order as received, the `tsig`
//! signature (RSA with the public key from `tests/fixtures/wallet/`, or MD5 with the appKey), every 3DES
//! field decrypted (garbage is refused), every required field present. A refusal is an answer with an
//! errcode from [`codes::SIM_CODES`] and changes nothing.
//!
//! State and rules: a `pay` is applied once per terminalId + batchNo + terminalOrderId (a second one is
//! refused 42004); `pay_undo` by the same three undoes it (again: the same answer), and answers
//! 43001 "原交易不存在" for a pay it never had, after which that pay is refused if it arrives late;
//! `pay_cancel` voids a pay by its orderId once, and an identical cancel (same orderId and the cancel's
//! own terminal triple) gets the same answer again; `open_card` opens an order once per terminal triple
//! (a resend gets the same orderId), answers 44001 (the merge answer) when `paySum` matches no product
//! price; delivery takes at most 2,000 orders (45001 otherwise), answers per-order failures in `result`,
//! and counts how often each order was delivered ([`WalletLedger::delivered`]).
//!
//! Faults ([`Fault`]) apply to every interface: `push_fault_on(path, Fault::DropAfterCommit)` loses the
//! answer of the next request to `path` after applying it.
mod state;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use crate::backend::common::sign::{RsaHash, RsaVerifier};
use crate::backend::wallet::crypto::{self, TsigCheck, TsigMode};
use crate::backend::wallet::wire::{self, Envelope, Kind, WireOp};
use crate::secret::Secret;

use super::faults::{Fault, FaultPlan};
use super::server::{serve_tls, DropConnection};
use state::{Answer, State};
pub use state::{SimAccount, SimPay, WalletLedger};

/// The demo appId and appKey (also in the demo profile): test values, not secrets.
pub const DEMO_APP_ID: &str = "zjhtwallet";
pub const DEMO_APP_KEY: &str = "demo-wallet-app-key-0123456789";
/// The test key pair's public half.
pub const TEST_PUBLIC_KEY: &str = include_str!("../../../tests/fixtures/wallet/test-public-key.pem");
/// The test key pair's private half (a TEST key, see tests/fixtures/wallet/README.md).
pub const TEST_PRIVATE_KEY: &str = include_str!("../../../tests/fixtures/wallet/test-private-key.pem");

/// How far a timeStamp may be off, in seconds.
const MAX_SKEW_S: i64 = 300;

#[derive(Debug, Clone)]
pub struct WalletSimConfig {
    pub app_id: String,
    pub app_key: String,
    pub tsig: TsigMode,
    pub public_key_pem: String,
    /// orderMD5 over the 3DES fields' clear text (`md5_over = "plain"`).
    pub md5_plain: bool,
    pub accounts: Vec<SimAccount>,
    /// (productId, productName, productPrice fen).
    pub products: Vec<(String, String, i64)>,
}

impl WalletSimConfig {
    /// The demo platform: accounts 2001755000000001 (mobile 13912345678, code 123456, 10,000.00),
    /// 2001755000000002 (code 654321, 50.00), 2001755000000003 (code 000000, 1,000,000.00, benchmarks);
    /// products 1010 乐驾包5000 4,500.00, 1011 乐驾包4000 3,500.00, 1012 乐驾包2000 1,500.00.
    pub fn demo() -> Self {
        WalletSimConfig {
            app_id: DEMO_APP_ID.into(),
            app_key: DEMO_APP_KEY.into(),
            tsig: TsigMode::RsaSha1,
            public_key_pem: TEST_PUBLIC_KEY.into(),
            md5_plain: false,
            accounts: vec![
                SimAccount::new("2001755000000001", Some("13912345678"), "123456", 1_000_000),
                SimAccount::new("2001755000000002", None, "654321", 5_000),
                SimAccount::new("2001755000000003", None, "000000", 100_000_000),
            ],
            products: vec![
                ("1010".into(), "乐驾包5000".into(), 450_000),
                ("1011".into(), "乐驾包4000".into(), 350_000),
                ("1012".into(), "乐驾包2000".into(), 150_000),
            ],
        }
    }
}

/// The simulated platform.
pub struct WalletSim {
    cfg: WalletSimConfig,
    tsig: Option<TsigCheck>,
    state: Mutex<State>,
    faults: FaultPlan,
}

impl std::fmt::Debug for WalletSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletSim").field("app_id", &self.cfg.app_id).finish_non_exhaustive()
    }
}

/// Financial interfaces (the target of [`Fault`]s queued without an endpoint).
const FINANCIAL: &[&str] =
    &["gw/offline/pay", "gw/offline/pay_cancel", "gw/offline/pay_undo", "gw/offline/open_card", "gw/oilcard/open_online", "gw/oilcard/transfer_to_cashAccount"];

impl WalletSim {
    pub fn new(cfg: WalletSimConfig) -> Self {
        let key = Secret::new(cfg.app_key.as_bytes().to_vec());
        let tsig = match cfg.tsig {
            TsigMode::Md5Key => Some(TsigCheck::Md5(key)),
            m => {
                RsaVerifier::from_pem(&cfg.public_key_pem).ok().map(|v| TsigCheck::Rsa(v, if m == TsigMode::RsaSha1 { RsaHash::Sha1 } else { RsaHash::Sha256 }))
            }
        };
        let state = State::new(&cfg.accounts);
        WalletSim { cfg, tsig, state: Mutex::new(state), faults: FaultPlan::default() }
    }

    pub fn demo() -> Self {
        Self::new(WalletSimConfig::demo())
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a fault for the next financial request.
    pub fn push_fault(&self, f: Fault) {
        self.faults.push(f);
    }
    /// Queue a fault for the next request to `path` (e.g. `gw/offline/pay`, `gw/oilcard/open_offline_delivery`).
    pub fn push_fault_on(&self, path: &str, f: Fault) {
        self.faults.push_on(path, f);
    }
    /// Lose the answers of a share of all requests (applied first).
    pub fn set_random_drops(&self, per_mille: u32, seed: u64) {
        self.faults.set_random_drops(per_mille, seed);
    }
    pub fn clear_faults(&self) {
        self.faults.clear();
    }
    /// Open `n` offline card orders as if earlier open_card requests had (ids `D000000001`…), for delivery.
    pub fn seed_offline_orders(&self, n: usize) -> Vec<String> {
        self.st().seed_orders(n)
    }
    /// Answer 系统繁忙 for `order_id` in the next delivery that carries it.
    pub fn push_busy(&self, order_id: &str) {
        self.st().busy.push(order_id.to_string());
    }
    /// What the platform holds, for tests to check the daemon against.
    pub fn ledger(&self) -> WalletLedger {
        self.st().ledger()
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

    /// Serve plain HTTP (for profiles with `allow_plain_http`) until `shutdown`.
    pub async fn serve_plain(self: Arc<Self>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
        let sim = self;
        let handler = Arc::new(move |req: Request<Incoming>| {
            let sim = sim.clone();
            async move { sim.handle(req).await }
        });
        super::server::serve_plain(listener, shutdown, handler).await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, DropConnection> {
        if req.method() != hyper::Method::POST {
            return Ok(super::server::reply(405, "text/plain", "only POST".into()));
        }
        let path = req.uri().path().trim_start_matches('/').to_string();
        let body = req.into_body().collect().await.map_err(|_| DropConnection)?.to_bytes();
        let Some(w) = wire::op_by_path(&path) else {
            return Ok(super::server::reply(404, "text/plain", format!("no such path /{path}")));
        };
        let fault = self.faults.take(&path, FINANCIAL.contains(&path.as_str()));
        match fault {
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Reset) => return Err(DropConnection),
            Some(Fault::Http500) => return Ok(super::server::reply(500, "text/plain", "simulated internal error".into())),
            _ => {}
        }
        let answer = self.process(w, &body);
        match fault {
            Some(Fault::DropAfterCommit) => Err(DropConnection),
            Some(Fault::Garbage) => Ok(super::server::reply(200, "text/html", "<html>502 Bad Gateway (simulated garbage)</html>".into())),
            Some(Fault::AnswerWith(b)) => Ok(super::server::reply(200, "application/json; charset=UTF-8", b.to_string())),
            _ => {
                if let Some(id) = answer.told.clone().filter(|_| Fault::delivers(fault)) {
                    self.st().told_approved.insert(id);
                }
                Ok(super::server::bend(fault, super::server::reply(200, "application/json; charset=UTF-8", answer.body.to_string())).await)
            }
        }
    }

    #[allow(clippy::disallowed_methods)] // the platform's own clock, not the engine's
    fn now_s() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// Check the envelope's signatures, nonces and times; `Err` is the refusal.
    fn check_envelope(&self, st: &mut State, w: &WireOp, v: &Map<String, Value>) -> Result<(), Answer> {
        let key = Secret::new(self.cfg.app_key.as_bytes().to_vec());
        let app = v.get("app").and_then(Value::as_object).ok_or_else(|| Answer::fail(40007, "缺少app"))?;
        let s = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string).unwrap_or_default();
        let (app_id, ts, nonce, sig) = (s(app, "appId"), s(app, "timeStamp"), s(app, "nonce"), s(app, "signature"));
        if app_id != self.cfg.app_id {
            return Err(Answer::fail(40001, "appId不存在"));
        }
        if !crate::backend::common::sign::eq_hex(&crypto::app_signature(&app_id, &key, &nonce, &ts), &sig) {
            return Err(Answer::fail(40001, "app签名错误"));
        }
        self.fresh(st, &ts, &nonce)?;
        if w.envelope.signed() {
            let t = v.get("tsig").and_then(Value::as_object).ok_or_else(|| Answer::fail(40007, "缺少tsig"))?;
            let (md5, tts, tnonce, tsig) = (s(t, "orderMD5"), s(t, "timeStamp"), s(t, "nonce"), s(t, "signature"));
            let expected = match (w.envelope, v.get("order")) {
                (Envelope::OrderList, Some(Value::Array(items))) => crypto::list_md5(items, w.md5),
                (_, Some(Value::Object(order))) => {
                    if self.cfg.md5_plain {
                        crypto::order_md5(&self.plain(w, order)?, w.md5)
                    } else {
                        crypto::order_md5(order, w.md5)
                    }
                }
                _ => return Err(Answer::fail(40007, "缺少order")),
            };
            if !crate::backend::common::sign::eq_hex(&expected, &md5) {
                return Err(Answer::fail(40002, "orderMD5错误"));
            }
            let ok = self.tsig.as_ref().is_some_and(|c| c.verify(&crypto::tsig_input(&md5, &app_id, &tts, &tnonce), &tsig));
            if !ok {
                return Err(Answer::fail(40003, "私钥签名错误"));
            }
            self.fresh(st, &tts, &tnonce)?;
        }
        Ok(())
    }

    fn fresh(&self, st: &mut State, ts: &str, nonce: &str) -> Result<(), Answer> {
        let t: i64 = ts.parse().map_err(|_| Answer::fail(40005, "时间戳错误"))?;
        let t = if t > 1_000_000_000_000 { t / 1000 } else { t };
        if (Self::now_s() - t).abs() > MAX_SKEW_S {
            return Err(Answer::fail(40005, "时间戳过期"));
        }
        if nonce.is_empty() || nonce.len() > 64 || !st.nonces.insert(nonce.to_string()) {
            st.nonce_reuses += 1;
            return Err(Answer::fail(40004, "nonce重复"));
        }
        Ok(())
    }

    /// The order with its 3DES fields decrypted; garbage is refused.
    fn plain(&self, w: &WireOp, order: &Map<String, Value>) -> Result<Map<String, Value>, Answer> {
        let key = Secret::new(self.cfg.app_key.as_bytes().to_vec());
        let mut out = order.clone();
        for f in w.fields.iter().filter(|f| matches!(f.kind, Kind::Des3 | Kind::PayCode)) {
            if let Some(v) = order.get(f.name) {
                let c = v.as_str().ok_or_else(|| Answer::fail(40006, format!("{}解密失败", f.name)))?;
                let p = crypto::des3_open(&key, c).map_err(|_| Answer::fail(40006, format!("{}解密失败", f.name)))?;
                out.insert(f.name.into(), Value::String(p));
            }
        }
        Ok(out)
    }

    fn process(&self, w: &WireOp, body: &[u8]) -> Answer {
        let mut st = self.st();
        st.requests += 1;
        *st.by_path.entry(w.path.to_string()).or_default() += 1;
        let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) else { return Answer::fail(40007, "请求不是JSON") };
        if let Err(a) = self.check_envelope(&mut st, w, &v) {
            st.refused += 1;
            return a;
        }
        let order = match w.envelope {
            Envelope::OrderList => return st.deliver(v.get("order")),
            Envelope::Bare => v.clone(),
            e => match v.get(e.key()) {
                Some(Value::Object(o)) => o.clone(),
                _ => return Answer::fail(40007, format!("缺少{}", e.key())),
            },
        };
        let order = match self.plain(w, &order) {
            Ok(o) => o,
            Err(a) => return a,
        };
        for f in w.fields.iter().filter(|f| f.required) {
            if order.get(f.name).is_none_or(|x| x.is_null() || x.as_str() == Some("")) {
                return Answer::fail(40007, format!("缺少{}", f.name));
            }
        }
        let request_echo = Value::String(String::from_utf8_lossy(body).into_owned());
        match w.path {
            "gw/offline/pay" => st.pay(&order),
            "gw/offline/pay_undo" => st.undo(&order),
            "gw/offline/pay_cancel" => st.cancel(&order),
            "gw/offline/get_account_info" => st.balance(&order),
            "gw/offline/open_card" => st.open_card(&order, &self.cfg.products, request_echo),
            "front/offline/download_product" => {
                let list: Vec<Value> = self
                    .cfg
                    .products
                    .iter()
                    .map(|(id, name, price)| json!({"productId": id, "productName": name, "productPrice": price, "remark": ""}))
                    .collect();
                Answer::ok(json!({"product": list, "request": request_echo}), None)
            }
            "gw/oilcard/open_online" => st.open_online(&order, &self.cfg.products),
            "front/oilcard/get" => st.online_result(&order),
            "gw/oilcard/transfer_to_cashAccount" => st.transfer(&order),
            _ => Answer::fail(10000, "其它错误"),
        }
    }
}

#[cfg(test)]
mod tests;
