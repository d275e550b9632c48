//! The HTTPS client against misbehaving loopback TLS servers: what reached the host, words, bounds.
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{HttpOptions, HttpsClient, NetError};

/// A CA of the test's own, written to a file the client trusts.
pub(super) struct Ca {
    pub(super) cert: rcgen::Certificate,
    pub(super) key: rcgen::KeyPair,
    pub(super) file: PathBuf,
    _dir: tempfile::TempDir,
}

pub(super) fn new_ca() -> Ca {
    named_ca("net test CA")
}

fn named_ca(cn: &str) -> Ca {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = p.self_signed(&key).expect("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ca.pem");
    std::fs::write(&file, cert.pem()).expect("write ca");
    Ca { cert, key, file, _dir: dir }
}

/// A TLS acceptor with a leaf certificate for `names` signed by `ca`, expired when asked.
fn acceptor(ca: &Ca, names: &[&str], expired: bool) -> tokio_rustls::TlsAcceptor {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], PrivateKeyDer::try_from(key.serialize_der()).expect("key der"))
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// What a test server does with each connection.
#[derive(Clone)]
enum Behave {
    /// Accept TCP, never answer the ClientHello.
    StallHello,
    /// Accept TCP and reset it at once.
    ResetAtAccept,
    /// Complete the handshake, then act on the request.
    Tls(tokio_rustls::TlsAcceptor, After),
}

#[derive(Clone)]
enum After {
    /// Read the request, never answer.
    Stall,
    /// Read the request, then reset the connection.
    Reset,
    /// Answer 200 with this JSON body.
    Answer(&'static str),
    /// Answer 200 with a chunked body of this many bytes; count what was written.
    Big(usize, Arc<AtomicUsize>),
    /// Announce this Content-Length, send nothing more.
    Announce(u64),
}

pub(super) async fn read_request<S: AsyncReadExt + Unpin>(s: &mut S) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
    }
}

