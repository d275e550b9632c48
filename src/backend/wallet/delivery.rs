//! The delivery (交割) job of offline card openings: its plan (OAC/DAC orders, merges of split payments) and its requests.
//!
//! specs/README.md: at most 2,000 orders per request; an error answer's `result` lists the orders that
//! failed and the others were accepted (an error answer without `result` refused the whole request);
//! 系统繁忙 is worth sending again, 订单不存在 / 订单不一致 go to the report. Parts of a split payment
//! (open_card answered "no matching product price") share an `appOrderId`; when their `paySum` adds up
//! to the price of their `productId` (the cached product download), one open_card for the whole is sent
//! as a step before the chunks and its `orderId` delivered with them; parts that do not add up are listed
//! in the report, never dropped.
use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use super::{answer, codes, crypto, err, scrub, wire, WalletBackend};
use crate::backend::job::{JobFailure, JobOutcome, JobPlan, JobPlanRequest, JobSend};
use crate::backend::{BackendError, Stage, TxRequest};

/// Orders a POS may hand in from the POSP delivery file.
pub const MAX_FILE_ORDERS: usize = 100_000;

fn bad(why: impl Into<String>) -> BackendError {
    err(Stage::NotSent, why)
}

fn order_id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The plan: the day's approved open-card orders (OAC), cancelled ones (DAC: reversed records, the body's
/// `cancel` journal ids), the POSP file's `orders`, and the merges due.
pub fn plan(req: &JobPlanRequest<'_>) -> Result<JobPlan, BackendError> {
    for k in req.public.keys() {
        if !["orders", "cancel", "date"].contains(&k.as_str()) {
            return Err(bad(format!("delivery takes `orders`, `cancel` and `date`, not `{k}`")));
        }
    }
    let cancel: HashSet<u64> = match req.public.get("cancel") {
        None | Some(Value::Null) => HashSet::new(),
        Some(Value::Array(a)) if a.len() <= MAX_FILE_ORDERS => {
            a.iter().map(|v| v.as_u64().ok_or_else(|| bad("`cancel` must list journal ids"))).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(bad(format!("`cancel` must be a list of at most {MAX_FILE_ORDERS} journal ids"))),
    };
    let mut items: Vec<Value> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut put = |items: &mut Vec<Value>, id: String, kind: &str| match index.get(&id) {
        Some(&i) => items[i] = json!({"orderId": id, "accountType": kind}),
        None => {
            index.insert(id.clone(), items.len());
            items.push(json!({"orderId": id, "accountType": kind}));
        }
    };
    let mut parts: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut cancelled_seen = HashSet::new();
    for r in req.records.iter().filter(|r| r["operation"] == "open-card") {
        let id = r["id"].as_u64().unwrap_or(0);
        let order_id = r["reference"].as_str().or_else(|| r["result"]["orderId"].as_str()).map(str::to_string);
        match (r["status"].as_str(), r["result"]["merge"] == Value::Bool(true), order_id) {
            (Some("approved"), true, _) => {
                let app = r["request"]["appOrderId"].as_str().unwrap_or_default().to_string();
                parts.entry(app).or_default().push(r);
            }
            (Some("approved"), false, Some(o)) => {
                let kind = if cancel.contains(&id) { "DAC" } else { "OAC" };
                cancelled_seen.insert(id);
                put(&mut items, o, kind);
            }
            (Some("reversed"), _, Some(o)) => put(&mut items, o, "DAC"),
            _ => {}
        }
    }
    let mut report = Map::new();
    let missing: Vec<u64> = cancel.iter().filter(|id| !cancelled_seen.contains(id)).copied().collect();
    if !missing.is_empty() {
        report.insert("cancel_not_found".into(), json!(missing));
    }
    match req.public.get("orders") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.len() <= MAX_FILE_ORDERS => {
            for (i, o) in a.iter().enumerate() {
                let id = o["orderId"].as_str().filter(|s| order_id_ok(s)).ok_or_else(|| bad(format!("orders[{i}].orderId must be an order number")))?;
                let kind = o["accountType"]
                    .as_str()
                    .filter(|k| *k == "OAC" || *k == "DAC")
                    .ok_or_else(|| bad(format!("orders[{i}].accountType must be OAC or DAC")))?;
                put(&mut items, id.to_string(), kind);
            }
        }
        Some(_) => return Err(bad(format!("`orders` must be a list of at most {MAX_FILE_ORDERS} {{orderId, accountType}}"))),
    }
    let price_of = |product: &str| -> Option<i64> {
        req.catalog?.as_array()?.iter().find(|p| p["productId"].as_str() == Some(product)).and_then(|p| p["productPrice"].as_i64())
    };
    let mut steps = Vec::new();
    let mut unmatched = Vec::new();
    for (app, ps) in parts {
        let product = ps[0]["request"]["productId"].as_str().unwrap_or_default().to_string();
        let ids: Vec<u64> = ps.iter().filter_map(|r| r["id"].as_u64()).collect();
        let sum: i64 = ps.iter().map(|r| r["request"]["paySum"].as_i64().unwrap_or(0)).sum();
        let same_product = ps.iter().all(|r| r["request"]["productId"].as_str() == Some(product.as_str()));
        let price = price_of(&product);
        if same_product && price == Some(sum) && !app.is_empty() {
            let n = steps.len();
            steps.push(json!({
                "kind": "merge", "appOrderId": app, "productId": product, "paySum": sum, "parts": ids,
                "vault_from": ids[0], "terminalOrderId": format!("{}{:03}", req.trace, n + 1),
            }));
        } else {
            let why = if !same_product {
                "the parts name different products".to_string()
            } else {
                match price {
                    Some(p) => format!("the parts add up to {sum} fen, the product costs {p} fen"),
                    None => format!("product {product} is not in the downloaded products (run `products`)"),
                }
            };
            unmatched.push(json!({"appOrderId": app, "productId": product, "paySum": sum, "price": price, "parts": ids, "why": why}));
        }
    }
    if !unmatched.is_empty() {
        report.insert("unmatched".into(), Value::Array(unmatched));
    }
    Ok(JobPlan { steps, items, chunk_size: wire::MAX_DELIVERY, report })
}

