//! A small HTTPS server for the simulators: hyper 1 HTTP/1.1 with keep-alive over rustls, until shutdown; link faults below HTTP.
//!
//! Link faults ([`Link`], found by the listener's port with [`link`]) act before any request is read:
//! connections reset at accept, TLS handshakes cut after the ClientHello, and the whole listener down for
//! a while (closed, open connections aborted, then bound again on the same port).
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::faults::Fault;

/// Returned by a handler to close the connection without answering (a simulated reset or lost answer).
#[derive(Debug, thiserror::Error)]
#[error("connection dropped on purpose")]
pub struct DropConnection;

/// The faults of one simulator's listener, below HTTP.
#[derive(Debug, Default)]
pub struct Link {
    reset_next: AtomicU32,
    handshake_fail_next: AtomicU32,
    down: Mutex<Option<Duration>>,
    wake: tokio::sync::Notify,
    accepted: AtomicU32,
    fired: AtomicU32,
}

impl Link {
    /// Close the next `n` connections as soon as they are accepted, before a byte is read.
    pub fn reset_next_connections(&self, n: u32) {
        self.reset_next.store(n, Ordering::SeqCst);
    }
    /// Cut the next `n` TLS handshakes after reading the ClientHello (plain HTTP listeners: reset them).
    pub fn fail_next_handshakes(&self, n: u32) {
        self.handshake_fail_next.store(n, Ordering::SeqCst);
    }
    /// Take the listener down now (stop accepting, abort open connections) and bind it again after `d`.
    pub fn go_down(&self, d: Duration) {
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        self.wake.notify_one();
    }
    /// Stop every link fault still pending (a down listener comes back when its time is up).
    pub fn clear(&self) {
        self.reset_next.store(0, Ordering::SeqCst);
        self.handshake_fail_next.store(0, Ordering::SeqCst);
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Connections reset at accept or handshakes cut so far (a test's proof that its fault happened).
    pub fn fired(&self) -> u32 {
        self.fired.load(Ordering::SeqCst)
    }
    fn take(&self, counter: &AtomicU32) -> bool {
        let hit = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if hit {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

/// The link faults of the simulator listening on `port` (loopback; created on first use).
pub fn link(port: u16) -> Arc<Link> {
    static LINKS: OnceLock<Mutex<HashMap<u16, Arc<Link>>>> = OnceLock::new();
    let mut links = LINKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    links.entry(port).or_default().clone()
}

/// Accept connections until `shutdown`, apply the listener's link faults, and hand each healthy
/// connection to `conn` (its second argument: cut this TLS handshake).
async fn accept_loop<C, F>(mut listener: TcpListener, shutdown: impl Future<Output = ()>, conn: C)
where
    C: Fn(TcpStream, bool) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let Ok(addr) = listener.local_addr() else { return };
    let link = link(addr.port());
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = link.wake.notified() => {
                let Some(d) = link.down.lock().unwrap_or_else(|p| p.into_inner()).take() else { continue };
                drop(listener);
                conns.shutdown().await;
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(d) => {}
                }
                listener = loop {
                    match TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::warn!(error = %e, "simulator rebind failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
            }
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "simulator accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                link.accepted.fetch_add(1, Ordering::SeqCst);
                if link.take(&link.reset_next) {
                    drop(tcp);
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                conns.spawn(conn(tcp, link.take(&link.handshake_fail_next)));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Serve `handler` on every TLS connection accepted from `listener` until `shutdown` completes; then stop
/// accepting and abort the open connections.
pub async fn serve_tls<H, Fut>(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, shutdown: impl Future<Output = ()>, handler: Arc<H>)
where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, DropConnection>> + Send + 'static,
{
    accept_loop(listener, shutdown, move |mut tcp, cut| {
        let (tls, handler) = (tls.clone(), handler.clone());
        async move {
            if cut {
                // Read (part of) the ClientHello, then close: the client sees the handshake reset.
                let mut hello = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut hello)).await;
                return;
            }
            let Ok(stream) = tls.accept(tcp).await else { return };
            let svc = hyper::service::service_fn(move |req| handler(req));
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
        }
    })
    .await
}

/// Serve `handler` on plain HTTP connections (profiles with `allow_plain_http`) until `shutdown`.
pub async fn serve_plain<H, Fut>(listener: TcpListener, shutdown: impl Future<Output = ()>, handler: Arc<H>)
where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, DropConnection>> + Send + 'static,
{
    accept_loop(listener, shutdown, move |tcp, cut| {
        let handler = handler.clone();
        async move {
            if cut {
                return;
            }
            let svc = hyper::service::service_fn(move |req| handler(req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        }
    })
    .await
}

/// The real answer of an applied request as a fault bends it: cut in half ([`Fault::Truncated`]) or held
/// back ([`Fault::LateAnswer`]); any other fault leaves it alone.
pub async fn bend(fault: Option<Fault>, answer: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    match fault {
        Some(Fault::Truncated) => {
            let (parts, body) = answer.into_parts();
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let cut = bytes.slice(..bytes.len() / 2);
            let mut r = Response::from_parts(parts, Full::new(cut.clone()));
            r.headers_mut().insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(cut.len()));
            r
        }
        Some(Fault::LateAnswer(d)) => {
            tokio::time::sleep(d).await;
            answer
        }
        _ => answer,
    }
}

/// A simulator answer with a status and a content type.
pub fn reply(status: u16, content_type: &str, body: String) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// One plain GET on a fresh connection: the whole answer, or `None` when the connection failed or
    /// was cut before an answer.
    async fn get(addr: std::net::SocketAddr) -> Option<String> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"POST / HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.ok()?.ok()?;
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn link_faults_reset_at_accept_then_take_the_listener_down_and_back_on_the_same_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let handler = Arc::new(|_req: Request<Incoming>| async { Ok::<_, DropConnection>(reply(200, "application/json", "{\"ok\":true}".into())) });
        tokio::spawn(serve_plain(l, std::future::pending::<()>(), handler));
        assert!(get(addr).await.is_some_and(|a| a.starts_with("HTTP/1.1 200")));
        let link = link(addr.port());
        link.reset_next_connections(1);
        assert_eq!(get(addr).await, None);
        assert!(get(addr).await.is_some());
        link.fail_next_handshakes(1);
        assert_eq!(get(addr).await, None, "a plain listener cuts the connection instead");
        assert_eq!(link.fired(), 2);
        link.go_down(Duration::from_millis(400));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "refused while down");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(get(addr).await.is_some_and(|a| a.starts_with("HTTP/1.1 200")), "back on the same port");
    }

    #[tokio::test]
    async fn a_truncated_answer_is_half_the_real_one_and_a_late_one_comes_after_its_delay() {
        let real = "{\"code\":\"00\",\"balance\":123456}";
        let cut = bend(Some(Fault::Truncated), reply(200, "application/json", real.into())).await;
        let body = cut.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], &real.as_bytes()[..real.len() / 2]);
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
        let t = tokio::time::Instant::now();
        let late = bend(Some(Fault::LateAnswer(Duration::from_millis(200))), reply(200, "application/json", real.into())).await;
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(&late.into_body().collect().await.unwrap().to_bytes()[..], real.as_bytes());
    }
}
