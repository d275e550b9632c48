//! The HTTP/1.1 server of the local API: accept loop, auth, routing, body limits, graceful shutdown.
//!
//! The caller binds the listeners and hands over a shutdown future (mini-redis style), so bind
//! errors are reported before the daemon says it is ready, and tests can bind port 0.
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::listen::{accept_local, local_name, remove_local, LocalListener, LocalStream, LOCAL_TRANSPORT};
use super::problem::Problem;
use super::{cors, page, sse, ApiError, ApiOptions, Listeners, Service, OPENAPI_JSON};

/// Every response body of the API (JSON bodies and the SSE stream).
pub type ApiBody = BoxBody<Bytes, Infallible>;

/// How long in-flight requests may take to finish once shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
use super::limits::{ApiLimits, Caps};
use super::parse::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The response header carrying the request id (echoed from the request when it is sane).
pub const REQUEST_ID: &str = "x-request-id";
/// The request header that makes a retried operation return the first result.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Status,
    Events,
    Scans,
    Run,
    Journal,
    JournalRecord,
    JournalExport,
    Reversals,
    ResolveReversal,
    RetryReversal,
    OpenApi,
    Products,
    ResumeJob,
}

/// One route: method, path pattern (`{name}` matches one non-empty segment) and handler.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    pub handler: Handler,
}

/// The route table, used by the router and checked against the OpenAPI document by a test.
pub const ROUTES: &[Route] = &[
    Route { method: "GET", pattern: "/v1/status", handler: Handler::Status },
    Route { method: "GET", pattern: "/v1/events", handler: Handler::Events },
    Route { method: "POST", pattern: "/v1/scans", handler: Handler::Scans },
    Route { method: "POST", pattern: "/v1/profiles/{profile}/{operation}", handler: Handler::Run },
    Route { method: "GET", pattern: "/v1/journal", handler: Handler::Journal },
    Route { method: "GET", pattern: "/v1/journal/export", handler: Handler::JournalExport },
    Route { method: "GET", pattern: "/v1/journal/{id}", handler: Handler::JournalRecord },
    Route { method: "GET", pattern: "/v1/reversals", handler: Handler::Reversals },
    Route { method: "POST", pattern: "/v1/reversals/{id}/retry", handler: Handler::RetryReversal },
    Route { method: "POST", pattern: "/v1/reversals/{id}/resolve", handler: Handler::ResolveReversal },
    Route { method: "GET", pattern: "/v1/openapi", handler: Handler::OpenApi },
    Route { method: "GET", pattern: "/v1/profiles/{profile}/products", handler: Handler::Products },
    Route { method: "POST", pattern: "/v1/jobs/{id}/resume", handler: Handler::ResumeJob },
];

/// Which listener a request came in on; TCP requests must carry the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Unix,
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Unix => LOCAL_TRANSPORT,
            Transport::Tcp => "tcp",
        }
    }
}

struct State {
    /// Refused requests and malformed connections are logged at most so often (a flood is not a log flood).
    refused_log: Mutex<RateLimit>,
    service: Arc<dyn Service>,
    /// SHA-1 of the token: compared in constant time, and equal length whatever the client sends.
    token_digest: Option<[u8; 20]>,
    max_body: usize,
    /// Header and body deadlines.
    limits: ApiLimits,
    shutdown: watch::Receiver<bool>,
    /// Browser origins allowed on the TCP listener.
    cors: cors::Policy,
    /// The technician page (`/`, `/page/…`) on the TCP listener.
    page: page::Page,
}

