//! The network layer through the real daemon: a stalled handshake owes nothing, `posgate run` exit codes, bounded access log.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posgate::sim::faults::Fault;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{scratch, World};

const CARD: &str = "6222020000000000008";

/// No PIN, 200.00 on it.
const SMALL_CARD: &str = "6222020000000000016";

fn consume(fen: i64, reference: &str) -> Value {
    consume_on(CARD, fen, reference)
}

fn consume_on(card: &str, fen: i64, reference: &str) -> Value {
    json!({"cardNo": card, "consumeType": "01", "pointAmount": fen, "cashAmount": 0, "registerTraceNo": reference})
}

/// A TCP relay in front of the simulator that can be switched to "stall": accept and never say a word
/// (so the TLS handshake hangs). Switching to stall cuts every relayed connection.
struct Relay {
    addr: std::net::SocketAddr,
    stall: Arc<AtomicBool>,
    relays: Arc<Mutex<tokio::task::JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = l.local_addr().expect("addr");
        let stall = Arc::new(AtomicBool::new(false));
        let relays = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let (st, rs) = (stall.clone(), relays.clone());
        let accept = tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((mut down, _)) = l.accept().await {
                if st.load(Ordering::SeqCst) {
                    held.push(down); // never read, never written, never closed
                    continue;
                }
                rs.lock().expect("relays").spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Relay { addr, stall, relays, _accept: accept }
    }

    fn set_stall(&self, on: bool) {
        self.stall.store(on, Ordering::SeqCst);
        if on {
            self.relays.lock().expect("relays").abort_all();
        }
    }
}

/// Point the world's profile at `addr` and add top-level keys.
fn repoint(world: &World, addr: std::net::SocketAddr, extra: &str) {
    let path = world.dir.join("terminal-profiles/loyalty.toml");
    let text = std::fs::read_to_string(&path).expect("profile");
    let text = text.replace(&format!("https://{}", world.sim_addr), &format!("https://{addr}"));
    let text = text.replace("timeout_ms = 2000\n", &format!("timeout_ms = 2000\n{extra}\n"));
    std::fs::write(&path, text).expect("profile");
}

const DEBUG_SHAPES: &[&str] = &["Custom {", "Error(", "kind:", "Kind(", "Os {", "Ipv4Addr", "NotSent", "Some("];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_refused_as_not_sent_and_owes_nothing() {
    let world = World::new("tlsstall").await;
    let relay = Relay::start(world.sim_addr).await;
    repoint(&world, relay.addr, "tls_timeout_ms = 300");
    let d = world.start(&[]).await;
    let c = &d.client;
    let (s, v) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");

    relay.set_stall(true);
    tokio::time::sleep(Duration::from_millis(200)).await; // the daemon sees its pooled connection closed
    let started = tokio::time::Instant::now();
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(500, "S1"), Some("s-1")).await.expect("consume");
    let took = started.elapsed();
    // Refused as not sent (the API's "failed" answer), quickly, in words; nothing is owed.
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["status"], "failed", "{v}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("not sent") && err.contains("TLS handshake with 127.0.0.1:") && err.contains("no answer within 300 ms"), "{v}");
    for shape in DEBUG_SHAPES {
        assert!(!err.contains(shape), "{err:?} contains {shape:?}");
    }
    assert!(took < Duration::from_millis(1500), "took {took:?}: the handshake ran under the request timeout");
    let (_, st) = c.get("/v1/status").await.expect("status");
    assert_eq!(st["profiles"][0]["pending_recovery"], 0, "{st}");
    assert_eq!(st["profiles"][0]["needs_attention"], 0, "{st}");
    let (_, list) = c.get("/v1/reversals").await.expect("reversals");
    assert_eq!(list["records"].as_array().map(Vec::len), Some(0), "{list}");
    assert!(world.sim.state_snapshot().transactions.is_empty(), "the simulator saw a transaction");

    // Pointed back at the simulator, the next sale goes through: the terminal was never blocked.
    relay.set_stall(false);
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(500, "S2"), Some("s-2")).await.expect("consume");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved", "{v}");
    d.stop().await;
}

