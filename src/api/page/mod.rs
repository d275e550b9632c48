//! The technician page at `/` on the loopback TCP listener: sign-in, session cookie, the shop's state, CSRF-safe actions.
//!
//! Served only when the TCP listener is bound to loopback (so every peer is on this PC) and only to
//! requests whose `Host` names loopback (a DNS-rebinding page names its own host). Signing in takes the
//! API token once and gives a cookie holding a random 256-bit session id (`HttpOnly; SameSite=Strict`);
//! the token itself is never put in the page. Every action is a POST carrying the session's CSRF token
//! in `X-CSRF-Token`, checked server-side, and an `Origin` (or `Referer`) equal to the page's own.
//! Plain HTML and a little vanilla JS, embedded in the binary; no external assets.
pub mod logring;
pub mod raw;
mod session;

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN, REFERER, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, mpsc, watch};

use super::parse::{json_response, read_json_object};
use super::problem::Problem;
use super::server::ApiBody;
use super::Service;
use crate::model::JournalQuery;
use session::{Session, Sessions, COOKIE as SESSION_COOKIE, SESSION_TTL};

const INDEX_HTML: &str = include_str!("index.html");
const SIGNIN_HTML: &str = include_str!("signin.html");
const APP_JS: &str = include_str!("app.js");
/// The sign-in form is small; anything larger is refused unread.
const SIGNIN_MAX: usize = 4096;
/// The header every action carries.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Journal records shown.
const JOURNAL_SHOWN: usize = 25;
/// Log lines shown.
const LOG_SHOWN: usize = 150;
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the page needs: the engine (through the API's [`Service`]), the token's digest, the sessions.
pub struct Page {
    /// Off unless the TCP listener is bound to loopback.
    enabled: bool,
    token_digest: Option<[u8; 20]>,
    sessions: Sessions,
    service: Arc<dyn Service>,
    shutdown: watch::Receiver<bool>,
    /// The daemon's config file, for the doctor run (`POST /page/doctor`).
    config_file: Option<PathBuf>,
}

/// Whether `path` is the page's (everything else is the API).
pub fn owns(path: &str) -> bool {
    path == "/" || path.starts_with("/page/")
}

impl Page {
    pub fn new(
        enabled: bool,
        token_digest: Option<[u8; 20]>,
        service: Arc<dyn Service>,
        shutdown: watch::Receiver<bool>,
        config_file: Option<PathBuf>,
    ) -> Self {
        Page { enabled, token_digest, sessions: Sessions::default(), service, shutdown, config_file }
    }

    /// Answer one request for a page path.
    #[allow(clippy::disallowed_methods)] // session expiry, not engine time
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ApiBody> {
        if !self.enabled {
            return Problem::not_found(req.uri().path()).into_response();
        }
        if !loopback_host(req.headers()) {
            return Problem::new(StatusCode::FORBIDDEN, "not-loopback", "Forbidden", "the technician page is served to loopback names only").into_response();
        }
        let now = Instant::now();
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let session = session_id(req.headers()).and_then(|id| self.sessions.get(&id, now).map(|s| (id, s)));
        match (&method, path.as_str()) {
            (&Method::GET, "/") => match &session {
                Some((_, s)) => html(StatusCode::OK, &INDEX_HTML.replace("{{CSRF}}", &s.csrf)),
                None => html(StatusCode::OK, &SIGNIN_HTML.replace("{{MESSAGE}}", "")),
            },
            (&Method::GET, "/page/app.js") => {
                let mut r = Response::new(Full::new(Bytes::from_static(APP_JS.as_bytes())).boxed());
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
                r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            (&Method::POST, "/page/signin") => self.sign_in(req, now).await,
            _ => {
                let Some((id, s)) = session else {
                    return Problem::unauthorized("sign in on the technician page first").into_response();
                };
                if method == Method::POST {
                    if let Err(p) = action_allowed(req.headers(), &s) {
                        return p.into_response();
                    }
                }
                match self.signed_in(&method, &path, req, &id).await {
                    Ok(r) => r,
                    Err(p) => p.into_response(),
                }
            }
        }
    }

    async fn sign_in(&self, req: Request<Incoming>, now: Instant) -> Response<ApiBody> {
        if !same_origin(req.headers()) {
            return Problem::new(StatusCode::FORBIDDEN, "cross-origin", "Forbidden", "sign-in must come from the page itself").into_response();
        }
        let Ok(body) = Limited::new(req.into_body(), SIGNIN_MAX).collect().await.map(|b| b.to_bytes()) else {
            return Problem::too_large(SIGNIN_MAX).into_response();
        };
        let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()).unwrap_or_default();
        let good = match &self.token_digest {
            Some(d) => bool::from(Sha1::digest(token.trim().as_bytes()).as_slice().ct_eq(d)),
            None => false,
        };
        if !good {
            tracing::warn!(target: "posgate::api", "technician page: sign-in with a wrong token");
            return html(StatusCode::UNAUTHORIZED, &SIGNIN_HTML.replace("{{MESSAGE}}", "<p class=\"err\" id=\"signin-error\">Wrong token.</p>"));
        }
        let (id, _) = self.sessions.create(now);
        tracing::info!(target: "posgate::api", "technician page: signed in");
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::SEE_OTHER;
        r.headers_mut().insert(LOCATION, HeaderValue::from_static("/"));
        let cookie = format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(SET_COOKIE, v);
        }
        r
    }

    async fn signed_in(&self, method: &Method, path: &str, req: Request<Incoming>, id: &str) -> Result<Response<ApiBody>, Problem> {
        let svc = &self.service;
        let segs: Vec<&str> = path.trim_start_matches("/page/").split('/').collect();
        match (method, segs.as_slice()) {
            (&Method::GET, ["state"]) => {
                let status = svc.status().await;
                let reversals = svc.recoveries().await.map_err(|e| Problem::from_engine(&e))?;
                let journal = svc.journal(&JournalQuery { limit: Some(JOURNAL_SHOWN), ..Default::default() }).await.map_err(|e| Problem::from_engine(&e))?;
                let log = logring::tail();
                let log = &log[log.len().saturating_sub(LOG_SHOWN)..];
                let checks = checks(&status);
                Ok(no_store(json_response(
                    StatusCode::OK,
                    &json!({ "status": status, "reversals": reversals, "journal": journal, "log": log, "checks": checks }),
                )))
            }
            // `posgate doctor` on the daemon's own config: secrets' modes, each backend's TLS handshake (no
            // request), serial ports, the running daemon. POST: it contacts the backends, so a person asks for it.
            (&Method::POST, ["doctor"]) => {
                let Some(config) = &self.config_file else {
                    return Err(Problem::new(StatusCode::CONFLICT, "no-config-file", "No config file", "this daemon was not started from a config file"));
                };
                tracing::info!(target: "posgate::api", "technician page: doctor run");
                let report = crate::doctor::run(config, None).await;
                let checks: Vec<Value> = report.findings.iter().map(|(level, text)| json!({ "level": level.word(), "text": text })).collect();
                Ok(no_store(json_response(StatusCode::OK, &json!({ "failed": report.failed(), "checks": checks }))))
            }
            (&Method::GET, ["events"]) => Ok(events(svc.subscribe(), raw::subscribe(), self.shutdown.clone())),
            (&Method::POST, ["signout"]) => {
                self.sessions.remove(id);
                let mut r = json_response(StatusCode::OK, &json!({ "signed_out": true }));
                let gone = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
                if let Ok(v) = HeaderValue::from_str(&gone) {
                    r.headers_mut().insert(SET_COOKIE, v);
                }
                Ok(r)
            }
            (&Method::POST, ["reversals", rid, "retry"]) => {
                let rid = record_id(rid)?;
                tracing::info!(target: "posgate::api", id = rid, "technician page: recovery retried");
                let rec = svc.retry_recovery(rid).await.map_err(|e| Problem::from_engine(&e))?;
                Ok(json_response(StatusCode::OK, &rec))
            }
            (&Method::POST, ["reversals", rid, "resolve"]) => {
                let rid = record_id(rid)?;
                let body = read_json_object(req, SIGNIN_MAX, false).await?;
                let outcome = body.get("outcome").and_then(Value::as_str).unwrap_or_default().to_string();
                let note = body.get("note").and_then(Value::as_str).map(|n| n.chars().take(200).collect::<String>());
                tracing::info!(target: "posgate::api", id = rid, outcome = %super::server::log_value(&outcome), "technician page: recovery resolved by hand");
                let rec = svc
                    .resolve_recovery(rid, &outcome, note.as_deref().or(Some("resolved on the technician page")))
                    .await
                    .map_err(|e| Problem::from_engine(&e))?;
                Ok(json_response(StatusCode::OK, &rec))
            }
            _ => Err(Problem::not_found(path)),
        }
    }
}

