//! The callback listener and the poller through the real engine, journal and listener on loopback, with an in-test backend.
//!
//! The backend (`notifier`) approves an order with reference `R<journal id>`, says it awaits a result,
//! serves one callback path (`notify`, JSON `{key, reference, sign, success}`, `sign` must be `good`)
//! answered `success`, and polls from a script.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::api::callbacks::{self, Limits};
use posgate::backend::callback::{CallbackAnswer, CallbackBody, CallbackRefusal, CallbackRequest, CallbackSpec, Effect, Notification, Polled};
use posgate::backend::{Backend, BackendError, OpSpec, OriginalRef, PrepareContext, PrepareError, Prepared, Recovered, Recovery, Reply, TxRequest, Verdict};
use posgate::config::{ConfigError, Profile};
use posgate::engine::{Engine, EngineConfig, JournalQuery, SystemClock};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SPECS: &[CallbackSpec] = &[CallbackSpec { path: "notify", name: "result", body: CallbackBody::Json }];
const OPS: &[OpSpec] = &[OpSpec { name: "order", class: posgate::backend::OpClass::Financial(Recovery::Query), needs_original: false }];

#[derive(Default)]
struct Notifier {
    /// What each poll answers, in order; empty: `Pending`.
    polls: Mutex<VecDeque<Option<Polled>>>,
    polled: Mutex<u32>,
}

fn final_of(key: &str, reference: &str, success: bool) -> Notification {
    let fields = Map::from_iter([("settled_fen".to_string(), json!(990))]);
    Notification { key: key.into(), reference: reference.into(), fields: fields.clone(), effect: Effect::Final { success, fields } }
}

#[async_trait::async_trait]
impl Backend for Notifier {
    fn kind(&self) -> &'static str {
        "notifier"
    }
    fn operations(&self) -> &'static [OpSpec] {
        OPS
    }
    fn prepare(&self, _op: &str, body: &Map<String, Value>, _o: Option<&OriginalRef>, _c: &PrepareContext<'_>) -> Result<Prepared, PrepareError> {
        Ok(Prepared { public: body.clone(), amount_fen: 100, ..Default::default() })
    }
    async fn execute(&self, tx: TxRequest<'_>) -> Result<Reply, BackendError> {
        let mut r = Reply::local("accepted");
        r.verdict = Verdict::Approved;
        r.code = "00".into();
        r.reference = Some(format!("R{}", tx.journal_id));
        Ok(r)
    }
    async fn recover(&self, _tx: TxRequest<'_>, _how: Recovery) -> Result<Recovered, BackendError> {
        Ok(Recovered::Again("never".into()))
    }
    fn callbacks(&self) -> &'static [CallbackSpec] {
        SPECS
    }
    fn verify_callback(&self, req: &CallbackRequest<'_>) -> Result<Notification, CallbackRefusal> {
        let v: Value = serde_json::from_slice(req.body).map_err(|e| CallbackRefusal::Malformed(e.to_string()))?;
        if v["sign"] != "good" {
            return Err(CallbackRefusal::BadSign);
        }
        let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| CallbackRefusal::Malformed(format!("{k} missing")));
        Ok(final_of(&s("key")?, &s("reference")?, v["success"] == true))
    }
    fn callback_answer(&self, _spec: &CallbackSpec, outcome: Result<(), &CallbackRefusal>) -> CallbackAnswer {
        match outcome {
            Ok(()) => CallbackAnswer { status: 200, content_type: "text/plain", body: b"success".to_vec() },
            Err(_) => CallbackAnswer { status: 400, content_type: "text/plain", body: b"fail".to_vec() },
        }
    }
    fn awaits_result(&self, _operation: &str, _reply: &Reply) -> bool {
        true
    }
    async fn poll(&self, order: TxRequest<'_>) -> Result<Option<Polled>, BackendError> {
        *self.polled.lock().unwrap() += 1;
        let next = self.polls.lock().unwrap().pop_front();
        Ok(match next {
            Some(Some(Polled::Done(mut n))) => {
                n.reference = format!("R{}", order.journal_id);
                Some(Polled::Done(n))
            }
            Some(other) => other,
            None => Some(Polled::Pending),
        })
    }
}