/// Serve the API on the given listeners until `shutdown` completes; then stop accepting, end
/// SSE streams, give in-flight requests [`SHUTDOWN_GRACE`] to finish, and remove the socket file.
pub async fn serve(service: Arc<dyn Service>, listeners: Listeners, opts: ApiOptions, shutdown: impl Future<Output = ()> + Send) -> Result<(), ApiError> {
    let Listeners { mut unix, tcp } = listeners;
    if unix.is_none() && tcp.is_none() {
        return Err(ApiError::NoListener);
    }
    let token_digest = match &opts.token {
        Some(t) => {
            let text = t.expose_str().map_err(|_| ApiError::BadToken)?;
            if text.is_empty() {
                return Err(ApiError::BadToken);
            }
            Some(digest(text.as_bytes()))
        }
        None if tcp.is_some() => return Err(ApiError::TcpWithoutToken),
        None => None,
    };
    if let Some(addr) = tcp.as_ref().and_then(|l| l.local_addr().ok()) {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the API's TCP listener is not on loopback; only the bearer token protects it");
        }
        tracing::info!(%addr, "local API listening on TCP");
    }
    let unix_path = unix.as_ref().and_then(local_name);
    if let Some(p) = &unix_path {
        tracing::info!(path = %p.display(), transport = LOCAL_TRANSPORT, "local API listening");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let page_on = tcp.as_ref().and_then(|l| l.local_addr().ok()).is_some_and(|a| a.ip().is_loopback());
    let page = page::Page::new(page_on, token_digest, service.clone(), stop_rx.clone(), opts.config_file.clone());
    let state = Arc::new(State {
        refused_log: Mutex::new(RateLimit::new(REFUSED_LOG_WINDOW, REFUSED_LOG_LINES)),
        service,
        token_digest,
        max_body: opts.max_body_bytes,
        limits: opts.limits,
        shutdown: stop_rx.clone(),
        cors: cors::Policy::new(opts.allowed_origins.clone()),
        page,
    });
    // Each listener has its own slots, both sized below the open-file limit: a TCP flood waits in the
    // kernel's backlog (costing the daemon nothing) while the Unix socket keeps being served.
    let nofile = super::limits::open_file_limit();
    let caps = opts.limits.caps(nofile);
    if caps != (Caps { tcp: opts.limits.max_tcp_connections, unix: opts.limits.max_unix_connections }) {
        tracing::warn!(
            open_file_limit = nofile,
            tcp = caps.tcp,
            unix = caps.unix,
            "API connection caps lowered to fit the open-file limit (raise LimitNOFILE / ulimit -n for more)"
        );
    }
    let tcp_slots = Arc::new(Semaphore::new(caps.tcp));
    let unix_slots = Arc::new(Semaphore::new(caps.unix));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            (stream, slot) = accept_unix(unix.as_mut(), &unix_slots) => {
                conns.spawn(serve_conn(state.clone(), stream, Transport::Unix, stop_rx.clone(), slot));
            }
            (stream, slot) = accept_tcp(tcp.as_ref(), &tcp_slots) => {
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_conn(state.clone(), stream, Transport::Tcp, stop_rx.clone(), slot));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }

    drop(unix);
    drop(tcp);
    if let Some(p) = &unix_path {
        remove_local(p);
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = conns.len(), "API connections still busy after the shutdown grace period; closing them");
        conns.abort_all();
    }
    tracing::info!("local API stopped");
    Ok(())
}

/// The next local (Unix socket / named pipe) connection, once one of its slots is free. Cancel-safe (used in `select!`).
async fn accept_unix(l: Option<&mut LocalListener>, slots: &Arc<Semaphore>) -> (LocalStream, OwnedSemaphorePermit) {
    let Some(l) = l else { return std::future::pending().await };
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return std::future::pending().await };
        match accept_local(l).await {
            Ok(s) => return (s, slot),
            Err(e) => accept_failed(Transport::Unix, e).await,
        }
    }
}

/// The next TCP connection, once one of its slots is free: past the cap, connections wait in the
/// kernel's backlog and hold none of the daemon's files. Cancel-safe (used in `select!`).
async fn accept_tcp(l: Option<&TcpListener>, slots: &Arc<Semaphore>) -> (tokio::net::TcpStream, OwnedSemaphorePermit) {
    let Some(l) = l else { return std::future::pending().await };
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return std::future::pending().await };
        match l.accept().await {
            Ok((s, _)) => return (s, slot),
            Err(e) => accept_failed(Transport::Tcp, e).await,
        }
    }
}

