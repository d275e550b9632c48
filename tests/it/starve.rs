//! Regression tests: no local user can starve the daemon with idle TCP connections or a dribbled body.
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use posgate::client::ApiClient;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::World;

const CARD: &str = "6222020000000000008";

/// The real daemon started through `sh -c '<setup> && exec posgate serve …'` (`ulimit -n 256`,
/// `umask 000`: no unsafe `pre_exec`).
pub struct Shell {
    pub _child: tokio::process::Child,
    pub client: ApiClient,
}

impl Shell {
    pub async fn start(world: &World, setup: &str) -> Shell {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{setup} && exec \"$0\" serve --config \"$1\""))
            .arg(env!("CARGO_BIN_EXE_posgate"))
            .arg(&world.config)
            .env("POSGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("POSGATE_TEST_ECHO").is_some() { Stdio::inherit() } else { Stdio::null() })
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn posgate");
        let client = world.client();
        for _ in 0..1000 {
            if let Ok((200, _)) = client.get("/v1/status").await {
                return Shell { _child: child, client };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("posgate exited early ({status})");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("posgate did not become ready");
    }
}

/// The world's config with a loopback TCP listener (token in `secrets/api-token`); its port.
async fn with_tcp(world: &World) -> u16 {
    let port = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    std::fs::write(
        &world.config,
        format!("data_dir = \"data\"\nunix_socket = \"posgate.sock\"\ntcp = \"127.0.0.1:{port}\"\ntoken_file = \"secrets/api-token\"\n"),
    )
    .expect("config");
    port
}

/// Found by review: 1,100 idle TCP connections without a token (daemon at its open-file limit) held a
/// consume over the Unix socket for 29 s. Here: more idle connections than the daemon's whole limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_past_the_fd_limit_do_not_starve_the_unix_socket() {
    let world = World::new("starve").await;
    let port = with_tcp(&world).await;
    let d = Shell::start(&world, "ulimit -n 256").await;
    let (s, v) = d.client.post("/v1/profiles/loyalty/checkin", json!({}), None).await.expect("checkin");
    assert_eq!(s, 200, "{v}");
    // 400 clients that connect and say nothing: past the daemon's cap they wait in the kernel's
    // backlog, and past that in their SYN retries; every one stays open (or trying) to the end.
    let connected = Arc::new(AtomicUsize::new(0));
    let mut idle = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let connected = connected.clone();
        idle.spawn(async move {
            if let Ok(c) = TcpStream::connect(("127.0.0.1", port)).await {
                connected.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(120)).await;
                drop(c);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let opened = connected.load(Ordering::SeqCst);
    assert!(opened > 150, "only {opened} idle connections opened");
    let started = tokio::time::Instant::now();
    let c = world.client().with_timeout(Duration::from_secs(40));
    let body = json!({"cardNo": CARD, "consumeType": "01", "pointAmount": 100, "cashAmount": 0, "registerTraceNo": "S1"});
    let r = c.post("/v1/profiles/loyalty/consume", body, Some("starve-1")).await;
    let took = started.elapsed();
    println!("consume over the Unix socket with {opened} idle TCP connections open (400 tried): {took:?}");
    let (s, v) = r.expect("consume");
    assert_eq!(s, 200, "{v}");
    assert!(took < Duration::from_secs(5), "the consume took {took:?}");
    idle.abort_all();
    drop(d);
}

/// Found by review: a request body sent at 1 byte/s kept its connection (and a slot) open for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dribbled_at_one_byte_a_second_is_cut_off() {
    let world = World::new("dribble").await;
    let d = world.start(&[]).await;
    let mut s = tokio::net::UnixStream::connect(&world.socket).await.expect("connect");
    let head = "POST /v1/profiles/loyalty/consume HTTP/1.1\r\nHost: posgate\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n";
    s.write_all(head.as_bytes()).await.expect("headers");
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Dribble for up to 30 s; the daemon must answer (and close) long before.
    'dribble: for _ in 0..30 {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break 'dribble,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    println!("dribbled body cut off after {took:?}: {}", text.lines().next().unwrap_or("(closed without an answer)"));
    assert!(took < Duration::from_secs(15), "the connection stayed open for {took:?}");
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    d.stop().await;
}