#[allow(deprecated)] // SO_LINGER 0: a reset on purpose; with zero linger, drop does not block
async fn serve_one(tcp: TcpStream, b: Behave) {
    match b {
        Behave::StallHello => {
            let _hold = tcp;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Behave::ResetAtAccept => {
            let _ = tcp.set_linger(Some(Duration::ZERO));
            drop(tcp);
        }
        Behave::Tls(acc, after) => {
            let Ok(mut s) = acc.accept(tcp).await else { return };
            if !read_request(&mut s).await {
                return;
            }
            match after {
                After::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
                After::Reset => {
                    let (tcp, _) = s.get_ref();
                    let _ = tcp.set_linger(Some(Duration::ZERO));
                    drop(s);
                }
                After::Answer(body) => loop {
                    // One answer per request read, on the same connection (keep-alive).
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(body.as_bytes()).await;
                    let _ = s.flush().await;
                    if !read_request(&mut s).await {
                        return;
                    }
                },
                After::Big(total, count) => {
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").await.is_err() {
                        return;
                    }
                    let chunk = vec![b'7'; 64 * 1024];
                    let mut sent = 0;
                    while sent < total {
                        let frame = [format!("{:x}\r\n", chunk.len()).into_bytes(), chunk.clone(), b"\r\n".to_vec()].concat();
                        if s.write_all(&frame).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                        sent += chunk.len();
                        count.store(sent, Ordering::SeqCst);
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
                After::Announce(n) => {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n");
                    let _ = s.write_all(head.as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    }
}

/// A loopback server (small send buffer, so a big answer cannot hide in kernel buffers) acting as told.
async fn server(b: Behave) -> (String, tokio::task::JoinHandle<()>) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_send_buffer_size(64 * 1024).expect("sndbuf");
    sock.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let l: TcpListener = sock.listen(16).expect("listen");
    let addr = l.local_addr().expect("addr");
    let h = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = l.accept().await {
            conns.spawn(serve_one(tcp, b.clone()));
        }
    });
    (format!("https://{addr}/v1/x"), h)
}

fn client(ca: &Ca) -> HttpsClient {
    HttpsClient::new(&HttpOptions {
        ca_file: Some(ca.file.clone()),
        connect_timeout: Duration::from_millis(2000),
        tls_timeout: Duration::from_millis(300),
        timeout: Duration::from_millis(1000),
        max_answer_bytes: 1024 * 1024,
        ..HttpOptions::default()
    })
    .expect("client")
}

async fn post(c: &HttpsClient, url: &str) -> Result<Bytes, NetError> {
    c.post(url, "application/json", Bytes::from_static(b"{\"a\":1}"), 0).await.map(|r| r.body)
}

/// A port nobody listens on.
async fn refused_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("https://{addr}/v1/x")
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_not_sent_within_the_tls_timeout() {
    let ca = new_ca();
    let (url, _h) = server(Behave::StallHello).await;
    let started = tokio::time::Instant::now();
    let e = post(&client(&ca), &url).await.expect_err("stalls");
    let took = started.elapsed();
    assert!(matches!(e, NetError::NotSent(_)), "{e}");
    assert!(e.detail().contains("TLS handshake") && e.detail().contains("300 ms"), "{e}");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(900), "took {took:?}");
}

#[tokio::test]
async fn a_request_read_but_never_answered_is_unknown() {
    let ca = new_ca();
    let (url, _h) = server(Behave::Tls(acceptor(&ca, &["127.0.0.1"], false), After::Stall)).await;
    let e = post(&client(&ca), &url).await.expect_err("stalls");
    assert!(matches!(e, NetError::Unknown(_)), "{e}");
    assert!(e.detail().contains("no answer from 127.0.0.1:") && e.detail().contains("within 1000 ms after the request was sent"), "{e}");
}

#[tokio::test]
async fn a_refused_connection_is_not_sent() {
    let ca = new_ca();
    let url = refused_url().await;
    let e = post(&client(&ca), &url).await.expect_err("refused");
    assert!(matches!(e, NetError::NotSent(_)), "{e}");
    assert!(e.detail().starts_with("connection refused by 127.0.0.1:"), "{e}");
}

#[tokio::test]
async fn a_pooled_connection_is_reused_and_a_dead_one_is_not_sent_twice() {
    let ca = new_ca();
    let (url, h) = server(Behave::Tls(acceptor(&ca, &["127.0.0.1"], false), After::Answer("{\"ok\":true}"))).await;
    let c = client(&ca);
    assert_eq!(&post(&c, &url).await.expect("first")[..], b"{\"ok\":true}");
    assert_eq!(&post(&c, &url).await.expect("second, pooled")[..], b"{\"ok\":true}");
    // The server goes away: the pooled connection is closed, a new one is refused; nothing was sent.
    h.abort();
    let _ = h.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = post(&c, &url).await.expect_err("server gone");
    assert!(matches!(e, NetError::NotSent(_)), "{e}");
}

#[tokio::test]
async fn a_ten_megabyte_answer_is_not_read_whole() {
    let ca = new_ca();
    let count = Arc::new(AtomicUsize::new(0));
    let total = 10 * 1024 * 1024;
    let (url, _h) = server(Behave::Tls(acceptor(&ca, &["127.0.0.1"], false), After::Big(total, count.clone()))).await;
    let e = post(&client(&ca), &url).await.expect_err("too big");
    assert!(matches!(e, NetError::Unknown(_)), "{e}");
    assert!(e.detail().contains("larger than the 1048576-byte limit"), "{e}");
    // The client stopped reading and hung up: the server could not get its 10 MB out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = count.load(Ordering::SeqCst);
    assert!(sent < total, "the server wrote all {sent} bytes: the client read them");

    let (url, _h) = server(Behave::Tls(acceptor(&ca, &["127.0.0.1"], false), After::Announce(10 * 1024 * 1024))).await;
    let started = tokio::time::Instant::now();
    let e = post(&client(&ca), &url).await.expect_err("announced too big");
    assert!(matches!(e, NetError::Unknown(_)) && e.detail().contains("announces 10485760 bytes"), "{e}");
    assert!(started.elapsed() < Duration::from_millis(900), "it waited for the body");
}

/// Shapes of Rust `Debug` output that must never reach a POS app, the journal or a log.
const DEBUG_SHAPES: &[&str] = &["Custom {", "Error(", "kind:", "Kind(", "Os {", "code:", "{ ", "Some(", "V4(", "Ipv4Addr"];

#[tokio::test]
async fn network_errors_are_plain_words_for_every_failure_kind() {
    let ca = new_ca();
    let other_ca = named_ca("some other CA");
    let mut got: Vec<(&str, NetError)> = Vec::new();
    let cases: Vec<(&str, Behave)> = vec![
        ("wrong name", Behave::Tls(acceptor(&ca, &["other.example"], false), After::Stall)),
        ("unknown CA", Behave::Tls(acceptor(&other_ca, &["127.0.0.1"], false), After::Stall)),
        ("expired", Behave::Tls(acceptor(&ca, &["127.0.0.1"], true), After::Stall)),
        ("stall in handshake", Behave::StallHello),
        ("reset at accept", Behave::ResetAtAccept),
        ("stall after request", Behave::Tls(acceptor(&ca, &["127.0.0.1"], false), After::Stall)),
        ("reset after request", Behave::Tls(acceptor(&ca, &["127.0.0.1"], false), After::Reset)),
        ("too big", Behave::Tls(acceptor(&ca, &["127.0.0.1"], false), After::Big(4 * 1024 * 1024, Arc::new(AtomicUsize::new(0))))),
    ];
    for (name, b) in cases {
        let (url, _h) = server(b).await;
        got.push((name, post(&client(&ca), &url).await.expect_err(name)));
    }
    got.push(("refused", post(&client(&ca), &refused_url().await).await.expect_err("refused")));
    for (name, e) in &got {
        let text = e.to_string();
        for shape in DEBUG_SHAPES {
            assert!(!text.contains(shape), "{name}: {text:?} contains {shape:?}");
        }
        assert!(text.len() < 300, "{name}: {text}");
    }
    let find = |n: &str| got.iter().find(|(k, _)| *k == n).map(|(_, e)| e.clone()).expect(n);
    let expect = |n: &str, sent: bool, words: &str| {
        let e = find(n);
        assert_eq!(matches!(e, NetError::Unknown(_)), sent, "{n}: {e}");
        assert_eq!(matches!(e, NetError::NotSent(_)), !sent, "{n}: {e}");
        assert!(e.detail().contains(words), "{n}: {e}");
    };
    expect("wrong name", false, "the server's certificate is not valid for 127.0.0.1 (it is for other.example)");
    expect("unknown CA", false, "not signed by a CA in the profile's CA bundle");
    expect("expired", false, "the server's certificate expired on 2021-01-01");
    expect("stall in handshake", false, "TLS handshake with 127.0.0.1:");
    expect("reset at accept", false, "failed: the connection was");
    expect("stall after request", true, "after the request was sent");
    expect("reset after request", true, "the connection was");
    expect("too big", true, "larger than the");
    expect("refused", false, "connection refused by 127.0.0.1:");
}