fn record_id(raw: &str) -> Result<u64, Problem> {
    super::parse::journal_id(raw).ok_or_else(|| Problem::invalid_param("id", "not a journal id"))
}

/// What the daemon can tell about itself without contacting anything (the checks `posgate doctor`
/// makes that need no config file): backends reachable, recovery, batches, devices.
fn checks(status: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut push = |level: &str, text: String| out.push(json!({ "level": level, "text": text }));
    for p in status.get("profiles").and_then(Value::as_array).into_iter().flatten() {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
        let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
        match p.get("online").and_then(Value::as_bool) {
            Some(false) => push("warn", format!("profile {name}: the backend did not answer the last request")),
            _ => push("ok", format!("profile {name}: backend answering")),
        }
        if n("needs_attention") > 0 {
            push("fail", format!("profile {name}: {} record(s) need attention (recovery parked)", n("needs_attention")));
        } else if n("pending_recovery") > 0 {
            push("warn", format!("profile {name}: {} recovery entr(ies) being retried", n("pending_recovery")));
        }
        let unsettled = p.get("unsettled_batches").and_then(Value::as_array).map_or(0, Vec::len);
        if unsettled > 0 {
            push("warn", format!("profile {name}: {unsettled} batch(es) not settled (`posgate settle {name} --batch N`)"));
        }
        if p.get("plain_http").and_then(Value::as_bool) == Some(true) {
            push("warn", format!("profile {name}: plain HTTP, no TLS"));
        }
        for w in p.get("warnings").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            push("warn", format!("profile {name}: {w}"));
        }
    }
    for d in status.get("devices").and_then(Value::as_array).into_iter().flatten() {
        let id = d.get("device").and_then(Value::as_str).unwrap_or("?");
        let state = d.get("state").and_then(Value::as_str).unwrap_or("?");
        push(if state == "attached" { "ok" } else { "warn" }, format!("device {id}: {state}"));
    }
    out
}