/// Accept errors (out of file descriptors and the like) are transient: log, pause this listener
/// only (the other one keeps accepting), go on.
async fn accept_failed(transport: Transport, e: std::io::Error) {
    tracing::warn!(error = %e, transport = transport.name(), "accepting an API connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serve one connection; `_slot` is its place under the listener's cap, given back when it ends.
async fn serve_conn<I>(state: Arc<State>, io: I, transport: Transport, mut stop: watch::Receiver<bool>, _slot: OwnedSemaphorePermit)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let for_log = state.clone();
    let header_timeout = state.limits.header_timeout();
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, transport, req).await) }
    });
    let mut builder = http1::Builder::new();
    // The header timeout also runs while a connection is idle (before its first request and between
    // requests): a silent connection is closed after it.
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() || e.is_timeout() {
                        // hyper answered 400/431/408 itself: a refused request, logged at a bounded rate.
                        if let Some(suppressed) = admit_refused(&for_log) {
                            tracing::info!(target: "posgate::api", error = %e, transport = transport.name(), suppressed, "refused a malformed request");
                        }
                    } else {
                        tracing::debug!(error = %e, transport = transport.name(), "API connection ended with an error");
                    }
                }
                break;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answer one request: run it, stamp `X-Request-Id`, log method/path/status/ms (never bodies).
#[allow(clippy::disallowed_methods)] // request timing for the access log, not engine time
async fn handle(state: Arc<State>, transport: Transport, req: Request<Incoming>) -> Response<ApiBody> {
    let started = Instant::now();
    // Both come from outside: escaped and cut before they go anywhere near a log line.
    let method = log_value(req.method().as_str());
    let path = log_value(req.uri().path());
    let request_id = request_id(req.headers());
    let metric_op = metric_operation(req.method(), req.uri().path());
    // A request that can change something (any method but GET) runs in a separate task, so it runs to
    // completion even if the POS app hangs up mid-request (the engine journals the outcome either way).
    // A GET changes nothing and has nothing to finish: it runs here, in the connection's task, saving a
    // task spawn and a worker wake-up per request (what a polled `GET /v1/status` mostly cost). Either
    // way a panic answers 500 instead of a reset.
    let answered = if req.method() == Method::GET {
        CatchPanic(Box::pin(route(state.clone(), transport, req))).await
    } else {
        tokio::spawn(route(state.clone(), transport, req)).await.map_err(|e| e.to_string())
    };
    let mut resp = match answered {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, %method, %path, %request_id, "API handler failed");
            Problem::internal(format!("the request failed inside the daemon; see its log for request id {request_id}")).into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    crate::metrics::request(if status == 404 { "unrouted" } else { &metric_op }, status);
    let suppressed = if is_refusal(status) {
        match admit_refused(&state) {
            Some(n) => n,
            None => return resp,
        }
    } else {
        0
    };
    tracing::info!(
        target: "posgate::api",
        %method,
        %path,
        status,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        %request_id,
        transport = transport.name(),
        suppressed,
        "request"
    );
    resp
}

/// A future run in place whose panic is caught and returned as its message (what a spawned task's
/// `JoinError` says), so a route that runs inline still answers 500 when it panics.
struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(p) => {
                let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
                std::task::Poll::Ready(Err(format!("the request panicked: {msg}")))
            }
        }
    }
}

/// At most this many bytes of any one value from outside (method, path, header) in a log line.
pub const LOG_VALUE_MAX: usize = 160;
/// Refused requests: at most `REFUSED_LOG_LINES` log lines per `REFUSED_LOG_WINDOW`.
const REFUSED_LOG_WINDOW: Duration = Duration::from_secs(10);
const REFUSED_LOG_LINES: u32 = 20;

