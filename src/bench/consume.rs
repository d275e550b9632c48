//! `posgate bench --only consume`: the floor, consume latency through the local API, what the API itself
//! adds per request, and durable consumes/s over many lanes.
#![allow(clippy::disallowed_methods)]
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::{ms, pct, us, BenchError};
use crate::api::{ApiOptions, Listeners, Service};
use crate::cli::BenchArgs;
use crate::client::ApiClient;
use crate::engine::{Engine, EngineConfig, SystemClock};
use crate::net::client::{HttpOptions, HttpsClient};

/// A consume body for the demo card that has no PIN; 1 fen each so balances last.
fn consume_body(n: usize) -> Value {
    json!({"cardNo": "6222020000000000008", "consumeType": "01", "pointAmount": 1, "cashAmount": 0, "registerTraceNo": format!("B{n:09}")})
}

fn approved(s: u16, v: &Value) -> Result<(), BenchError> {
    if s != 200 || v.get("status").and_then(Value::as_str) != Some("approved") {
        return Err(BenchError::Request(format!("HTTP {s}: {v}")));
    }
    Ok(())
}

/// One consume through the local API (the client keeps its connection).
async fn consume(c: &ApiClient, n: usize) -> Result<(), BenchError> {
    let (s, v) = c.post("/v1/profiles/loyalty/consume", consume_body(n), None).await.map_err(|e| BenchError::Request(e.to_string()))?;
    approved(s, &v)
}

/// The same consume handed to the engine in this process: no socket, no HTTP, no JSON on the wire.
async fn consume_in_process(e: &Engine, n: usize) -> Result<(), BenchError> {
    let a = Service::run(e, "loyalty", "consume", consume_body(n), None).await.map_err(|e| BenchError::Request(e.to_string()))?;
    approved(a.http_status, &a.body)
}