struct World {
    engine: Arc<Engine>,
    backend: Arc<Notifier>,
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

const LIMITS: Limits =
    Limits { max_body_bytes: 1024, header_timeout: Duration::from_millis(400), body_timeout: Duration::from_millis(400), max_connections: 8 };

/// Profile `a` (allows 127.0.0.1) and `b` (allows 10.0.0.0/8 only), both `results = <results>`.
async fn world(results: &str, backend: Arc<Notifier>, dir: Option<tempfile::TempDir>) -> World {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let pki = posgate::net::tls::TestPki::ensure(dir.path()).unwrap();
    let profile = |name: &str, allow: &str| {
        let text = format!(
            "name = \"{name}\"\nbackend = \"notifier\"\nbase_url = \"https://127.0.0.1:9\"\nca_file = \"{}\"\nstore = \"1\"\nterminal = \"2\"\n\
             callback_allow = [\"{allow}\"]\nresults = \"{results}\"\n[poll]\ninitial_ms = 20\nmax_ms = 40\n",
            pki.ca_file.display()
        );
        Profile::parse(&dir.path().join(format!("{name}.toml")), &text).unwrap()
    };
    let b = backend.clone();
    let build = move |_: &Profile, _| -> Result<Arc<dyn Backend>, ConfigError> { Ok(b.clone()) };
    let cfg = EngineConfig { data_dir: dir.path().join("data"), profiles: vec![profile("a", "127.0.0.1"), profile("b", "10.0.0.0/8")] };
    // A journal just closed by an earlier engine in this process may hold sled's file lock a moment longer.
    let mut tries = 0;
    let engine = loop {
        let cfg = EngineConfig { data_dir: cfg.data_dir.clone(), profiles: cfg.profiles.clone() };
        match Engine::open_with(cfg, Arc::new(SystemClock), &build).await {
            Ok(e) => break e,
            Err(e) if tries < 100 && e.to_string().contains("lock") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(callbacks::serve(engine.clone(), listener, None, LIMITS, async move {
        let _ = rx.await;
    }));
    World { engine, backend, addr, _stop: tx, _dir: dir }
}

/// Send raw bytes, then read the whole answer (the listener closes after one request): (status, body).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the listener answers or closes");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn post(addr: std::net::SocketAddr, profile: &str, body: &Value) -> (u16, String) {
    let b = body.to_string();
    let req = format!("POST /callbacks/{profile}/notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len());
    raw(addr, req.as_bytes()).await
}

async fn order(w: &World, profile: &str) -> (u64, String) {
    let a = w.engine.run(profile, "order", json!({"item": "x"}), None).await.unwrap();
    assert_eq!(a.body["status"], "approved", "{}", a.body);
    assert_eq!(a.body["result"]["awaiting"], "result", "the journal shows the order awaiting its result: {}", a.body);
    let id = a.body["id"].as_u64().unwrap();
    (id, format!("R{id}"))
}

fn notifications(w: &World, profile: &str) -> Vec<Value> {
    let q = JournalQuery { profile: Some(profile.into()), ..Default::default() };
    w.engine.journal(&q).unwrap().into_iter().filter(|r| r["class"] == "notification").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_delivered_twice_is_journaled_once_and_answered_twice_alike() {
    let w = world("callbacks", Arc::new(Notifier::default()), None).await;
    let mut events = w.engine.subscribe();
    let (id, reference) = order(&w, "a").await;
    let note = json!({"key": "n-1", "reference": reference, "sign": "good", "success": true});
    let first = post(w.addr, "a", &note).await;
    let second = post(w.addr, "a", &note).await;
    assert_eq!(first, (200, "success".to_string()));
    assert_eq!(second, first, "the retry is answered exactly as the first delivery");
    let notes = notifications(&w, "a");
    assert_eq!(notes.len(), 1, "journaled once: {notes:?}");
    assert_eq!((notes[0]["state"].clone(), notes[0]["original"].clone()), (json!("approved"), json!(id)));
    let o = w.engine.journal_record(id).unwrap();
    assert_eq!(
        (o["result"]["final"].clone(), o["result"]["success"].clone(), o["result"]["settled_fen"].clone()),
        (json!(true), json!(true), json!(990)),
        "{o}"
    );
    assert!(o["result"].get("awaiting").is_none(), "no longer awaiting: {o}");
    let mut seen = 0;
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if e.kind == "notification" {
            assert_eq!((e.data["key"].clone(), e.data["final"].clone()), (json!("n-1"), json!(true)), "{}", e.data);
            seen += 1;
        }
    }
    assert_eq!(seen, 1, "one notification event for two deliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // the test times the listener, not the engine
async fn forged_foreign_oversized_and_slow_callbacks_are_refused_journaled_and_change_no_order() {
    let w = world("callbacks", Arc::new(Notifier::default()), None).await;
    let (id, reference) = order(&w, "a").await;
    let (bid, breference) = order(&w, "b").await;
    let before = w.engine.journal_record(id).unwrap();

    // A forged sign.
    let forged = post(w.addr, "a", &json!({"key": "n-1", "reference": reference, "sign": "forged", "success": true})).await;
    assert_eq!(forged, (400, "fail".to_string()));
    // A source outside the profile's allowlist (b takes only 10.0.0.0/8).
    let foreign = post(w.addr, "b", &json!({"key": "n-2", "reference": breference, "sign": "good", "success": true})).await;
    assert_eq!(foreign, (400, "fail".to_string()));
    // An oversized body, refused on its Content-Length, unread.
    let big = "x".repeat(4096);
    let req = format!("POST /callbacks/a/notify HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{big}", big.len());
    assert_eq!(raw(w.addr, req.as_bytes()).await, (400, "fail".to_string()));
    // A slow body: the headers promise 50 bytes, 10 come, then nothing.
    let mut s = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    s.write_all(b"POST /callbacks/a/notify HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"key\": \"n").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("answered");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&out));
    assert!(started.elapsed() >= Duration::from_millis(350), "refused at the body timeout, not before");
    // Slow headers: the connection is closed at the header timeout (no profile known yet: logged only).
    let mut s = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    s.write_all(b"POST /callbacks/a/notify HTTP/1.1\r\nHo").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the listener closes a connection whose headers do not come");
    assert!(!String::from_utf8_lossy(&out).contains("success"));

    let refused_a: Vec<Value> = notifications(&w, "a");
    let refused_b: Vec<Value> = notifications(&w, "b");
    assert_eq!(refused_a.len(), 3, "forged, oversized and slow journaled as refused: {refused_a:?}");
    assert!(refused_a.iter().all(|r| r["state"] == "failed" && r["result"]["refused"] == true), "{refused_a:?}");
    let errors: Vec<&str> = refused_a.iter().filter_map(|r| r["error"].as_str()).collect();
    assert!(errors.iter().any(|e| e.contains("signature")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("over 1024 bytes")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("within 400 ms")), "{errors:?}");
    assert_eq!(refused_b.len(), 1, "{refused_b:?}");
    assert!(refused_b[0]["error"].as_str().unwrap_or("").contains("127.0.0.1 is not allowed"), "{refused_b:?}");
    let after = w.engine.journal_record(id).unwrap();
    assert_eq!(after["result"], before["result"], "the order is unchanged");
    assert_eq!(w.engine.journal_record(bid).unwrap()["result"]["awaiting"], "result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_order_is_refused_and_journaled() {
    let w = world("callbacks", Arc::new(Notifier::default()), None).await;
    let r = post(w.addr, "a", &json!({"key": "n-9", "reference": "R999", "sign": "good", "success": true})).await;
    assert_eq!(r, (400, "fail".to_string()));
    let notes = notifications(&w, "a");
    assert_eq!(notes.len(), 1);
    assert!(notes[0]["error"].as_str().unwrap_or("").contains("does not know"), "{notes:?}");
    // A profile that does not exist is 404 and journals nothing; nor does a path nobody serves answer success.
    let b = "{}";
    let (s, _) = raw(w.addr, format!("POST /callbacks/zz/notify HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}", b.len()).as_bytes()).await;
    assert_eq!(s, 404);
    let (s, _) = raw(w.addr, format!("POST /callbacks/a/other HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}", b.len()).as_bytes()).await;
    assert_eq!(s, 404);
}

async fn until<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_callbacks_unreachable_polling_brings_an_order_to_its_final_state() {
    let backend = Arc::new(Notifier::default());
    backend.polls.lock().unwrap().extend([Some(Polled::Pending), Some(Polled::Pending), Some(Polled::Done(final_of("n-7", "", false)))]);
    let w = world("both", backend, None).await;
    let (id, reference) = order(&w, "a").await;
    assert_eq!(w.engine.awaiting_results(), vec![id]);
    let e = w.engine.clone();
    // The journal shows it once committed; the order leaves the poll set once that commit is synced.
    until("the poll's result is applied", || e.journal_record(id).unwrap()["result"]["final"] == true && e.awaiting_results().is_empty()).await;
    assert_eq!(*w.backend.polled.lock().unwrap(), 3, "polled until final, then no more");
    let o = w.engine.journal_record(id).unwrap();
    assert_eq!((o["result"]["success"].clone(), o["status"].clone()), (json!(false), json!("approved")), "{o}");
    assert!(w.engine.awaiting_results().is_empty());
    // The same result arriving by callback later is the same notification: answered, not journaled again.
    let late = post(w.addr, "a", &json!({"key": "n-7", "reference": reference, "sign": "good", "success": false})).await;
    assert_eq!(late, (200, "success".to_string()));
    let notes = notifications(&w, "a");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["result"]["source"], "poll");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*w.backend.polled.lock().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_awaiting_a_result_are_polled_again_after_a_restart() {
    let w = world("polling", Arc::new(Notifier::default()), None).await;
    let (id, reference) = order(&w, "a").await;
    // Polling only: the listener serves no path for this profile.
    let r = post(w.addr, "a", &json!({"key": "n-1", "reference": reference, "sign": "good", "success": true})).await;
    assert_eq!(r.0, 404);
    let dir = stop(w).await;
    let backend = Arc::new(Notifier::default());
    backend.polls.lock().unwrap().push_back(Some(Polled::Done(final_of("n-1", "", true))));
    let w = world("polling", backend, Some(dir)).await;
    let e = w.engine.clone();
    until("the rebuilt poll finishes the order", || e.journal_record(id).unwrap()["result"]["final"] == true).await;
    let notes = notifications(&w, "a");
    let states: Vec<&str> = notes.iter().filter_map(|n| n["state"].as_str()).collect();
    assert_eq!(states, ["approved", "failed"], "the polled result, and the refused callback before the restart: {notes:?}");
    assert!(notes[1]["error"].as_str().unwrap_or("").contains("no callback is served"), "{notes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_without_a_query_leaves_the_order_awaiting_and_says_so() {
    let backend = Arc::new(Notifier::default());
    backend.polls.lock().unwrap().push_back(None);
    let w = world("both", backend, None).await;
    let (id, _) = order(&w, "a").await;
    let e = w.engine.clone();
    until("the order says it is not polled", || e.journal_record(id).unwrap()["result"].get("polling").is_some()).await;
    let o = w.engine.journal_record(id).unwrap();
    assert_eq!(o["result"]["awaiting"], "result", "{o}");
    assert!(w.engine.awaiting_results().is_empty());
}

/// Stop a world's listener and engine and wait until the engine is gone; the folder stays.
async fn stop(w: World) -> tempfile::TempDir {
    w.engine.shutdown().await;
    let World { engine, _dir: dir, _stop, .. } = w;
    drop(_stop);
    let weak = Arc::downgrade(&engine);
    drop(engine);
    until("the engine is gone", || weak.strong_count() == 0).await;
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_journaled_before_a_crash_is_applied_at_start_and_its_retry_answered() {
    use posgate::journal::{JournalStore, NewRecord, SledJournal};
    let w = world("callbacks", Arc::new(Notifier::default()), None).await;
    let (id, reference) = order(&w, "a").await;
    let dir = stop(w).await;
    // What `in_callback` leaves: the notification durable and pending, the order untouched, nothing answered.
    {
        let j = loop {
            match SledJournal::open(&dir.path().join("data/journal")) {
                Ok(j) => break j,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let n = final_of("n-5", &reference, true);
        let mut rec = posgate::model::Record::new("a", "result", posgate::model::Class::Notification, "", "2026-01-01T00:00:00.000Z");
        rec.idempotency_key = Some("cb:n-5".into());
        rec.reference = Some(reference.clone());
        rec.original = Some(id);
        rec.request = n.fields.clone();
        rec.result = Map::from_iter([("effect".to_string(), serde_json::to_value(&n.effect).unwrap()), ("source".to_string(), json!("callback"))]);
        j.begin(NewRecord { record: rec, allocate_trace: false }).unwrap();
        j.sync().await.unwrap();
    }
    let w = world("callbacks", Arc::new(Notifier::default()), Some(dir)).await;
    let o = w.engine.journal_record(id).unwrap();
    assert_eq!(o["result"]["final"], true, "applied at start-up, before anything is served: {o}");
    let retry = post(w.addr, "a", &json!({"key": "n-5", "reference": reference, "sign": "good", "success": true})).await;
    assert_eq!(retry, (200, "success".to_string()));
    let notes = notifications(&w, "a");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["state"], "approved");
}

/// The real daemon binary with `[callbacks]` over TLS: the listener is up beside the POS API, an allowed
/// peer reaches it through the handshake, and a path the profile's backend does not serve is refused and
/// journaled on that profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_callbacks_over_tls_when_configured() {
    use rustls_pki_types::pem::PemObject;
    let w = crate::support::World::with_profile_extra("cb-daemon", "callback_allow = [\"127.0.0.1\"]").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &w.config,
        format!("data_dir = \"data\"\nunix_socket = \"posgate.sock\"\n[callbacks]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"pki/sim-cert.pem\"\ntls_key = \"pki/sim-key.pem\"\n"),
    )
    .unwrap();
    let d = w.start(&[]).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(w.dir.join("pki/test-ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("TLS handshake with the callback listener");
    s.write_all(b"POST /callbacks/loyalty/notify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("answered");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 404"), "{}", String::from_utf8_lossy(&out));
    let (status, v) = d.client.get("/v1/journal?profile=loyalty").await.unwrap();
    assert_eq!(status, 200);
    let refused: Vec<&Value> = v["records"].as_array().into_iter().flatten().filter(|r| r["class"] == "notification").collect();
    assert_eq!(refused.len(), 1, "{v}");
    assert!(refused[0]["error"].as_str().unwrap_or("").contains("no callback is served"), "{v}");
    d.stop().await;
}