/// Answers that refuse a request before it did anything (bad auth, bad form, no such route): a
/// client or an attacker can make any number of them, so their log lines are rate limited.
fn is_refusal(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 404 | 405 | 408 | 411 | 413 | 414 | 415 | 431)
}

/// Whether to log one more refused request now; `Some(n)`: log it, noting `n` refused requests
/// that were not logged since the last line.
#[allow(clippy::disallowed_methods)] // log rate limiting, not engine time
fn admit_refused(state: &State) -> Option<u64> {
    state.refused_log.lock().unwrap_or_else(|p| p.into_inner()).admit(Instant::now())
}

/// A value from outside made safe for one log line: printable ASCII kept (minus `"` and a backslash),
/// everything else escaped, and cut at [`LOG_VALUE_MAX`] bytes with the original length noted.
pub fn log_value(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars() {
        if out.len() >= LOG_VALUE_MAX {
            out.push_str(&format!("…({} bytes)", raw.len()));
            return out;
        }
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out
}

/// A fixed-window rate limit for log lines, with a count of what it held back. Time is passed in.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    lines: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(window: Duration, lines: u32) -> Self {
        RateLimit { window, lines, start: None, used: 0, suppressed: 0 }
    }

    /// `Some(n)`: log this one, and say `n` were held back since the last logged line; `None`: hold it back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.start {
            Some(s) => now.saturating_duration_since(s) >= self.window,
            None => true,
        };
        if fresh {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used >= self.lines {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The client's `X-Request-Id` when it is short and plain, else a fresh random one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    if let Some(given) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        let ok = !given.is_empty() && given.len() <= 64 && given.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if ok {
            return given.to_string();
        }
    }
    format!("{:016x}", rand::random::<u64>())
}

pub(crate) fn digest(bytes: &[u8]) -> [u8; 20] {
    Sha1::digest(bytes).into()
}

pub(crate) fn check_bearer(expected: Option<&[u8; 20]>, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(expected) = expected else {
        return Err(Problem::unauthorized("no token is configured for TCP clients"));
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Problem::unauthorized("requests over TCP need `Authorization: Bearer <token>`"));
    };
    let value = value.as_bytes();
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => return Err(Problem::unauthorized("the Authorization header must use the Bearer scheme")),
    };
    if bool::from(digest(token).ct_eq(expected)) {
        Ok(())
    } else {
        Err(Problem::unauthorized("the bearer token is wrong"))
    }
}

