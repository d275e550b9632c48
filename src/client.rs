//! The CLI's client of the local API: JSON requests and the event stream over the Unix socket or TCP.
//!
//! HTTP/1.1 keep-alive: a client reuses its idle connections (one per request in flight, so a
//! sequential caller holds exactly one), as a POS app would. A pooled connection the daemon closed
//! while idle (restart, idle timeout) is replaced once, but a request whose bytes were written and
//! whose answer was lost is resent only when that is safe: a GET, or a POST with an Idempotency-Key
//! (the daemon answers a repeated key with the first request's record). A POST without a key is
//! reported as [`ClientError::OutcomeUnknown`], never sent twice.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, HOST};
use hyper::{HeaderMap, Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::secret::Secret;

/// The default socket path of a packaged install (the named pipe on Windows).
pub const DEFAULT_SOCKET: &str = crate::platform::DEFAULT_LOCAL_ENDPOINT;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: is posgate running? ({source})")]
    NotRunning { target: String, source: std::io::Error },
    #[error("permission denied on {target}: run as root or add your user to the posgate group")]
    PermissionDenied { target: String },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("HTTP exchange with {target} failed: {source}")]
    Http { target: String, source: hyper::Error },
    #[error(
        "the connection to {target} closed after the request was sent and before its answer ({source}); its outcome is unknown and it was not resent (no Idempotency-Key): look it up with `posgate journal` before trying again"
    )]
    OutcomeUnknown { target: String, source: hyper::Error },
    #[error("no answer from {target} within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("bad request: {0}")]
    Request(String),
    #[error("the daemon sent an answer that is not JSON (HTTP {status}): {detail}")]
    NotJson { status: u16, detail: String },
    #[error("the daemon refused the event stream (HTTP {status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("the API token must be UTF-8 text")]
    BadToken,
}

/// The exit codes of `posgate run`, `checkin` and `settle`: what a POS script needs to know about
/// an operation. Documented in `posgate --help`, the man page and the README.
pub mod exit {
    /// Approved (done as asked).
    pub const APPROVED: u8 = 0;
    /// Anything else: the daemon's own failure (HTTP 500), the CLI's own setup.
    pub const OTHER: u8 = 1;
    /// The request was wrong (bad JSON, unknown profile or operation, bad field, Idempotency-Key reused,
    /// no token): nothing was done. Also clap's code for a bad command line.
    pub const USAGE: u8 = 2;
    /// The backend declined it (a final answer: nothing was done, nothing is owed).
    pub const DECLINED: u8 = 3;
    /// The outcome is not known yet: recovery (reversal, resend or query) is owed and runs in the
    /// daemon; look the record up again (`posgate journal ID`) before telling the customer anything.
    pub const PENDING: u8 = 4;
    /// It did not take effect and nothing is owed: not sent (backend unreachable, TLS refused, the
    /// terminal blocked by an earlier unresolved reversal, the daemon not reachable), refused before
    /// it was applied, or reversed by recovery. Safe to try again later.
    pub const NOT_DONE: u8 = 5;

    /// The text for `--help` and the man page.
    pub const HELP: &str = "\
Exit codes of run, checkin and settle:
  0  approved
  1  other error (the daemon's own failure, such as its journal)
  2  bad request or usage: nothing was done
  3  declined by the backend: nothing was done
  4  outcome unknown (pending): recovery is owed and runs in the daemon, or the daemon's answer
     was lost; look the record up again before telling the customer
  5  not done, nothing owed: not sent (backend or daemon unreachable, TLS failed, terminal blocked
     by a pending reversal), failed, or reversed by recovery; safe to retry later";

    /// The exit code for an operation's answer: HTTP status plus the record's `status` word, or the problem.
    pub fn for_answer(http_status: u16, body: &serde_json::Value) -> u8 {
        let is_record = body.get("id").is_some_and(serde_json::Value::is_u64);
        if is_record {
            match body.get("status").and_then(serde_json::Value::as_str) {
                Some("approved") => return APPROVED,
                Some("declined") => return DECLINED,
                Some("pending") | Some("unknown") => return PENDING,
                Some("failed") | Some("reversed") => return NOT_DONE,
                _ => {}
            }
        }
        let slug = body.get("type").and_then(serde_json::Value::as_str).and_then(|t| t.rsplit('/').next()).unwrap_or("");
        match (http_status, slug) {
            (200..=299, _) => APPROVED,
            (_, "reversal-pending" | "sign-on-failed" | "shutting-down") => NOT_DONE,
            (400..=499, _) => USAGE,
            (502 | 503, _) => NOT_DONE,
            _ => OTHER,
        }
    }
}

impl ClientError {
    /// The `posgate run` exit code for a request that got no answer from the daemon (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            // Nothing reached the daemon.
            ClientError::NotRunning { .. } | ClientError::PermissionDenied { .. } | ClientError::Connect { .. } => exit::NOT_DONE,
            // The request may have reached the daemon, which finishes it on its own: outcome unknown here.
            ClientError::Http { .. } | ClientError::OutcomeUnknown { .. } | ClientError::Timeout { .. } | ClientError::NotJson { .. } => exit::PENDING,
            ClientError::Request(_) | ClientError::BadToken => exit::USAGE,
            ClientError::Refused { .. } => exit::OTHER,
        }
    }
}

