//! Tests of the API layer over real HTTP on a real Unix socket and loopback TCP, with a fake engine.
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, oneshot};

use super::*;
use crate::client::ApiClient;
use crate::engine::{Answer, EngineError, Event, JournalQuery};

const TOKEN: &str = "test-token-0123";

/// A stand-in engine that records what reached it.
struct Fake {
    events: broadcast::Sender<Event>,
    last_key: Mutex<Option<String>>,
    last_body: Mutex<Option<Value>>,
    last_query: Mutex<Option<JournalQuery>>,
}

#[async_trait::async_trait]
impl Service for Fake {
    async fn run(&self, profile: &str, operation: &str, body: Value, idempotency_key: Option<&str>) -> Result<Answer, EngineError> {
        if profile == "nope" {
            return Err(EngineError::UnknownProfile(profile.into()));
        }
        if operation == "slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        *self.last_key.lock().expect("lock") = idempotency_key.map(str::to_string);
        *self.last_body.lock().expect("lock") = Some(body);
        Ok(Answer { http_status: 200, body: json!({ "status": "approved", "id": 1, "profile": profile, "operation": operation }) })
    }
    async fn status(&self) -> Value {
        json!({ "version": "test", "profiles": [], "devices": [] })
    }
    async fn journal(&self, q: &JournalQuery) -> Result<Vec<Value>, EngineError> {
        *self.last_query.lock().expect("lock") = Some(q.clone());
        Ok(vec![json!({ "id": 9, "status": "approved" }), json!({ "id": 8, "status": "declined" })])
    }
    async fn journal_record(&self, id: u64) -> Result<Value, EngineError> {
        if id == 666 {
            panic!("a bug in the engine");
        }
        if id == 7 {
            Ok(json!({ "id": 7, "status": "approved" }))
        } else {
            Err(EngineError::NoRecord(id))
        }
    }
    async fn recoveries(&self) -> Result<Vec<Value>, EngineError> {
        Ok(vec![json!({ "id": 3, "status": "pending" })])
    }
    async fn retry_recovery(&self, id: u64) -> Result<Value, EngineError> {
        Ok(json!({ "id": id, "status": "pending" }))
    }
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

struct Harness {
    dir: PathBuf,
    sock: PathBuf,
    tcp: SocketAddr,
    fake: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ApiError>>,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(4).await
    }