enum RouteMatch {
    Found(Handler, Vec<String>),
    /// The path exists but not with this method: the methods it has.
    WrongMethod(Vec<&'static str>),
    NotFound,
}

fn find_route(method: &Method, path: &str) -> RouteMatch {
    let mut allow = Vec::new();
    for r in ROUTES {
        if let Some(params) = match_pattern(r.pattern, path) {
            if r.method == method.as_str() {
                return RouteMatch::Found(r.handler, params);
            }
            allow.push(r.method);
        }
    }
    if allow.is_empty() {
        RouteMatch::NotFound
    } else {
        RouteMatch::WrongMethod(allow)
    }
}

/// Match `path` against `pattern`; the decoded `{param}` segments in order.
pub(crate) fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(g)) => {
                if p.starts_with('{') && p.ends_with('}') {
                    if g.is_empty() {
                        return None;
                    }
                    params.push(percent_decode(g)?);
                } else if p != g {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `operation` label of a request in `/metrics`: the operation's name for a run, else the route's.
fn metric_operation(method: &Method, path: &str) -> String {
    if path == "/metrics" {
        return "metrics".into();
    }
    if page::owns(path) {
        return "page".into();
    }
    match find_route(method, path) {
        RouteMatch::Found(Handler::Run, p) => p.get(1).cloned().unwrap_or_default(),
        RouteMatch::Found(h, _) => format!("{h:?}"),
        RouteMatch::WrongMethod(_) | RouteMatch::NotFound => "unrouted".into(),
    }
}

/// Browser origins first (TCP only: a preflight is answered, a foreign origin refused), then the API.
async fn route(state: Arc<State>, transport: Transport, req: Request<Incoming>) -> Response<ApiBody> {
    if transport == Transport::Tcp && page::owns(req.uri().path()) {
        return state.page.handle(req).await;
    }
    let origin = match transport {
        Transport::Tcp => match state.cors.check(req.method(), req.headers()) {
            cors::Verdict::Answer(resp) => return resp,
            cors::Verdict::Go(origin) => origin,
        },
        Transport::Unix => None,
    };
    let mut resp = route_api(state, transport, req).await;
    cors::decorate(&mut resp, origin.as_deref());
    resp
}

async fn route_api(state: Arc<State>, transport: Transport, req: Request<Incoming>) -> Response<ApiBody> {
    if transport == Transport::Tcp {
        if let Err(p) = check_bearer(state.token_digest.as_ref(), req.headers()) {
            // Nothing more is spent on a client without the token: no body is read, the connection ends.
            return p.with_header("connection", "close").into_response();
        }
    }
    if req.uri().path() == "/metrics" {
        return metrics_response(&state, req.method()).await;
    }
    let (handler, params) = match find_route(req.method(), req.uri().path()) {
        RouteMatch::Found(h, p) => (h, p),
        RouteMatch::WrongMethod(allow) => {
            let allow = allow.join(", ");
            return Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("{} {} is not a route; allowed: {allow}", req.method(), req.uri().path()),
            )
            .with_header("allow", allow)
            .into_response();
        }
        RouteMatch::NotFound => return Problem::not_found(req.uri().path()).into_response(),
    };
    match dispatch(&state, handler, params, req).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

/// `GET /metrics`: Prometheus text, gauges read from the status the engine computes for `/v1/status`.
async fn metrics_response(state: &State, method: &Method) -> Response<ApiBody> {
    if method != Method::GET {
        return Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "/metrics is GET only")
            .with_header("allow", "GET".to_string())
            .into_response();
    }
    let text = crate::metrics::render(&state.service.status().await);
    let mut resp = Response::new(Full::new(Bytes::from(text)).boxed());
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Read a JSON object body within its deadline ([`ApiLimits::body_deadline`]); a body that is too
/// slow gets 408 and the connection is closed (a dribbling client holds nothing for long).
async fn read_body(state: &State, req: Request<Incoming>, empty_ok: bool) -> Result<serde_json::Map<String, Value>, Problem> {
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
    let max = u64::try_from(state.max_body).unwrap_or(u64::MAX);
    let deadline = state.limits.body_deadline(declared.unwrap_or(max).min(max));
    match tokio::time::timeout(deadline, read_json_object(req, state.max_body, empty_ok)).await {
        Ok(r) => r,
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request body too slow",
            format!("the request body did not arrive within {} ms", deadline.as_millis()),
        )
        .with_header("connection", "close")),
    }
}

