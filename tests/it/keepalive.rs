//! The API client keeps its connection: one connection for many requests, a reconnect after the daemon
//! closed it, and a lost answer resent only when the request is safe to send twice.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use posgate::client::{exit, ApiClient, ClientError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::support::World;

const CARD: &str = "6222020000000000008";

fn consume(reference: &str) -> Value {
    json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 1, "cashAmount": 0, "registerTraceNo": reference})
}

/// A Unix-socket relay in front of the daemon's socket that counts the connections it accepts, can
/// close every open connection (as a daemon's idle timeout would), and can swallow the next answer
/// (the request reaches the daemon, the connection closes before its answer reaches the client).
struct Relay {
    path: PathBuf,
    accepted: Arc<AtomicU64>,
    swallow_next_answer: Arc<AtomicBool>,
    close_all: tokio::sync::mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    fn start(dir: &Path, daemon_socket: &Path) -> Relay {
        let path = dir.join("relay.sock");
        let listener = UnixListener::bind(&path).expect("bind relay");
        let accepted = Arc::new(AtomicU64::new(0));
        let swallow_next_answer = Arc::new(AtomicBool::new(false));
        let (close_all, mut close_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (acc, swallow, upstream) = (accepted.clone(), swallow_next_answer.clone(), daemon_socket.to_path_buf());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((down, _)) = r else { continue };
                        acc.fetch_add(1, Ordering::SeqCst);
                        conns.spawn(relay_one(down, upstream.clone(), swallow.clone()));
                    }
                    Some(()) = close_rx.recv() => conns.abort_all(),
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Relay { path, accepted, swallow_next_answer, close_all, task }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy both ways; when `swallow` is set as an answer arrives, close both ends instead of passing it on.
async fn relay_one(down: UnixStream, upstream: PathBuf, swallow: Arc<AtomicBool>) {
    let Ok(up) = UnixStream::connect(&upstream).await else { return };
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let requests = async move {
        let _ = tokio::io::copy(&mut dr, &mut uw).await;
    };
    let answers = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if swallow.swap(false, Ordering::SeqCst) {
                return;
            }
            if dw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever direction ends first ends the connection (both halves are dropped).
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
    }
}

async fn records_with_reference(c: &ApiClient, reference: &str) -> usize {
    let (s, j) = c.get("/v1/journal").await.expect("journal");
    assert_eq!(s, 200, "{j}");
    j["records"].as_array().map(|a| a.iter().filter(|r| r.to_string().contains(reference)).count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_makes_many_requests_over_one_connection() {
    let world = World::new("keepalive-one").await;
    let d = world.start(&[]).await;
    let relay = Relay::start(&world.dir, &world.socket);
    let c = ApiClient::unix(&relay.path).with_timeout(Duration::from_secs(20));
    let (s, v) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    for i in 0..20 {
        let (s, v) = c.post("/v1/profiles/loyalty/consume", consume(&format!("KA{i:03}")), None).await.expect("consume");
        assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
        let (s, _) = c.get("/v1/status").await.expect("status");
        assert_eq!(s, 200);
    }
    assert_eq!(relay.accepted(), 1, "41 sequential requests of one client should share one connection");
    assert_eq!(c.connections_opened(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_the_daemon_closed_the_idle_connection_succeeds() {
    let world = World::new("keepalive-closed").await;
    let d = world.start(&[]).await;
    let relay = Relay::start(&world.dir, &world.socket);
    let c = ApiClient::unix(&relay.path).with_timeout(Duration::from_secs(20));
    let (s, _) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200);
    // The server side closes the idle connection; a keyless POST (never resent blindly) and a GET still go through.
    relay.close_all.send(()).expect("relay running");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume("KC001"), None).await.expect("consume after the idle connection closed");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    relay.close_all.send(()).expect("relay running");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, _) = c.get("/v1/status").await.expect("status after the idle connection closed");
    assert_eq!(s, 200);
    assert_eq!(relay.accepted(), 3);
    assert_eq!(records_with_reference(&c, "KC001").await, 1);

    // The daemon itself restarts under a client that holds an idle connection to it.
    let direct = d.client.clone();
    let (s, _) = direct.get("/v1/status").await.expect("status");
    assert_eq!(s, 200);
    d.stop().await;
    let d = world.start(&[]).await;
    let (s, _) = direct.get("/v1/status").await.expect("status after a daemon restart");
    assert_eq!(s, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_post_whose_answer_was_lost_is_reported_unknown_and_not_resent() {
    let mut world = World::new("keepalive-lost").await;
    let d = world.start(&[]).await;
    let relay = Relay::start(&world.dir, &world.socket);
    let c = ApiClient::unix(&relay.path).with_timeout(Duration::from_secs(20));
    let (s, _) = c.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200);
    let before = world.sim.state_snapshot().transactions.len();
    relay.swallow_next_answer.store(true, Ordering::SeqCst);
    let e = c.post("/v1/profiles/loyalty/consume", consume("KL001"), None).await.expect_err("the answer was swallowed");
    assert!(matches!(e, ClientError::OutcomeUnknown { .. }), "{e:?}");
    assert_eq!(e.exit_code(), exit::PENDING);
    assert!(e.to_string().contains("outcome is unknown"), "{e}");
    assert_eq!(world.sim.state_snapshot().transactions.len(), before + 1, "sent to the backend exactly once");
    assert_eq!(records_with_reference(&c, "KL001").await, 1, "journaled exactly once");
    assert_eq!(relay.accepted(), 2, "one connection for the lost answer, one for the journal look-up");

    // With an Idempotency-Key the same loss is healed: resent once, the daemon answers with the first record.
    relay.swallow_next_answer.store(true, Ordering::SeqCst);
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume("KL002"), Some("keepalive-lost-2")).await.expect("keyed consume is resent");
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (s, again) = c.post("/v1/profiles/loyalty/consume", consume("KL002"), Some("keepalive-lost-2")).await.expect("same key again");
    assert_eq!(s, 200);
    assert_eq!(again["id"], v["id"], "the resend was answered with the first record");
    assert_eq!(world.sim.state_snapshot().transactions.len(), before + 2, "the keyed consume reached the backend once");
    assert_eq!(records_with_reference(&c, "KL002").await, 1);
    world.stop_sim();
    d.stop().await;
}
