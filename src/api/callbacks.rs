//! The vendors' callback listener: a second HTTP/1.1 server (TCP or TLS), apart from the POS API, with its own limits.
//!
//! It serves `POST /callbacks/<profile>/<path>` for the paths each profile's backend declares. Limits,
//! in the order they bite: a cap on open connections (over it, a new connection is closed at once);
//! peers in no profile's allowlist are closed at accept; the TLS handshake and the request headers
//! must arrive within `header_timeout`; the profile's own allowlist is checked before the body is
//! read; the body must be at most `max_body_bytes` (a larger `Content-Length` is refused unread)
//! and arrive within `body_timeout`. A refusal with a known profile is journaled by the engine and
//! answered in the backend document's error form; the body is never logged.
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::backend::callback::{CallbackAnswer, CallbackRefusal, CallbackRequest};
use crate::config::CallbackListener;
use crate::engine::{Engine, Route};

#[derive(Debug, Error)]
pub enum CallbackListenerError {
    #[error("callback listener {addr}: cannot bind: {why}")]
    Bind { addr: SocketAddr, why: String },
    #[error("callback listener TLS: {0}")]
    Tls(String),
}

/// The listener's limits (from `[callbacks]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn of(c: &CallbackListener) -> Limits {
        Limits { max_body_bytes: c.max_body_bytes, header_timeout: c.header_timeout, body_timeout: c.body_timeout, max_connections: c.max_connections }
    }
}

/// Bind the configured address and load the TLS files, so both fail before the daemon says it is ready.
pub async fn bind(c: &CallbackListener) -> Result<(TcpListener, Option<tokio_rustls::TlsAcceptor>), CallbackListenerError> {
    let tls = match &c.tls {
        Some((cert, key)) => {
            let pki = crate::net::tls::TestPki { ca_file: cert.clone(), cert_file: cert.clone(), key_file: key.clone() };
            Some(pki.acceptor().map_err(|e| CallbackListenerError::Tls(e.to_string()))?)
        }
        None => None,
    };
    let l = TcpListener::bind(c.listen).await.map_err(|e| CallbackListenerError::Bind { addr: c.listen, why: e.to_string() })?;
    Ok((l, tls))
}

/// Serve callbacks until `shutdown`; in-flight callbacks get a short grace to finish journaling.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, tls = tls.is_some(), "callback listener ready");
        if !engine.serves_callbacks() {
            tracing::warn!(addr = %a, "the callback listener is on, but no profile serves callbacks");
        }
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(source = %peer.ip(), max = limits.max_connections, "callback connection refused: too many open");
                        continue;
                    };
                    if !engine.callback_source_known(peer.ip()) {
                        tracing::warn!(source = %peer.ip(), "callback connection refused: the source is in no profile's allowlist");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let (engine, tls, stop) = (engine.clone(), tls.clone(), stop_rx.clone());
                    conns.spawn(async move {
                        let _slot = slot;
                        match tls {
                            None => serve_conn(engine, stream, peer.ip(), limits, stop).await,
                            Some(acc) => match tokio::time::timeout(limits.header_timeout, acc.accept(stream)).await {
                                Ok(Ok(s)) => serve_conn(engine, s, peer.ip(), limits, stop).await,
                                Ok(Err(e)) => tracing::info!(source = %peer.ip(), "callback TLS handshake failed: {e}"),
                                Err(_) => tracing::info!(source = %peer.ip(), "callback TLS handshake timed out"),
                            },
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a callback connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), async { while conns.join_next().await.is_some() {} }).await.is_err() {
        conns.abort_all();
    }
    tracing::info!("callback listener stopped");
}

async fn serve_conn<I>(engine: Arc<Engine>, io: I, peer: IpAddr, limits: Limits, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let engine = engine.clone();
        async move {
            // Its own task: a vendor hanging up mid-callback never cuts the journaling short.
            let r = tokio::spawn(handle(engine, req, peer, limits)).await;
            Ok::<_, Infallible>(r.unwrap_or_else(|_| plain(500, "internal error")))
        }
    });
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(false).max_buf_size(64 * 1024);
    let conn = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::info!(source = %peer, "callback connection ended: {}", if e.is_timeout() { "headers not received in time".to_string() } else { e.to_string() });
        },
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

fn plain(status: u16, text: &str) -> Response<Full<Bytes>> {
    answer(CallbackAnswer { status, content_type: "text/plain; charset=utf-8", body: text.as_bytes().to_vec() })
}

fn answer(a: CallbackAnswer) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(a.body)));
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(a.content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

async fn handle(engine: Arc<Engine>, req: Request<Incoming>, peer: IpAddr, limits: Limits) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some((profile, sub)) = path.strip_prefix("/callbacks/").and_then(|r| r.split_once('/')) else {
        return plain(404, "not found");
    };
    let (profile, sub) = (profile.to_string(), sub.to_string());
    let route = engine.callback_route(&profile, &sub);
    let spec = match route {
        Route::NoProfile => return plain(404, "not found"),
        Route::NoPath => None,
        Route::Serve(s) => Some(s),
    };
    // The profile's own allowlist first: a peer allowed for another profile learns nothing about this one.
    if !engine.callback_source_allowed(&profile, peer) {
        return refused(&engine, &profile, spec.as_ref(), &sub, peer, 0, CallbackRefusal::Source(peer.to_string())).await;
    }
    let Some(spec) = spec else {
        return refused(&engine, &profile, None, &sub, peer, 0, CallbackRefusal::NoSuchPath(sub.clone())).await;
    };
    if req.method() != Method::POST {
        return refused(&engine, &profile, Some(&spec), &sub, peer, 0, CallbackRefusal::Malformed(format!("method {} (POST expected)", req.method()))).await;
    }
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        let why = CallbackRefusal::Malformed(format!("body over {} bytes", limits.max_body_bytes));
        return refused(&engine, &profile, Some(&spec), &sub, peer, declared.unwrap_or(0) as usize, why).await;
    }
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = match tokio::time::timeout(limits.body_timeout, Limited::new(req.into_body(), limits.max_body_bytes).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let why = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                format!("body over {} bytes", limits.max_body_bytes)
            } else {
                "body not received whole".to_string()
            };
            return refused(&engine, &profile, Some(&spec), &sub, peer, 0, CallbackRefusal::Malformed(why)).await;
        }
        Err(_) => {
            let why = CallbackRefusal::Malformed(format!("body not received within {} ms", limits.body_timeout.as_millis()));
            return refused(&engine, &profile, Some(&spec), &sub, peer, 0, why).await;
        }
    };
    let creq = CallbackRequest { path: &sub, content_type: content_type.as_deref(), body: &body };
    match engine.callback(&profile, &spec, peer, &creq).await {
        Ok(a) => answer(a),
        Err(e) => {
            // Not journaled (the journal failed, or shutting down): no answer the vendor could take as accepted.
            tracing::error!(profile = %profile, "callback not handled: {e}");
            plain(503, "not handled; try again")
        }
    }
}

async fn refused(
    engine: &Engine,
    profile: &str,
    spec: Option<&crate::backend::callback::CallbackSpec>,
    sub: &str,
    peer: IpAddr,
    bytes: usize,
    why: CallbackRefusal,
) -> Response<Full<Bytes>> {
    match engine.callback_refused(profile, spec, sub, peer, bytes, why).await {
        Ok(a) => answer(a),
        Err(e) => {
            tracing::error!(profile, "refused callback not journaled: {e}");
            plain(503, "not handled")
        }
    }
}