impl WalletBackend {
    /// One open_card for the whole of a split payment; its orderId joins the delivery.
    pub(super) async fn send_merge(&self, req: &JobSend<'_>, step: &Value) -> Result<JobOutcome, BackendError> {
        let w = wire::op("open-card").ok_or_else(|| bad("no open_card interface"))?;
        let mut public = Map::new();
        for k in ["appOrderId", "productId", "paySum"] {
            public.insert(k.into(), step[k].clone());
        }
        let n = step["parts"].as_array().map(Vec::len).unwrap_or(0);
        public.insert("remark".into(), json!(format!("merge of {n} parts at delivery")));
        let trace = step["terminalOrderId"].as_str().ok_or_else(|| bad("merge step without terminalOrderId"))?;
        let empty = Map::new();
        let tx = TxRequest {
            journal_id: req.journal_id,
            operation: "open-card",
            identity: req.identity,
            trace,
            batch: req.batch,
            created_at: "",
            session: &Value::Null,
            public: &public,
            vault: req.vault,
            transient: &empty,
            original: None,
            slot: None,
        };
        let (a, _) = self.call(w, &tx).await?;
        let reply = self.reply(w, a, &public)?;
        match (reply.verdict, reply.reference) {
            (crate::backend::Verdict::Approved, Some(order_id)) => {
                let mut note = Map::new();
                note.insert("orderId".into(), json!(order_id));
                Ok(JobOutcome { failed: Vec::new(), added: vec![json!({"orderId": order_id, "accountType": "OAC"})], note })
            }
            _ => Ok(JobOutcome {
                failed: vec![JobFailure { item: step.clone(), reason: format!("merge refused: {} {}", reply.code, reply.message), transient: false }],
                added: Vec::new(),
                note: Map::new(),
            }),
        }
    }

    /// One delivery request of at most 2,000 orders.
    pub(super) async fn send_delivery(&self, req: &JobSend<'_>) -> Result<JobOutcome, BackendError> {
        if req.items.is_empty() || req.items.len() > wire::MAX_DELIVERY {
            return Err(bad(format!("a delivery carries 1 to {} orders, not {}", wire::MAX_DELIVERY, req.items.len())));
        }
        let w = wire::op("delivery").ok_or_else(|| bad("no delivery interface"))?;
        let md5 = crypto::list_md5(req.items, w.md5);
        let body = json!({"app": self.app(), "order": req.items, "tsig": self.tsig(&md5)?});
        let bytes = serde_json::to_vec(&body).map_err(|e| bad(e.to_string()))?;
        tracing::info!(orders = req.items.len(), "wallet delivery request");
        let http = self.http.post(&self.url(w.path), super::JSON, bytes::Bytes::from(bytes), req.journal_id).await.map_err(super::net_error)?;
        let a = answer::read(&http, &body, None)?;
        let code = a.errcode.ok_or_else(|| err(Stage::Unknown, "the delivery answer has no `errcode`"))?;
        if code == codes::OK {
            return Ok(JobOutcome::default());
        }
        let sent: HashSet<&str> = req.items.iter().filter_map(|i| i["orderId"].as_str()).collect();
        let Some(result) = a.raw.get("result") else {
            // Refused as a whole (signature, size): every order failed for the same reason.
            let transient = codes::delivery_transient(&a.errmsg);
            let failed = req.items.iter().map(|i| JobFailure { item: i.clone(), reason: format!("{code} {}", a.errmsg), transient }).collect();
            return Ok(JobOutcome { failed, added: Vec::new(), note: Map::new() });
        };
        let Value::Array(list) = result else { return Err(err(Stage::Unknown, "the delivery answer's `result` is not a list")) };
        if list.len() > req.items.len() {
            return Err(err(Stage::Unknown, "the delivery answer lists more failures than orders sent"));
        }
        let mut failed = Vec::new();
        for r in list {
            let (Some(id), Some(msg)) = (r["orderId"].as_str(), r["errmsg"].as_str()) else {
                return Err(err(Stage::Unknown, format!("a `result` entry is not {{orderId, errmsg}}: {}", scrub(&r.to_string()))));
            };
            if !sent.contains(id) {
                return Err(err(Stage::Unknown, format!("the delivery answer names order {} that was not sent: another request's answer", scrub(id))));
            }
            let item = req.items.iter().find(|i| i["orderId"].as_str() == Some(id)).cloned().unwrap_or(Value::Null);
            failed.push(JobFailure { item, reason: msg.chars().take(wire::MAX_TEXT_CHARS).collect(), transient: codes::delivery_transient(msg) });
        }
        Ok(JobOutcome { failed, added: Vec::new(), note: Map::new() })
    }
}