async fn dispatch(state: &State, handler: Handler, params: Vec<String>, req: Request<Incoming>) -> Result<Response<ApiBody>, Problem> {
    let svc = &state.service;
    match handler {
        Handler::Status => Ok(json_response(StatusCode::OK, &svc.status().await)),
        Handler::Events => {
            let body = sse::start(svc.subscribe(), state.shutdown.clone());
            let mut resp = Response::new(BodyExt::boxed(body));
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            Ok(resp)
        }
        Handler::Scans => {
            let body = read_body(state, req, false).await?;
            match body.get("text") {
                Some(Value::String(t)) if !t.is_empty() => {}
                Some(Value::String(_)) => return Err(Problem::invalid_param("text", "must not be empty")),
                Some(_) => return Err(Problem::invalid_param("text", "must be a string")),
                None => return Err(Problem::invalid_param("text", "is required")),
            }
            if !matches!(body.get("device"), None | Some(Value::Null) | Some(Value::String(_))) {
                return Err(Problem::invalid_param("device", "must be a string"));
            }
            let text = body.get("text").and_then(Value::as_str).unwrap_or_default();
            let device = body.get("device").and_then(Value::as_str);
            let event = svc.scan(device, text).await.map_err(|e| Problem::from_engine(&e))?;
            Ok(json_response(StatusCode::ACCEPTED, &event))
        }
        Handler::Run => {
            let [profile, operation] = <[String; 2]>::try_from(params).map_err(|_| Problem::internal("route parameters"))?;
            let key = idempotency_key(req.headers())?;
            let body = read_body(state, req, true).await?;
            let answer = svc.run(&profile, &operation, Value::Object(body), key.as_deref()).await.map_err(|e| Problem::from_engine(&e))?;
            let status = StatusCode::from_u16(answer.http_status)
                .map_err(|_| Problem::internal(format!("the engine answered with HTTP status {}", answer.http_status)))?;
            Ok(json_response(status, &answer.body))
        }
        Handler::Journal => {
            let q = parse_journal_query(req.uri().query())?;
            let records = svc.journal(&q).await.map_err(|e| Problem::from_engine(&e))?;
            let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
            let next_before = if records.len() >= limit { records.last().and_then(|r| r.get("id")).cloned() } else { None };
            Ok(json_response(StatusCode::OK, &json!({ "records": records, "next_before": next_before })))
        }
        Handler::Products => {
            let profile = params.first().cloned().unwrap_or_default();
            let v = svc.products(&profile).await.map_err(|e| Problem::from_engine(&e))?;
            Ok(json_response(StatusCode::OK, &v))
        }
        Handler::ResumeJob => {
            let id = parse_id(&params)?;
            let v = svc.resume_job(id).await.map_err(|e| Problem::from_engine(&e))?;
            Ok(json_response(StatusCode::OK, &v))
        }
        Handler::JournalExport => {
            let (from, to, after, limit) = super::parse::parse_export_query(req.uri().query())?;
            let records = svc.journal_export(&from, &to, after, limit).await.map_err(|e| Problem::from_engine(&e))?;
            let next_after = if records.len() >= limit { records.last().and_then(|r| r.get("id")).cloned() } else { None };
            Ok(json_response(StatusCode::OK, &json!({ "records": records, "next_after": next_after })))
        }
        Handler::JournalRecord => {
            let id = parse_id(&params)?;
            let rec = svc.journal_record(id).await.map_err(|e| Problem::from_engine(&e))?;
            Ok(json_response(StatusCode::OK, &rec))
        }
        Handler::Reversals => {
            let records = svc.recoveries().await.map_err(|e| Problem::from_engine(&e))?;
            Ok(json_response(StatusCode::OK, &json!({ "records": records })))
        }
        Handler::RetryReversal => {
            let id = parse_id(&params)?;
            let rec = svc.retry_recovery(id).await.map_err(|e| Problem::from_engine(&e))?;
            Ok(json_response(StatusCode::OK, &rec))
        }
        Handler::ResolveReversal => {
            let id = parse_id(&params)?;
            let body = read_body(state, req, false).await?;
            let outcome = match body.get("outcome") {
                Some(Value::String(o)) => o.clone(),
                _ => return Err(Problem::invalid_param("outcome", "is required: \"approved\" or \"reversed\"")),
            };
            let note = match body.get("note") {
                None => None,
                Some(Value::String(n)) => Some(n.as_str()),
                Some(_) => return Err(Problem::invalid_param("note", "must be text")),
            };
            let rec = svc.resolve_recovery(id, &outcome, note).await.map_err(|e| Problem::from_engine(&e))?;
            Ok(json_response(StatusCode::OK, &rec))
        }
        Handler::OpenApi => {
            let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())).boxed());
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments_and_decode_params() {
        assert_eq!(match_pattern("/v1/profiles/{profile}/{operation}", "/v1/profiles/store%201/checkin"), Some(vec!["store 1".into(), "checkin".into()]));
        assert_eq!(match_pattern("/v1/journal/{id}", "/v1/journal/"), None);
        assert_eq!(match_pattern("/v1/journal", "/v1/journal/5"), None);
        assert_eq!(match_pattern("/v1/status", "/v1/status/"), None);
    }

    #[test]
    fn wrong_method_lists_allowed_methods() {
        match find_route(&Method::DELETE, "/v1/journal") {
            RouteMatch::WrongMethod(a) => assert_eq!(a, vec!["GET"]),
            _ => panic!("expected 405"),
        }
        assert!(matches!(find_route(&Method::GET, "/v2/status"), RouteMatch::NotFound));
    }

    #[test]
    fn journal_query_names_the_bad_parameter() {
        let q = parse_journal_query(Some("profile=a&batch=000001&status=approved&date=2024-05-01&limit=5&before=99")).expect("valid");
        assert_eq!((q.limit, q.before, q.date.as_deref()), (Some(5), Some(99), Some("2024-05-01")));
        let q = parse_journal_query(Some("profile=&batch=&before=9223372036854775807")).expect("valid");
        assert_eq!((q.profile, q.batch, q.before), (None, None, Some(9_223_372_036_854_775_807)));
        // Regression: schemathesis found values the document refuses being accepted, and the reverse.
        let refused = [
            ("limit=x", "limit"),
            ("date=2024-13-01", "date"),
            ("status=lost", "status"),
            ("colour=red", "colour"),
            ("profile=a&profile=b", "profile"),
            ("date=", "date"),
            ("limit=", "limit"),
            ("status=", "status"),
            ("before=", "before"),
            ("before=-9223372036854775808", "before"),
            ("before=9223372036854775808", "before"),
            ("before=%2B5", "before"),
        ];
        for (bad, name) in refused {
            let p = parse_journal_query(Some(bad)).expect_err(bad);
            assert_eq!(p.status, StatusCode::BAD_REQUEST);
            assert!(p.detail.contains(name), "{bad}: {}", p.detail);
        }
    }

    #[test]
    fn bearer_check_is_strict() {
        let d = digest(b"s3cret");
        let mut h = HeaderMap::new();
        assert!(check_bearer(Some(&d), &h).is_err());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(check_bearer(Some(&d), &h).is_ok());
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer s3cre"));
        assert!(check_bearer(Some(&d), &h).is_err());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic czNjcmV0"));
        assert!(check_bearer(Some(&d), &h).is_err());
        assert!(check_bearer(None, &h).is_err());
    }

    #[test]
    fn a_300_kb_value_from_outside_logs_as_a_few_hundred_escaped_bytes() {
        let huge = "A".repeat(300 * 1024);
        let v = log_value(&huge);
        assert!(v.len() <= LOG_VALUE_MAX + 32, "{}", v.len());
        assert!(v.ends_with(&format!("…({} bytes)", huge.len())), "{v}");
        let nasty = "GET\r\nfake=\"line\"\u{1b}[31m\u{7f}é";
        assert_eq!(log_value(nasty), "GET\\x0d\\x0afake=\\\"line\\\"\\x1b[31m\\x7f\\u{e9}");
        assert_eq!(log_value("/v1/status"), "/v1/status");
        // Escapes count toward the bound too.
        assert!(log_value(&"\u{1}".repeat(100_000)).len() <= LOG_VALUE_MAX + 32);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a base instant; the limiter is driven by offsets from it
    fn refused_requests_are_logged_at_a_rate_with_a_count_of_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10), 3);
        let got: Vec<Option<u64>> = (0..10).map(|i| r.admit(t0 + Duration::from_millis(i))).collect();
        assert_eq!(got, vec![Some(0), Some(0), Some(0), None, None, None, None, None, None, None]);
        // Next window: the first line carries the count of the seven held back.
        assert_eq!(r.admit(t0 + Duration::from_secs(10)), Some(7));
        assert_eq!(r.admit(t0 + Duration::from_secs(11)), Some(0));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
    }
}
