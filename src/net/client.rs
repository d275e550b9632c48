//! The HTTPS client every backend uses: hyper over rustls, a per-profile CA bundle, timeouts, reuse.
//!
//! It knows what reached the host. TCP connect, the TLS handshake and the request each have their
//! own timeout; a failure before the first byte of the request was written into the TLS stream is
//! [`NetError::NotSent`] (nothing owed), after that it is [`NetError::Unknown`] (recovery owed).
//! Connections are pooled by hand (HTTP/1.1, one request at a time per connection) so the
//! "written" flag is exact per request: a pooled connection that turns out to be closed before
//! anything was written is not sent, and the request is tried once more on a fresh connection.
//! Answers are read up to `max_answer_bytes`, never collected whole first.
//!
//! Requests are [`Request`]s: GET or POST, extra headers, a body and its content type. A profile may
//! present a client certificate (mutual TLS). A profile that names an `http://` base URL (permitted only
//! by its `allow_plain_http`) is spoken to in plain HTTP/1.1 over TCP, with the same pool, limits,
//! written-flag and timeouts; without that permission an `http://` URL is refused.
//!
//! There is deliberately no option to skip certificate checks.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tracked::Tracked;
use super::words;

#[derive(Debug, Error, Clone)]
pub enum NetError {
    /// Nothing reached the backend: safe to treat as not sent.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the backend: its outcome is unknown.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

impl NetError {
    /// What went wrong, in plain words, without the "not sent" / "outcome unknown" prefix.
    pub fn detail(&self) -> &str {
        match self {
            NetError::NotSent(d) | NetError::Unknown(d) | NetError::Setup(d) => d,
        }
    }
}

/// The default bound on an answer's size (`max_answer_bytes`).
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Idle pooled connections older than this are closed rather than reused.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// At most this many idle connections are kept per client. As many as the lanes that send at once:
/// with 8, a 32-lane run closed 24 connections after every round and paid a TLS handshake for each
/// (durable consumes/s fell by about 12 %).
const POOL_MAX: usize = 64;
/// The content type of an answer is kept to this many characters.
const CONTENT_TYPE_MAX: usize = 200;

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// PEM bundle of the CAs to trust; the system bundle when absent.
    pub ca_file: Option<std::path::PathBuf>,
    /// TCP connect (name lookup included).
    pub connect_timeout: Duration,
    /// The TLS handshake, after TCP connected.
    pub tls_timeout: Duration,
    /// From writing the request to the end of the answer.
    pub timeout: Duration,
    /// An answer longer than this is not read further (outcome unknown).
    pub max_answer_bytes: usize,
    /// A client certificate chain and its key (PEM paths), presented when the server asks.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Whether `http://` URLs may be used (plain HTTP, no TLS): the profile's `allow_plain_http`.
    pub allow_plain_http: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            ca_file: None,
            connect_timeout: Duration::from_secs(3),
            tls_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            client_cert: None,
            allow_plain_http: false,
        }
    }
}

impl HttpOptions {
    /// The options a terminal profile sets.
    pub fn for_profile(p: &crate::config::Profile) -> Self {
        HttpOptions {
            ca_file: p.ca_file.clone(),
            connect_timeout: p.connect_timeout,
            tls_timeout: p.tls_timeout,
            timeout: p.timeout,
            max_answer_bytes: p.max_answer_bytes,
            client_cert: p.client_cert.clone(),
            allow_plain_http: p.plain_http,
        }
    }
}

/// The HTTP method of a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// Extra headers a request may carry; more is a mistake in a backend.
const MAX_HEADERS: usize = 32;

/// One outbound request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    /// Extra headers (a signature, an app id); `Host`, `Content-Type`, `Content-Length` are the client's.
    pub headers: Vec<(String, String)>,
    /// The body's content type; none for a body-less GET.
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Request {
    /// A GET without a body.
    pub fn get(url: impl Into<String>) -> Self {
        Request { method: Method::Get, url: url.into(), headers: Vec::new(), content_type: None, body: Bytes::new() }
    }

    /// A POST of `body` as `content_type`.
    pub fn post(url: impl Into<String>, content_type: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Request { method: Method::Post, url: url.into(), headers: Vec::new(), content_type: Some(content_type.into()), body: body.into() }
    }

    /// The request with one more header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// A pooled HTTPS client; cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct HttpsClient {
    inner: Arc<Inner>,
}