#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    /// `host:port` of a loopback listener and its bearer token.
    Tcp {
        addr: String,
        token: Option<Secret>,
    },
}

/// A raw answer: status, headers and body bytes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<Value, ClientError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::NotJson { status: self.status, detail: e.to_string() })
    }
}

/// At most this many idle connections are kept per client (32 lanes in the bench, a few in a POS);
/// more concurrent callers still work, their extra connections close after use.
const MAX_IDLE: usize = 64;

type Sender = http1::SendRequest<Full<Bytes>>;

/// The future that runs one connection's HTTP/1.1 state machine (reads, writes, keep-alive).
type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<()>> + Send>>;

/// One kept-alive connection: the request half and the connection's driver. The driver is polled by
/// the task making a request, not by a task of its own: a request is then one task writing and
/// reading its socket, with no hand-off to another worker thread and back (that cost about 40 µs a
/// request on the 2-core bench machine). An idle connection is not polled; one the daemon closed
/// meanwhile shows as closed at its next use and is replaced (see [`ApiClient::pooled`]).
struct Conn {
    sender: Sender,
    driver: Driver,
}

/// How one exchange on a pooled connection failed.
enum Failed {
    /// The connection was closed or broken before the request was handed to it: not sent.
    Unsent(hyper::Error),
    /// Sending it failed; `unsent` when hyper gave the request back (never written).
    Send { unsent: bool, source: hyper::Error },
    /// The answer's head came, its body did not.
    Body(hyper::Error),
}

/// The idle connections a client and its clones share, and how many it opened (for tests and the bench).
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Conn>>,
    opened: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("opened", &self.opened.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Pool {
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: Conn) {
        if c.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }
}

/// A client of one daemon's local API. Clones share the idle connections.
#[derive(Debug, Clone)]
pub struct ApiClient {
    endpoint: Endpoint,
    timeout: Duration,
    pool: Arc<Pool>,
}