/// A host name that can only be this PC (the port is the listener's, whatever it is).
fn loopback_host(h: &HeaderMap) -> bool {
    let Some(host) = h.get(HOST).and_then(|v| v.to_str().ok()) else { return false };
    let name = if host.starts_with('[') {
        host.split(']').next().map(|n| format!("{n}]")).unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or("").to_string()
    };
    matches!(name.as_str(), "127.0.0.1" | "localhost" | "[::1]")
}

/// `Origin` (or, when a browser sends none, `Referer`) names this very page.
fn same_origin(h: &HeaderMap) -> bool {
    let Some(host) = h.get(HOST).and_then(|v| v.to_str().ok()) else { return false };
    let me = format!("http://{host}");
    if let Some(o) = h.get(ORIGIN) {
        return o.as_bytes() == me.as_bytes();
    }
    match h.get(REFERER).and_then(|v| v.to_str().ok()) {
        Some(r) => r == me || r.starts_with(&format!("{me}/")),
        None => false,
    }
}

/// An action needs both: the page's own origin and the session's CSRF token.
fn action_allowed(h: &HeaderMap, s: &Session) -> Result<(), Problem> {
    if !same_origin(h) {
        return Err(Problem::new(StatusCode::FORBIDDEN, "cross-origin", "Forbidden", "actions must come from the technician page itself"));
    }
    match h.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        Some(t) if s.csrf_ok(t) => Ok(()),
        _ => Err(Problem::new(StatusCode::FORBIDDEN, "csrf", "Forbidden", "the action's CSRF token is missing or wrong; reload the page")),
    }
}

fn session_id(h: &HeaderMap) -> Option<String> {
    for v in h.get_all(COOKIE) {
        for part in v.to_str().ok()?.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == SESSION_COOKIE && val.len() == 64 && val.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

fn html(status: StatusCode, text: &str) -> Response<ApiBody> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    no_store(r)
}

fn no_store(mut r: Response<ApiBody>) -> Response<ApiBody> {
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A response body fed by a channel.
struct Feed(mpsc::Receiver<Bytes>);

impl Body for Feed {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The page's live feed: the engine's events (scans are masked already) and the masked raw device frames.
fn events(mut ev: broadcast::Receiver<crate::model::Event>, mut raw: broadcast::Receiver<Value>, mut stop: watch::Receiver<bool>) -> Response<ApiBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx.send(Bytes::from_static(b"retry: 3000\n\n")).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(super::sse::KEEP_ALIVE);
        loop {
            let chunk = tokio::select! {
                _ = tx.closed() => return,
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
                e = ev.recv() => match e {
                    Ok(e) => super::sse::frame(e.kind, &e.data),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = raw.recv() => match r {
                    Ok(v) => super::sse::frame("raw", &v),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(BodyExt::boxed(Feed(rx)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    no_store(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_loopback_names_and_the_pages_own_origin_pass() {
        assert!(loopback_host(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(loopback_host(&headers(&[("host", "localhost:1")])));
        assert!(loopback_host(&headers(&[("host", "[::1]:9")])));
        assert!(!loopback_host(&headers(&[("host", "evil.example:8080")])));
        assert!(!loopback_host(&headers(&[("host", "127.0.0.1.evil.example")])));
        assert!(!loopback_host(&headers(&[])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://localhost:8080")])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("referer", "http://127.0.0.1:8080/")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("referer", "http://127.0.0.1:80801/")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080")])));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let id = "a".repeat(64);
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&format!("x=1; {SESSION_COOKIE}={id}; y=2")).expect("header"));
        assert_eq!(session_id(&h), Some(id));
        h.insert(COOKIE, HeaderValue::from_static("posgate_session=short"));
        assert_eq!(session_id(&h), None);
    }
}