struct Inner {
    tls: tokio_rustls::TlsConnector,
    opts: HttpOptions,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").field("timeout", &self.inner.opts.timeout).finish()
    }
}

/// One HTTP/1.1 connection: its sender, its "request bytes written" flag, its driver task.
struct Conn {
    peer: String,
    sender: http1::SendRequest<Full<Bytes>>,
    written: Arc<AtomicBool>,
    driver: tokio::task::JoinHandle<()>,
    idle_since: tokio::time::Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping a connection closes its socket, even with a request in flight.
        self.driver.abort();
    }
}

/// Where a URL points: what to connect to, what to verify, what to ask for.
struct Target {
    /// False for a permitted `http://` URL: plain TCP, no TLS.
    tls: bool,
    /// `host:port` for messages.
    peer: String,
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str, allow_plain_http: bool) -> Result<Target, NetError> {
        let u = url::Url::parse(url).map_err(|e| NetError::Setup(format!("{}: not a URL: {e}", words::bounded(url, 200))))?;
        let tls = match u.scheme() {
            "https" => true,
            "http" if allow_plain_http => false,
            "http" => return Err(NetError::Setup(format!("{}: plain http:// is not allowed for this profile (allow_plain_http)", words::bounded(url, 200)))),
            _ => return Err(NetError::Setup(format!("{}: only https:// URLs are allowed", words::bounded(url, 200)))),
        };
        let host_text = u.host_str().ok_or_else(|| NetError::Setup(format!("{}: no host", words::bounded(url, 200))))?;
        let host = host_text.trim_matches(['[', ']']).to_string();
        let port = u.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let authority = match u.port() {
            Some(p) => format!("{host_text}:{p}"),
            None => host_text.to_string(),
        };
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        Ok(Target { tls, peer: format!("{host_text}:{port}"), host, port, authority, path })
    }

    /// The pool's key: a plain and a TLS connection to the same port are never mixed up.
    fn pool_key(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.peer)
    }
}