/// The engine and the local API on a Unix socket in this process (what `daemon::run` does, minus
/// devices and the callback listener), so the bench can call the same engine with and without the API.
pub(super) async fn consumes(args: &BenchArgs) -> Result<(), BenchError> {
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("posgate-bench-{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis())));
    let setup = crate::demo::prepare(&dir, None, None).await.map_err(BenchError::Setup)?;
    let sock: PathBuf = setup.config.unix_socket.clone().ok_or_else(|| BenchError::Setup("no socket".into()))?;
    let cfg = setup.config.clone();
    let profile = cfg.profiles.first().cloned().ok_or_else(|| BenchError::Setup("the demo has no profile".into()))?;
    let engine = Engine::open(EngineConfig { data_dir: cfg.data_dir.clone(), profiles: cfg.profiles.clone() }, Arc::new(SystemClock))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let unix = crate::api::bind_local(&sock).map_err(|e| BenchError::Setup(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ApiOptions { token: None, max_body_bytes: cfg.max_body_bytes, limits: cfg.api, ..Default::default() };
    let server = tokio::spawn(crate::api::serve(engine.clone() as Arc<dyn Service>, Listeners { unix: Some(unix), tcp: None }, opts, async move {
        let _ = stop_rx.await;
    }));
    let result = measure(args, &dir, &sock, &profile, &engine, ApiClient::unix(&sock)).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    engine.shutdown().await;
    drop(setup);
    let _ = std::fs::remove_file(&sock);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(
    args: &BenchArgs,
    dir: &std::path::Path,
    sock: &std::path::Path,
    profile: &crate::config::Profile,
    engine: &Arc<Engine>,
    client: ApiClient,
) -> Result<(), BenchError> {
    for _ in 0..500 {
        if client.get("/v1/status").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, v) = client.post("/v1/profiles/loyalty/checkin", json!({}), None).await.map_err(|e| BenchError::Request(e.to_string()))?;
    if s != 200 {
        return Err(BenchError::Request(format!("checkin: HTTP {s}: {v}")));
    }
    // Warm up the connection, the engine and the caches.
    for i in 0..50 {
        consume(&client, 9_000_000 + i).await?;
        consume_in_process(engine, 9_100_000 + i).await?;
    }

    // The floor: what a consume cannot avoid, measured now on this machine.
    let http = HttpsClient::new(&HttpOptions::for_profile(profile)).map_err(|e| BenchError::Setup(e.to_string()))?;
    let url = format!("{}/v1/jpos/cards", profile.base_url);
    let form = format!("storeNo={}&terminalNo={}&cardNo=6222020000000000008&traceNo=000000&batchNo=000000", profile.identity.store, profile.identity.terminal);
    let floor_file = dir.join("floor.bin");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&floor_file).map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut floor = Vec::with_capacity(args.latency_ops);
    for _ in 0..args.latency_ops {
        let t = Instant::now();
        for _ in 0..2 {
            f.write_all(&[0u8; 256]).map_err(|e| BenchError::Setup(e.to_string()))?;
            f.sync_data().map_err(|e| BenchError::Setup(e.to_string()))?;
        }
        http.post(&url, "application/x-www-form-urlencoded", Bytes::from(form.clone()), 0).await.map_err(|e| BenchError::Request(e.to_string()))?;
        floor.push(t.elapsed());
    }
    floor.sort();

    // Consumes through the API and straight into the engine, interleaved so both see the same disk and load.
    let mut lat = Vec::with_capacity(args.latency_ops);
    let mut direct = Vec::with_capacity(args.latency_ops);
    for i in 0..args.latency_ops {
        let t = Instant::now();
        consume(&client, i).await?;
        lat.push(t.elapsed());
        let t = Instant::now();
        consume_in_process(engine, 500_000 + i).await?;
        direct.push(t.elapsed());
    }
    lat.sort();
    direct.sort();

    // The API's own cost on a cheap route: `GET /v1/status` through the socket against the same
    // `status()` called in process. Consumes pay fsyncs and an HTTPS round trip whose jitter
    // (tens of µs) hides a difference of this size; the status route has neither. Two clients, so
    // the server's share and our client's show apart (a POS app's client is not ours): `ApiClient`,
    // and a raw keep-alive socket that writes a fixed request and reads the answer by its length.
    let n = args.latency_ops.max(1) * 2;
    let mut raw = RawClient::connect(sock).await?;
    let (mut via_api, mut via_raw, mut in_proc) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let (s, _) = client.get("/v1/status").await.map_err(|e| BenchError::Request(e.to_string()))?;
        via_api.push(t.elapsed());
        if s != 200 {
            return Err(BenchError::Request(format!("status: HTTP {s}")));
        }
        let t = Instant::now();
        let s = raw.get_status().await?;
        via_raw.push(t.elapsed());
        if s != 200 {
            return Err(BenchError::Request(format!("status (raw client): HTTP {s}")));
        }
        let t = Instant::now();
        std::hint::black_box(Service::status(engine.as_ref()).await);
        in_proc.push(t.elapsed());
    }
    via_api.sort();
    via_raw.sort();
    in_proc.sort();

    let sequential_conns = client.connections_opened();
    let lanes = args.lanes.max(1);
    let per_lane = args.throughput_ops / lanes;
    let client = Arc::new(client);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for l in 0..lanes {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_lane {
                consume(&c, 1_000_000 + l * per_lane + i).await?;
            }
            Ok::<(), BenchError>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError::Request(e.to_string()))??;
    }
    let elapsed = t.elapsed();
    let done = per_lane * lanes;
    let (_, status) = client.get("/v1/status").await.map_err(|e| BenchError::Request(e.to_string()))?;

    let (fm, f99) = (pct(&floor, 0.5), pct(&floor, 0.99));
    let (cm, c99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!("floor (2 x fdatasync + 1 HTTPS round trip to the simulator), n={}: median {:.3} ms, p99 {:.3} ms", floor.len(), ms(fm), ms(f99));
    println!(
        "consume through the local API (Unix socket, one kept-alive connection), 1 lane, n={}: median {:.3} ms, p99 {:.3} ms; \
         median / floor median = {:.2} (target <= 1.3), p99 / floor p99 = {:.2} (target <= 2)",
        lat.len(),
        ms(cm),
        ms(c99),
        ratio(cm, fm),
        ratio(c99, f99)
    );
    println!(
        "consume in process (the same engine, no API), n={}: median {:.3} ms, p99 {:.3} ms; the API's share of a consume (median difference) {:.0} us",
        direct.len(),
        ms(pct(&direct, 0.5)),
        ms(pct(&direct, 0.99)),
        us(cm) - us(pct(&direct, 0.5))
    );
    let in_proc_median = us(pct(&in_proc, 0.5));
    println!("status() in process, n={n}: median {in_proc_median:.0} us, p99 {:.0} us", us(pct(&in_proc, 0.99)));
    let overhead = us(pct(&via_api, 0.5)) - in_proc_median;
    println!(
        "API overhead per request, GET /v1/status through the socket minus the same status() in process, n={n}: median {:.0} us - {in_proc_median:.0} us = {overhead:.0} us \
         (target <= 60 us); p99 through the socket {:.0} us; connections the client opened for all the sequential requests: {sequential_conns}",
        us(pct(&via_api, 0.5)),
        us(pct(&via_api, 0.99)),
    );
    let server_only = us(pct(&via_raw, 0.5)) - in_proc_median;
    println!(
        "API overhead, server side only (a raw keep-alive socket client, no hyper, no JSON parsing), n={n}: median {:.0} us - {in_proc_median:.0} us = {server_only:.0} us; \
         so ApiClient's own share is about {:.0} us",
        us(pct(&via_raw, 0.5)),
        overhead - server_only,
    );
    println!(
        "durable consumes over {lanes} lanes: {done} in {:.2} s = {:.0} consumes/s (target >= 5000); journal syncs so far: {}; client connections in all: {}",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        status["journal"]["syncs"],
        client.connections_opened()
    );
    Ok(())
}

#[cfg(unix)]
type RawStream = tokio::net::UnixStream;
#[cfg(windows)]
type RawStream = tokio::net::windows::named_pipe::NamedPipeClient;

/// The least a client can do: one kept-alive Unix-socket connection, a fixed `GET /v1/status`, the
/// answer read up to its `Content-Length` (no hyper, no JSON), so its time is the server's cost.
struct RawClient {
    stream: RawStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(sock: &std::path::Path) -> Result<RawClient, BenchError> {
        #[cfg(unix)]
        let stream = tokio::net::UnixStream::connect(sock).await;
        #[cfg(windows)]
        let stream = tokio::net::windows::named_pipe::ClientOptions::new().open(sock);
        let stream = stream.map_err(|e| BenchError::Setup(format!("raw client: {e}")))?;
        Ok(RawClient { stream, buf: Vec::with_capacity(16 * 1024) })
    }

    /// One request; the HTTP status of its answer.
    async fn get_status(&mut self) -> Result<u16, BenchError> {
        use tokio::io::AsyncWriteExt;
        let err = |what: &str| BenchError::Request(format!("raw client: {what}"));
        self.stream.write_all(b"GET /v1/status HTTP/1.1\r\nhost: localhost\r\n\r\n").await.map_err(|e| err(&e.to_string()))?;
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| err("head is not text"))?;
                let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| err("no status"))?;
                let len = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().parse::<usize>()))
                    .ok_or_else(|| err("no content-length"))?
                    .map_err(|_| err("bad content-length"))?;
                let want = end + 4 + len;
                while self.buf.len() < want {
                    self.read_more().await?;
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), BenchError> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.map_err(|e| BenchError::Request(format!("raw client: {e}")))?;
        if n == 0 || self.buf.len() > 1 << 20 {
            return Err(BenchError::Request("raw client: the daemon closed the connection".into()));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