/// `posgate <args> --socket SOCK`: (exit code, stdout JSON or Null, stderr).
async fn posgate(socket: &std::path::Path, args: &[&str]) -> (i32, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_posgate")).args(args).arg("--socket").arg(socket).output().await.expect("run posgate");
    let stdout = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posgate_run_exit_codes_tell_approved_declined_unknown_and_not_done_apart() {
    let world = World::new("exitcodes").await;
    let d = world.start(&[]).await;
    let sock = world.socket.as_path();
    let body = |fen: i64, r: &str| consume(fen, r).to_string();
    let (code, v, e) = posgate(sock, &["checkin", "loyalty"]).await;
    assert_eq!(code, 0, "{v} {e}");
    let (code, v, e) = posgate(sock, &["run", "loyalty", "consume", "--body", &body(100, "X1"), "--idempotency-key", "x-1"]).await;
    assert_eq!((code, v["status"].as_str()), (0, Some("approved")), "{v} {e}");
    // Too little on the card: a decline.
    let (code, v, e) =
        posgate(sock, &["run", "loyalty", "consume", "--body", &consume_on(SMALL_CARD, 30_000, "X2").to_string(), "--idempotency-key", "x-2"]).await;
    assert_eq!((code, v["status"].as_str()), (3, Some("declined")), "{v} {e}");
    // Bad requests: nothing done.
    let (code, _, e) = posgate(sock, &["run", "loyalty", "consume", "--body", "{"]).await;
    assert_eq!(code, 2, "{e}");
    let (code, v, e) = posgate(sock, &["run", "nosuch", "consume", "--body", "{}"]).await;
    assert_eq!(code, 2, "{v} {e}");
    // Applied, answer lost, every reversal fails: the outcome is unknown (recovery owed) -> 4, not 0.
    world.sim.push_fault(Fault::DropAfterCommit);
    for _ in 0..40 {
        world.sim.push_fault(Fault::Http500);
    }
    let (code, v, e) = posgate(sock, &["run", "loyalty", "consume", "--body", &body(200, "X3"), "--idempotency-key", "x-3"]).await;
    assert_eq!((code, v["status"].as_str()), (4, Some("pending")), "{v} {e}");
    // The terminal is blocked by that reversal: this one is not sent -> 5.
    let (code, v, e) = posgate(sock, &["run", "loyalty", "consume", "--body", &body(200, "X4"), "--idempotency-key", "x-4"]).await;
    assert_eq!(code, 5, "{v} {e}");
    assert!(v["type"].as_str().unwrap_or_default().ends_with("reversal-pending"), "{v}");
    d.stop().await;
    // No daemon at all: nothing was sent -> 5, with the reason on stderr.
    let (code, _, e) = posgate(&scratch("nodaemon").join("none.sock"), &["run", "loyalty", "consume", "--body", "{}"]).await;
    assert_eq!(code, 5, "{e}");
    assert!(e.contains("is posgate running?"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_kb_method_path_or_header_gives_a_short_log_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::new("biglog").await;
    let port = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    std::fs::write(
        &world.config,
        format!(
            "data_dir = \"data\"\nunix_socket = \"posgate.sock\"\ntcp = \"127.0.0.1:{port}\"\ntoken_file = \"secrets/api-token\"\nmax_body_bytes = 65536\n"
        ),
    )
    .expect("config");
    let mut d = world.start(&[]).await;
    let big = "A".repeat(300 * 1024);
    let requests = [
        format!("{big} /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        format!("GET /v1/{big} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Request-Id: {big}\r\nAuthorization: Bearer {big}\r\nConnection: close\r\n\r\n"),
    ];
    for _ in 0..10 {
        for r in &requests {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            let _ = s.write_all(r.as_bytes()).await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            let head = String::from_utf8_lossy(&buf[..buf.len().min(12)]).into_owned();
            assert!(head.starts_with("HTTP/1.1 4"), "{head}");
            drop(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = d.drain();
    let refused: Vec<&String> = lines.iter().filter(|l| l.contains("status=401") || l.contains("refused")).collect();
    assert!(!refused.is_empty(), "no refused request was logged: {lines:?}");
    for l in &lines {
        assert!(l.len() <= 800, "a {}-byte log line: {}", l.len(), &l[..300]);
    }
    // Thirty refusals in a moment: at most 20 lines in the 10 s window.
    assert!(refused.len() <= 20, "{} lines for 30 refused requests: {refused:?}", refused.len());
    d.stop().await;
}
