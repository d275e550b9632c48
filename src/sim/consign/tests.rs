//! The simulator's checks and its callback sender against a real loopback merchant.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

fn sim() -> ConsignSim {
    ConsignSim::new(ConsignSimConfig { finish_after: None, retry_base: Duration::from_millis(40), ..ConsignSimConfig::demo() })
}

fn submit_form(order_id: &str, secret_sent: &str, notify: &str) -> String {
    let mut f: Vec<(&str, String)> = vec![
        ("customerId", DEMO_CUSTOMER_ID.into()),
        ("timestamp", ConsignSim::now_s().to_string()),
        ("orderId", order_id.into()),
        ("productType", "0".into()),
        ("batchno", "000001".into()),
        ("productCode", "JD100".into()),
        ("cardNumber", "6222021234567890123".into()),
        ("cardPassword", secret_sent.into()),
        ("faceMoney", "100".into()),
        ("notifyUrl", notify.into()),
    ];
    let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let sign = crypto::sign(SUBMIT_SIGN, &get, &Secret::new(DEMO_SIGN_KEY.as_bytes().to_vec())).expect("sign");
    f.push(("sign", sign));
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &f {
        s.append_pair(k, v);
    }
    s.finish()
}

fn sealed(secret: &str) -> String {
    crypto::seal_card_secret(&Secret::new(DEMO_AES_KEY.as_bytes().to_vec()), secret).expect("seal")
}

#[test]
fn refuses_a_reused_order_id_a_garbage_secret_and_a_forged_sign() {
    let s = sim();
    let ok = s.process(SUBMIT, submit_form("O1", &sealed("secret-1"), "").as_bytes());
    assert_eq!(ok.body["code"], 1, "{}", ok.body);
    assert_eq!(s.ledger().secrets.get("O1").map(String::as_str), Some("secret-1"));
    assert_eq!(s.ledger().accepted.get("O1").map(String::as_str), Some("622202*********0123"));
    let again = s.process(SUBMIT, submit_form("O1", &sealed("secret-2"), "").as_bytes());
    assert_eq!((again.body["code"].as_i64(), s.ledger().reused_order_ids), (Some(-1), 1), "{}", again.body);
    let garbage = s.process(SUBMIT, submit_form("O2", &hex::encode("not-a-ciphertext"), "").as_bytes());
    assert_eq!(garbage.body["msg"], "卡密解密失败");
    let forged = submit_form("O3", &sealed("x"), "").replace("faceMoney=100", "faceMoney=500");
    assert_eq!(s.process(SUBMIT, forged.as_bytes()).body["msg"], "签名错误");
    assert_eq!(s.ledger().accepted.len(), 1);
}

/// A loopback merchant that answers `fail` to the first `fails` notifications, then `success`.
async fn merchant(fails: u32) -> (String, Arc<AtomicU32>, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU32::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (h, b) = (hits.clone(), bodies.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (h, b) = (h.clone(), b.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (h, b) = (h.clone(), b.clone());
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        b.lock().unwrap_or_else(|p| p.into_inner()).push(String::from_utf8_lossy(&body).into_owned());
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        let text = if n < fails { "fail" } else { "success" };
                        Ok::<_, std::convert::Infallible>(super::super::server::reply(200, "text/plain", text.into()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
            });
        }
    });
    (format!("http://{addr}/callbacks/consign/result"), hits, bodies)
}

#[tokio::test]
async fn the_callback_is_signed_and_retried_until_answered_success() {
    let (url, hits, bodies) = merchant(1).await;
    let s = sim();
    assert_eq!(s.process(SUBMIT, submit_form("O1", &sealed("secret-1"), &url).as_bytes()).body["code"], 1);
    let t0 = tokio::time::Instant::now();
    s.finish("O1").await;
    assert_eq!(hits.load(Ordering::SeqCst), 2, "a `fail` answer is retried once more");
    assert!(t0.elapsed() >= Duration::from_millis(40), "the retry waits the interval");
    let l = s.ledger();
    assert!(l.callback_confirmed.contains("O1"));
    assert_eq!((l.finished.get("O1"), l.callback_attempts.get("O1")), (Some(&2), Some(&2)));
    // The notification verifies with the backend's check: the document's fixed-order sign.
    let body = bodies.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
    let form: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let get = |k: &str| form.get(k).cloned();
    assert!(crypto::verify(NOTIFY_SIGN, &get, &Secret::new(DEMO_SIGN_KEY.as_bytes().to_vec()), &form["sign"]));
    assert_eq!((form["status"].as_str(), form["amount"].as_str()), ("2", "98.50"));
}

#[tokio::test]
async fn lost_callbacks_are_retried_twice_growing_then_given_up() {
    let (url, hits, _) = merchant(0).await;
    let s = sim();
    assert_eq!(s.process(SUBMIT, submit_form("O9", &sealed("bad-secret"), &url).as_bytes()).body["code"], 1);
    s.lose_callbacks(3);
    let t0 = tokio::time::Instant::now();
    s.finish("O9").await;
    // 0, then 40 ms, then 80 ms: three attempts in all, each lost; the merchant heard nothing.
    assert!(t0.elapsed() >= Duration::from_millis(120), "{:?}", t0.elapsed());
    let l = s.ledger();
    assert_eq!((hits.load(Ordering::SeqCst), l.callbacks_lost, l.callback_attempts.get("O9")), (0, 3, Some(&3)));
    assert_eq!(l.finished.get("O9"), Some(&3), "a `bad…` secret fails");
    assert!(!l.callback_confirmed.contains("O9"));
    // The result is still there for a poll.
    let q = {
        let mut f: Vec<(&str, String)> =
            vec![("customerId", DEMO_CUSTOMER_ID.into()), ("timestamp", ConsignSim::now_s().to_string()), ("orderId", "O9".into())];
        let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let sign = crypto::sign(QUERY_SIGN, &get, &Secret::new(DEMO_SIGN_KEY.as_bytes().to_vec())).expect("sign");
        f.push(("sign", sign));
        f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
    };
    let a = s.process(QUERY, q.as_bytes());
    assert_eq!((a.body["code"].as_str(), a.body["data"][0]["status"].as_str()), (Some("1"), Some("3")), "{}", a.body);
}