impl ApiClient {
    /// Talk to the daemon over its Unix socket (no token needed).
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        ApiClient { endpoint: Endpoint::Unix(path.into()), timeout: Duration::from_secs(120), pool: Arc::default() }
    }

    /// Talk to the daemon over loopback TCP (`127.0.0.1:8765`) with its bearer token.
    pub fn tcp(addr: impl Into<String>, token: Option<Secret>) -> Self {
        ApiClient { endpoint: Endpoint::Tcp { addr: addr.into(), token }, timeout: Duration::from_secs(120), pool: Arc::default() }
    }

    /// How many connections this client (and its clones) opened so far, the event stream's included.
    pub fn connections_opened(&self) -> u64 {
        self.pool.opened.load(Ordering::Relaxed)
    }

    /// Close the idle connections (the next request opens a new one).
    pub fn close_idle(&self) {
        self.pool.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// Give up on a request after this long (operations can wait on backend timeouts; default 120 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn target(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => addr.clone(),
        }
    }

    /// `GET path` → (HTTP status, JSON body). Problem answers are returned, not turned into errors.
    pub async fn get(&self, path: &str) -> Result<(u16, Value), ClientError> {
        let reply = self.request(Method::GET, path, &[], Bytes::new()).await?;
        Ok((reply.status, reply.json()?))
    }

    /// `POST path` with a JSON body and an optional `Idempotency-Key`.
    pub async fn post(&self, path: &str, body: Value, idempotency_key: Option<&str>) -> Result<(u16, Value), ClientError> {
        let bytes = Bytes::from(serde_json::to_vec(&body).map_err(|e| ClientError::Request(e.to_string()))?);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = idempotency_key {
            headers.push(("idempotency-key", k));
        }
        let reply = self.request(Method::POST, path, &headers, bytes).await?;
        Ok((reply.status, reply.json()?))
    }

    /// Any request, with raw headers and body (for tests and unusual calls).
    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Reply, ClientError> {
        let target = self.target();
        let fut = self.pooled(&target, method, path, headers, body);
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| ClientError::Timeout { target: target.clone(), secs: self.timeout.as_secs() })?
    }

    /// One request on an idle connection (or a new one), which goes back to the pool once its answer
    /// is read whole. See the module doc for when a failed request is sent again.
    async fn pooled(&self, target: &str, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Reply, ClientError> {
        let resendable =
            matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) || headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"));
        let mut reconnected = false;
        loop {
            let req = self.build(method.clone(), path, headers, body.clone())?;
            let (conn, reused) = match self.pool.take() {
                Some(c) => (c, true),
                None => (self.connect(target).await?, false),
            };
            let Conn { mut sender, mut driver } = conn;
            // The request and its connection's driver together; a driver that ends first (the daemon
            // closed the connection) is dropped, which fails the exchange with what hyper knows of it.
            let (result, driver) = {
                let exchange = exchange(&mut sender, req);
                tokio::pin!(exchange);
                tokio::select! {
                    r = &mut exchange => (r, Some(driver)),
                    ended = &mut driver => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, "API client connection ended with an error");
                        }
                        drop(driver);
                        (exchange.await, None)
                    }
                }
            };
            let failure = match result {
                Ok((status, headers, body)) => {
                    if let Some(driver) = driver {
                        self.pool.put(Conn { sender, driver });
                    }
                    return Ok(Reply { status, headers, body });
                }
                Err(f) => f,
            };
            let (unsent, source) = match failure {
                Failed::Unsent(source) => (true, source),
                Failed::Send { unsent, source } => (unsent, source),
                Failed::Body(source) => return Err(ClientError::Http { target: target.to_string(), source }),
            };
            // A reused connection the daemon closed while it sat idle: once, on a new one.
            if reused && !reconnected && (unsent || resendable) {
                tracing::debug!(error = ?source, unsent, "pooled API connection was closed; reconnecting once");
                reconnected = true;
                continue;
            }
            if unsent {
                return Err(ClientError::Connect { target: target.to_string(), source: std::io::Error::other(source) });
            }
            if !resendable {
                return Err(ClientError::OutcomeUnknown { target: target.to_string(), source });
            }
            return Err(ClientError::Http { target: target.to_string(), source });
        }
    }

    /// The request with the headers every call carries (`Host`, `Accept`, the bearer token over TCP).
    fn build(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(Full::new(body)).map_err(|e| ClientError::Request(e.to_string()))?;
        let h = req.headers_mut();
        h.entry(HOST).or_insert(HeaderValue::from_static("localhost"));
        h.entry(ACCEPT).or_insert(HeaderValue::from_static("application/json"));
        if let Endpoint::Tcp { token: Some(token), .. } = &self.endpoint {
            let t = token.expose_str().map_err(|_| ClientError::BadToken)?;
            let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ClientError::BadToken)?;
            h.insert(AUTHORIZATION, v);
        }
        Ok(req)
    }

    /// A new connection, its HTTP/1.1 handshake done and its driver task spawned.
    async fn connect(&self, target: &str) -> Result<Conn, ClientError> {
        self.pool.opened.fetch_add(1, Ordering::Relaxed);
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = crate::api::connect_local(path).await.map_err(|e| connect_error(target, e))?;
                handshake(target, stream).await
            }
            Endpoint::Tcp { addr, .. } => {
                let stream = tokio::net::TcpStream::connect(addr.as_str()).await.map_err(|e| connect_error(target, e))?;
                let _ = stream.set_nodelay(true);
                handshake(target, stream).await
            }
        }
    }

    /// Subscribe to `GET /v1/events`; a refusal (401 and the like) is an error naming the problem.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let target = self.target();
        let resp = tokio::time::timeout(self.timeout, self.send(Method::GET, "/v1/events", &[("accept", "text/event-stream")], Bytes::new()))
            .await
            .map_err(|_| ClientError::Timeout { target: target.clone(), secs: self.timeout.as_secs() })??;
        if resp.status() != hyper::StatusCode::OK {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused { status, detail });
        }
        Ok(EventStream { target, body: resp.into_body(), buf: BytesMut::new() })
    }

    /// A request on a connection of its own (the event stream holds its connection for as long as it runs).
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Response<Incoming>, ClientError> {
        let target = self.target();
        let req = self.build(method, path, headers, body)?;
        let Conn { mut sender, driver } = self.connect(&target).await?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "API client connection ended with an error");
            }
        });
        sender.send_request(req).await.map_err(|source| ClientError::Http { target, source })
    }
}