fn load_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, NetError> {
    let path = ca_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| NetError::Setup(format!("CA bundle {}: {e}", path.display())))?;
    for c in certs {
        let c = c.map_err(|e| NetError::Setup(format!("CA bundle {}: {e}", path.display())))?;
        roots.add(c).map_err(|e| NetError::Setup(format!("CA bundle {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(NetError::Setup(format!("CA bundle {}: no certificates", path.display())));
    }
    Ok(roots)
}

/// A client certificate chain and its private key from PEM files.
fn load_client_cert(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NetError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| NetError::Setup(format!("client certificate {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(NetError::Setup(format!("client certificate {}: no certificates", cert.display())));
    }
    // The key's error never shows the key: only the file and what is wrong.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| NetError::Setup(format!("client key {}: {e}", key.display())))?;
    Ok((chain, key))
}

fn tls_connector(ca_file: Option<&Path>, client_cert: Option<&(std::path::PathBuf, std::path::PathBuf)>) -> Result<tokio_rustls::TlsConnector, NetError> {
    let roots = load_roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key_der) = load_client_cert(cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| NetError::Setup(format!("client certificate {} with key {}: {e}", cert.display(), key.display())))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// TCP connect within `connect_timeout`. A failure is `NotSent`: no request byte exists yet.
async fn connect_tcp(t: &Target, connect_timeout: Duration) -> Result<TcpStream, NetError> {
    let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect((t.host.as_str(), t.port))).await {
        Err(_) => return Err(NetError::NotSent(format!("no connection to {} within {} ms", t.peer, connect_timeout.as_millis()))),
        Ok(Err(e)) => return Err(NetError::NotSent(words::connect_failed(&t.peer, &e))),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TCP connect within `connect_timeout`, then the TLS handshake within `tls_timeout`. Every failure
/// here is `NotSent`: no request byte exists yet.
async fn connect_tls(tls: &tokio_rustls::TlsConnector, t: &Target, connect_timeout: Duration, tls_timeout: Duration) -> Result<TlsStream<TcpStream>, NetError> {
    let name = ServerName::try_from(t.host.clone()).map_err(|_| NetError::Setup(format!("{} is not a valid server name", words::bounded(&t.host, 200))))?;
    let tcp = connect_tcp(t, connect_timeout).await?;
    match tokio::time::timeout(tls_timeout, tls.connect(name, tcp)).await {
        Err(_) => Err(NetError::NotSent(format!("TLS handshake with {} failed: no answer within {} ms", t.peer, tls_timeout.as_millis()))),
        Ok(Err(e)) => Err(NetError::NotSent(words::handshake_failed(&t.peer, &t.host, &e))),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Connect and complete a TLS handshake with `url`'s host, sending no request: `posgate doctor`'s check
/// that a backend is reachable and its certificate verifies against the profile's CA bundle. Its
/// errors are worded exactly as a failed request's are.
pub async fn tls_probe(
    url: &str,
    ca_file: Option<&Path>,
    client_cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    connect_timeout: Duration,
    tls_timeout: Duration,
) -> Result<String, NetError> {
    let t = Target::parse(url, false)?;
    let tls = tls_connector(ca_file, client_cert)?;
    let s = connect_tls(&tls, &t, connect_timeout, tls_timeout).await?;
    let (_, conn) = s.get_ref();
    Ok(match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
        _ => "TLS".into(),
    })
}

/// Connect to a plain-HTTP URL's host, sending nothing: `posgate doctor`'s reachability check of a
/// profile with `allow_plain_http`.
pub async fn tcp_probe(url: &str, connect_timeout: Duration) -> Result<(), NetError> {
    let t = Target::parse(url, true)?;
    connect_tcp(&t, connect_timeout).await.map(drop)
}

/// Read an answer's body up to `limit` bytes; stop reading (and fail) as soon as it is over.
async fn read_bounded(body: hyper::body::Incoming, limit: usize, peer: &str, host: &str) -> Result<Bytes, String> {
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer from {peer} failed: {}", words::exchange(&e, host)))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(format!("the answer from {peer} is larger than the {limit}-byte limit (max_answer_bytes); stopped reading it"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

impl HttpsClient {
    pub fn new(opts: &HttpOptions) -> Result<Self, NetError> {
        let tls = tls_connector(opts.ca_file.as_deref(), opts.client_cert.as_ref())?;
        Ok(HttpsClient { inner: Arc::new(Inner { tls, opts: opts.clone(), idle: Mutex::new(Vec::new()) }) })
    }

    /// POST a body and read the answer. `journal_id` feeds the order log.
    pub async fn post(&self, url: &str, content_type: &str, body: Bytes, journal_id: u64) -> Result<HttpReply, NetError> {
        self.send(&Request::post(url, content_type, body), journal_id).await
    }

    /// Send one request and read the answer. `journal_id` feeds the order log.
    pub async fn send(&self, req: &Request, journal_id: u64) -> Result<HttpReply, NetError> {
        let t = Target::parse(&req.url, self.inner.opts.allow_plain_http)?;
        if req.headers.len() > MAX_HEADERS {
            return Err(NetError::Setup(format!("a request to {} with {} extra headers (at most {MAX_HEADERS})", t.peer, req.headers.len())));
        }
        crate::testhook::order("send", journal_id);
        if let Some(conn) = self.take_idle(&t.pool_key()).await {
            match self.exchange(conn, &t, req).await {
                // The pooled connection was gone before any byte was written: try a fresh one.
                Err(NetError::NotSent(why)) => tracing::debug!(peer = %t.peer, %why, "pooled backend connection unusable; reconnecting"),
                other => return other,
            }
        }
        let conn = self.open(&t).await?;
        self.exchange(conn, &t, req).await
    }

    async fn open(&self, t: &Target) -> Result<Conn, NetError> {
        let o = &self.inner.opts;
        let written = Arc::new(AtomicBool::new(false));
        let builder = http1::Builder::new();
        let setup = |e: hyper::Error| NetError::NotSent(format!("HTTP setup with {} failed: {}", t.peer, words::exchange(&e, &t.host)));
        let (sender, driver) = if t.tls {
            let tls = connect_tls(&self.inner.tls, t, o.connect_timeout, o.tls_timeout).await?;
            let (sender, conn) = builder.handshake(TokioIo::new(Tracked::new(tls, written.clone()))).await.map_err(setup)?;
            (sender, self.drive(conn, &t.host))
        } else {
            let tcp = connect_tcp(t, o.connect_timeout).await?;
            let (sender, conn) = builder.handshake(TokioIo::new(Tracked::new(tcp, written.clone()))).await.map_err(setup)?;
            (sender, self.drive(conn, &t.host))
        };
        Ok(Conn { peer: t.pool_key(), sender, written, driver, idle_since: tokio::time::Instant::now() })
    }

    /// Run one connection's HTTP/1.1 state machine until it ends.
    fn drive<F>(&self, conn: F, host: &str) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        let host = host.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %words::exchange(&e, &host), "backend connection ended");
            }
        })
    }

    /// A pooled connection to `peer` that still accepts a request, if there is one.
    async fn take_idle(&self, peer: &str) -> Option<Conn> {
        loop {
            let conn = {
                let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
                let i = idle.iter().rposition(|c| c.peer == peer)?;
                idle.swap_remove(i)
            };
            if conn.idle_since.elapsed() > POOL_IDLE || conn.sender.is_closed() {
                continue;
            }
            let mut conn = conn;
            match tokio::time::timeout(Duration::from_millis(100), conn.sender.ready()).await {
                Ok(Ok(())) => return Some(conn),
                _ => continue,
            }
        }
    }

    fn put_idle(&self, mut conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        conn.idle_since = tokio::time::Instant::now();
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| c.idle_since.elapsed() <= POOL_IDLE && !c.sender.is_closed());
        if idle.len() < POOL_MAX {
            idle.push(conn);
        }
    }

    /// One request on one connection. Not written yet when it fails: `NotSent`; else `Unknown`.
    async fn exchange(&self, mut conn: Conn, t: &Target, r: &Request) -> Result<HttpReply, NetError> {
        let o = &self.inner.opts;
        let method = match r.method {
            Method::Get => hyper::Method::GET,
            Method::Post => hyper::Method::POST,
        };
        let mut b = hyper::Request::builder().method(method).uri(t.path.as_str()).header(hyper::header::HOST, t.authority.as_str());
        if let Some(ct) = &r.content_type {
            b = b.header(hyper::header::CONTENT_TYPE, ct.as_str());
        }
        let mut accept = true;
        for (k, v) in &r.headers {
            let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| NetError::Setup(format!("a request to {}: {} is not a header name", t.peer, words::bounded(k, 64))))?;
            if [hyper::header::HOST, hyper::header::CONTENT_TYPE, hyper::header::CONTENT_LENGTH, hyper::header::TRANSFER_ENCODING].contains(&name) {
                return Err(NetError::Setup(format!("a request to {}: header {name} is set by the client", t.peer)));
            }
            accept &= name != hyper::header::ACCEPT;
            // The value is never shown: it may be a signature or a token.
            let value = hyper::header::HeaderValue::from_str(v)
                .map_err(|_| NetError::Setup(format!("a request to {}: header {name} has a value HTTP cannot carry", t.peer)))?;
            b = b.header(name, value);
        }
        if accept {
            b = b.header(hyper::header::ACCEPT, "application/json");
        }
        let req = b.body(Full::new(r.body.clone())).map_err(|e| NetError::Setup(format!("cannot build a request for {}: {e}", t.peer)))?;
        conn.written.store(false, Ordering::SeqCst);
        let written = conn.written.clone();
        let limit = o.max_answer_bytes;
        let fut = async {
            let resp = conn.sender.send_request(req).await.map_err(|e| words::exchange(&e, &t.host))?;
            let status = resp.status().as_u16();
            let headers = resp.headers();
            let content_type = headers.get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|s| words::bounded(s, CONTENT_TYPE_MAX));
            let announced = headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
            if let Some(n) = announced.filter(|&n| n > limit as u64) {
                return Err(format!("the answer from {} announces {n} bytes, more than the {limit}-byte limit (max_answer_bytes); not read", t.peer));
            }
            let body = read_bounded(resp.into_body(), limit, &t.peer, &t.host).await?;
            Ok(HttpReply { status, content_type, body })
        };
        let r = tokio::time::timeout(o.timeout, fut).await;
        let sent = written.load(Ordering::SeqCst);
        match r {
            Ok(Ok(reply)) => {
                self.put_idle(conn);
                Ok(reply)
            }
            Ok(Err(why)) if sent => {
                Err(NetError::Unknown(if why.contains(&t.peer) { why } else { format!("exchange with {} failed after the request was sent: {why}", t.peer) }))
            }
            Ok(Err(why)) => Err(NetError::NotSent(format!("exchange with {} failed before the request was sent: {why}", t.peer))),
            Err(_) if sent => Err(NetError::Unknown(format!("no answer from {} within {} ms after the request was sent", t.peer, o.timeout.as_millis()))),
            Err(_) => Err(NetError::NotSent(format!("the request to {} could not be written within {} ms", t.peer, o.timeout.as_millis()))),
        }
    }
}
