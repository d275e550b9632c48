//! Outbound requests against loopback servers: GET and headers, client certificates, plain HTTP both ways.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{HttpOptions, HttpsClient, NetError, Request};
use super::tests::{new_ca, Ca};

/// A leaf certificate and key signed by `ca`: for `names` (a server) or as a client (`names` empty).
fn leaf(ca: &Ca, names: &[&str], cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    (cert, key)
}

/// A TLS acceptor for 127.0.0.1 that demands a client certificate issued by `ca`.
fn mtls_acceptor(ca: &Ca) -> tokio_rustls::TlsAcceptor {
    let (cert, key) = leaf(ca, &["127.0.0.1"], "server");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert.der().to_vec())).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("verifier");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], PrivateKeyDer::try_from(key.serialize_der()).expect("key der"))
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Read one request head (and a body of its Content-Length); answer 200 with `answer`. The head is kept.
async fn answer_one<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S, answer: &str, seen: &Mutex<Vec<String>>) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok())).unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    seen.lock().unwrap().push(format!("{head}{}", String::from_utf8_lossy(&buf[head_end..head_end + len])));
    let out = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
    s.write_all(out.as_bytes()).await.is_ok() && s.flush().await.is_ok()
}

/// A loopback server, TLS with `acceptor` or plain TCP without; it answers every request on a connection
/// (keep-alive) and records each request's head and body. `stall`: read the request, never answer.
async fn server(acceptor: Option<tokio_rustls::TlsAcceptor>, stall: bool) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let serve = |mut s: Box<dyn Stream>, log: Arc<Mutex<Vec<String>>>| async move {
                    if stall {
                        let mut b = [0u8; 1024];
                        let _ = s.read(&mut b).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    while answer_one(&mut s, "{\"ok\":true}", &log).await {}
                };
                match acceptor {
                    Some(acc) => {
                        if let Ok(s) = acc.accept(tcp).await {
                            let who = s.get_ref().1.peer_certificates().map(|c| c.len()).unwrap_or(0);
                            log.lock().unwrap().push(format!("client certificates: {who}"));
                            serve(Box::new(s), log).await;
                        }
                    }
                    None => serve(Box::new(tcp), log).await,
                }
            });
        }
    });
    (addr, seen)
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

fn opts(ca: &Ca) -> HttpOptions {
    HttpOptions {
        ca_file: Some(ca.file.clone()),
        connect_timeout: Duration::from_millis(2000),
        tls_timeout: Duration::from_millis(2000),
        timeout: Duration::from_millis(1000),
        ..HttpOptions::default()
    }
}

#[tokio::test]
async fn a_get_carries_its_headers_and_no_body_or_content_type() {
    let ca = new_ca();
    let (cert, key) = leaf(&ca, &["127.0.0.1"], "server");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], PrivateKeyDer::try_from(key.serialize_der()).expect("key der"))
        .expect("server config");
    let (addr, seen) = server(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))), false).await;
    let c = HttpsClient::new(&opts(&ca)).expect("client");
    let r = c.send(&Request::get(format!("https://{addr}/api/order?id=7")).header("X-Sign", "ABC123"), 0).await.expect("answer");
    assert_eq!((r.status, &r.body[..]), (200, &b"{\"ok\":true}"[..]));
    let head = seen.lock().unwrap().iter().find(|h| h.starts_with("GET")).cloned().expect("a GET arrived");
    assert!(head.starts_with("GET /api/order?id=7 HTTP/1.1\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-sign: abc123"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-type"), "{head}");
    // The client's own headers cannot be overridden.
    let e = c.send(&Request::post(format!("https://{addr}/x"), "application/json", "{}").header("Host", "elsewhere"), 0).await.expect_err("host header");
    assert!(matches!(e, NetError::Setup(ref d) if d.contains("set by the client")), "{e}");
}

#[tokio::test]
async fn a_server_that_demands_a_client_certificate_gets_the_profiles() {
    let ca = new_ca();
    let (addr, seen) = server(Some(mtls_acceptor(&ca)), false).await;
    let url = format!("https://{addr}/api/pay");

    // Without a certificate the server refuses the connection: no answer.
    let bare = HttpsClient::new(&opts(&ca)).expect("client");
    assert!(bare.post(&url, "application/json", bytes::Bytes::from_static(b"{}"), 0).await.is_err(), "answered without a client certificate");

    let (cert, key) = leaf(&ca, &[], "posgate terminal");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("client.pem"), dir.path().join("client-key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let with = HttpsClient::new(&HttpOptions { client_cert: Some((cert_file, key_file.clone())), ..opts(&ca) }).expect("client");
    let r = with.post(&url, "application/json", bytes::Bytes::from_static(b"{\"a\":1}"), 0).await.expect("answered");
    assert_eq!(r.status, 200);
    assert!(seen.lock().unwrap().iter().any(|l| l == "client certificates: 1"), "{:?}", seen.lock().unwrap());

    // A bad key file is a setup error naming the file, never its content.
    std::fs::write(&key_file, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n").expect("write");
    let e = HttpsClient::new(&HttpOptions { client_cert: Some((dir.path().join("client.pem"), key_file.clone())), ..opts(&ca) }).expect_err("bad key");
    assert!(matches!(e, NetError::Setup(ref d) if d.contains("client-key.pem") && !d.contains("not a key")), "{e}");
}

#[tokio::test]
async fn plain_http_is_spoken_only_when_the_profile_allows_it() {
    let ca = new_ca();
    let (addr, seen) = server(None, false).await;
    let url = format!("http://{addr}/svc/pay");
    let refused = HttpsClient::new(&opts(&ca)).expect("client");
    let e = refused.post(&url, "application/json", bytes::Bytes::from_static(b"{}"), 0).await.expect_err("plain refused");
    assert!(matches!(e, NetError::Setup(ref d) if d.contains("allow_plain_http")), "{e}");
    assert!(seen.lock().unwrap().is_empty(), "a refused plain request reached the server");

    let c = HttpsClient::new(&HttpOptions { allow_plain_http: true, ..opts(&ca) }).expect("client");
    for n in 0..3 {
        let r = c.post(&url, "application/json", bytes::Bytes::from(format!("{{\"n\":{n}}}")), 0).await.expect("plain answer");
        assert_eq!(r.status, 200);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[2].starts_with("POST /svc/pay HTTP/1.1\r\n") && seen[2].ends_with("{\"n\":2}"), "{}", seen[2]);
}

#[tokio::test]
async fn plain_http_keeps_the_line_between_not_sent_and_unknown() {
    let ca = new_ca();
    let c = HttpsClient::new(&HttpOptions { allow_plain_http: true, ..opts(&ca) }).expect("client");
    // Nobody listens: nothing was sent.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gone = l.local_addr().expect("addr");
    drop(l);
    let e = c.post(&format!("http://{gone}/x"), "application/json", bytes::Bytes::from_static(b"{}"), 0).await.expect_err("refused");
    assert!(matches!(e, NetError::NotSent(_)), "{e}");
    // The request was written and no answer came within the timeout: the outcome is unknown.
    let (addr, _seen) = server(None, true).await;
    let started = tokio::time::Instant::now();
    let e = c.post(&format!("http://{addr}/x"), "application/json", bytes::Bytes::from_static(b"{}"), 0).await.expect_err("stalls");
    assert!(matches!(e, NetError::Unknown(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let _ = TcpStream::connect(addr).await;
}