fn connect_error(target: &str, e: std::io::Error) -> ClientError {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound | ConnectionRefused => ClientError::NotRunning { target: target.to_string(), source: e },
        PermissionDenied => ClientError::PermissionDenied { target: target.to_string() },
        _ => ClientError::Connect { target: target.to_string(), source: e },
    }
}

async fn handshake<S>(target: &str, stream: S) -> Result<Conn, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|source| ClientError::Http { target: target.to_string(), source })?;
    Ok(Conn { sender, driver: Box::pin(conn) })
}

/// One request on `sender` (whose driver the caller polls alongside): wait until the connection
/// takes a request, send it, read the whole answer.
async fn exchange(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<(u16, HeaderMap, Bytes), Failed> {
    sender.ready().await.map_err(Failed::Unsent)?;
    match sender.try_send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(Failed::Body)?.to_bytes();
            Ok((status, parts.headers, body))
        }
        Err(mut e) => {
            let unsent = e.take_message().is_some();
            Err(Failed::Send { unsent, source: e.into_error() })
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The `event:` name (`message` when the frame has none).
    pub event: String,
    /// The `data:` payload parsed as JSON (a JSON string when it is not JSON).
    pub data: Value,
}

/// The `GET /v1/events` stream; comments (`: keep-alive`) and `retry:` hints are skipped.
pub struct EventStream {
    target: String,
    body: Incoming,
    buf: BytesMut,
}

impl EventStream {
    /// The next event, or `None` when the daemon ends the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            if let Some(ev) = self.take_event() {
                return Ok(Some(ev));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(source)) => return Err(ClientError::Http { target: self.target.clone(), source }),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Parse complete frames out of the buffer; skip frames with no data (comments, retry hints).
    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = find_frame_end(&self.buf)?;
            let frame = self.buf.split_to(end.0 + end.1);
            let text = String::from_utf8_lossy(&frame[..end.0]);
            if let Some(ev) = parse_frame(&text) {
                return Some(ev);
            }
        }
    }
}

/// Position and length of the first blank-line separator (`\n\n` or `\r\n\r\n`).
fn find_frame_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_frame(text: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
        match field {
            "event" => event = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    let data = data?;
    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
    Some(SseEvent { event: event.unwrap_or_else(|| "message".into()), data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_comments_are_skipped() {
        assert_eq!(parse_frame(": keep-alive"), None);
        assert_eq!(parse_frame("retry: 3000\n: connected"), None);
        let ev = parse_frame("event: scan\ndata: {\"text\":\"123\"}").expect("event");
        assert_eq!(ev.event, "scan");
        assert_eq!(ev.data["text"], "123");
        assert_eq!(find_frame_end(b"a\r\n\r\nb\n\n"), Some((1, 4)));
    }

    #[test]
    fn exit_codes_follow_the_record_status_then_the_problem() {
        use serde_json::json;
        let rec = |s: &str| json!({"id": 7, "status": s});
        assert_eq!(exit::for_answer(200, &rec("approved")), 0);
        assert_eq!(exit::for_answer(200, &rec("declined")), 3);
        assert_eq!(exit::for_answer(202, &rec("pending")), 4);
        assert_eq!(exit::for_answer(502, &rec("failed")), 5);
        assert_eq!(exit::for_answer(200, &rec("reversed")), 5);
        let problem = |slug: &str| json!({"type": format!("https://posgate.local/problems/{slug}"), "detail": "x"});
        assert_eq!(exit::for_answer(400, &problem("bad-request")), 2);
        assert_eq!(exit::for_answer(404, &problem("unknown-profile")), 2);
        assert_eq!(exit::for_answer(409, &problem("idempotency-conflict")), 2);
        assert_eq!(exit::for_answer(409, &problem("reversal-pending")), 5);
        assert_eq!(exit::for_answer(502, &problem("sign-on-failed")), 5);
        assert_eq!(exit::for_answer(500, &problem("journal")), 1);
    }

    #[tokio::test]
    async fn a_missing_socket_says_the_daemon_is_not_running() {
        let c = ApiClient::unix("/nonexistent/posgate-test.sock");
        let e = c.get("/v1/status").await.expect_err("no daemon");
        let text = e.to_string();
        assert!(text.contains("cannot connect to /nonexistent/posgate-test.sock: is posgate running?"), "{text}");
    }
}