    async fn start_with(event_capacity: usize) -> Harness {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("posgate-api-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("posgate.sock");
        let unix = bind_unix(&sock).expect("bind unix");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let tcp_addr = tcp.local_addr().expect("addr");
        let (events, _) = broadcast::channel(event_capacity);
        let fake = Arc::new(Fake { events, last_key: Mutex::new(None), last_body: Mutex::new(None), last_query: Mutex::new(None) });
        let (stop, stopped) = oneshot::channel::<()>();
        let opts = ApiOptions { token: Some(crate::secret::Secret::new(format!("{TOKEN}\n"))), max_body_bytes: 1024, ..Default::default() };
        let task = tokio::spawn(serve(fake.clone(), Listeners { unix: Some(unix), tcp: Some(tcp) }, opts, async {
            let _ = stopped.await;
        }));
        Harness { dir, sock, tcp: tcp_addr, fake, stop: Some(stop), task }
    }

    fn unix(&self) -> ApiClient {
        ApiClient::unix(&self.sock).with_timeout(Duration::from_secs(10))
    }

    fn tcp(&self, token: Option<&str>) -> ApiClient {
        ApiClient::tcp(self.tcp.to_string(), token.map(crate::secret::Secret::new)).with_timeout(Duration::from_secs(10))
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "serve did not stop cleanly: {r:?}");
        assert!(!self.sock.exists(), "the socket file is removed on shutdown");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_problem(reply: &crate::client::Reply, status: u16, slug: &str) -> Value {
    assert_eq!(reply.status, status, "body: {}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    let v = reply.json().expect("json");
    assert_eq!(v["type"], format!("https://posgate.local/problems/{slug}"), "{v}");
    assert_eq!(v["status"], status);
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
    v
}

#[tokio::test]
async fn status_over_unix_carries_a_request_id() {
    let h = Harness::start().await;
    let r = h.unix().request(Method::GET, "/v1/status", &[], Bytes::new()).await.expect("status");
    assert_eq!(r.status, 200);
    assert_eq!(r.json().expect("json")["version"], "test");
    assert!(r.headers.get("x-request-id").is_some());
    let r = h.unix().request(Method::GET, "/v1/status", &[("x-request-id", "pos-42")], Bytes::new()).await.expect("status");
    assert_eq!(r.headers.get("x-request-id").and_then(|v| v.to_str().ok()), Some("pos-42"));
    h.shutdown().await;
}

/// GET routes run inline in the connection's task (no task per request): a panic there must still
/// answer 500 as problem+json, and the connection and the server keep serving.
#[tokio::test]
async fn a_panicking_get_route_answers_500_and_the_connection_keeps_serving() {
    let h = Harness::start().await;
    let c = h.unix();
    let r = c.request(Method::GET, "/v1/journal/666", &[], Bytes::new()).await.expect("reply");
    assert_problem(&r, 500, "internal");
    assert!(r.headers.get("x-request-id").is_some());
    let (status, body) = c.get("/v1/status").await.expect("status after the panic");
    assert_eq!((status, &body["version"]), (200, &json!("test")));
    assert_eq!(c.connections_opened(), 1, "the panic did not cost the client its connection");
    h.shutdown().await;
}

#[tokio::test]
async fn tcp_needs_the_bearer_token() {
    let h = Harness::start().await;
    let r = h.tcp(None).request(Method::GET, "/v1/status", &[], Bytes::new()).await.expect("reply");
    assert_problem(&r, 401, "unauthorized");
    assert!(r.headers.get("www-authenticate").is_some());
    assert!(r.headers.get("x-request-id").is_some());
    let r = h.tcp(Some("wrong")).request(Method::GET, "/v1/status", &[], Bytes::new()).await.expect("reply");
    assert_problem(&r, 401, "unauthorized");
    // Auth comes before routing: an unknown route is 401 too, so it cannot be probed.
    let r = h.tcp(None).request(Method::GET, "/v1/nothing", &[], Bytes::new()).await.expect("reply");
    assert_eq!(r.status, 401);
    let (status, body) = h.tcp(Some(TOKEN)).get("/v1/status").await.expect("status");
    assert_eq!((status, &body["version"]), (200, &json!("test")));
    h.shutdown().await;
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_problems() {
    let h = Harness::start().await;
    let r = h.unix().request(Method::GET, "/v1/nothing", &[], Bytes::new()).await.expect("reply");
    assert_problem(&r, 404, "not-found");
    let r = h.unix().request(Method::DELETE, "/v1/status", &[], Bytes::new()).await.expect("reply");
    assert_problem(&r, 405, "method-not-allowed");
    assert_eq!(r.headers.get("allow").and_then(|v| v.to_str().ok()), Some("GET"));
    h.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_get_precise_problems() {
    let h = Harness::start().await;
    let c = h.unix();
    let json_ct = [("content-type", "application/json")];
    let r = c.request(Method::POST, "/v1/profiles/p/consume", &json_ct, Bytes::from_static(b"{\"amount\": 1,\n  oops}")).await.expect("reply");
    let v = assert_problem(&r, 400, "invalid-json");
    assert_eq!((v["line"].as_u64(), v["column"].as_u64()), (Some(2), Some(3)), "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("line 2 column 3")), "{v}");

    let r = c.request(Method::POST, "/v1/profiles/p/consume", &json_ct, Bytes::from_static(b"[1,2]")).await.expect("reply");
    let v = assert_problem(&r, 400, "bad-request");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("JSON object")), "{v}");

    let big = Bytes::from(format!("{{\"x\":\"{}\"}}", "a".repeat(2000)));
    let r = c.request(Method::POST, "/v1/profiles/p/consume", &json_ct, big).await.expect("reply");
    assert_problem(&r, 413, "body-too-large");

    let r = c.request(Method::POST, "/v1/profiles/p/consume", &[("content-type", "text/plain")], Bytes::from_static(b"{}")).await.expect("reply");
    assert_problem(&r, 415, "unsupported-media-type");

    let r = c.request(Method::POST, "/v1/profiles/p/consume", &json_ct, Bytes::from_static(b"{}")).await.expect("reply");
    assert_eq!(r.status, 200);
    h.shutdown().await;
}

/// A chunked body has no Content-Length: the limit must still hold while reading.
#[tokio::test]
async fn chunked_oversized_body_is_413() {
    let h = Harness::start().await;
    let mut s = tokio::net::UnixStream::connect(&h.sock).await.expect("connect");
    let chunk = "a".repeat(800);
    let req = format!(
        "POST /v1/profiles/p/consume HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    h.shutdown().await;
}

#[tokio::test]
async fn operations_reach_the_service_with_the_idempotency_key() {
    let h = Harness::start().await;
    let (status, body) = h.unix().post("/v1/profiles/store-1/consume", json!({ "amount": 100 }), Some("pos-7f3a")).await.expect("run");
    assert_eq!(status, 200);
    assert_eq!(body["status"], "approved");
    assert_eq!(body["operation"], "consume");
    assert_eq!(h.fake.last_key.lock().expect("lock").as_deref(), Some("pos-7f3a"));
    assert_eq!(h.fake.last_body.lock().expect("lock").clone(), Some(json!({ "amount": 100 })));

    // No body at all means {} (settle needs no fields).
    let r = h.unix().request(Method::POST, "/v1/profiles/store-1/settle", &[], Bytes::new()).await.expect("reply");
    assert_eq!(r.status, 200);
    assert_eq!(h.fake.last_key.lock().expect("lock").clone(), None);

    let (status, body) = h.unix().post("/v1/profiles/nope/consume", json!({}), None).await.expect("run");
    assert_eq!((status, body["type"].as_str()), (404, Some("https://posgate.local/problems/unknown-profile")));

    let bad_key = [("content-type", "application/json"), ("idempotency-key", "has space")];
    let r = h.unix().request(Method::POST, "/v1/profiles/store-1/consume", &bad_key, Bytes::from_static(b"{}")).await.expect("reply");
    assert_problem(&r, 400, "invalid-parameter");
    h.shutdown().await;
}

#[tokio::test]
async fn journal_and_reversals() {
    let h = Harness::start().await;
    let c = h.unix();
    let (status, body) = c.get("/v1/journal?profile=store-1&status=approved&limit=2").await.expect("journal");
    assert_eq!(status, 200);
    assert_eq!(body["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["next_before"], 8);
    let q = h.fake.last_query.lock().expect("lock").clone().expect("query reached the service");
    assert_eq!((q.profile.as_deref(), q.status.as_deref(), q.limit), (Some("store-1"), Some("approved"), Some(2)));

    let r = c.request(Method::GET, "/v1/journal?limit=lots", &[], Bytes::new()).await.expect("reply");
    let v = assert_problem(&r, 400, "invalid-parameter");
    assert_eq!(v["parameter"], "limit");

    assert_eq!(c.get("/v1/journal/7").await.expect("record").0, 200);
    let (status, body) = c.get("/v1/journal/8").await.expect("record");
    assert_eq!((status, body["type"].as_str()), (404, Some("https://posgate.local/problems/no-record")));
    let r = c.request(Method::GET, "/v1/journal/abc", &[], Bytes::new()).await.expect("reply");
    assert_problem(&r, 400, "invalid-parameter");

    let (status, body) = c.get("/v1/reversals").await.expect("reversals");
    assert_eq!((status, body["records"][0]["id"].as_u64()), (200, Some(3)));
    let (status, body) = c.post("/v1/reversals/3/retry", json!({}), None).await.expect("retry");
    assert_eq!((status, body["id"].as_u64()), (200, Some(3)));
    h.shutdown().await;
}

#[tokio::test]
async fn scans_are_validated_then_handed_to_the_service() {
    let h = Harness::start().await;
    let c = h.unix();
    // The fake service takes no scans: its refusal comes back as a problem, after validation passed.
    let (status, body) = c.post("/v1/scans", json!({ "text": "6901234567892" }), None).await.expect("scan");
    assert_eq!((status, body["type"].as_str()), (400, Some("https://posgate.local/problems/bad-request")));
    let (status, body) = c.post("/v1/scans", json!({ "device": "usb0" }), None).await.expect("scan");
    assert_eq!((status, body["parameter"].as_str()), (400, Some("text")));
    h.shutdown().await;
}

#[tokio::test]
async fn sse_delivers_events_and_reports_lag() {
    let h = Harness::start_with(4).await;
    let mut stream = h.unix().events().await.expect("events");
    h.fake.events.send(Event { kind: "transaction", data: json!({ "id": 1, "status": "approved" }) }).expect("a subscriber");
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time").expect("ok").expect("an event");
    assert_eq!(ev.event, "transaction");
    assert_eq!(ev.data["status"], "approved");

    // On this single-threaded runtime the feed task cannot run between these sends: it lags by 6.
    for i in 0..10 {
        h.fake.events.send(Event { kind: "scan", data: json!({ "n": i }) }).expect("a subscriber");
    }
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time").expect("ok").expect("an event");
    assert_eq!((ev.event.as_str(), ev.data["skipped"].as_u64()), ("lagged", Some(6)));
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time").expect("ok").expect("an event");
    assert_eq!((ev.event.as_str(), ev.data["n"].as_u64()), ("scan", Some(6)));

    // TCP subscribers need the token too.
    assert!(matches!(h.tcp(None).events().await, Err(crate::client::ClientError::Refused { status: 401, .. })));
    let mut tcp_stream = h.tcp(Some(TOKEN)).events().await.expect("events over tcp");

    // Shutdown ends open streams instead of waiting the grace period out.
    #[allow(clippy::disallowed_methods)] // measures the test itself
    let started = std::time::Instant::now();
    h.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown waited on SSE streams");
    let mut ended = false;
    for _ in 0..10 {
        match stream.next().await {
            Ok(None) | Err(_) => {
                ended = true;
                break;
            }
            Ok(Some(_)) => {}
        }
    }
    assert!(ended, "the stream ends at shutdown");
    assert!(matches!(tcp_stream.next().await, Ok(None) | Err(_)));
}

#[tokio::test]
async fn in_flight_requests_finish_during_shutdown() {
    let h = Harness::start().await;
    let c = h.unix();
    let pending = tokio::spawn(async move { c.post("/v1/profiles/p/slow", json!({}), None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.shutdown().await;
    let (status, _) = pending.await.expect("join").expect("the slow request got its answer");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn socket_is_0660_and_a_live_one_is_not_stolen() {
    let h = Harness::start().await;
    let mode = std::fs::metadata(&h.sock).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert!(matches!(bind_unix(&h.sock), Err(ApiError::InUse(_))));

    let stale = h.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    drop(bind_unix(&stale).expect("a stale socket file is replaced"));

    let file = h.dir.join("not-a-socket");
    std::fs::write(&file, b"x").expect("write");
    assert!(matches!(bind_unix(&file), Err(ApiError::Bind { .. })));
    assert!(file.exists(), "a regular file is never deleted");
    h.shutdown().await;
}

#[tokio::test]
async fn serve_refuses_tcp_without_a_token() {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (events, _) = broadcast::channel(1);
    let fake = Arc::new(Fake { events, last_key: Mutex::new(None), last_body: Mutex::new(None), last_query: Mutex::new(None) });
    let r = serve(fake, Listeners { unix: None, tcp: Some(tcp) }, ApiOptions::default(), async {}).await;
    assert!(matches!(r, Err(ApiError::TcpWithoutToken)), "{r:?}");
}

/// Every route the router serves is in the OpenAPI document, and the document has no others.
#[test]
fn openapi_document_covers_every_route() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")));
    let paths = doc["paths"].as_object().expect("paths");
    for r in ROUTES {
        let op = paths.get(r.pattern).and_then(|p| p.get(r.method.to_ascii_lowercase()));
        assert!(op.is_some(), "{} {} is routed but missing from src/api/openapi.json", r.method, r.pattern);
    }
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys().filter(|k| !matches!(k.as_str(), "parameters" | "summary" | "description")) {
            let routed = ROUTES.iter().any(|r| r.pattern == path && r.method.eq_ignore_ascii_case(method));
            assert!(routed, "{method} {path} is documented but not routed");
        }
    }
    let schemas = &doc["components"]["schemas"];
    for name in ["Problem", "Answer", "Record"] {
        assert!(schemas.get(name).is_some(), "schema {name}");
    }
    let statuses: Vec<&str> = schemas["Answer"]["properties"]["status"]["enum"].as_array().expect("enum").iter().filter_map(Value::as_str).collect();
    assert_eq!(statuses, ["approved", "declined", "reversed", "pending", "failed"]);
    assert!(doc["components"]["parameters"]["IdempotencyKey"]["name"] == "Idempotency-Key");
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
}

#[tokio::test]
async fn openapi_is_served() {
    let h = Harness::start().await;
    let (status, doc) = h.unix().get("/v1/openapi").await.expect("openapi");
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/status"]["get"].is_object());
    h.shutdown().await;
}

/// Regression: the document allowed 255-character keys of any characters; the engine refused more
/// than 200. Both now use `api::idempotency`, and the document must say exactly that.
#[test]
fn the_documents_idempotency_key_is_the_engines() {
    use super::idempotency::{IDEMPOTENCY_KEY_MAX, IDEMPOTENCY_KEY_PATTERN};
    let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    let schema = &doc["components"]["parameters"]["IdempotencyKey"]["schema"];
    assert_eq!(schema["pattern"].as_str(), Some(IDEMPOTENCY_KEY_PATTERN), "{schema}");
    assert_eq!(schema["maxLength"].as_u64(), Some(IDEMPOTENCY_KEY_MAX as u64), "{schema}");
    assert_eq!(schema["minLength"].as_u64(), Some(1), "{schema}");
    let described = doc["components"]["parameters"]["IdempotencyKey"]["description"].as_str().unwrap_or("");
    assert!(described.contains(&format!("1 to {IDEMPOTENCY_KEY_MAX}")), "{described}");
}

/// The integer parameters say their real range (schemathesis found `before=-9223372036854775808`
/// allowed by the document and refused by the server).
#[test]
fn the_documents_integers_have_the_servers_bounds() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let s = &p["schema"];
                if s["type"] == "integer" {
                    assert!(s["minimum"].is_u64() && s["maximum"].is_u64(), "{method} {path} parameter {}: {s}", p["name"]);
                }
            }
        }
    }
}

#[tokio::test]
async fn keys_at_the_limit_pass_and_beyond_it_are_refused() {
    let h = Harness::start_with(4).await;
    let at = "k".repeat(super::idempotency::IDEMPOTENCY_KEY_MAX);
    let (s, _) = h.unix().post("/v1/profiles/p/consume", json!({}), Some(&at)).await.expect("run");
    assert_eq!(s, 200);
    assert_eq!(h.fake.last_key.lock().expect("lock").as_deref(), Some(at.as_str()));
    let over = format!("{at}k");
    let r = h
        .unix()
        .request(Method::POST, "/v1/profiles/p/consume", &[("content-type", "application/json"), ("idempotency-key", &over)], Bytes::from_static(b"{}"))
        .await
        .expect("reply");
    let v = assert_problem(&r, 400, "invalid-parameter");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("200")), "{v}");
    h.shutdown().await;
}

/// Regression: duplicate keys were accepted and the last one won.
#[tokio::test]
async fn duplicate_keys_never_reach_the_service() {
    let h = Harness::start().await;
    let c = h.unix();
    let ct = [("content-type", "application/json")];
    let r = c.request(Method::POST, "/v1/profiles/p/consume", &ct, Bytes::from_static(br#"{"pointAmount": 1, "pointAmount": 100000}"#)).await.expect("reply");
    let v = assert_problem(&r, 400, "duplicate-key");
    assert_eq!((v["key"].as_str(), v["path"].as_str()), (Some("pointAmount"), Some("$")), "{v}");
    let r = c.request(Method::POST, "/v1/profiles/p/consume", &ct, Bytes::from_static(br#"{"ticket": [{"id": 1, "id": 2}]}"#)).await.expect("reply");
    let v = assert_problem(&r, 400, "duplicate-key");
    assert_eq!((v["key"].as_str(), v["path"].as_str()), (Some("id"), Some("$.ticket[0]")), "{v}");
    assert!(h.fake.last_body.lock().expect("lock").is_none(), "a body with a duplicate key reached the service");
    let r = c.request(Method::POST, "/v1/scans", &ct, Bytes::from_static(br#"{"text": "a", "text": "b"}"#)).await.expect("reply");
    assert_problem(&r, 400, "duplicate-key");
    h.shutdown().await;
}
